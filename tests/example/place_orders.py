"""Child process for test_concurrency: place one-unit orders for one SKU on a shared file.

    python -m tests.example.place_orders FILE SKU COUNT

Opens the shop on FILE (already seeded by the parent), prices COUNT orders for one unit of
SKU (customers taken in turn), prints ``ready``, waits for a line on stdin so that every
child starts placing at the same moment, places all its orders at once, then prints JSON:
the count of each outcome and when it started and finished placing (epoch seconds).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter

import anyio
import anyio.to_thread

from order_fulfillment.domain import OrderData, ShippingAddress
from order_fulfillment.shop import OrderLine, Shop

ADDRESS = ShippingAddress("1 Main St", "Town", "CA", "12345", "US")


async def main(path: str, sku: str, count: int) -> None:
    async with Shop(path) as shop:
        customers = await shop.customers()
        orders = [
            await shop.price_order(customers[n % len(customers)], [OrderLine(sku, 1)], ADDRESS)
            for n in range(count)
        ]
        print("ready", flush=True)
        await anyio.to_thread.run_sync(sys.stdin.readline)
        outcomes: Counter[str] = Counter()
        started = time.time()

        async def place(order: OrderData) -> None:
            outcomes[(await shop.place(order)).status.value] += 1

        async with anyio.create_task_group() as tg:
            for order in orders:
                tg.start_soon(place, order)
        finished = time.time()
    report = {"outcomes": outcomes, "started": started, "finished": finished}
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
