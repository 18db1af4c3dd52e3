"""PostgreSQL specifics: migrations, several processes on one database, group commit,
batches in which one write fails, exact state, malformed rows.

The engine's behaviour on PostgreSQL is covered by the shared suites (the `postgres` value of
the `backend` fixture); these tests are about the dialect. Each gets a schema of its own.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import psycopg
import pytest
from psycopg import sql

from saga_orchestrator import (
    SagaAlreadyExistsError,
    SagaConflictError,
    SagaOrchestrator,
    SagaStatus,
    SerializationError,
)
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from saga_orchestrator.serialization import encode_context
from saga_orchestrator.state import SagaContext
from tests.conftest import PostgresSchema
from tests.sagas import TripData, TripSaga

ROOT = Path(__file__).resolve().parent.parent
MIGRATIONS = sorted(
    p.name for p in (ROOT / "src/saga_orchestrator/adapters/migrations/postgres").glob("*.sql")
)
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio only."""
    return "asyncio"


@dataclass
class ExactData:
    """Data whose JSON jsonb would rewrite: keys out of order, a float in exponent form."""

    zeta: int = 1
    ratio: float = 1e-07
    alpha: str = "a"


def _context(version: int = 1, **data: Any) -> SagaContext[ExactData]:
    now = datetime.now(UTC)
    return SagaContext(
        saga_id=uuid4(),
        saga_type="exact",
        data=ExactData(**data),
        steps=[],
        status=SagaStatus.RUNNING,
        created_at=now,
        updated_at=now,
        version=version,
    )


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_fresh_schema_gets_the_current_schema(postgres_schema: PostgresSchema) -> None:
    """Migrating from empty creates the schema, applies every migration once, records it."""
    async with postgres_schema.repository():
        pass
    async with postgres_schema.repository() as repo:
        assert await repo.migrate() == []  # nothing left to do
    versions = postgres_schema.query("SELECT version, name FROM saga_schema_migrations")
    assert [name for _, name in versions] == MIGRATIONS
    assert [version for version, _ in versions] == list(range(1, len(MIGRATIONS) + 1))
    columns = dict(
        postgres_schema.query(
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = %s AND table_name = 'sagas'",
            (postgres_schema.name,),
        )
    )
    assert columns == {
        "saga_id": "uuid",
        "saga_type": "text",
        "correlation_id": "text",
        "status": "text",
        "version": "bigint",
        "created_at": "timestamp with time zone",
        "updated_at": "timestamp with time zone",
        "state": "text",
        "created_seq": "bigint",
        "lease_owner": "text",
        "lease_expires_at": "timestamp with time zone",
        "lease_epoch": "bigint",
        "run_after": "timestamp with time zone",
        "snapshot_version": "bigint",
        "waiting_for": "text",
    }
    indexes = {
        row[0]
        for row in postgres_schema.query(
            "SELECT indexname FROM pg_indexes WHERE schemaname = %s", (postgres_schema.name,)
        )
    }
    assert {
        "sagas_pkey",
        "sagas_by_created_seq",
        "sagas_by_correlation_id",
        "sagas_active",
        "sagas_failed",
        "sagas_runnable",
        "idempotency_keys_pkey",
        "saga_outbox_pkey",
        "saga_outbox_unsent",
        "saga_journal_pkey",
        "saga_journal_unsent",
        "saga_journal_sent",
        "saga_inbox_pkey",
        "saga_inbox_by_saga",
    } <= indexes


async def test_migrations_can_be_left_to_an_explicit_call(postgres_schema: PostgresSchema) -> None:
    """With apply_migrations=False nothing is created until migrate(), which says what ran."""
    async with postgres_schema.repository(apply_migrations=False) as repo:
        schemas = postgres_schema.query(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (postgres_schema.name,)
        )
        assert schemas == []
        assert await repo.migrate() == MIGRATIONS
        assert await repo.migrate() == []
        result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
        assert result.status is SagaStatus.COMPLETED


@pytest.mark.slow
def test_processes_starting_together_migrate_once(postgres_schema: PostgresSchema) -> None:
    """Six processes opening one new schema at the same instant: no error, each migration once."""
    code = (
        "import asyncio, sys, time\n"
        "from saga_orchestrator.adapters.postgres import PostgresSagaRepository as R\n"
        "async def main():\n"
        "    time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"
        "    async with R(sys.argv[1], schema=sys.argv[2]): pass\n"
        "asyncio.run(main())"
    )
    start = str(time.time() + 2.0)  # after every interpreter has started and imported
    children = [
        _spawn("-c", code, postgres_schema.url, postgres_schema.name, start) for _ in range(6)
    ]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    rows = postgres_schema.query("SELECT name FROM saga_schema_migrations ORDER BY version")
    assert [row[0] for row in rows] == MIGRATIONS  # once each, not once per process


