"""PostgreSQL: step records kept apart for sagas of many steps (IncrementalSagaRepository).

A saga of ``INCREMENTAL_MIN_STEPS`` steps or more is written through ``update_changes``: the
document's head in the row, and only the step records a transition touched as rows of
``saga_steps``. Every write is read back here and compared with the whole context encoded
by the JSON encoder, without the engine's shortcuts; another repository object (another
process) resumes such a saga from its rows; a whole-document ``update`` takes the row back.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import pytest

from saga_orchestrator import BaseSaga, RetryPolicy, SagaOrchestrator, SagaStatus, SagaStep
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from saga_orchestrator.events import SagaEvent
from saga_orchestrator.protocols import INCREMENTAL_MIN_STEPS, IncrementalSagaRepository
from saga_orchestrator.serialization import StateChanges, encode_context
from saga_orchestrator.serialization._documents import _document_dict
from saga_orchestrator.serialization._values import _ENCODER
from saga_orchestrator.state import SagaContext
from tests.conftest import PostgresSchema
from tests.sagas import TripData, TripSaga

pytestmark = pytest.mark.anyio

STEPS = INCREMENTAL_MIN_STEPS + 4
ROOT = Path(__file__).resolve().parent.parent
BROKEN: set[str] = set()  # steps whose compensation fails, while listed


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio only."""
    return "asyncio"


@dataclass
class LongData:
    done: list[str] = field(default_factory=list)
    refuse_at: int | None = None  # the step whose action fails (a declared refusal)


class NoRoute(Exception):
    refused = True  # a declared refusal: the failed step did not act


class LongSaga(BaseSaga[LongData]):
    """``STEPS`` steps that record their names; one may refuse, compensations may break."""

    saga_type = "long"

    def correlation_id(self, data: LongData) -> str:
        return f"long-{id(data)}"

    def define_steps(self) -> list[SagaStep[LongData]]:
        once = RetryPolicy(max_attempts=1)  # a broken compensation fails the saga at once
        return [
            SagaStep(f"s{i:02d}", self._action(i), self._undo(i), compensation_retry=once)
            for i in range(STEPS)
        ]

    @staticmethod
    def _action(index: int) -> Any:
        async def action(data: LongData) -> dict[str, Any]:
            if data.refuse_at == index:
                raise NoRoute(f"step {index} refused")
            return {"done": [*data.done, f"s{index:02d}"]}

        return action

    @staticmethod
    def _undo(index: int) -> Any:
        async def undo(data: LongData) -> None:
            if f"s{index:02d}" in BROKEN:
                raise RuntimeError(f"compensation of s{index:02d} is broken")

        return undo


