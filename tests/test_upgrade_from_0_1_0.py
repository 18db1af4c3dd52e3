"""Sagas stored by the released 0.1.0 load and finish after an upgrade to the current code.

``tests/data/v0.1.0/`` was written once by the 0.1.0 code (``tests/upgrade/make_fixtures.py``;
the sagas are ``tests/upgrade/sagas.py``, the user's code at 0.1.0, and ``tests/upgrade/plan.py``
says what each saga went through): a SQLite file and a PostgreSQL dump holding a saga in every
situation 0.1.0 can leave one in, terminal (completed, compensated, failed, failed then
retried) or in flight after a SIGKILL (an action running, a retry backoff under way, a
compensation running, an express saga past its deadline; on PostgreSQL also a submitted saga
no worker ran, and leases of the killed process), with their idempotency keys and outbox rows.

Each test opens a copy with the current adapters, which migrate it, and checks that:

- every saga reads back exactly as 0.1.0 read it (``stored.json``: statuses, attempts, errors,
  times, versions, error history) and its data is exact (Decimal exponents, UUIDs, aware
  datetimes, an enum, nested dataclasses);
- ``recover()`` (or a ``SagaWorker``, on PostgreSQL) brings every unfinished saga to the end its
  record calls for, skipping none; ``retry()`` compensates the failed one;
- the calls made after the upgrade are exactly the owed ones: the interrupted attempts again
  (they count, as possibly done), nothing that had completed, no compensation that had run;
- the terminal sagas are left untouched, the idempotency keys and outbox rows are still
  readable, and the migrations applied are 0.1.0's (kept as they were) plus every new one.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio
import pytest

from saga_orchestrator import (
    InMemoryEventPublisher,
    OutboxRelay,
    SagaContext,
    SagaEventType,
    SagaOrchestrator,
    SagaStatus,
    SagaWorker,
    SQLiteIdempotencyStore,
    SQLiteSagaRepository,
)
from saga_orchestrator.serialization import loads
from tests.conftest import PostgresSchema
from tests.upgrade import sagas
from tests.upgrade.plan import (
    BY_ID,
    BY_KEY,
    RELEASED_MIGRATIONS,
    SQLITE_FIXTURE,
    SQLITE_OUTBOX_SENT,
    STORED_FIXTURE,
    Planned,
    load_postgres_fixture,
    plans,
    snapshot,
)

pytestmark = pytest.mark.timeout(60)

ALL = sagas.STEP_NAMES
RESERVED = ("reserve_stock",)
CHARGED = ("reserve_stock", "charge_payment")

# key: saga status, step statuses, attempts, compensation attempts, steps whose result is in
# the data (and in the idempotency store).
StateRow = tuple[str, tuple[str, ...], tuple[int, ...], tuple[int, ...], tuple[str, ...]]

DONE: StateRow = ("completed", ("completed",) * 4, (1, 1, 1, 1), (0, 0, 0, 0), ALL)
REFUSED_SHIPMENT_COMPENSATED = ("compensated", "compensated", "failed", "pending")

STORED: dict[str, StateRow] = {
    "completed": DONE,
    "compensated": (
        "compensated",
        ("compensated", "failed", "pending", "pending"),
        (1, 1, 0, 0),
        (1, 0, 0, 0),
        RESERVED,
    ),
    "failed": (
        "failed",
        ("completed", "compensation_failed", "failed", "pending"),
        (1, 1, 1, 0),
        (0, 2, 0, 0),
        CHARGED,
    ),
    "retried": ("compensated", REFUSED_SHIPMENT_COMPENSATED, (2, 1, 1, 0), (1, 1, 0, 0), CHARGED),
    "express_completed": DONE,
    "outbox_completed": DONE,
    "submitted": ("running", ("pending",) * 4, (0, 0, 0, 0), (0, 0, 0, 0), ()),
    "interrupted": (
        "running",
        ("completed", "running", "pending", "pending"),
        (1, 1, 0, 0),
        (0, 0, 0, 0),
        RESERVED,
    ),
    "backoff": (
        "running",
        ("completed", "pending", "pending", "pending"),
        (1, 1, 0, 0),
        (0, 0, 0, 0),
        RESERVED,
    ),
    "compensating": (
        "compensating",
        ("completed", "compensating", "failed", "pending"),
        (1, 1, 1, 0),
        (0, 1, 0, 0),
        CHARGED,
    ),
    "deadline": (
        "running",
        ("completed", "completed", "running", "pending"),
        (1, 1, 1, 0),
        (0, 0, 0, 0),
        CHARGED,
    ),
}
"""Each fixture saga as stored by 0.1.0."""

FINISHED: dict[str, StateRow] = {
    **STORED,
    # retry(): the refund is attempted afresh (attempts start again from 1), then the release.
    "failed": ("compensated", REFUSED_SHIPMENT_COMPENSATED, (1, 1, 1, 0), (1, 1, 0, 0), CHARGED),
    "submitted": DONE,
    # The interrupted charge is attempted again (attempt 2), then the saga goes on.
    "interrupted": ("completed", ("completed",) * 4, (1, 2, 1, 1), (0, 0, 0, 0), ALL),
    # The backoff is over: attempt 2 at once.
    "backoff": ("completed", ("completed",) * 4, (1, 2, 1, 1), (0, 0, 0, 0), ALL),
    # The interrupted refund counts: this is its second (and last allowed) attempt.
    "compensating": (
        "compensated",
        REFUSED_SHIPMENT_COMPENSATED,
        (1, 1, 1, 0),
        (1, 2, 0, 0),
        CHARGED,
    ),
    # Past its deadline: the interrupted shipment may have acted, so it is undone too.
    "deadline": (
        "compensated",
        ("compensated", "compensated", "compensated", "pending"),
        (1, 1, 1, 0),
        (1, 1, 1, 0),
        CHARGED,
    ),
}
"""Each fixture saga once recovered (and the failed one retried)."""

CALLS_AFTER_UPGRADE: dict[str, list[tuple[str, str, int]]] = {
    "failed": [("charge_payment", "compensation", 1), ("reserve_stock", "compensation", 1)],
    "submitted": [(step, "action", 1) for step in ALL],
    "interrupted": [
        ("charge_payment", "action", 2),
        ("create_shipment", "action", 1),
        ("send_confirmation", "action", 1),
    ],
    "backoff": [
        ("charge_payment", "action", 2),
        ("create_shipment", "action", 1),
        ("send_confirmation", "action", 1),
    ],
    "compensating": [("charge_payment", "compensation", 2), ("reserve_stock", "compensation", 1)],
    "deadline": [
        ("create_shipment", "compensation", 1),
        ("charge_payment", "compensation", 1),
        ("reserve_stock", "compensation", 1),
    ],
}
"""``(step, phase, attempt)`` of every call after the upgrade, per saga (none for the others)."""

ERROR_KINDS = {
    "compensated": ["compensating"],
    "failed": ["compensating", "compensation_failed"],
    "retried": ["compensating", "compensation_failed", "retried"],
    "compensating": ["compensating"],
}
"""The error history 0.1.0 stored (empty for the others)."""


@pytest.fixture(autouse=True)
def _fresh_services() -> Iterator[None]:
    """No faults: every call succeeds; the call log starts empty."""
    sagas.FAULTS.clear()
    sagas.CALLS.clear()
    yield
    sagas.FAULTS.clear()
    sagas.CALLS.clear()


def _stored_states(backend: str) -> dict[str, Any]:
    document = json.loads(STORED_FIXTURE.read_text(encoding="utf-8"))
    assert document["made_with"] == "saga-orchestrator v0.1.0"
    states: dict[str, Any] = document[backend]
    assert set(states) == {plan.key for plan in plans(backend)}
    return states


def _in_flight(backend: str) -> set[UUID]:
    unfinished = {"running", "compensating"}
    return {plan.saga_id for plan in plans(backend) if STORED[plan.key][0] in unfinished}


def _expected_data(plan: Planned, done: tuple[str, ...]) -> sagas.OrderData:
    data = plan.order()
    for step in done:
        data = replace(data, **sagas.RESULTS[step](data))
    return data


def _check_state(context: SagaContext[Any] | None, plan: Planned, row: StateRow) -> None:
    assert context is not None, plan.key
    status, step_statuses, attempts, compensations, done = row
    assert (context.saga_id, context.saga_type) == (plan.saga_id, plan.saga_type)
    assert context.status.value == status, (plan.key, context.error)
    assert tuple(s.status.value for s in context.steps) == step_statuses, plan.key
    assert tuple(s.attempts for s in context.steps) == attempts, plan.key
    assert tuple(s.compensation_attempts for s in context.steps) == compensations, plan.key
    expected = _expected_data(plan, done)
    # repr too: == alone would take Decimal("39.90") for Decimal("39.9").
    assert context.data == expected, plan.key
    assert repr(context.data) == repr(expected), plan.key
    assert isinstance(context.data.ship_to, sagas.Address)
    assert context.data.tier is plan.order().tier


async def _check_stored(repository: Any, store: Any, backend: str) -> dict[str, Any]:
    """Every saga and idempotency key as 0.1.0 left them; returns the stored snapshots."""
    states = _stored_states(backend)
    for plan in plans(backend):
        context = await repository.get(plan.saga_id)
        _check_state(context, plan, STORED[plan.key])
        assert context is not None
        assert snapshot(context) == states[plan.key], plan.key
        assert [r.kind.value for r in context.error_history] == ERROR_KINDS.get(plan.key, [])
        assert all(
            r.at is not None and r.at.utcoffset() == timedelta(0) for r in context.error_history
        )
        for step in sagas.STEP_NAMES:
            value = await store.get(context.idempotency_key(step))
            if step in STORED[plan.key][4]:
                assert value is not None, (plan.key, step)
                result = loads(value)
                assert result == sagas.RESULTS[step](plan.order()), (plan.key, step)
                assert repr(result) == repr(sagas.RESULTS[step](plan.order()))
            else:
                assert value is None, (plan.key, step)
    deadline = BY_KEY["deadline"]
    stored = await repository.get(deadline.saga_id)
    assert stored is not None
    assert stored.deadline is not None
    assert stored.created_at is not None
    assert stored.deadline - stored.created_at == timedelta(minutes=1)  # timeout_minutes
    assert stored.deadline < datetime.now(UTC), "the fixture is younger than its deadline"
    active = await repository.list_sagas(
        statuses={SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING}
    )
    assert {c.saga_id for c in active} == _in_flight(backend)
    failed = await repository.list_sagas(statuses={SagaStatus.FAILED})
    assert [c.saga_id for c in failed] == [BY_KEY["failed"].saga_id]
    return states


def _orchestrator(repository: Any, store: Any) -> SagaOrchestrator:
    orchestrator = SagaOrchestrator(repository, idempotency_store=store)
    sagas.register(orchestrator)  # the user's app, as at 0.1.0
    return orchestrator


async def _recover(orchestrator: SagaOrchestrator, backend: str) -> None:
    report = await orchestrator.recover()
    assert report.skipped == []
    assert {result.saga_id for result in report} == _in_flight(backend)
    for result in report:
        assert result.status.value == FINISHED[BY_ID[result.saga_id].key][0], result.error
    deadline = await orchestrator.get(BY_KEY["deadline"].saga_id)
    assert deadline is not None
    assert deadline.deadline is not None
    assert deadline.error is not None
    assert f"saga deadline {deadline.deadline.isoformat()} exceeded" in deadline.error
    again = await orchestrator.recover()
    assert list(again) == []
    assert again.skipped == []


async def _retry_failed(orchestrator: SagaOrchestrator) -> None:
    result = await orchestrator.retry(BY_KEY["failed"].saga_id)
    assert result.status is SagaStatus.COMPENSATED, result.error
    assert [r.kind.value for r in result.error_history] == [
        "compensating",
        "compensation_failed",
        "retried",
    ]


async def _check_finished(repository: Any, backend: str, states: dict[str, Any]) -> None:
    """Every saga at its end; the calls made were exactly the owed ones."""
    calls: dict[UUID, list[tuple[str, str, int]]] = {}
    for call in sagas.CALLS:
        calls.setdefault(call.saga_id, []).append((call.step, call.phase, call.attempt))
    assert set(calls) <= {plan.saga_id for plan in plans(backend)}
    for plan in plans(backend):
        context = await repository.get(plan.saga_id)
        _check_state(context, plan, FINISHED[plan.key])
        assert context is not None
        assert calls.get(plan.saga_id, []) == CALLS_AFTER_UPGRADE.get(plan.key, []), plan.key
        if plan.key not in CALLS_AFTER_UPGRADE:  # finished at 0.1.0: untouched
            assert snapshot(context) == states[plan.key], plan.key
        else:
            assert context.version > states[plan.key]["version"], plan.key
            assert context.updated_at is not None
            assert context.updated_at.tzinfo is not None
    active = await repository.list_sagas(
        statuses={SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING}
    )
    assert active == []


def _check_migrations(before: dict[int, Any], after: dict[int, Any], backend: str) -> None:
    """0.1.0's migrations kept as they were, and every migration of this code applied."""
    folder = resources.files("saga_orchestrator.adapters.migrations") / backend
    shipped = {int(f.name.split("_", 1)[0]) for f in folder.iterdir() if f.name.endswith(".sql")}
    assert set(before) == RELEASED_MIGRATIONS[backend]
    assert set(after) == shipped | RELEASED_MIGRATIONS[backend]
    assert {version: after[version] for version in before} == before


