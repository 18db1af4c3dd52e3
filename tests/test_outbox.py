"""The transactional outbox: events stored with their transitions, published by OutboxRelay.

What every repository with an outbox must do is the public kit's ``OutboxContract``
(``saga_orchestrator.testing.contract``), run on SQLite and PostgreSQL by
``tests/test_contract_kit.py``. Here: the relay woken without polling, on the
``outbox_repository`` fixture (SQLite and PostgreSQL), then SQLite's own cases: the
``outbox=False`` flag, rollback of the row when its events cannot be written, the upgrade of
an older file, a SIGKILLed process; and PostgreSQL's relay ordering and exclusivity.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sqlite3
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID, uuid4

import anyio
import anyio.lowlevel
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga_orchestrator import (
    SagaContext,
    SagaEvent,
    SagaEventType,
    SagaOrchestrator,
    SagaStatus,
    SQLiteSagaRepository,
)
from saga_orchestrator.events import _event_dict, decode_event, encode_event
from saga_orchestrator.outbox import OutboxRelay
from saga_orchestrator.protocols import OutboxSource, SagaRepository
from saga_orchestrator.serialization import encode_context
from saga_orchestrator.testing import ManualClock

# The kit's own test doubles: a publisher that records (and can fail) and a spying source.
from saga_orchestrator.testing.contract._outbox import _RecordingPublisher as RecordingPublisher
from saga_orchestrator.testing.contract._outbox import _SpySource as SpySource
from saga_orchestrator.testing.contract._support import _event as make_event
from tests.conftest import PostgresSchema
from tests.sagas import TripData, TripSaga, always, fail_on

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.anyio


class OutboxRepository(SagaRepository, OutboxSource, Protocol):
    """What the contract tests need: a saga repository with an outbox, and its purge."""

    stores_events: bool

    async def purge_sent_before(self, cutoff: datetime) -> int: ...


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """The storage adapters with an outbox (this overrides conftest's, which adds memory)."""
    return str(request.param)


@pytest.fixture
async def outbox_repository(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[OutboxRepository]:
    """A fresh, open repository with its outbox on, of the parametrized kind."""
    if backend == "postgres":
        schema: PostgresSchema = request.getfixturevalue("postgres_schema")
        async with schema.repository() as repository:
            yield repository
        return
    async with SQLiteSagaRepository(tmp_path / "outbox.db", outbox=True) as repository:
        yield repository


# ---------------------------------------------------------------------------- helpers


class EventLog:
    """A listener: the events the orchestrator emitted, each right after it was recorded."""

    def __init__(self) -> None:
        self.events: list[SagaEvent] = []

    def on_event(self, event: SagaEvent) -> None:
        self.events.append(event)


async def run_sagas(repository: SagaRepository, count: int = 6) -> list[SagaEvent]:
    """Run ``count`` trip sagas at once (completing, compensating, retrying a step); return
    the events the orchestrator emitted."""
    log = EventLog()
    orchestrator = SagaOrchestrator(repository, clock=ManualClock(), listeners=[log])
    behaviours: list[dict[str, Any]] = [
        {},
        {"car": always(ValueError("no car"))},  # a business refusal: compensates
        {"hotel": fail_on({1}, ConnectionError("flaky"))},  # retried once
    ]
    async with anyio.create_task_group() as tg:
        for index in range(count):
            saga = TripSaga(TripData(), behaviour=behaviours[index % len(behaviours)])
            tg.start_soon(orchestrator.execute, saga)
    return log.events


def by_saga(events: Sequence[SagaEvent]) -> dict[UUID, list[SagaEvent]]:
    """Each saga's events, in the order given."""
    grouped: dict[UUID, list[SagaEvent]] = defaultdict(list)
    for event in events:
        grouped[event.saga_id].append(event)
    return dict(grouped)


def assert_in_saga_order(events: Sequence[SagaEvent]) -> None:
    """Each saga's events are 1, 2, 3, ... in sequence order, none missing or repeated."""
    for saga_id, own in by_saga(events).items():
        assert [e.sequence for e in own] == list(range(1, len(own) + 1)), saga_id


async def drain(relay: OutboxRelay) -> int:
    """Call ``run_once`` until nothing is left; how many events it published."""
    total = 0
    while count := await relay.run_once():
        assert count <= relay.batch_size
        total += count
    return total


def new_context() -> SagaContext[TripData]:
    """A saga record as the orchestrator would first store it."""
    now = datetime.now(UTC)
    return SagaContext(
        saga_id=uuid4(),
        saga_type="trip",
        data=TripData(),
        steps=[],
        status=SagaStatus.RUNNING,
        created_at=now,
        updated_at=now,
        version=1,
    )


async def unsent(source: OutboxSource) -> list[SagaEvent]:
    return [e for _, e in await source.fetch_unsent(10_000)]


# ---------------------------------------------------------------------------- the contract
# What every repository with an outbox must do is the public kit's `OutboxContract`
# (saga_orchestrator.testing.contract), run on SQLite and PostgreSQL by
# tests/test_contract_kit.py. What follows is the relay's own behaviour over such a store.


async def test_wake_makes_a_waiting_relay_fetch_now(outbox_repository: OutboxRepository) -> None:
    """With an hour's poll interval, wake() alone gets new events published."""
    spy = SpySource(outbox_repository)
    publisher = RecordingPublisher()
    relay = OutboxRelay(spy, publisher, poll_interval_seconds=3600)
    async with anyio.create_task_group() as tg:
        tg.start_soon(relay.run)
        with anyio.fail_after(10):
            await spy.empty.wait()  # nothing to send yet: the relay waits
            emitted = await run_sagas(outbox_repository, count=1)
            assert publisher.calls == []
            relay.wake()
            await publisher.wait_for(len(emitted))
        tg.cancel_scope.cancel()
    assert publisher.accepted == emitted


# ---------------------------------------------------------------------------- SQLite


def _outbox_rows(path: Path) -> int:
    with closing(sqlite3.connect(path)) as db:
        rows: int = db.execute("SELECT count(*) FROM saga_outbox").fetchone()[0]
    return rows


async def test_sqlite_outbox_can_be_turned_off(tmp_path: Path) -> None:
    """outbox=False: that instance does not store events (stores_events is False on it)."""
    path = tmp_path / "off.db"
    async with SQLiteSagaRepository(path, outbox=False) as repo:
        assert repo.stores_events is False
        assert SQLiteSagaRepository.stores_events is False
        assert SQLiteSagaRepository(path, outbox=True).stores_events is True
        assert SQLiteSagaRepository(path).stores_events is False  # off by default
        log = EventLog()  # the orchestrator still builds events, for this listener
        result = await SagaOrchestrator(repo, listeners=[log]).execute(TripSaga(TripData()))
        assert result.status is SagaStatus.COMPLETED
        assert log.events
        assert await repo.fetch_unsent(10) == []
    assert _outbox_rows(path) == 0


async def test_sqlite_saga_row_rolls_back_when_its_events_cannot_be_written(
    tmp_path: Path,
) -> None:
    """Events commit with the row or not at all: when inserting them fails, the update is
    rolled back too."""
    path = tmp_path / "atomic.db"
    async with SQLiteSagaRepository(path, outbox=True) as repo:
        context = new_context()
        await repo.create(context, encode_context(context), [make_event(context, 1)])
        with closing(sqlite3.connect(path)) as db, db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON saga_outbox"
                " BEGIN SELECT RAISE(ABORT, 'outbox refused'); END"
            )
        context.version = 2
        context.status = SagaStatus.COMPLETED
        with pytest.raises(sqlite3.DatabaseError, match="outbox refused"):
            await repo.update(
                context,
                encode_context(context),
                expected_version=1,
                events=[make_event(context, 2)],
            )
        stored = await repo.get(context.saga_id)
        assert stored is not None
        assert (stored.version, stored.status) == (1, SagaStatus.RUNNING)
        assert [e.sequence for e in await unsent(repo)] == [1]


async def test_sqlite_marks_more_ids_than_one_statement_takes(tmp_path: Path) -> None:
    """mark_sent with 1,200 ids (more than SQLite binds in one statement) marks them all."""
    async with SQLiteSagaRepository(tmp_path / "many.db", outbox=True) as repo:
        context = new_context()
        events = [make_event(context, sequence) for sequence in range(1, 1201)]
        await repo.create(context, encode_context(context), events)
        batch = await repo.fetch_unsent(5000)
        assert [e for _, e in batch] == events
        await repo.mark_sent([outbox_id for outbox_id, _ in batch])
        assert await repo.fetch_unsent(5000) == []


async def test_sqlite_purge_needs_an_aware_cutoff(tmp_path: Path) -> None:
    """A naive cutoff is ambiguous: ValueError, nothing deleted."""
    async with SQLiteSagaRepository(tmp_path / "naive.db", outbox=True) as repo:
        with pytest.raises(ValueError, match="timezone-aware"):
            await repo.purge_sent_before(datetime(2026, 1, 1))  # noqa: DTZ001


def _old_database(path: Path) -> None:
    """A file as the versions before the outbox left it: migrations 0001 and 0002 only."""
    folder = resources.files("saga_orchestrator.adapters.migrations") / "sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE saga_schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        for version, name in [(1, "0001_initial.sql"), (2, "0002_failed_index.sql")]:
            db.executescript((folder / name).read_text(encoding="utf-8"))
            db.execute(
                "INSERT INTO saga_schema_migrations VALUES (?, ?, ?)",
                (version, name, "2026-01-01T00:00:00+00:00"),
            )


async def test_sqlite_file_from_before_the_outbox_is_upgraded(tmp_path: Path) -> None:
    """A 0001/0002 file holding a saga in flight gains the outbox on opening; the saga
    recovers, and the events of its transitions from then on are published."""
    old = tmp_path / "old.db"
    _old_database(old)
    # A saga stopped mid-step, its row as an older version would have written it.
    scratch = tmp_path / "scratch.db"
    entered = anyio.Event()

    async def hold(step: str, attempt: int) -> dict[str, Any]:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with SQLiteSagaRepository(scratch, outbox=False) as repo:
        saga = TripSaga(TripData(), behaviour={"hotel": hold})
        async with anyio.create_task_group() as tg:
            tg.start_soon(SagaOrchestrator(repo).execute, saga)
            with anyio.fail_after(10):
                await entered.wait()
            tg.cancel_scope.cancel()
    with closing(sqlite3.connect(old)) as db, db:
        db.execute("ATTACH DATABASE ? AS scratch", (str(scratch),))
        columns = (
            "saga_id, saga_type, correlation_id, status, version, created_at, updated_at, state"
        )
        db.execute(f"INSERT INTO sagas ({columns}) SELECT {columns} FROM scratch.sagas")

    async with SQLiteSagaRepository(old, outbox=True) as repo:
        before = await repo.get(saga.context.saga_id)
        assert before is not None
        assert before.status is SagaStatus.RUNNING
        assert await repo.fetch_unsent(10) == []
        orchestrator = SagaOrchestrator(repo)
        orchestrator.register("trip", lambda data: TripSaga(data))
        [result] = await orchestrator.recover()
        assert result.status is SagaStatus.COMPLETED
        publisher = RecordingPublisher()
        await drain(OutboxRelay(repo, publisher))
        after = await repo.get(saga.context.saga_id)
        assert after is not None
    with closing(sqlite3.connect(old)) as db:
        versions = db.execute("SELECT version, name FROM saga_schema_migrations").fetchall()
    assert versions == [
        (1, "0001_initial.sql"),
        (2, "0002_failed_index.sql"),
        (3, "0003_outbox.sql"),
        (4, "0004_stranded.sql"),
        (5, "0005_waits.sql"),
    ]
    sequences = [e.sequence for e in publisher.accepted]
    assert sequences == list(range(before.event_sequence + 1, after.event_sequence + 1))
    assert publisher.accepted[-1].type is SagaEventType.SAGA_COMPLETED


@dataclass(frozen=True)
class _Killed:
    events: list[SagaEvent]
    """What the child's listener saw before the kill."""
    returncode: int


def _run_and_kill(path: Path, finished: int, held: int) -> _Killed:
    """Run sagas in a child until all are at rest, then SIGKILL it."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.outbox_child", str(path), str(finished), str(held)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stderr is not None
        line = child.stdout.readline()  # printed once every saga is at rest
        if not line:
            child.wait(timeout=10)
            pytest.fail(f"child exited ({child.returncode}) early:\n{child.stderr.read()}")
        child.send_signal(signal.SIGKILL)
        returncode = child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    return _Killed([decode_event(text) for text in json.loads(line)], returncode)


@pytest.mark.slow
@pytest.mark.timeout(60)
@pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")
async def test_sqlite_events_survive_a_killed_process(tmp_path: Path) -> None:
    """Sagas run by a process SIGKILLed before any relay ran: a relay started afterwards
    publishes every event of every recorded transition, finished and held sagas alike."""
    path = tmp_path / "killed.db"
    killed = await anyio.to_thread.run_sync(_run_and_kill, path, 9, 3)
    assert killed.returncode == -signal.SIGKILL

    async with SQLiteSagaRepository(path, outbox=True) as repo:
        publisher = RecordingPublisher()
        assert await drain(OutboxRelay(repo, publisher, batch_size=10)) == len(killed.events)
        sagas = {s.saga_id: s for s in await repo.list_sagas()}
    assert by_saga(publisher.accepted) == by_saga(killed.events)
    assert_in_saga_order(publisher.accepted)
    assert len(sagas) == 12
    assert {saga_id: own[-1].sequence for saga_id, own in by_saga(publisher.accepted).items()} == {
        saga_id: saga.event_sequence for saga_id, saga in sagas.items()
    }
    statuses = Counter(saga.status for saga in sagas.values())
    assert statuses == {
        SagaStatus.COMPLETED: 6,
        SagaStatus.COMPENSATED: 3,
        SagaStatus.RUNNING: 3,
    }


# ---------------------------------------------------------------------------- PostgreSQL


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_postgres_relay_does_not_skip_an_event_committed_out_of_id_order(
    postgres_schema: PostgresSchema, anyio_backend: str
) -> None:
    """A transaction that took a lower outbox id but commits after a higher one: the relay
    publishes the later-committed event too (it reads unsent rows, not past a high-water
    mark)."""
    import psycopg
    from psycopg import sql

    from saga_orchestrator.adapters.postgres._outbox import encode_events

    async with postgres_schema.repository() as repository:
        late = SagaEvent(
            type=SagaEventType.SAGA_STARTED,
            saga_id=uuid4(),
            saga_type="late",
            sequence=1,
            occurred_at=datetime.now(UTC),
        )
        async with await psycopg.AsyncConnection.connect(postgres_schema.url) as slow:
            # Takes a journal id now, commits at the end (with its saga's row).
            await slow.execute(
                sql.SQL(
                    "INSERT INTO {} (saga_id, saga_type, status, version, created_at,"
                    " updated_at, state, snapshot_version) VALUES (%s, 'late', 'running', 1,"
                    " now(), now(), %s, 1)"
                ).format(sql.Identifier(postgres_schema.name, "sagas")),
                (late.saga_id, "{}"),
            )
            await slow.execute(
                sql.SQL(
                    "INSERT INTO {} (saga_id, version, occurred_at, events, event_count)"
                    " VALUES (%s, 1, %s, %s, 1)"
                ).format(sql.Identifier(postgres_schema.name, "saga_journal")),
                (late.saga_id, late.occurred_at, encode_events([late], late.saga_id, "late", None)),
            )
            emitted = await run_sagas(repository, count=3)
            publisher = RecordingPublisher()
            relay = OutboxRelay(repository, publisher)
            assert await drain(relay) == len(emitted)
            await slow.commit()
        assert await drain(relay) == 1
        assert publisher.accepted[-1] == late
        ids = postgres_schema.query("SELECT saga_id FROM saga_journal ORDER BY id")
        assert ids[0][0] == late.saga_id  # the late event's row id is the lowest
        assert postgres_schema.query("SELECT count(*) FROM saga_journal WHERE sent_at IS NULL") == [
            (0,)
        ]


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_postgres_only_one_relay_reads_at_a_time(
    postgres_schema: PostgresSchema, anyio_backend: str
) -> None:
    """Two processes' relays on one database: one holds the outbox lock and publishes, the
    other reads nothing (so each saga's order holds); when the first goes, the second takes
    over."""
    async with postgres_schema.repository() as first:
        emitted = await run_sagas(first, count=2)
        second = postgres_schema.repository()
        try:
            assert len(await first.fetch_unsent(1000)) == len(emitted)
            assert await second.fetch_unsent(1000) == []
            await first.close()  # its connection, and so its lock, goes
            assert len(await second.fetch_unsent(1000)) == len(emitted)
        finally:
            await second.close()


_texts = st.text(max_size=10)  # any code point: quotes, backslashes, lone surrogates, ...


@settings(max_examples=300, deadline=None)
@given(
    st.builds(
        SagaEvent,
        type=st.sampled_from(SagaEventType),
        saga_id=st.uuids(),
        saga_type=_texts,
        sequence=st.integers(1, 2**40),
        occurred_at=st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5))])),
        step=st.none() | _texts,
        attempt=st.none() | st.integers(0, 10**6),
        error=st.none() | _texts,
        will_retry=st.booleans(),
        duration_seconds=st.none() | st.floats(allow_nan=False, allow_infinity=False),
        correlation_id=st.none() | _texts,
        event_id=st.uuids(),
    )
)
def test_an_event_is_written_as_the_json_encoder_would_and_reads_back(event: SagaEvent) -> None:
    """``encode_event`` writes its JSON directly (it is on the outbox's hot path): the same
    text as the JSON encoder makes of the event's fields, and it reads back equal."""
    text = encode_event(event)
    assert text == json.dumps(_event_dict(event), separators=(",", ":"), allow_nan=False)
    assert decode_event(text) == dataclasses.replace(
        event, occurred_at=event.occurred_at.astimezone(UTC)
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(SagaEventType),
                "step": st.none() | _texts,
                "attempt": st.none() | st.integers(0, 10**6),
                "error": st.none() | _texts,
                "will_retry": st.booleans(),
                "duration_seconds": st.none() | st.floats(allow_nan=False, allow_infinity=False),
                "derived": st.booleans(),
                "later": st.booleans(),  # an instant apart from the transition's
            }
        ),
        min_size=1,
        max_size=5,
    ),
    st.uuids(),
    st.none() | _texts,
    st.integers(0, 2**40),
)
def test_a_transitions_events_are_stored_compact_and_read_back_equal(
    items: list[dict[str, Any]], saga_id: UUID, correlation_id: str | None, first: int
) -> None:
    """PostgreSQL's journal keeps a transition's events compact (no saga id, type or
    correlation id, one shared instant, no derived event id, no trailing defaults); they
    read back equal to the events written, with the row's and the saga's fields."""
    from saga_orchestrator.adapters.postgres._outbox import decode_events, encode_events
    from saga_orchestrator.events import event_id_for

    at = datetime(2026, 1, 1, tzinfo=UTC)
    events = []
    for offset, item in enumerate(items):
        sequence = first + offset + 1
        events.append(
            SagaEvent(
                type=item["type"],
                saga_id=saga_id,
                saga_type="order",
                sequence=sequence,
                occurred_at=at + timedelta(seconds=1) if item["later"] else at,
                step=item["step"],
                attempt=item["attempt"],
                error=item["error"],
                will_retry=item["will_retry"],
                duration_seconds=item["duration_seconds"],
                correlation_id=correlation_id,
                event_id=event_id_for(saga_id, sequence) if item["derived"] else uuid4(),
            )
        )
    text = encode_events(events, saga_id, "order", correlation_id)
    row_at = events[0].occurred_at  # the journal row's occurred_at
    if all(event.occurred_at == row_at for event in events):
        assert str(saga_id) not in text
        assert '"occurred_at"' not in text
    assert decode_events(text, saga_id, "order", correlation_id, row_at) == events
    # Events not of the row's saga (another type or correlation id) are written whole.
    other = encode_events(events, saga_id, "other", correlation_id)
    assert decode_events(other, saga_id, "order", correlation_id, row_at) == events


