"""PostgreSQL: the saga journal (IncrementalSagaRepository).

``sagas.state`` holds a whole document written at ``snapshot_version``; each later transition
appends a row to ``saga_journal`` whose ``patch`` says what changed, and reads apply the
patches after the snapshot in order. Every write is read back here and compared with the
whole context encoded by the JSON encoder, without the engine's shortcuts; another repository
object (another process) resumes a saga with a whole write, then patches; a whole-document
``update`` makes the older patches useless; the journal rows carry the outbox's events.
"""

from __future__ import annotations

import json
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
from saga_orchestrator.adapters.postgres._outbox import EVENTS_PER_ROW
from saga_orchestrator.events import SagaEvent, event_id_for
from saga_orchestrator.protocols import IncrementalSagaRepository
from saga_orchestrator.serialization import StateChanges, encode_context
from saga_orchestrator.serialization._documents import _document_dict
from saga_orchestrator.serialization._patches import PATCH_BUDGET
from saga_orchestrator.serialization._values import _ENCODER
from saga_orchestrator.state import SagaContext
from tests.conftest import PostgresSchema
from tests.sagas import TripData, TripSaga

pytestmark = pytest.mark.anyio

STEPS = 20
ROOT = Path(__file__).resolve().parent.parent
BIG = "x" * 8000  # makes the document big enough for a whole saga's patches (PATCH_BUDGET)
BROKEN: set[str] = set()  # steps whose compensation fails, while listed


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio only."""
    return "asyncio"


@dataclass
class LongData:
    done: list[str] = field(default_factory=list)
    refuse_at: int | None = None  # the step whose action fails (a declared refusal)
    payload: str = ""  # never changes: only the create's document carries it


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


@dataclass(frozen=True)
class Write:
    version: int
    whole: bool
    size: int  # bytes of the document or the patch


class CheckedRepository(PostgresSagaRepository):
    """Reads every write back: the stored saga must be the whole context, encoded afresh by
    the JSON encoder; a whole write must be the row's ``state`` at ``snapshot_version``, a
    patch the journal row of its version, the snapshot left as it was."""

    def __init__(self, schema: PostgresSchema, **options: Any) -> None:
        super().__init__(schema.url, schema=schema.name, **options)
        self.pg = schema
        self.writes: list[Write] = []
        self.epochs: dict[UUID, int] = {}

    async def create(
        self,
        context: SagaContext[Any],
        state: str,
        events: Sequence[SagaEvent] = (),
        *,
        lease: bool = True,
    ) -> None:
        await super().create(context, state, events, lease=lease)
        self.writes.append(Write(context.version, True, len(state)))
        await self._check(context, state, None)

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
        assert (changes.document is None) != (changes.patch is None)
        text = changes.document or changes.patch or ""
        self.writes.append(Write(context.version, changes.document is not None, len(text)))
        await self._check(context, changes.document, changes.patch)

    async def _check(
        self, context: SagaContext[Any], document: str | None, patch: str | None
    ) -> None:
        stored = await self.get(context.saga_id)
        assert stored is not None
        assert encode_context(stored) == _ENCODER.encode(_document_dict(context))
        [(state, snapshot, version, epoch)] = self.pg.query(
            "SELECT state, snapshot_version, version, lease_epoch FROM sagas WHERE saga_id = %s",
            (context.saga_id,),
        )
        assert version == context.version
        # Taken (or created) with this object's first write; its later writes keep the lease.
        assert epoch == self.epochs.setdefault(context.saga_id, epoch)
        if document is not None:
            assert (state, snapshot) == (document, context.version)
        else:
            assert snapshot < context.version
            assert journal(self.pg, context.saga_id)[context.version] == patch

    @property
    def kinds(self) -> list[bool]:
        return [write.whole for write in self.writes]


def journal(schema: PostgresSchema, saga_id: UUID) -> dict[int, str | None]:
    """The saga's journal rows: version to patch."""
    rows = schema.query(
        "SELECT version, patch FROM saga_journal WHERE saga_id = %s ORDER BY version", (saga_id,)
    )
    return dict(rows)


def snapshot(schema: PostgresSchema, saga_id: UUID) -> tuple[str, int, int]:
    [row] = schema.query(
        "SELECT state, snapshot_version, version FROM sagas WHERE saga_id = %s", (saga_id,)
    )
    return row