def _event_types(events: list[Any]) -> list[SagaEventType]:
    return [event.type for _, event in events]


# ---------------------------------------------------------------------- SQLite


def _sqlite_rows(path: Path, query: str) -> list[Any]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(query).fetchall()
    finally:
        connection.close()


def _sqlite_migrations(path: Path) -> dict[int, Any]:
    rows = _sqlite_rows(path, "SELECT version, name, applied_at FROM saga_schema_migrations")
    return {row[0]: (row[1], row[2]) for row in rows}


@pytest.mark.anyio
async def test_sqlite_file_of_0_1_0_loads_and_every_saga_finishes(tmp_path: Path) -> None:
    """The SQLite file 0.1.0 wrote, opened by the current adapters (default options)."""
    path = tmp_path / "sagas.sqlite"
    shutil.copyfile(SQLITE_FIXTURE, path)
    before = _sqlite_migrations(path)
    states = _stored_states("sqlite")
    rows = _sqlite_rows(path, "SELECT saga_id, status, version FROM sagas")
    assert {UUID(r[0]): (r[1], r[2]) for r in rows} == {
        p.saga_id: (states[p.key]["status"], states[p.key]["version"]) for p in plans("sqlite")
    }

    async with (
        SQLiteSagaRepository(path) as repository,
        SQLiteIdempotencyStore(path) as store,
        SQLiteSagaRepository(path, outbox=True) as outbox,
    ):
        await repository.open()  # migrates
        _check_migrations(before, _sqlite_migrations(path), "sqlite")
        stored = await _check_stored(repository, store, "sqlite")

        # The saga written with the outbox on (off by default in 0.1.0): the events a relay
        # had not sent yet are still there, the sent ones are not handed out again.
        unsent = await outbox.fetch_unsent(1000)
        saga = BY_KEY["outbox_completed"]
        assert {event.saga_id for _, event in unsent} == {saga.saga_id}
        count = stored[saga.key]["event_sequence"]
        assert [e.sequence for _, e in unsent] == list(range(SQLITE_OUTBOX_SENT + 1, count + 1))
        assert _event_types(unsent)[-2:] == [
            SagaEventType.STEP_COMPLETED,
            SagaEventType.SAGA_COMPLETED,
        ]

        orchestrator = _orchestrator(repository, store)
        await _recover(orchestrator, "sqlite")
        await _retry_failed(orchestrator)
        await _check_finished(repository, "sqlite", stored)
        assert [e.sequence for _, e in await outbox.fetch_unsent(1000)] == [
            e.sequence for _, e in unsent
        ]


