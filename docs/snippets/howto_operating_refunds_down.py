"""Leave two orders FAILED in an order-example database: shipping refuses them, and the
refund service is down while the saga compensates. Run it: python this_file.py orders.db

It uses the example's Shop, with the library's FaultInjector failing every refund attempt
and compensations retried only 3 times, so that the sagas give up at once.
"""

from __future__ import annotations

import random
import sys
from decimal import Decimal

import anyio

from order_fulfillment.domain import ShippingAddress
from order_fulfillment.faults import FaultConfig
from order_fulfillment.shop import OrderLine, Shop
from saga_orchestrator import RetryPolicy
from saga_orchestrator.runtime import Phase
from saga_orchestrator.testing import FaultInjector

ADDRESS = ShippingAddress("123 Main St", "Anytown", "CA", "12345", "US")


async def main(db: str) -> None:
    refunds_down = FaultInjector().fail(
        "process_payment", ConnectionError("payments API unreachable"), phase=Phase.COMPENSATION
    )
    shop = Shop(
        db,
        faults=FaultConfig(fail_operations={"shipping.create"}),
        interceptors=[refunds_down],
        compensation_retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01),
    )
    async with shop:
        await shop.seed_demo(customers=100, stock=1000, rng=random.Random(7))  # a new file only
        customers = await shop.customers(min_balance=Decimal("1000"))
        for customer in customers[:2]:
            order = await shop.price_order(customer, [OrderLine("SKU-002", 1)], ADDRESS)
            result = await shop.place(order)
            print(result.saga_id, result.status.value)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1])
