"""A saga that waits for its payment: paid in time, early, never, too late, or wrongly."""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID

import anyio

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    SagaOrchestrator,
    SagaStep,
    StepRefusedError,
    wait_for_event,
)
from saga_orchestrator.testing import ManualClock

HOUR = 3600
CALLS: dict[int, list[str]] = {}  # what each order asked of the services, in order


@dataclass
class OrderData:
    order_id: UUID
    amount: Decimal
    payment_id: str | None = None
    address_known: bool = True


class OrderSaga(BaseSaga[OrderData]):
    saga_type = "order"

    def __init__(self, data: OrderData, *, warehouse: anyio.Event | None = None) -> None:
        self.warehouse = warehouse  # set when the warehouse answers (None: at once)
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            SagaStep("reserve", self.reserve, compensation=self.release),
            wait_for_event(
                "await_payment",
                "payment.captured",
                timeout_seconds=HOUR,
                accept=self.check_payment,
                compensation=self.refund,
            ),
            SagaStep("ship", self.ship),
        ]

    def check_payment(self, data: OrderData, payload: Mapping[str, Any]) -> dict[str, Any]:
        # A plain function: it checks, and returns the data fields to set. Raising rejects.
        if payload["amount"] != data.amount:
            raise ValueError(f"paid {payload['amount']}, expected {data.amount}")
        return {"payment_id": payload["payment_id"]}

    def call(self, data: OrderData, what: str) -> None:
        CALLS.setdefault(data.order_id.int, []).append(what)

    async def reserve(self, data: OrderData) -> None:
        self.call(data, "reserve")
        if self.warehouse is not None:
            await self.warehouse.wait()

    async def release(self, data: OrderData) -> None:
        self.call(data, "release")

    async def refund(self, data: OrderData) -> None:
        self.call(data, f"refund {data.payment_id}")

    async def ship(self, data: OrderData) -> None:
        self.call(data, "ship")
        if not data.address_known:
            raise StepRefusedError("no such address")


def order(number: int, **options: Any) -> OrderSaga:
    address_known = options.pop("address_known", True)
    data = OrderData(UUID(int=number), Decimal("10.00"), address_known=address_known)
    return OrderSaga(data, **options)


def payment(saga: OrderSaga, event_id: str, amount: str) -> dict[str, Any]:
    """deliver_event's arguments for the payment provider's event."""
    return {
        "event": "payment.captured",
        "payload": {"payment_id": f"pay-{event_id}", "amount": Decimal(amount)},
        "event_id": event_id,  # the provider's id: a second delivery is a duplicate
        "correlation_id": saga.context.correlation_id,  # "order-<order_id>"
    }


async def main() -> None:
    clock = ManualClock()  # starts at 2026-01-01 00:00 UTC; moves only when told
    orchestrator = SagaOrchestrator(InMemorySagaRepository(), clock=clock)
    orchestrator.register("order", OrderSaga)  # deliver_event and wake_due rebuild sagas

    saga = order(1)
    result = await orchestrator.execute(saga)  # parks at the wait: `running`
    step = result.steps[1]
    until = step.wait_until.isoformat() if step.wait_until else None
    print(f"paid in time:  execute -> {result.status}, {step.name} {step.status} until {until}")
    delivery = await orchestrator.deliver_event(**payment(saga, "evt-1", "10.00"))
    print(f"               deliver -> {delivery.status}, saga {delivery.saga_status}", end="")
    print(f", calls {CALLS[1]}")
    again = await orchestrator.deliver_event(**payment(saga, "evt-1", "10.00"))
    print(f"               the same event again -> {again.status}")

    warehouse = anyio.Event()
    saga = order(2, warehouse=warehouse)
    async with anyio.create_task_group() as tg:
        tg.start_soon(orchestrator.execute, saga)
        await anyio.wait_all_tasks_blocked()  # `reserve` waits for the warehouse
        delivery = await orchestrator.deliver_event(**payment(saga, "evt-2", "10.00"))
        print(f"paid early:    deliver -> {delivery.status} (reserve is still running)")
        warehouse.set()
    print(f"               the saga reaches its wait -> {saga.context.status}, calls {CALLS[2]}")

    saga = order(3)
    await orchestrator.execute(saga)
    clock.advance(HOUR)
    (result,) = await orchestrator.wake_due()
    print(f"never paid:    wake_due() an hour later -> {result.status}, calls {CALLS[3]}")
    print(f"               error: {result.error}")

    saga = order(4)
    await orchestrator.execute(saga)
    clock.advance(HOUR)
    delivery = await orchestrator.deliver_event(**payment(saga, "evt-4", "10.00"))
    print(f"paid too late: deliver -> {delivery.status}, saga {delivery.saga_status}")

    saga = order(5)
    await orchestrator.execute(saga)
    delivery = await orchestrator.deliver_event(**payment(saga, "evt-5", "5.00"))
    stored = await orchestrator.get(saga.context.saga_id)
    assert stored is not None
    print(f"wrong amount:  deliver -> {delivery.status}, saga {delivery.saga_status}")
    print(f"               error: {stored.error}")

    saga = order(6, address_known=False)
    await orchestrator.execute(saga)
    delivery = await orchestrator.deliver_event(**payment(saga, "evt-6", "10.00"))
    print(f"not shipped:   deliver -> {delivery.status}, saga {delivery.saga_status}", end="")
    print(f", calls {CALLS[6]}")


if __name__ == "__main__":
    anyio.run(main)