# ---------------------------------------------------------------------- PostgreSQL


def _load(postgres_schema: PostgresSchema) -> dict[int, Any]:
    """The dump loaded into the test's schema; 0.1.0's migrations, before any upgrade."""
    load_postgres_fixture(postgres_schema.url, postgres_schema.name)
    rows = postgres_schema.query("SELECT version, name, applied_at FROM saga_schema_migrations")
    # The process 0.1.0 was killed in still holds leases on the sagas it was running (long
    # expired), and nobody holds the others: the submitted one waits for a worker.
    leases = postgres_schema.query(
        "SELECT saga_id, lease_owner IS NOT NULL, lease_expires_at < now() FROM sagas"
    )
    killed = {plan.saga_id for plan in plans("postgres") if plan.killed}
    assert {row[0]: row[1:] for row in leases} == {
        plan.saga_id: (True, True) if plan.saga_id in killed else (False, None)
        for plan in plans("postgres")
    }
    return {row[0]: (row[1], row[2]) for row in rows}


def _postgres_migrations(postgres_schema: PostgresSchema) -> dict[int, Any]:
    rows = postgres_schema.query("SELECT version, name, applied_at FROM saga_schema_migrations")
    return {row[0]: (row[1], row[2]) for row in rows}


async def _check_postgres_outbox(repository: Any, stored: dict[str, Any]) -> None:
    """A relay had sent the completed saga's events; every other saga's are all unsent, in
    order (0.1.0's PostgreSQL outbox is on by default)."""
    unsent = await repository.fetch_unsent(1000)
    by_saga: dict[UUID, list[int]] = {}
    for _, event in unsent:
        by_saga.setdefault(event.saga_id, []).append(event.sequence)
    expected = {
        plan.saga_id: list(range(1, stored[plan.key]["event_sequence"] + 1))
        for plan in plans("postgres")
        if plan.key != "completed"
    }
    assert by_saga == expected


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_postgres_schema_of_0_1_0_recovers(
    postgres_schema: PostgresSchema, anyio_backend: str
) -> None:
    """The PostgreSQL schema 0.1.0 wrote, migrated by the current adapters; ``recover()``
    finishes every saga, the submitted one and the dead process's leased ones included."""
    before = _load(postgres_schema)
    async with (
        postgres_schema.repository() as repository,
        postgres_schema.idempotency_store() as store,
    ):
        _check_migrations(before, _postgres_migrations(postgres_schema), "postgres")
        stored = await _check_stored(repository, store, "postgres")
        await _check_postgres_outbox(repository, stored)
        # The view of every stored event shows those 0.1.0 wrote to saga_outbox.
        legacy = postgres_schema.query(
            "SELECT saga_id, sequence, event::jsonb->>'type', sent_at IS NOT NULL"
            " FROM saga_outbox ORDER BY saga_id, sequence"
        )
        assert len(legacy) > 10
        assert (
            postgres_schema.query(
                "SELECT saga_id, sequence, type, sent_at IS NOT NULL FROM saga_events"
                " ORDER BY saga_id, sequence"
            )
            == legacy
        )
        orchestrator = _orchestrator(repository, store)
        await _recover(orchestrator, "postgres")
        await _retry_failed(orchestrator)
        await _check_finished(repository, "postgres", stored)
        await _relay_everything(repository)
    assert postgres_schema.query(
        "SELECT count(*) FROM sagas WHERE lease_owner IS NOT NULL"
        " AND status IN ('pending', 'running', 'compensating')"
    ) == [(0,)]