@pytest.mark.slow
def test_several_processes_share_one_database(postgres_schema: PostgresSchema) -> None:
    """Three processes running sagas concurrently on one schema: all complete, none errors."""
    args = ("-m", "tests.saga_worker", "postgres", postgres_schema.url, postgres_schema.name)
    children = [_spawn(*args, "40", "16") for _ in range(3)]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["errors"] for r in reports] == [[], [], []]
    assert sum(r["completed"] for r in reports) == 120
    statuses = postgres_schema.query("SELECT status, count(*) FROM sagas GROUP BY status")
    assert statuses == [("completed", 120)]


async def test_concurrent_sagas_share_transactions(postgres_schema: PostgresSchema) -> None:
    """Group commit: 64 sagas in flight need far fewer transactions than writes."""
    async with postgres_schema.repository() as repo:
        orchestrator = SagaOrchestrator(repo)
        async with asyncio.TaskGroup() as tg:
            for _ in range(64):
                tg.create_task(orchestrator.execute(TripSaga(TripData())))
        writes = 64 * 4  # start + one per step boundary
        assert repo.transactions < writes / 2
        done = await repo.list_sagas(statuses=[SagaStatus.COMPLETED], limit=100)
        assert len(done) == 64


async def test_a_stale_version_fails_alone_in_its_batch(postgres_schema: PostgresSchema) -> None:
    """One CAS miss among concurrent updates: it raises, writes nothing; the rest commit."""
    async with postgres_schema.repository() as repo:
        contexts = [_context() for _ in range(5)]
        for context in contexts:
            await repo.create(context, encode_context(context))
        before = repo.transactions
        for context in contexts:
            context.version = 2
            context.status = SagaStatus.COMPLETED
        expected = [1, 1, 7, 1, 1]  # the third was "advanced elsewhere"
        results = await asyncio.gather(
            *(
                repo.update(c, encode_context(c), expected_version=v)
                for c, v in zip(contexts, expected, strict=True)
            ),
            return_exceptions=True,
        )
        assert [type(r).__name__ for r in results] == [
            "NoneType",
            "NoneType",
            "SagaConflictError",
            "NoneType",
            "NoneType",
        ]
        assert repo.transactions == before + 1  # one shared transaction
        stored = [await repo.get(c.saga_id) for c in contexts]
        assert [s.version if s else None for s in stored] == [2, 2, 1, 2, 2]


async def test_racing_batches_conflict_instead_of_deadlocking(
    postgres_schema: PostgresSchema,
) -> None:
    """Two processes' batches updating the same sagas in opposite orders: rows are locked in
    key order, so for each saga one update wins and the other gets SagaConflictError (a
    version mismatch, or SagaLeaseError: the winner's write took the lease)."""
    async with postgres_schema.repository() as first, postgres_schema.repository() as second:
        contexts = [_context() for _ in range(20)]
        for context in contexts:
            await first.create(context, encode_context(context), lease=False)
        for context in contexts:
            context.version = 2

        def updates(repo: PostgresSagaRepository, order: list[SagaContext[ExactData]]) -> list[Any]:
            return [repo.update(c, encode_context(c), expected_version=1) for c in order]

        results = await asyncio.gather(
            *updates(first, contexts), *updates(second, contexts[::-1]), return_exceptions=True
        )
        mine, theirs = results[:20], results[20:][::-1]
        for a, b in zip(mine, theirs, strict=True):
            assert (a is None) != (b is None)
            assert isinstance(a if b is None else b, SagaConflictError)


async def test_a_write_cancelled_before_its_batch_is_not_written(
    postgres_schema: PostgresSchema,
) -> None:
    """Cancelled while queued: nothing written; cancelled while committing: written whole."""
    async with postgres_schema.repository() as repo:
        queued, committing = _context(), _context()
        # asyncio runs ready tasks in order: one step queues the write and schedules the
        # writer task; the next step is the writer taking the batch and starting it.
        first = asyncio.create_task(repo.create(queued, encode_context(queued)))
        await asyncio.sleep(0)  # queued; its batch has not started
        first.cancel()
        second = asyncio.create_task(repo.create(committing, encode_context(committing)))
        await asyncio.sleep(0)  # queued
        await asyncio.sleep(0)  # taken into a batch, on its way to the database
        second.cancel()
        for task in (first, second):
            with pytest.raises(asyncio.CancelledError):
                await task
        await repo.close()  # waits for the batch in flight
        assert await repo.list_saga_ids() == [committing.saga_id]


