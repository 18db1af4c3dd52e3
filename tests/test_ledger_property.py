"""Property: wherever a bug strikes in a step, the ledger nets to zero for a compensated saga.

Each step charges a ledger (once per key, as a real payment API would) and its compensation
refunds by the same key, tolerating "nothing to refund". Hypothesis places, per step, a failure
before the charge, after it, in the step's result, a declared refusal, or a plain ``def``
instead of ``async def``. Only a declared refusal may leave a failed step uncompensated, and it
is raised before anything was charged.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    SQLiteSagaRepository,
    StepRefusedError,
)
from saga_orchestrator.testing import ManualClock

NONE = "none"  # the step succeeds
BEFORE = "bug before the charge"  # KeyError: nothing was charged, but nobody can know that
AFTER = "bug after the charge"  # AttributeError on the reply: the money moved
NOT_A_DICT = "charge, then return a non-dict"  # InvalidStepResultError
UNKNOWN_FIELD = "charge, then return an unknown field"  # InvalidStepResultError
UNSTORABLE = "charge, then return an unstorable value"  # SerializationError (5,000 digits)
TOO_DEEP = "charge, then return a value nested too deep"  # SerializationError
REFUSED = "declared refusal before the charge"  # StepRefusedError: not compensated
SYNC = "plain def instead of async def"  # refused when the saga is defined

PLACEMENTS = (NONE, BEFORE, AFTER, NOT_A_DICT, UNKNOWN_FIELD, UNSTORABLE, TOO_DEEP, REFUSED)


class Declined(StepRefusedError):
    """The bank said no before charging."""


@dataclass
class Ledger:
    """A payment service: a charge or a refund takes effect once per key."""

    charges: dict[str, Decimal] = field(default_factory=dict)
    refunded: set[str] = field(default_factory=set)

    def charge(self, key: str, amount: Decimal) -> None:
        self.charges.setdefault(key, amount)

    def refund(self, key: str) -> None:
        if key in self.charges:
            self.refunded.add(key)

    @property
    def balance(self) -> Decimal:
        return sum(
            (amount for key, amount in self.charges.items() if key not in self.refunded),
            Decimal(0),
        )


@dataclass
class BillData:
    bill_id: UUID = field(default_factory=uuid4)
    receipt: Any = None


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


class BillSaga(BaseSaga[BillData]):
    """One step per placement, each charging its own amount."""

    saga_type = "bill"

    def __init__(self, data: BillData, ledger: Ledger, placements: tuple[str, ...]) -> None:
        self.ledger = ledger
        self.placements = placements
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[BillData]]:
        return [
            SagaStep(f"charge{i}", self._action(i, p), self._refund(i))
            for i, p in enumerate(self.placements)
        ]

    def _key(self, data: BillData, index: int) -> str:
        return f"{data.bill_id}:{index}"

    def _action(self, index: int, placement: str) -> Any:
        amount = Decimal(index + 1) * Decimal("10.01")

        def sync_action(data: BillData) -> dict[str, Any]:
            self.ledger.charge(self._key(data, index), amount)
            return {}

        async def action(data: BillData) -> Any:
            if placement == BEFORE:
                raise KeyError("customer")
            if placement == REFUSED:
                raise Declined("insufficient funds")
            self.ledger.charge(self._key(data, index), amount)
            if placement == AFTER:
                reply: Any = None
                return {"receipt": reply.id}
            if placement == NOT_A_DICT:
                return 42
            if placement == UNKNOWN_FIELD:
                return {"nope": 1}
            if placement == UNSTORABLE:
                return {"receipt": 10**5000}
            if placement == TOO_DEEP:
                return {"receipt": _nested(5000)}
            return {"receipt": f"r{index}"}

        return sync_action if placement == SYNC else action

    def _refund(self, index: int) -> Any:
        async def refund(data: BillData) -> None:
            self.ledger.refund(self._key(data, index))  # nothing to refund is fine

        return refund


async def _run(repository: Any, placements: tuple[str, ...]) -> None:
    ledger = Ledger()
    if SYNC in placements:
        with pytest.raises(SagaDefinitionError, match="async def"):
            BillSaga(BillData(), ledger, placements)
        assert ledger.charges == {}  # refused before anything ran
        return
    orchestrator = SagaOrchestrator(repository, clock=ManualClock())
    result = await orchestrator.execute(BillSaga(BillData(), ledger, placements))
    first_failure = next((i for i, p in enumerate(placements) if p != NONE), None)
    if first_failure is None:
        assert result.status is SagaStatus.COMPLETED
        assert ledger.balance == sum(
            Decimal(i + 1) * Decimal("10.01") for i in range(len(placements))
        )
        return
    assert result.status is SagaStatus.COMPENSATED, result.error
    assert ledger.balance == 0, (placements, ledger)
    failed = result.steps[first_failure]
    assert failed.effect_possible is (placements[first_failure] != REFUSED)
    stored = await repository.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATED


placements = st.lists(st.sampled_from((*PLACEMENTS, SYNC)), min_size=1, max_size=4).map(tuple)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(placements)
def test_ledger_nets_to_zero_wherever_the_bug_strikes(placements: tuple[str, ...]) -> None:
    """In memory: every compensated saga leaves the ledger at zero; completed ones charge all."""
    anyio.run(_run, InMemorySagaRepository(), placements)


@pytest.mark.slow
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(placements)
def test_ledger_nets_to_zero_on_sqlite(placements: tuple[str, ...]) -> None:
    """The same property with every transition stored in SQLite."""

    async def main() -> None:
        with tempfile.TemporaryDirectory() as folder:
            repository = SQLiteSagaRepository(Path(folder) / "sagas.db")
            try:
                await _run(repository, placements)
            finally:
                await repository.close()

    anyio.run(main)


@pytest.mark.parametrize("placement", PLACEMENTS[1:])
def test_each_placement_alone_on_the_middle_step(placement: str) -> None:
    """Every kind of failure, explicitly, between two steps that succeed."""
    anyio.run(_run, InMemorySagaRepository(), (NONE, placement, NONE))
