"""The shop's orchestrator for the admin command line, with the order saga's code loaded.

    saga-orchestrator --app order_fulfillment.admin:orchestrator --db orders.db list
    saga-orchestrator --app order_fulfillment.admin:orchestrator --db orders.db retry ID
    saga-orchestrator --app order_fulfillment.admin:orchestrator --db orders.db cancel ID
    saga-orchestrator --app order_fulfillment.admin:orchestrator --db orders.db recover

`retry`, `cancel` and `recover` run the saga's compensations and steps, so the command line
needs the services they call: the same `Shop` the service runs, on the same file.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from saga_orchestrator import SagaOrchestrator

from .shop import Shop

DEFAULT_DB = "orders.db"
"""The file `python -m order_fulfillment --serve` uses by default."""


@asynccontextmanager
async def orchestrator(db: str | None) -> AsyncIterator[SagaOrchestrator]:
    """The shop on `db` (default orders.db), opened for the length of one command."""
    path = Path(db or DEFAULT_DB)
    if not await anyio.Path(path).is_file():  # an admin command never creates an empty shop
        raise FileNotFoundError(f"no shop database at {path}; pass --db PATH")
    async with Shop(path) as shop:
        yield shop.orchestrator
