"""Serve the example's HTTP API for the tests, with faults chosen on the command line.

    python -m tests.example.api_server --db orders.db --fail shipping.create --latency 0.3

It builds ``Shop(db, faults=...)``, opens an account for a known poor customer (so a payment
can be declined on purpose), then calls ``order_fulfillment.api.serve``: that seeds the demo
catalog and customers, prints the curl line and the URL, and runs uvicorn until SIGTERM.
``--port 0`` (the default) picks a free port; the printed URL says which.
"""

from __future__ import annotations

import argparse
import sys
from decimal import Decimal
from pathlib import Path
from uuid import UUID

import anyio

from order_fulfillment.api import serve
from order_fulfillment.faults import FaultConfig
from order_fulfillment.shop import Shop
from saga_orchestrator import RetryPolicy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.example.api_server")
    parser.add_argument("--db", type=Path, required=True, help="SQLite file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--customers", type=int, default=10, help="demo customers")
    parser.add_argument("--stock", type=int, default=100, help="initial stock per SKU")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--fail", action="append", default=[], help="forward operation always refused"
    )
    parser.add_argument("--latency", type=float, default=0.0, help="max seconds per call")
    parser.add_argument("--poor-customer", type=UUID, default=None, help="account with 5.00")
    return parser.parse_args(argv)


async def open_poor_account(shop: Shop, customer_id: UUID) -> None:
    async with shop:
        if not await shop.payments.has_account(customer_id):
            await shop.payments.open_account(customer_id, Decimal("5.00"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    shop = Shop(
        args.db,
        faults=FaultConfig(
            fail_operations=frozenset(args.fail), latency_seconds=args.latency, seed=args.seed
        ),
        retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01),
        compensation_retry=RetryPolicy(max_attempts=20, initial_backoff_seconds=0.01),
    )
    if args.poor_customer is not None:
        anyio.run(open_poor_account, shop, args.poor_customer)
    return serve(args, shop)


if __name__ == "__main__":
    sys.exit(main())
