"""Acceptance: concurrent orders never oversell.

"200 concurrent orders for a SKU with stock 50: exactly 50 complete, the rest are rejected or
compensated, stock never negative, ledger balanced" -- first with every order in flight at
once in one process (an anyio task group), then with three processes sharing the SQLite file.
The reservation's stock check and decrement are one ``BEGIN IMMEDIATE`` transaction, so the
last unit goes to exactly one order however the calls interleave.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from random import Random
from typing import Any
from uuid import uuid4

import anyio
import pytest

from order_fulfillment.domain import OrderData, ShippingAddress
from order_fulfillment.shop import OrderLine, Shop
from saga_orchestrator import SagaResult, SagaStatus

REPO_ROOT = Path(__file__).resolve().parents[2]
ADDRESS = ShippingAddress("1 Main St", "Town", "CA", "12345", "US")
SKU, PRICE, STOCK = "HOT-1", Decimal("19.99"), 50
ORDERS = 200


async def seed(shop: Shop, customers: int = 20) -> None:
    """One scarce SKU, and customers with money enough for every order."""
    await shop.inventory.add_product(SKU, "Limited edition", PRICE, STOCK)
    for _ in range(customers):
        await shop.payments.open_account(uuid4(), Decimal("100000.00"))


async def books(shop: Shop) -> dict[str, Any]:
    """Stock left, shipments, the ledger's net and what customers spent, from the file."""

    def read(c: Any) -> dict[str, Any]:
        ledger = c.execute("SELECT kind, amount FROM ledger").fetchall()
        return {
            "stock": c.execute("SELECT stock FROM products WHERE sku = ?", (SKU,)).fetchone()[0],
            "shipments": c.execute("SELECT count(*) FROM shipments").fetchone()[0],
            "net": sum(
                (Decimal(a) if k == "charge" else -Decimal(a) for k, a in ledger), Decimal("0")
            ),
            "spent": sum(
                (
                    Decimal(i) - Decimal(b)
                    for b, i in c.execute("SELECT balance, initial_balance FROM accounts")
                ),
                Decimal("0"),
            ),
        }

    return await shop.db.read(read)


@pytest.mark.anyio
async def test_200_concurrent_orders_for_50_in_stock(tmp_path: Path) -> None:
    """All 200 orders in flight at once: exactly 50 complete, stock never below zero."""
    async with Shop(tmp_path / "shop.db") as shop:
        await seed(shop)
        customers = await shop.customers()
        orders = [
            await shop.price_order(customers[n % len(customers)], [OrderLine(SKU, 1)], ADDRESS)
            for n in range(ORDERS)
        ]
        results: list[SagaResult[OrderData]] = []
        lowest_stock_seen = STOCK

        async def place(order: OrderData) -> None:
            results.append(await shop.place(order))

        async def watch_stock() -> None:
            nonlocal lowest_stock_seen
            while True:
                lowest_stock_seen = min(lowest_stock_seen, (await books(shop))["stock"])
                await anyio.sleep(0.005)

        async with anyio.create_task_group() as watcher:
            watcher.start_soon(watch_stock)
            async with anyio.create_task_group() as tg:
                for order in orders:
                    tg.start_soon(place, order)
            watcher.cancel_scope.cancel()

        outcomes = Counter(r.status for r in results)
        assert outcomes == {SagaStatus.COMPLETED: STOCK, SagaStatus.COMPENSATED: ORDERS - STOCK}
        rejected = [r for r in results if r.status is SagaStatus.COMPENSATED]
        assert all("InsufficientStockError" in (r.error or "") for r in rejected)
        assert lowest_stock_seen >= 0
        assert await books(shop) == {
            "stock": 0,
            "shipments": STOCK,
            "net": STOCK * PRICE,
            "spent": STOCK * PRICE,
        }
        assert await shop.check_invariants() == []


@pytest.mark.slow
def test_three_processes_on_one_file_never_oversell(tmp_path: Path) -> None:
    """Three processes place 70 orders each on one file: still exactly 50 complete."""
    path = tmp_path / "shop.db"

    async def prepare() -> None:
        async with Shop(path) as shop:
            await seed(shop)

    anyio.run(prepare)
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.example.place_orders", str(path), SKU, "70"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    try:
        for child in children:  # each has opened the file and priced its orders
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
        for child in children:  # now all of them place their orders at once
            assert child.stdin is not None
            child.stdin.write("go\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=60) for child in children]
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert [child.returncode for child in children] == [0, 0, 0], outputs

    reports = [json.loads(out) for out, _ in outputs]
    total = sum((Counter(r["outcomes"]) for r in reports), Counter())
    assert total == {"completed": STOCK, "compensated": 3 * 70 - STOCK}
    # They really competed: every child was placing orders while the others were.
    assert max(r["started"] for r in reports) < min(r["finished"] for r in reports)

    async def check() -> None:
        async with Shop(path) as shop:
            assert await books(shop) == {
                "stock": 0,
                "shipments": STOCK,
                "net": STOCK * PRICE,
                "spent": STOCK * PRICE,
            }
            assert await shop.check_invariants() == []

    anyio.run(check)


@pytest.mark.anyio
async def test_two_shops_seeding_one_new_file_at_once(tmp_path: Path) -> None:
    """Two demo processes started together on a new file seed it once between them."""
    async with Shop(tmp_path / "shop.db") as first, Shop(tmp_path / "shop.db") as second:
        async with anyio.create_task_group() as tg:
            for n, shop in enumerate((first, second)):
                tg.start_soon(lambda s=shop, n=n: s.seed_demo(customers=3, stock=10, rng=Random(n)))
        assert len(await first.inventory.products()) == 4
        assert len(await first.customers()) == 3