class CheckedRepository(PostgresSagaRepository):
    """Reads every incremental write back: the stored document must be the whole context,
    encoded afresh by the JSON encoder. Records whether each such write was complete."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.complete_flags: list[bool] = []
        self.records_sent: list[int] = []

    async def update_changes(
        self,
        context: SagaContext[Any],
        changes: StateChanges,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        await super().update_changes(
            context, changes, expected_version=expected_version, events=events
        )
        self.complete_flags.append(changes.complete)
        self.records_sent.append(len(changes.steps))
        stored = await self.get(context.saga_id)
        assert stored is not None
        assert encode_context(stored) == _ENCODER.encode(_document_dict(context))


def checked(schema: PostgresSchema) -> CheckedRepository:
    return CheckedRepository(schema.url, schema=schema.name)


def row(schema: PostgresSchema, saga_id: Any) -> tuple[str, bool, int, int]:
    """The row's state, steps_in_rows, its step rows, and how many transactions last wrote
    them (distinct xmin)."""
    [(state, apart)] = schema.query(
        "SELECT state, steps_in_rows FROM sagas WHERE saga_id = %s", (saga_id,)
    )
    [(rows, writers)] = schema.query(
        "SELECT count(*), count(DISTINCT xmin::text) FROM saga_steps WHERE saga_id = %s",
        (saga_id,),
    )
    return state, apart, rows, writers


async def test_a_long_saga_writes_only_the_step_records_it_touches(
    postgres_schema: PostgresSchema,
) -> None:
    async with checked(postgres_schema) as repo:
        assert isinstance(repo, IncrementalSagaRepository)
        result = await SagaOrchestrator(repo).execute(LongSaga(LongData()))
        assert result.status is SagaStatus.COMPLETED
        assert result.data.done == [f"s{i:02d}" for i in range(STEPS)]
        # The first write after the one that created it sends every record; then 1 or 2.
        assert repo.complete_flags == [True] + [False] * (STEPS - 1)
        assert repo.records_sent[0] == STEPS
        assert max(repo.records_sent[1:]) <= 2
        stored = await repo.get(result.saga_id)
        listed = await repo.list_sagas()
        by_key = await repo.get_by_correlation_id(stored.correlation_id or "") if stored else None
    assert stored is not None
    assert by_key is not None
    assert encode_context(stored) == encode_context(listed[0]) == encode_context(by_key)
    state, apart, rows, writers = row(postgres_schema, result.saga_id)
    assert apart
    assert state.endswith('"steps":[]}')
    assert rows == STEPS
    # Each record was last written by the transaction that last touched it, not all by the
    # last one: about one transaction per step.
    assert writers >= STEPS // 2


async def test_another_process_resumes_a_long_saga_from_its_rows(
    postgres_schema: PostgresSchema,
) -> None:
    """A saga failed in one process (a compensation kept failing) is retried by another
    repository object: its first write sends every record again, then only the touched ones,
    and the saga ends compensated, every document read back whole."""
    BROKEN.add("s05")
    try:
        async with checked(postgres_schema) as first:
            failed = await SagaOrchestrator(first).execute(LongSaga(LongData(refuse_at=17)))
        assert failed.status is SagaStatus.FAILED
    finally:
        BROKEN.discard("s05")
    async with checked(postgres_schema) as second:
        orchestrator = SagaOrchestrator(second)
        orchestrator.register("long", LongSaga)
        result = await orchestrator.retry(failed.saga_id)
        assert result.status is SagaStatus.COMPENSATED
        assert second.complete_flags[0] is True
        assert not any(second.complete_flags[1:])
    async with postgres_schema.repository() as third:
        stored = await third.get(failed.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATED
    assert [s.status.value for s in stored.steps[:6]] == ["compensated"] * 6
    _, apart, rows, _ = row(postgres_schema, failed.saga_id)
    assert apart
    assert rows == STEPS


async def test_a_whole_document_update_takes_the_row_back(
    postgres_schema: PostgresSchema,
) -> None:
    """``update`` (a whole document) after step rows: the row holds the document again and
    the rows are ignored; the next incremental write sends every record again."""
    async with checked(postgres_schema) as repo:
        result = await SagaOrchestrator(repo).execute(LongSaga(LongData()))
        stored = await repo.get(result.saga_id)
        assert stored is not None
        stored.error = "set by hand"
        stored.version += 1
        await repo.update(stored, encode_context(stored), expected_version=stored.version - 1)
        again = await repo.get(result.saga_id)
    assert again is not None
    assert encode_context(again) == encode_context(stored)
    state, apart, _, _ = row(postgres_schema, result.saga_id)
    assert not apart
    assert state == encode_context(stored)


async def test_a_short_saga_stays_one_document(postgres_schema: PostgresSchema) -> None:
    async with checked(postgres_schema) as repo:
        result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
        assert result.status is SagaStatus.COMPLETED
        assert repo.complete_flags == []
    state, apart, rows, _ = row(postgres_schema, result.saga_id)
    assert not apart
    assert rows == 0
    assert '"steps":[{' in state


async def test_a_worker_claims_a_long_saga_whole(postgres_schema: PostgresSchema) -> None:
    """``claim`` (the workers' read) returns the document put back together, as ``get``."""
    async with checked(postgres_schema) as repo:
        result = await SagaOrchestrator(repo).execute(LongSaga(LongData()))
    # Made claimable again by hand: in flight, no lease, due.
    postgres_schema.query(
        "UPDATE sagas SET status = 'running', lease_owner = NULL, lease_expires_at = NULL,"
        ' state = replace(state, \'"status":"completed"\', \'"status":"running"\')'
        " WHERE saga_id = %s",
        (result.saga_id,),
    )
    async with postgres_schema.repository() as worker:
        [claimed] = await worker.claim(10)
        stored = await worker.get(result.saga_id)
    assert stored is not None
    assert claimed.saga_id == result.saga_id
    assert len(claimed.steps) == STEPS
    assert encode_context(claimed) == encode_context(stored)
    assert [s.status.value for s in claimed.steps] == ["completed"] * STEPS


async def test_a_long_saga_killed_mid_step_is_resumed_from_its_rows(
    postgres_schema: PostgresSchema,
) -> None:
    """A process running a long saga is SIGKILLed in step ``s10``'s action, after ten
    transitions written as step rows. Once its 1 s lease has run out, ``recover()`` in a new
    repository object takes the saga over: its first write sends every record again, the
    interrupted step runs again (it may have acted), and the saga completes; every write
    reads back as the whole context encoded afresh."""
    # Make the schema (migrations) before the child uses it.
    async with postgres_schema.repository():
        pass
    child = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is awaited on it
        [sys.executable, "-m", "tests.step_rows_child", postgres_schema.url, postgres_schema.name],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        saga_id = UUID(child.stdout.readline().strip())
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    _, apart, rows, _ = row(postgres_schema, saga_id)
    assert apart
    assert rows == STEPS
    with anyio.fail_after(10):
        while not postgres_schema.query(  # noqa: ASYNC110 (the lease's expiry, polled)
            "SELECT 1 FROM sagas WHERE saga_id = %s AND lease_expires_at < now()", (saga_id,)
        ):
            await anyio.sleep(0.05)

    async with checked(postgres_schema) as repo:
        orchestrator = SagaOrchestrator(repo)
        orchestrator.register("long", LongSaga)
        report = await orchestrator.recover()
        assert [r.saga_id for r in report] == [saga_id]
        assert report[0].status is SagaStatus.COMPLETED
        assert report[0].data.done == [f"s{i:02d}" for i in range(STEPS)]
        assert repo.complete_flags[0] is True
        assert not any(repo.complete_flags[1:])
    async with postgres_schema.repository() as other:
        stored = await other.get(saga_id)
    assert stored is not None
    assert stored.steps[10].attempts == 2  # the killed attempt counts
    assert all(s.status.value == "completed" for s in stored.steps)