async def test_a_long_saga_appends_a_patch_per_transition(postgres_schema: PostgresSchema) -> None:
    async with CheckedRepository(postgres_schema) as repo:
        assert isinstance(repo, IncrementalSagaRepository)
        result = await SagaOrchestrator(repo).execute(LongSaga(LongData(payload=BIG)))
        assert result.status is SagaStatus.COMPLETED
        assert result.data.done == [f"s{i:02d}" for i in range(STEPS)]
        stored = await repo.get(result.saga_id)
        listed = await repo.list_sagas()
        by_key = await repo.get_by_correlation_id(stored.correlation_id or "") if stored else None
    assert stored is not None
    assert by_key is not None
    assert encode_context(stored) == encode_context(listed[0]) == encode_context(by_key)
    # The create is whole; every later transition a patch, well within the budget.
    final = repo.writes[-1].version
    assert repo.kinds == [True] + [False] * (final - 1)
    assert sum(w.size for w in repo.writes[1:]) <= PATCH_BUDGET * repo.writes[0].size
    state, snapshot_version, version = snapshot(postgres_schema, result.saga_id)
    assert (snapshot_version, version) == (1, final)
    assert BIG in state  # the create's document, still
    assert '"status":"completed"' not in state
    rows = journal(postgres_schema, result.saga_id)
    assert rows.pop(1) is None  # the create's events only
    assert sorted(rows) == list(range(2, final + 1))
    assert all(patch and BIG not in patch for patch in rows.values())


async def test_patches_past_the_budget_make_the_next_write_whole(
    postgres_schema: PostgresSchema,
) -> None:
    """A small document: its patches reach twice its size within the saga, and the write
    that would pass that is whole; the snapshot moves to it."""
    async with CheckedRepository(postgres_schema) as repo:
        result = await SagaOrchestrator(repo).execute(LongSaga(LongData()))
    assert result.status is SagaStatus.COMPLETED
    wholes = [i for i, write in enumerate(repo.writes) if write.whole]
    assert wholes[0] == 0
    assert len(wholes) >= 2
    largest = 0
    for start, end in zip(wholes, [*wholes[1:], len(repo.writes)], strict=True):
        budget = PATCH_BUDGET * repo.writes[start].size
        spent = sum(w.size for w in repo.writes[start + 1 : end])
        assert spent <= budget
        largest = max([largest, *(w.size for w in repo.writes[start + 1 : end])])
        if end < len(repo.writes):  # whole again only once a patch could no longer fit
            assert budget - spent < largest
    _, snapshot_version, _ = snapshot(postgres_schema, result.saga_id)
    assert snapshot_version == repo.writes[wholes[-1]].version > 1