async def _relay_everything(repository: Any) -> None:
    """A relay publishes the events 0.1.0 had stored (``saga_outbox``) first, then those of
    the journal: each unfinished saga's whole sequence, in order, once; nothing is left."""
    publisher = InMemoryEventPublisher()
    relay = OutboxRelay(repository, publisher, batch_size=7)
    while await relay.run_once():
        pass
    assert await repository.fetch_unsent(1000) == []
    for plan in plans("postgres"):
        if plan.key == "completed":  # sent before the upgrade
            assert publisher.for_saga(plan.saga_id) == []
            continue
        final = await repository.get(plan.saga_id)
        assert final is not None
        sequences = [event.sequence for event in publisher.for_saga(plan.saga_id)]
        assert sequences == list(range(1, final.event_sequence + 1)), plan.key


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_postgres_schema_of_0_1_0_is_finished_by_a_worker(
    postgres_schema: PostgresSchema, anyio_backend: str
) -> None:
    """As 0.1.0 users deploy it: a ``SagaWorker`` claims the submitted saga and those whose
    lease expired with the killed process, and finishes them."""
    _load(postgres_schema)
    async with (
        postgres_schema.repository() as repository,
        postgres_schema.idempotency_store() as store,
    ):
        stored = await _check_stored(repository, store, "postgres")
        orchestrator = _orchestrator(repository, store)
        worker = SagaWorker(orchestrator, poll_interval_seconds=0.1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run)
            await worker.started()
            for saga_id in _in_flight("postgres"):
                result = await orchestrator.wait(saga_id, timeout_seconds=30, poll_seconds=0.1)
                assert result.status.value == FINISHED[BY_ID[saga_id].key][0], result.error
            worker.stop()
        assert worker.claimed == len(_in_flight("postgres"))
        assert worker.finished == worker.claimed
        await _retry_failed(orchestrator)
        await _check_finished(repository, "postgres", stored)
