"""Run the order-fulfilment demo: place many orders with faults injected, check invariants.

python -m order_fulfillment --orders 300
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import anyio

from saga_orchestrator import SagaOrchestrator, SagaResult, SagaStatus, SQLiteSagaRepository

from .domain import OrderData, OrderItem, ShippingAddress
from .saga import OrderFulfillmentSaga
from .services import (
    Faults,
    InventoryService,
    NotificationService,
    PaymentService,
    ShippingService,
)

CATALOG = {
    "SKU-001": ("Widget", Decimal("29.99")),
    "SKU-002": ("Gadget", Decimal("149.00")),
    "SKU-003": ("Gizmo", Decimal("4.50")),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m order_fulfillment",
        description="Place orders through the order-fulfilment saga on SQLite and check that "
        "stock, money and notifications add up.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--orders", type=int, default=300, help="orders to place")
    parser.add_argument("--concurrency", type=int, default=32, help="orders in flight at once")
    parser.add_argument(
        "--db", type=Path, default=None, help="SQLite file (default: a new temporary file)"
    )
    parser.add_argument("--stock", type=int, default=400, help="initial stock per SKU")
    parser.add_argument("--transient-rate", type=float, default=0.05, help="P(connection error)")
    parser.add_argument("--decline-rate", type=float, default=0.08, help="P(payment declined)")
    parser.add_argument(
        "--shipping-failure-rate", type=float, default=0.05, help="P(no carrier for address)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed for orders and faults")
    args = parser.parse_args(argv)
    if args.orders < 1 or args.concurrency < 1 or args.stock < 0:
        parser.error("--orders and --concurrency must be >= 1, --stock >= 0")
    for name in ("transient_rate", "decline_rate", "shipping_failure_rate"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be within [0, 1]")
    return args


def make_order(rng: random.Random) -> OrderData:
    items = []
    for sku in rng.sample(sorted(CATALOG), k=rng.randint(1, 2)):
        name, price = CATALOG[sku]
        items.append(OrderItem(sku=sku, quantity=rng.randint(1, 3), unit_price=price, name=name))
    return OrderData(
        customer_id=uuid4(),
        items=items,
        shipping_address=ShippingAddress("123 Main St", "Anytown", "CA", "12345", "US"),
        total=sum((i.unit_price * i.quantity for i in items), Decimal("0")),
    )


async def run(args: argparse.Namespace) -> int:
    db = args.db or Path(tempfile.mkdtemp(prefix="order-saga-")) / "orders.db"
    faults = Faults(
        transient_rate=args.transient_rate,
        decline_rate=args.decline_rate,
        shipping_failure_rate=args.shipping_failure_rate,
        rng=random.Random(args.seed),
    )
    inventory = InventoryService({sku: args.stock for sku in CATALOG}, faults)
    payment = PaymentService(faults)
    shipping = ShippingService(faults)
    notification = NotificationService(faults)
    rng = random.Random(args.seed + 1)
    orders = [make_order(rng) for _ in range(args.orders)]
    results: list[SagaResult[OrderData]] = []
    print(f"order-fulfilment demo: {args.orders} orders, SQLite store at {db}")

    async with SQLiteSagaRepository(db) as repo:
        orchestrator = SagaOrchestrator(repo)
        limiter = anyio.CapacityLimiter(args.concurrency)
        started = time.perf_counter()

        async def place(order: OrderData) -> None:
            async with limiter:
                saga = OrderFulfillmentSaga(
                    order,
                    inventory_service=inventory,
                    payment_service=payment,
                    shipping_service=shipping,
                    notification_service=notification,
                )
                results.append(await orchestrator.execute(saga))
                progress(len(results), args.orders)

        async with anyio.create_task_group() as tg:
            for order in orders:
                tg.start_soon(place, order)
        elapsed = time.perf_counter() - started
        unfinished = await repo.list_sagas(
            statuses=[SagaStatus.RUNNING, SagaStatus.COMPENSATING], limit=10
        )
    sys.stderr.write("\n")

    by_status = Counter(r.status.value for r in results)
    reasons = Counter(
        (r.error or "").split(":", 1)[0] for r in results if r.status is not SagaStatus.COMPLETED
    )
    print(f"\n{'outcome':<14}{'orders':>8}")
    for status in ("completed", "compensated", "failed"):
        print(f"{status:<14}{by_status.get(status, 0):>8}")
    if reasons:
        print("\ncompensation paths (step that failed → steps undone):")
        for step, count in sorted(reasons.items()):
            undone = _undone(step)
            print(f"  {step:<18} {count:>5}  → {undone}")
    print(f"\n{len(results) / elapsed:,.0f} orders/s with {args.concurrency} in flight")

    problems = check_invariants(results, inventory, payment, unfinished_count=len(unfinished))
    print("\ninvariants:")
    for line in problems or ["all hold"]:
        print(f"  {line}")
    print("verdict:", "OK" if not problems else "BROKEN")
    return 0 if not problems else 1


def _undone(step: str) -> str:
    order = ["reserve_inventory", "process_payment", "create_shipment", "send_confirmation"]
    if step not in order:
        return "?"
    done = order[: order.index(step)]
    names = {
        "reserve_inventory": "release",
        "process_payment": "refund",
        "create_shipment": "cancel shipment",
    }
    return " + ".join(names[s] for s in reversed(done)) or "nothing (order rejected)"


def check_invariants(
    results: list[SagaResult[OrderData]],
    inventory: InventoryService,
    payment: PaymentService,
    *,
    unfinished_count: int,
) -> list[str]:
    problems = []
    if unfinished_count:
        problems.append(f"{unfinished_count} sagas are not terminal")
    for sku, initial in inventory.initial.items():
        if inventory.available[sku] + inventory.held()[sku] != initial:
            problems.append(f"stock of {sku} not conserved")
        if inventory.available[sku] < 0:
            problems.append(f"stock of {sku} is negative")
    charges = Counter(p.order_id for p in payment.payments.values())
    if any(n > 1 for n in charges.values()):
        problems.append("an order was charged twice")
    for result in results:
        net = payment.net_charged(result.data.order_id)
        expected = result.data.total if result.status is SagaStatus.COMPLETED else Decimal("0")
        if result.status is not SagaStatus.FAILED and net != expected:
            problems.append(f"order {result.data.order_id}: charged {net}, expected {expected}")
        reservation = inventory.by_order.get(result.data.order_id)
        if (
            result.status is SagaStatus.COMPENSATED
            and reservation is not None
            and inventory.reservations[reservation].active
        ):
            problems.append(f"order {result.data.order_id}: compensated but stock still held")
    return problems


def progress(done: int, total: int) -> None:
    if not sys.stderr.isatty() and done != total:
        return
    width = 40
    filled = width * done // total
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    return anyio.run(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
