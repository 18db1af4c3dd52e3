from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID, uuid4

from saga_orchestrator import (
    BaseSaga,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    SQLiteSagaRepository,
    current_step,
)


@dataclass
class TransferData:
    transfer_id: UUID
    amount: Decimal
    debit_id: str | None = None


class CardDeclined(Exception):
    """A business answer: not retried, and the step did not act."""

    refused = True  # a declared refusal: the step did nothing, so it is not undone


class TransferSaga(BaseSaga[TransferData]):
    saga_type = "transfer"
    timeout_minutes = 5

    def define_steps(self) -> list[SagaStep[TransferData]]:
        return [
            SagaStep("debit", self.debit, compensation=self.refund, timeout_seconds=10),
            SagaStep("credit", self.credit, timeout_seconds=10),
        ]

    async def debit(self, data: TransferData) -> dict[str, str]:
        key = current_step().idempotency_key  # stable across retries and restarts
        return {"debit_id": f"debit-{key}"}  # fields to set on the data

    async def refund(self, data: TransferData) -> None:
        if data.debit_id:  # compensations tolerate "nothing to undo"
            print("refunded", data.amount)

    async def credit(self, data: TransferData) -> None:
        raise CardDeclined("receiving account closed")


async def main() -> None:
    async with SQLiteSagaRepository("sagas.db") as repo:
        orchestrator = SagaOrchestrator(repo)
        result = await orchestrator.execute(TransferSaga(TransferData(uuid4(), Decimal("25.00"))))
        assert result.status is SagaStatus.COMPENSATED
        print(result.status.value, "-", result.error)
