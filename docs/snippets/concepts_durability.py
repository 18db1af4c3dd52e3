"""Print every write the orchestrator makes, and what each one records."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    SagaContext,
    SagaEvent,
    SagaOrchestrator,
    SagaStep,
)


class PrintingRepository(InMemorySagaRepository):
    """The in-memory repository, printing each saga record as it is stored."""

    async def create(
        self, context: SagaContext[Any], state: str, events: Sequence[SagaEvent] = ()
    ) -> None:
        await super().create(context, state, events)
        show(context)

    async def update(
        self,
        context: SagaContext[Any],
        state: str,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        await super().update(context, state, expected_version=expected_version, events=events)
        show(context)


def show(context: SagaContext[Any]) -> None:
    steps = ", ".join(f"{step.name} {step.status.value}" for step in context.steps)
    print(f"write {context.version}: {context.status.value:<12} | {steps}")


class ShippingRefused(Exception):
    """A business answer: not retried, and the step did not act."""

    refused = True  # a declared refusal: the step did nothing, so it is not undone


@dataclass
class OrderData:
    refuse_shipping: bool = False


class OrderSaga(BaseSaga[OrderData]):
    saga_type = "order"

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            SagaStep("reserve", self.reserve, compensation=self.undo),
            SagaStep("charge", self.charge, compensation=self.undo),
            SagaStep("ship", self.ship, compensation=self.undo),
        ]

    async def reserve(self, data: OrderData) -> None:
        pass

    async def charge(self, data: OrderData) -> None:
        pass

    async def ship(self, data: OrderData) -> None:
        if data.refuse_shipping:
            raise ShippingRefused("no carrier for this address")

    async def undo(self, data: OrderData) -> None:
        pass


async def main() -> None:
    orchestrator = SagaOrchestrator(PrintingRepository())
    print("every step succeeds:")
    await orchestrator.execute(OrderSaga(OrderData()))
    print("ship refuses, so charge and reserve are undone:")
    await orchestrator.execute(OrderSaga(OrderData(refuse_shipping=True)))


anyio.run(main)
