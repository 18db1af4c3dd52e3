"""The lease is checked again right before each call: a holder that wakes up past its lease
(frozen between two steps) starts no new step, and its tokens are lower than the next holder's.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import pytest

from saga_orchestrator import (
    BaseSaga,
    InMemoryIdempotencyStore,
    SagaLeaseError,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    StepStatus,
    current_step,
)
from tests.conftest import PostgresSchema

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio only."""
    return "asyncio"


@dataclass
class PairData:
    first: str | None = None
    second: str | None = None


class PairSaga(BaseSaga[PairData]):
    """Two steps, recording each call with its fencing token."""

    saga_type = "pair"

    def __init__(self, data: PairData, calls: list[tuple[str, int]]) -> None:
        self.calls = calls
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[PairData]]:
        return [SagaStep("first", self.one, self.undo), SagaStep("second", self.two, self.undo)]

    async def one(self, data: PairData) -> dict[str, Any]:
        self.calls.append(("first", current_step().fencing_token))
        return {"first": "done"}

    async def two(self, data: PairData) -> dict[str, Any]:
        self.calls.append(("second", current_step().fencing_token))
        return {"second": "done"}

    async def undo(self, data: PairData) -> None:
        self.calls.append(("undo", current_step().fencing_token))


async def test_a_holder_past_its_lease_does_not_start_the_next_step(
    postgres_schema: PostgresSchema,
) -> None:
    """A's event loop clock jumps past its lease between steps (as after SIGSTOP): the next
    step is not called, the saga stays for another holder, whose tokens are higher."""
    calls: list[tuple[str, int]] = []
    async with (
        postgres_schema.repository(owner="A", lease_seconds=30) as repo_a,
        postgres_schema.repository(owner="B", lease_seconds=30) as repo_b,
    ):

        class FreezingStore(InMemoryIdempotencyStore):
            """Consulted after the write that starts a step and before its call: the window
            in which a process stopped past its lease finds, when it runs again, its lease's
            local deadline in the past."""

            async def get(self, key: str) -> str | None:
                if key.endswith(":second"):
                    for lease in repo_a._leases.values():
                        lease.deadline = asyncio.get_running_loop().time() - 1
                return await super().get(key)

        saga = PairSaga(PairData(), calls)
        with pytest.raises(SagaLeaseError, match="before the step could start"):
            await SagaOrchestrator(repo_a, idempotency_store=FreezingStore()).execute(saga)
        assert calls == [("first", calls[0][1])]
        assert repo_a.held_leases == {}

        stored = await repo_b.get(saga.context.saga_id)
        assert stored is not None
        assert stored.status is SagaStatus.RUNNING
        assert [s.status for s in stored.steps] == [StepStatus.COMPLETED, StepStatus.RUNNING]

        # B takes it over once the lease is gone (expire it in the database).
        postgres_schema.query(
            "UPDATE sagas SET lease_expires_at = now() - interval '1 second' WHERE saga_id = %s",
            (saga.context.saga_id,),
        )
        orch_b = SagaOrchestrator(repo_b)
        orch_b.register("pair", lambda data: PairSaga(data, calls))
        [claimed] = await repo_b.claim(10)
        result = await orch_b.resume(claimed.saga_id)
        assert result.status is SagaStatus.COMPLETED
    assert [name for name, _ in calls] == ["first", "second"]
    assert calls[1][1] > calls[0][1]  # the new holder's token is higher
