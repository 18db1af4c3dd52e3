"""Which steps are undone, depending on how the charge step fails."""

from dataclasses import dataclass

import anyio

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    RetryPolicy,
    SagaOrchestrator,
    SagaStep,
    StepRefusedError,
    current_step,
)
from saga_orchestrator.testing import ManualClock


class CardDeclined(StepRefusedError):
    """A refusal: not retried, and the charge did not happen, so there is nothing to refund."""


@dataclass
class OrderData:
    charge_fails_with: str  # "nothing", "one glitch", "declined", "a bug", "timeout", ...


class Inventory:
    def __init__(self) -> None:
        self.up = True

    async def release(self) -> None:
        if not self.up:
            raise ConnectionError("inventory API down")


class OrderSaga(BaseSaga[OrderData]):
    saga_type = "order"

    def __init__(self, data: OrderData, inventory: Inventory) -> None:
        self.inventory = inventory
        self.calls: list[str] = []
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            SagaStep("reserve", self.reserve, compensation=self.release),
            SagaStep("charge", self.charge, compensation=self.refund, timeout_seconds=0.05),
            SagaStep("ship", self.ship, compensation=self.recall),
        ]

    def record(self, what: str) -> None:
        self.calls.append(f"{what}#{current_step().attempt}")

    async def reserve(self, data: OrderData) -> None:
        self.record("reserve")

    async def charge(self, data: OrderData) -> None:
        self.record("charge")
        failure = data.charge_fails_with
        if failure == "declined":
            raise CardDeclined("insufficient funds")
        if failure == "a bug":
            # The card was charged; then the code reading the reply breaks.
            reply: dict[str, str] = {}
            print("  (charged)", reply["payment_id"])
        if failure == "timeout":
            await anyio.sleep(1)  # longer than timeout_seconds
        if failure == "connection" or (failure == "one glitch" and current_step().attempt == 1):
            raise ConnectionError("bank unreachable")

    async def ship(self, data: OrderData) -> None:
        self.record("ship")

    async def release(self, data: OrderData) -> None:
        self.record("release")
        await self.inventory.release()

    async def refund(self, data: OrderData) -> None:
        self.record("refund")

    async def recall(self, data: OrderData) -> None:
        self.record("recall")


def report(label: str, status: str, calls: list[str] | None = None) -> None:
    print(f"{label:<30} {status:<12} {calls or ''}".rstrip())


async def main() -> None:
    inventory = Inventory()
    orchestrator = SagaOrchestrator(
        InMemorySagaRepository(),
        clock=ManualClock(),  # backoff waits take no time in this demo
        compensation_retry=RetryPolicy(max_attempts=3),
    )
    orchestrator.register("order", lambda data: OrderSaga(data, inventory))

    for failure in ("nothing", "one glitch", "declined", "a bug", "timeout", "connection"):
        saga = OrderSaga(OrderData(charge_fails_with=failure), inventory)
        result = await orchestrator.execute(saga)
        report(f"charge fails with {failure}:", result.status.value, saga.calls)

    inventory.up = False  # now releasing the reservation fails, every time
    saga = OrderSaga(OrderData(charge_fails_with="declined"), inventory)
    result = await orchestrator.execute(saga)
    report("release keeps failing:", result.status.value, saga.calls)
    print(f"  error: {result.error}")
    inventory.up = True  # the inventory API is back: an operator retries
    result = await orchestrator.retry(result.saga_id)
    report("after retry():", result.status.value)


anyio.run(main)