async def test_a_failed_saga_retried_by_another_object_starts_whole(
    postgres_schema: PostgresSchema,
) -> None:
    """A saga failed in one process (a compensation kept failing) is retried by another
    repository object: its first write is whole, then patches, and the saga ends
    compensated, every write read back whole."""
    BROKEN.add("s05")
    try:
        async with CheckedRepository(postgres_schema) as first:
            failed = await SagaOrchestrator(first).execute(LongSaga(LongData(refuse_at=17)))
        assert failed.status is SagaStatus.FAILED
        assert first.kinds[:2] == [True, False]
    finally:
        BROKEN.discard("s05")
    async with CheckedRepository(postgres_schema) as second:
        orchestrator = SagaOrchestrator(second)
        orchestrator.register("long", LongSaga)
        result = await orchestrator.retry(failed.saga_id)
        assert result.status is SagaStatus.COMPENSATED
    assert second.kinds[0] is True
    assert second.writes[0].version == first.writes[-1].version + 1
    assert second.kinds[1] is False
    async with postgres_schema.repository() as third:
        stored = await third.get(failed.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATED
    assert [s.status.value for s in stored.steps[:6]] == ["compensated"] * 6
    assert stored.version == second.writes[-1].version


async def test_a_short_saga_is_patched_too(postgres_schema: PostgresSchema) -> None:
    async with CheckedRepository(postgres_schema) as repo:
        result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
    assert result.status is SagaStatus.COMPLETED
    final = repo.writes[-1].version
    assert final > 2
    assert repo.kinds == [True] + [False] * (final - 1)
    _, snapshot_version, version = snapshot(postgres_schema, result.saga_id)
    assert (snapshot_version, version) == (1, final)
    rows = journal(postgres_schema, result.saga_id)
    assert {v: p is not None for v, p in rows.items() if v > 1} == dict.fromkeys(
        range(2, final + 1), True
    )


@pytest.mark.parametrize("outbox", [True, False])
async def test_a_whole_update_supersedes_the_patches(
    postgres_schema: PostgresSchema, outbox: bool
) -> None:
    """``update`` (a whole document) after patches: reads return it, the older patches are
    ignored, and those already sent (all of them without an outbox) are deleted with it."""
    async with CheckedRepository(postgres_schema, outbox=outbox) as repo:
        result = await SagaOrchestrator(repo).execute(LongSaga(LongData(payload=BIG)))
        final = repo.writes[-1].version
        sent = postgres_schema.query(
            "SELECT version FROM saga_journal WHERE sent_at IS NOT NULL ORDER BY version"
        )
        assert [v for (v,) in sent] == ([] if outbox else list(range(2, final + 1)))
        stored = await repo.get(result.saga_id)
        assert stored is not None
        stored.error = "set by hand"
        stored.version += 1
        await repo.update(stored, encode_context(stored), expected_version=final)
        again = await repo.get(result.saga_id)
        [listed] = await repo.list_sagas()
    assert again is not None
    assert encode_context(again) == encode_context(listed) == encode_context(stored)
    state, snapshot_version, _ = snapshot(postgres_schema, result.saga_id)
    assert (state, snapshot_version) == (encode_context(stored), final + 1)
    rows = journal(postgres_schema, result.saga_id)
    if outbox:  # unsent events keep their rows, patches and all, but reads skip them
        assert sorted(rows) == list(range(1, final + 1))  # the update had no events
        assert all(rows[v] is not None for v in range(2, final + 1))
    else:
        assert rows == {}


async def test_a_worker_claims_a_patched_saga_whole(postgres_schema: PostgresSchema) -> None:
    """``claim`` (the workers' read) applies the patches, as ``get``."""
    async with CheckedRepository(postgres_schema) as repo:
        result = await SagaOrchestrator(repo).execute(LongSaga(LongData(payload=BIG)))
        written = await repo.get(result.saga_id)
    assert written is not None
    final = repo.writes[-1].version
    assert snapshot(postgres_schema, result.saga_id)[1] == 1
    # Made claimable again by hand: in flight (in the row and its last patch), no lease, due.
    patch = json.loads(journal(postgres_schema, result.saga_id)[final] or "")
    assert patch["head"]["status"] == "completed"
    patch["head"]["status"] = "running"
    postgres_schema.query(
        "UPDATE saga_journal SET patch = %s WHERE saga_id = %s AND version = %s",
        (json.dumps(patch), result.saga_id, final),
    )
    postgres_schema.query(
        "UPDATE sagas SET status = 'running', lease_owner = NULL, lease_expires_at = NULL"
        " WHERE saga_id = %s",
        (result.saga_id,),
    )
    written.status = SagaStatus.RUNNING
    async with postgres_schema.repository() as worker:
        [claimed] = await worker.claim(10)
        stored = await worker.get(result.saga_id)
    assert stored is not None
    assert claimed.saga_id == result.saga_id
    assert encode_context(claimed) == encode_context(stored) == encode_context(written)
    assert [s.status.value for s in claimed.steps] == ["completed"] * STEPS
    assert claimed.data.done == result.data.done


async def test_a_long_saga_killed_mid_step_is_resumed_whole_then_patched(
    postgres_schema: PostgresSchema,
) -> None:
    """A process running a long saga is SIGKILLed in step ``s10``'s action, after ten
    transitions written as patches. Once its 1 s lease has run out, ``recover()`` in a new
    repository object takes the saga over: its first write is whole, then patches, the
    interrupted step runs again (it may have acted), and the saga completes; every write
    reads back as the whole context encoded afresh."""
    async with postgres_schema.repository():  # the schema (migrations) before the child
        pass
    child = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is awaited on it
        [sys.executable, "-m", "tests.journal_child", postgres_schema.url, postgres_schema.name],
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
    assert child.returncode == -signal.SIGKILL
    assert snapshot(postgres_schema, saga_id)[1:] == (1, 11)
    rows = journal(postgres_schema, saga_id)
    assert sorted(rows) == list(range(1, 12))
    assert all(rows[v] for v in range(2, 12))
    with anyio.fail_after(10):
        while not postgres_schema.query(  # noqa: ASYNC110 (the lease's expiry, polled)
            "SELECT 1 FROM sagas WHERE saga_id = %s AND lease_expires_at < now()", (saga_id,)
        ):
            await anyio.sleep(0.05)

    async with CheckedRepository(postgres_schema) as repo:
        orchestrator = SagaOrchestrator(repo)
        orchestrator.register("long", LongSaga)
        report = await orchestrator.recover()
        assert [r.saga_id for r in report] == [saga_id]
        assert report[0].status is SagaStatus.COMPLETED
        assert report[0].data.done == [f"s{i:02d}" for i in range(STEPS)]
    assert repo.writes[0].version == 12
    assert repo.kinds == [True] + [False] * (len(repo.writes) - 1)
    async with postgres_schema.repository() as other:
        stored = await other.get(saga_id)
    assert stored is not None
    assert stored.steps[10].attempts == 2  # the killed attempt counts
    assert all(s.status.value == "completed" for s in stored.steps)
    assert snapshot(postgres_schema, saga_id)[1:] == (12, repo.writes[-1].version)


class Collected:
    """A listener: the events the orchestrator emitted, in order."""

    def __init__(self) -> None:
        self.events: list[SagaEvent] = []

    def on_event(self, event: SagaEvent) -> None:
        self.events.append(event)


async def test_the_outbox_reads_the_journal_rows_events(postgres_schema: PostgresSchema) -> None:
    listener = Collected()
    async with CheckedRepository(postgres_schema) as repo:
        orchestrator = SagaOrchestrator(repo, listeners=[listener])
        result = await orchestrator.execute(LongSaga(LongData(refuse_at=4)))
        assert result.status is SagaStatus.COMPENSATED
        emitted = listener.events
        assert [e.sequence for e in emitted] == list(range(1, len(emitted) + 1))
        assert all(e.event_id == event_id_for(e.saga_id, e.sequence) for e in emitted)
        unsent = await repo.fetch_unsent(1000)
        assert [event for _, event in unsent] == emitted
        assert [e.event_id for _, e in unsent] == [e.event_id for e in emitted]
        ids = [item for item, _ in unsent]
        assert ids == sorted(set(ids))
        # A transition's row with two events: marking only its first marks that event, not
        # the row, whose second event is still returned.
        rows: dict[int, list[int]] = {}
        for item in ids:
            rows.setdefault(item // EVENTS_PER_ROW, []).append(item)
        row, pair = next((row, items) for row, items in rows.items() if len(items) >= 2)
        await repo.mark_sent([pair[0]])
        assert await repo.fetch_unsent(1000) == [item for item in unsent if item[0] != pair[0]]
        assert postgres_schema.query(
            "SELECT sent_at IS NULL, sent_mask FROM saga_journal WHERE id = %s", (row,)
        ) == [(True, 1)]
        await repo.mark_sent(ids)
        assert await repo.fetch_unsent(1000) == []
    [(unsent_rows,)] = postgres_schema.query(
        "SELECT count(*) FROM saga_journal WHERE sent_at IS NULL"
    )
    assert unsent_rows == 0


async def test_step_rows_of_0004_are_folded_back_by_0005(postgres_schema: PostgresSchema) -> None:
    """A schema at migration 0004 holding a long saga whose step records are rows of
    ``saga_steps`` (``steps_in_rows``) and a short one in one document: after 0005 both read
    back whole, the step table and column are gone, and the long saga runs on."""
    import psycopg
    from psycopg import sql

    from saga_orchestrator.adapters._common import migration_files

    long_saga = LongSaga(LongData())
    short = TripSaga(TripData())
    for saga in (long_saga, short):  # stored, not started
        saga.context.version = 1
        saga.context.status = SagaStatus.RUNNING
    whole = encode_context(long_saga.context)
    head = whole[: whole.index('"steps":[') + len('"steps":[')] + "]}"
    records = json.loads(whole)["steps"]
    with psycopg.connect(postgres_schema.url, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(postgres_schema.name)))
        connection.execute(
            sql.SQL("SET search_path TO {}").format(sql.Identifier(postgres_schema.name))
        )
        connection.execute(
            "CREATE TABLE saga_schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for number, name, script in migration_files("postgres"):
            if number > 4:
                break
            connection.execute(script)  # type: ignore[call-overload]
            connection.execute(
                "INSERT INTO saga_schema_migrations (version, name) VALUES (%s, %s)",
                (number, name),
            )
        insert = (
            "INSERT INTO sagas (saga_id, saga_type, correlation_id, status, version, created_at,"
            " updated_at, state, steps_in_rows) VALUES (%s, %s, %s, 'running', 1, now(), now(),"
            " %s, %s)"
        )
        context = long_saga.context
        connection.execute(insert, (context.saga_id, "long", context.correlation_id, head, True))
        for index, record in enumerate(records):
            connection.execute(
                "INSERT INTO saga_steps (saga_id, idx, record) VALUES (%s, %s, %s)",
                (context.saga_id, index, json.dumps(record, separators=(",", ":"))),
            )
        connection.execute(
            insert,
            (
                short.context.saga_id,
                short.saga_type,
                short.context.correlation_id,
                encode_context(short.context),
                False,
            ),
        )
    async with postgres_schema.repository() as repo:
        stored = await repo.get(long_saga.context.saga_id)
        assert stored is not None
        assert encode_context(stored) == whole
        other = await repo.get(short.context.saga_id)
        assert other is not None
        assert encode_context(other) == encode_context(short.context)
        orchestrator = SagaOrchestrator(repo)
        orchestrator.register("long", LongSaga)
        orchestrator.register(short.saga_type, TripSaga)
        report = await orchestrator.recover()
        assert {r.saga_id: r.status for r in report} == {
            long_saga.context.saga_id: SagaStatus.COMPLETED,
            short.context.saga_id: SagaStatus.COMPLETED,
        }
    assert postgres_schema.query(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = %s"
        " AND column_name = 'steps_in_rows'",
        (postgres_schema.name,),
    ) == [(0,)]
    assert postgres_schema.query("SELECT to_regclass('saga_steps') IS NULL") == [(True,)]
