"""What the admin command line does, from code: list, get, retry, cancel.
Run it: python this_file.py"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

import anyio

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    RetryPolicy,
    SagaConflictError,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
)


@dataclass
class OrderData:
    order_id: UUID


class Services:
    """Flags standing for the outside world."""

    refunds_work = False
    warehouse: anyio.Event  # set when the warehouse answers


class OrderSaga(BaseSaga[OrderData]):
    saga_type = "order"

    def __init__(self, data: OrderData, *, wait_for_warehouse: bool = False) -> None:
        self.wait_for_warehouse = wait_for_warehouse
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            SagaStep("charge", self.noop, compensation=self.refund),
            SagaStep("pick", self.pick, compensation=self.unpick),
        ]

    async def noop(self, data: OrderData) -> None:
        return None

    async def refund(self, data: OrderData) -> None:
        if not Services.refunds_work:
            raise ConnectionError("refund API down")

    async def pick(self, data: OrderData) -> None:
        if self.wait_for_warehouse:
            await Services.warehouse.wait()
        else:
            raise LookupError("out of stock")

    async def unpick(self, data: OrderData) -> None:
        return None


async def main() -> None:
    orchestrator = SagaOrchestrator(
        InMemorySagaRepository(),
        compensation_retry=RetryPolicy(max_attempts=2, initial_backoff_seconds=0.01),
    )
    # retry, cancel and resume rebuild sagas from storage: register how.
    orchestrator.register("order", OrderSaga)

    await orchestrator.execute(OrderSaga(OrderData(uuid4())))  # out of stock, refund fails
    failed = await orchestrator.list_sagas(statuses=[SagaStatus.FAILED])
    print("failed:", [saga.error for saga in failed])
    stored = await orchestrator.get(failed[0].saga_id)
    assert stored is not None
    print("steps:", [(step.name, step.status.value) for step in stored.steps])

    Services.refunds_work = True  # the cause is fixed
    result = await orchestrator.retry(failed[0].saga_id)
    print("retry:", result.status.value)

    # Cancel a saga that another task is driving: it is waiting for the warehouse.
    Services.warehouse = anyio.Event()
    saga = OrderSaga(OrderData(uuid4()), wait_for_warehouse=True)

    async def drive() -> None:
        try:
            await orchestrator.execute(saga)
        except SagaConflictError as exc:
            print("the driving task stops:", type(exc).__name__)

    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        await anyio.wait_all_tasks_blocked()
        result = await orchestrator.cancel(saga.context.saga_id, reason="customer called")
        print("cancel:", result.status.value, "-", result.error)
        print("steps:", [(step.name, step.status.value) for step in result.steps])
        Services.warehouse.set()  # the warehouse answers at last; too late


if __name__ == "__main__":
    anyio.run(main)