def test_an_event_id_is_derived_from_the_saga_and_the_sequence() -> None:
    saga_id = UUID("00000000-0000-4000-8000-000000000001")
    from saga_orchestrator.events import event_id_for

    assert event_id_for(saga_id, 1) == event_id_for(saga_id, 1)
    assert event_id_for(saga_id, 1).version == 5
    ids = {event_id_for(s, n) for s in (saga_id, uuid4()) for n in range(1, 200)}
    assert len(ids) == 2 * 199


@pytest.mark.parametrize("duration", [math.nan, math.inf, -math.inf])
def test_an_event_with_a_non_finite_duration_is_refused(duration: float) -> None:
    event = SagaEvent(
        type=SagaEventType.STEP_COMPLETED,
        saga_id=uuid4(),
        saga_type="trip",
        sequence=1,
        occurred_at=datetime.now(UTC),
        duration_seconds=duration,
    )
    with pytest.raises(ValueError, match="not JSON compliant"):
        encode_event(event)


def test_every_event_type_has_a_code_in_the_postgresql_journal() -> None:
    """PostgreSQL's compact events name their type by its position in ``TYPE_CODES``, which
    is only appended to: every type has one, and the view ``saga_events`` (as migration 0006
    last defines it) spells the same list."""
    from saga_orchestrator.adapters.migrations import postgres as migrations
    from saga_orchestrator.adapters.postgres._outbox import TYPE_CODES

    assert set(TYPE_CODES) == {kind.value for kind in SagaEventType}
    view = resources.files(migrations).joinpath("0006_inbox.sql").read_text(encoding="utf-8")
    listed = view[view.index("(ARRAY[") : view.index("])")]
    assert [part.strip().strip("'") for part in listed[7:].split(",")] == list(TYPE_CODES)