async def test_a_batch_waiting_on_the_database_does_not_hold_up_the_next(
    postgres_schema: PostgresSchema,
) -> None:
    """Group commit keeps two transactions in flight: while one batch waits (here on a row
    lock held by another session), the writes queued meanwhile commit in a second one."""
    async with postgres_schema.repository() as repo:
        blocked, free = _context(), _context()
        for context in (blocked, free):
            await repo.create(context, encode_context(context))
        async with await psycopg.AsyncConnection.connect(postgres_schema.url) as other:
            await other.execute(
                sql.SQL("SELECT 1 FROM {} WHERE saga_id = %s FOR UPDATE").format(
                    sql.Identifier(postgres_schema.name, "sagas")
                ),
                (blocked.saga_id,),
            )  # a transaction holds the row's lock
            for context in (blocked, free):
                context.version = 2
            waiting = asyncio.create_task(
                repo.update(blocked, encode_context(blocked), expected_version=1)
            )
            with anyio.fail_after(10):
                while not postgres_schema.query(  # noqa: ASYNC110 (the server state, polled)
                    "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE %s",
                    (f"%{postgres_schema.name}%",),
                ):
                    await asyncio.sleep(0.01)  # polled: until its batch waits on the lock
            with anyio.fail_after(10):
                await repo.update(free, encode_context(free), expected_version=1)
            assert not waiting.done()
            await other.rollback()  # the lock goes: the first batch commits too
        with anyio.fail_after(10):
            await waiting
    stored = postgres_schema.query("SELECT version FROM sagas ORDER BY version")
    assert stored == [(2,), (2,)]


async def test_a_write_the_database_rejects_fails_alone(postgres_schema: PostgresSchema) -> None:
    """A statement error aborts PostgreSQL's transaction: that write alone fails; the others
    (a duplicate id raising SagaAlreadyExistsError among them) are committed together."""
    async with postgres_schema.repository() as repo:
        taken = _context()
        await repo.create(taken, encode_context(taken))
        before = repo.transactions
        duplicate = _context()
        duplicate.saga_id = taken.saga_id
        contexts = [_context(), duplicate, _context(version=2**63), _context()]
        results = await asyncio.gather(
            *(repo.create(c, encode_context(c)) for c in contexts), return_exceptions=True
        )
        assert results[0] is None
        assert results[3] is None
        assert isinstance(results[1], SagaAlreadyExistsError)
        assert isinstance(results[2], psycopg.errors.NumericValueOutOfRange)
        assert repo.transactions == before + 1
        ids = await repo.list_saga_ids()
        assert ids[0] == taken.saga_id
        assert set(ids[1:]) == {contexts[0].saga_id, contexts[3].saga_id}  # concurrent: any order


async def test_state_is_stored_exactly_as_given(postgres_schema: PostgresSchema) -> None:
    """The state string comes back byte for byte (jsonb would reorder and reformat it)."""
    async with postgres_schema.repository() as repo:
        context = _context()
        state = encode_context(context)
        await repo.create(context, state)
    [(raw, as_jsonb)] = postgres_schema.query("SELECT state, state::jsonb::text FROM sagas")
    assert raw == state
    assert as_jsonb != state  # why the column is text
    async with postgres_schema.repository() as reopened:
        stored = await reopened.get(context.saga_id)
    assert stored is not None
    assert stored.data == context.data
    assert encode_context(stored) == state


async def test_state_survives_reopening(postgres_schema: PostgresSchema) -> None:
    """What one repository object wrote, a new one (a new process) reads back exactly."""
    async with postgres_schema.repository() as repo:
        result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
    async with postgres_schema.repository() as reopened:
        stored = await reopened.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED
    assert stored.data == result.data
    assert [s.status for s in stored.steps] == [s.status for s in result.steps]


async def test_malformed_stored_row_is_a_clear_error(postgres_schema: PostgresSchema) -> None:
    """A row that cannot be decoded raises SerializationError, not a KeyError."""
    async with postgres_schema.repository() as repo:
        result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
        postgres_schema.query("""UPDATE sagas SET state = '{"format": 1}'""")
        with pytest.raises(SerializationError, match="malformed"):
            await repo.get(result.saga_id)
        postgres_schema.query("UPDATE sagas SET state = 'not json'")
        with pytest.raises(SerializationError, match="malformed"):
            await repo.get(result.saga_id)


async def test_recover_goes_on_past_an_unreadable_row(postgres_schema: PostgresSchema) -> None:
    """A saga whose stored data no longer decodes is logged and left; the others resume."""
    gate = asyncio.Event()

    async def blocked(step: str, attempt: int) -> dict[str, object]:
        await gate.wait()
        return {}

    async with postgres_schema.repository() as repo:
        sagas = [TripSaga(TripData(), behaviour={"car": blocked}) for _ in range(2)]
        for saga in sagas:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await SagaOrchestrator(repo).execute(saga)
    broken = sagas[0].context.saga_id
    postgres_schema.query(
        "UPDATE sagas SET state = replace(state, 'tests.sagas:TripData', 'tests.sagas:Renamed')"
        " WHERE saga_id = %s",
        (broken,),
    )
    async with postgres_schema.repository() as repo:
        orchestrator = SagaOrchestrator(repo)
        orchestrator.register("trip", lambda data: TripSaga(data))
        results = await orchestrator.recover()
        assert [r.saga_id for r in results] == [sagas[1].context.saga_id]
        assert [r.status for r in results] == [SagaStatus.COMPLETED]


