"""`serve`: seed the demo data and run the API under uvicorn, printing a curl line to paste."""

import argparse
import json
import os
import random
import shlex
import sys
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import anyio
import uvicorn

from ..shop import Shop
from .app import create_app


class _Server(uvicorn.Server):
    """A uvicorn server that calls ``on_started(port)`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[int], None]) -> None:
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            port: int = self.servers[0].sockets[0].getsockname()[1]
            self.on_started(port)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def demo_curl(base_url: str, customer_id: UUID, *, payment: str = "sync") -> str:
    """A curl command that places a real order on the demo catalog, ready to paste
    (``payment="async"``: paid asynchronously, ``?payment=async``)."""
    body = {
        "customer_id": str(customer_id),
        "items": [{"sku": "SKU-001", "quantity": 2}],
        "shipping_address": {
            "street": "123 Main St",
            "city": "Anytown",
            "state": "CA",
            "postal_code": "12345",
            "country": "US",
        },
    }
    url = f"{base_url}/api/v1/orders"
    if payment != "sync":
        url = f"'{url}?payment={payment}'"  # quoted: `?` is a wildcard to the shell
    return (
        f"curl -sS -X POST {url}"
        " -H 'Content-Type: application/json'"
        f" -H 'Idempotency-Key: demo-{uuid4()}'"
        f" -d '{json.dumps(body)}'"
    )


def provider_command(shop: Shop, base_url: str) -> str:
    """The command that plays the payment provider for this server (its secret is not
    printed: pass the same --webhook-secret, or ORDER_WEBHOOK_SECRET, if you changed it)."""
    python = shlex.quote(sys.executable)
    if os.path.relpath(sys.executable).startswith(".venv"):
        python = os.path.relpath(sys.executable)
    return (
        f"{python} -m order_fulfillment.async_payments --db {shlex.quote(str(shop.db_path))}"
        f" --url {base_url}"
    )


def serve(args: argparse.Namespace, shop: Shop) -> int:
    """Seed the demo data, print a curl line and the docs URL, then serve until interrupted.

    ``args`` needs ``host``, ``port`` (0 picks a free one), ``customers``, ``stock``, ``seed``.
    """

    async def seed() -> UUID:
        async with shop:
            await shop.seed_demo(
                customers=args.customers, stock=args.stock, rng=random.Random(args.seed)
            )
            # The line must work verbatim: pick a customer who can pay for it (or make one).
            solvent = await shop.customers(min_balance=Decimal("1000"))
            if solvent:
                return solvent[0]
            customer_id = uuid4()
            await shop.payments.open_account(customer_id, Decimal("5000.00"))
            return customer_id

    customer_id = anyio.run(seed)
    faults = shop.faults.config

    def on_started(port: int) -> None:
        base = f"http://{_url_host(args.host)}:{port}"
        print(f"order-fulfilment API on {base} (SQLite file {shop.db_path})")
        if faults.transient_rate or faults.reply_lost_rate or faults.permanent_rate:
            print(
                f"faults injected: transient {faults.transient_rate:g}, reply lost "
                f"{faults.reply_lost_rate:g}, permanent {faults.permanent_rate:g} "
                "(some orders fail with 400 on purpose)"
            )
        print("place an order:")
        print(f"  {demo_curl(base, customer_id)}")
        print(
            "place an order paid asynchronously (202: it waits "
            f"{shop.capture_timeout_seconds:g} s for its capture's webhook):"
        )
        print(f"  {demo_curl(base, customer_id, payment='async')}")
        print("then capture its payment, as the provider would, and send the signed webhook:")
        print(f"  {provider_command(shop, base)} capture ORDER_ID")
        print(f"OpenAPI docs: {base}/docs")
        sys.stdout.flush()

    config = uvicorn.Config(create_app(shop), host=args.host, port=args.port, log_level="info")
    server = _Server(config, on_started)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down cleanly
        pass
    except SystemExit:  # uvicorn exits when it cannot start (port taken, ...), having said why
        return 1
    return 0 if server.started else 1