async def test_schemas_keep_applications_apart(postgres_url: str) -> None:
    """Two schemas on one database: each repository sees its own sagas only."""
    names = [f"saga_test_{uuid4().hex}" for _ in range(2)]
    try:
        async with (
            PostgresSagaRepository(postgres_url, schema=names[0]) as first,
            PostgresSagaRepository(postgres_url, schema=names[1]) as second,
        ):
            result = await SagaOrchestrator(first).execute(TripSaga(TripData()))
            assert await second.get(result.saga_id) is None
            assert await second.list_saga_ids() == []
            assert await first.list_saga_ids() == [result.saga_id]
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            for name in names:
                connection.execute(
                    psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        psycopg.sql.Identifier(name)
                    )
                )


async def test_idempotency_keys_race_to_one_value(postgres_schema: PostgresSchema) -> None:
    """Two processes' stores putting one key at once both get the value that was stored."""
    async with (
        postgres_schema.idempotency_store() as first,
        postgres_schema.idempotency_store() as second,
    ):
        results = await asyncio.gather(
            *(
                store.put_if_absent(f"k{i}", f"{name}-{i}")
                for i in range(20)
                for name, store in (("first", first), ("second", second))
            )
        )
        for i in range(20):
            assert results[2 * i] == results[2 * i + 1] == await first.get(f"k{i}")
        assert await second.get("absent") is None


async def test_active_sagas_are_counted_from_the_partial_index(
    postgres_schema: PostgresSchema,
) -> None:
    """Statuses go into the SQL as literals, so the planner can use the partial indexes."""
    async with postgres_schema.repository():
        pass
    with psycopg.connect(postgres_schema.url, autocommit=True) as connection:
        connection.execute("SET enable_seqscan = off")  # an empty table is cheapest to scan
        plan = connection.execute(
            psycopg.sql.SQL(
                "EXPLAIN SELECT saga_type, status, count(*) FROM {}"
                " WHERE status IN ('compensating', 'pending', 'running')"
                " GROUP BY saga_type, status"
            ).format(psycopg.sql.Identifier(postgres_schema.name, "sagas"))
        ).fetchall()
    text = "\n".join(row[0] for row in plan)
    # Either partial index over the sagas in flight (both have the same predicate).
    assert "sagas_active" in text or "sagas_runnable" in text, text


async def test_a_cancelled_execute_hands_its_lease_back_at_once(
    postgres_schema: PostgresSchema,
) -> None:
    """A caller that gives up on execute() (a request timeout) cancels the step; the lease
    is released at once, so a worker resumes the saga without waiting for it to expire."""
    entered = asyncio.Event()

    async def hang(step: str, attempt: int) -> dict[str, Any] | None:
        entered.set()
        await asyncio.Event().wait()
        return None

    async with postgres_schema.repository(lease_seconds=300) as repo:
        saga = TripSaga(TripData(), behaviour={"hotel": hang})
        task = asyncio.ensure_future(SagaOrchestrator(repo).execute(saga))
        await entered.wait()
        assert repo.held_leases == {saga.context.saga_id: 1}
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert repo.held_leases == {}
        assert postgres_schema.query(
            "SELECT lease_owner, status FROM sagas WHERE saga_id = %s", (saga.context.saga_id,)
        ) == [(None, "running")]
        async with postgres_schema.repository() as other:
            claimed = await other.claim(10)
            assert [c.saga_id for c in claimed] == [saga.context.saga_id]
            await other.release(saga.context.saga_id)


async def test_a_pool_of_dropped_connections_recovers_at_once(
    postgres_schema: PostgresSchema,
) -> None:
    """Every pooled connection dropped by the server (a restart, pg_terminate_backend): the
    next read discards them and answers on a new one at once. (With the pool's own check,
    which backs off 1, 2, 4, 8... s per dead connection, six of them took over 30 s.)"""
    name = f"saga-test-dropped-{uuid4().hex[:12]}"
    url = psycopg.conninfo.make_conninfo(postgres_schema.url, application_name=name)
    async with PostgresSagaRepository(
        url, schema=postgres_schema.name, min_size=6, max_size=6
    ) as repo:
        killed = postgres_schema.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        assert len(killed) == 6
        started = time.monotonic()
        assert await repo.get(uuid4()) is None
        assert time.monotonic() - started < 5.0
