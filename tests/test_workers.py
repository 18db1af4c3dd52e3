"""Workers, leases, durable timers, shutdown and lost connections, on the real PostgreSQL.

Workers run in child processes (``tests/worker_child.py``) wherever a process must die or
several must compete; in the test's own process where the test must reach inside (a stalled
heartbeat, a connection cut during COMMIT). Nothing waits by sleeping: the tests wait for
conditions, with deadlines: rows in the database (polled), a byte on a pipe from a child, an
exit status. Every action and compensation call is recorded (``step_runs`` for child
processes, with database-clock times; a list in process), and the records are checked
against the stored sagas and the leases.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID, uuid4

import anyio
import psycopg
import pytest
from psycopg import pq, sql

from saga_orchestrator import (
    InMemorySagaRepository,
    SagaConflictError,
    SagaLeaseError,
    SagaOrchestrator,
    SagaStatus,
    SagaWorker,
    SQLiteSagaRepository,
    StepStatus,
)
from saga_orchestrator.adapters._common import ACTIVE_STATUS_FILTER as ACTIVE
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from saga_orchestrator.serialization import encode_context
from saga_orchestrator.state import SagaContext
from tests.conftest import PostgresSchema
from tests.worker_child import (
    STEP_RUNS_DDL,
    DeadlineJobSaga,
    JobData,
    JobSaga,
    MemoryRecorder,
    PivotDeadlineJobSaga,
    PostgresRecorder,
    register_all,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.slow,
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals and pass_fds"),
]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    """psycopg's async connections run on asyncio only."""
    return "asyncio"


# ---------------------------------------------------------------------------- waiting


async def until(check: Callable[[], Any], what: str, within: float = 10.0) -> Any:
    """Poll ``check`` (a function, or a coroutine function) until it returns something
    truthy, and return that; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for {what}")
        await anyio.sleep(0.02)


# ---------------------------------------------------------------------------- database


class StepCall(NamedTuple):
    """One row of ``step_runs``."""

    saga_id: UUID
    step: str
    phase: str
    attempt: int
    owner: str
    started_at: datetime
    ended_at: datetime | None
    outcome: str | None


class Lease(NamedTuple):
    status: str
    owner: str | None
    expires_at: datetime | None
    epoch: int
    run_after: datetime | None


@dataclass
class Db:
    """The test's own connection to its schema, outside the adapters."""

    connection: psycopg.AsyncConnection[Any]
    schema: PostgresSchema

    async def rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = await self.connection.execute(query, params)
        return await cursor.fetchall() if cursor.description else []

    async def now(self) -> datetime:
        [(now,)] = await self.rows("SELECT clock_timestamp()")
        return now  # type: ignore[no-any-return]

    async def calls(self, phase: str | None = None) -> list[StepCall]:
        rows = await self.rows(
            "SELECT saga_id, step, phase, attempt, owner, started_at, ended_at, outcome"
            " FROM step_runs ORDER BY id"
        )
        calls = [StepCall(*row) for row in rows]
        return [call for call in calls if phase is None or call.phase == phase]

    async def lease(self, saga_id: UUID) -> Lease:
        [row] = await self.rows(
            "SELECT status, lease_owner, lease_expires_at, lease_epoch, run_after FROM sagas"
            " WHERE saga_id = %s",
            (saga_id,),
        )
        return Lease(*row)

    async def statuses(self) -> Counter[str]:
        return Counter(row[0] for row in await self.rows("SELECT status FROM sagas"))

    async def leased(self) -> list[tuple[UUID, str]]:
        return [
            (row[0], row[1])
            for row in await self.rows(
                "SELECT saga_id, lease_owner FROM sagas WHERE lease_owner IS NOT NULL"
                f" AND {ACTIVE}"  # a finished saga's lease columns mean nothing
            )
        ]

    async def events(self, saga_id: UUID) -> list[tuple[int, str, str | None]]:
        """The saga's outbox events: (sequence, type, step), in order."""
        rows = await self.rows(
            "SELECT sequence, type, step FROM saga_events WHERE saga_id = %s ORDER BY sequence",
            (saga_id,),
        )
        return [(row[0], row[1], row[2]) for row in rows]


@pytest.fixture
async def db(postgres_schema: PostgresSchema) -> AsyncIterator[Db]:
    """The schema, migrated, with the ``step_runs`` table the workers record calls in."""
    async with postgres_schema.repository():
        pass  # applies the migrations
    connection = await psycopg.AsyncConnection.connect(postgres_schema.url, autocommit=True)
    try:
        await connection.execute(
            sql.SQL("SET search_path TO {}").format(sql.Identifier(postgres_schema.name))
        )
        await connection.execute(STEP_RUNS_DDL)
        yield Db(connection, postgres_schema)
    finally:
        await connection.close()


async def stored(repository: PostgresSagaRepository, saga_id: UUID) -> SagaContext[Any]:
    context = await repository.get(saga_id)
    assert context is not None
    return context


def step(context: SagaContext[Any], name: str) -> Any:
    return next(state for state in context.steps if state.name == name)


# ---------------------------------------------------------------------------- processes


@dataclass
class Child:
    """A worker process (``tests.worker_child``)."""

    owner: str
    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_status(self, within: float = 15.0) -> int:
        try:
            return await anyio.to_thread.run_sync(lambda: self.process.wait(within))
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {self.owner} did not exit within {within}s:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def summary(self) -> dict[str, int]:
        lines = self.out.read_text().strip().splitlines()
        assert lines, f"worker {self.owner} printed no summary:\n{self.stderr()}"
        summary: dict[str, int] = json.loads(lines[-1])
        return summary


class Workers:
    """Starts worker processes on the test's schema; kills the ones left at the end."""

    def __init__(self, schema: PostgresSchema, workdir: Path) -> None:
        self.schema = schema
        self.workdir = workdir
        self.children: list[Child] = []

    def spawn(self, owner: str, *, ready: bool = True, **options: float) -> tuple[Child, int]:
        """Start a worker; the read end of its ready pipe (-1 without one)."""
        command = [
            sys.executable,
            "-m",
            "tests.worker_child",
            *("--conninfo", self.schema.url, "--schema", self.schema.name, "--owner", owner),
        ]
        for name, value in options.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        read_fd = write_fd = -1
        if ready:
            read_fd, write_fd = os.pipe()
            command += ["--ready-fd", str(write_fd)]
        paths = [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
        out, err = self.workdir / f"{owner}.out", self.workdir / f"{owner}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(paths)},
                pass_fds=(write_fd,) if ready else (),
                stdout=stdout,
                stderr=stderr,
            )
        if ready:
            os.close(write_fd)  # the child holds the only write end: its death means EOF
        child = Child(owner, process, out, err)
        self.children.append(child)
        return child, read_fd

    async def ready(self, child: Child, read_fd: int, within: float = 30.0) -> None:
        """Wait until the child is idle and listening (its ready byte)."""

        def wait() -> bytes:
            readable, _, _ = select.select([read_fd], [], [], within)
            return os.read(read_fd, 1) if readable else b""

        try:
            byte = await anyio.to_thread.run_sync(wait)
        finally:
            os.close(read_fd)
        if byte != b"R":
            child.process.kill()
            child.process.wait()
            pytest.fail(f"worker {child.owner} did not get ready:\n{child.stderr()}")

    async def start(self, *owners: str, **options: float) -> list[Child]:
        """Start workers together and wait until every one is idle and listening."""
        spawned = [self.spawn(owner, ready=True, **options) for owner in owners]
        for child, read_fd in spawned:
            await self.ready(child, read_fd)
        return [child for child, _ in spawned]

    def cleanup(self) -> None:
        for child in self.children:
            if child.process.poll() is None:
                child.process.kill()
                child.process.wait()


@pytest.fixture
def workers(postgres_schema: PostgresSchema, tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(postgres_schema, tmp_path)
    yield pool
    pool.cleanup()


async def stop(child: Child, within: float = 15.0) -> dict[str, int]:
    """SIGTERM a worker; check it exits 0; its summary."""
    child.signal(signal.SIGTERM)
    status = await child.exit_status(within)
    assert status == 0, child.stderr()
    return child.summary()


# ---------------------------------------------------------------------------- in process


@asynccontextmanager
async def running(worker: SagaWorker) -> AsyncIterator[SagaWorker]:
    """Run ``worker`` in the background; stop it and wait for it on the way out."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(worker.run)
        await worker.started()
        try:
            yield worker
        finally:
            worker.stop()


@asynccontextmanager
async def takeover_worker(
    schema: PostgresSchema, owner: str, *, lease_seconds: float
) -> AsyncIterator[SagaWorker]:
    """Another worker, in this process (no process start to wait for), recording its calls
    in ``step_runs`` like the worker processes."""
    recorder = PostgresRecorder(schema.url, schema.name, owner)
    await recorder.open()
    try:
        async with schema.repository(owner=owner, lease_seconds=lease_seconds) as repository:
            orch = SagaOrchestrator(repository)
            register_all(orch, recorder)
            async with running(SagaWorker(orch, poll_interval_seconds=0.1)) as worker:
                yield worker
            assert repository.held_leases == {}
    finally:
        await recorder.close()


def orchestrator(repository: PostgresSagaRepository, recorder: MemoryRecorder) -> SagaOrchestrator:
    orch = SagaOrchestrator(repository)
    register_all(orch, recorder)
    return orch


# ============================================================================ 1. submit


async def test_a_worker_process_runs_submitted_sagas_promptly(
    postgres_schema: PostgresSchema, db: Db, workers: Workers
) -> None:
    """submit + wait, and execute(on_workers=True), run by a worker in another process.

    The worker polls only every 30 s and is idle and listening before anything is submitted,
    so starting the sagas within seconds can only come from LISTEN/NOTIFY.
    """
    [child] = await workers.start("w1", poll=30.0)
    local = MemoryRecorder("test")
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        await repository.wait_for_work(5.0)  # our LISTEN is up: wait() is woken, not polling

        submitted = time.monotonic()
        saga_id = await orch.submit(JobSaga(JobData(), local))
        result = await orch.wait(saga_id, timeout_seconds=10)
        waited = time.monotonic() - submitted
        assert result.status is SagaStatus.COMPLETED
        first = await stored(repository, saga_id)
        assert first.updated_at is not None
        assert first.created_at is not None
        latency = (first.updated_at - first.created_at).total_seconds()

        saga = JobSaga(JobData(label="execute"), local)
        with anyio.fail_after(10):
            executed = await orch.execute(saga, on_workers=True)
        assert executed.status is SagaStatus.COMPLETED
        assert executed.saga_id == saga.context.saga_id
        assert saga.context.status is SagaStatus.COMPLETED  # the stored final state
        assert saga.context.version == (await stored(repository, saga.context.saga_id)).version
        assert [s.status for s in saga.context.steps] == [StepStatus.COMPLETED] * 3

    print(
        f"\nsubmit -> completed by a worker process (stored times): {latency * 1000:.0f} ms;"
        f" wait() returned after {waited * 1000:.0f} ms (worker poll interval 30 s)"
    )
    assert latency < 5.0
    assert local.runs == []  # this process only submitted and waited
    calls = await db.calls()
    assert sorted((c.saga_id, c.step) for c in calls) == sorted(
        (sid, name) for sid in (saga_id, saga.context.saga_id) for name in ("a", "b", "c")
    )
    assert {(c.owner, c.attempt, c.outcome) for c in calls} == {("w1", 1, "done")}
    assert await db.leased() == []
    summary = await stop(child)
    assert summary["claimed"] == summary["finished"] == 2
    assert summary["held_leases"] == 0


# ============================================================================ 2. fencing


async def test_a_lapsing_lease_stops_the_step_before_another_worker_can_take_over(
    postgres_schema: PostgresSchema, db: Db
) -> None:
    """A's heartbeats stop: its step is cancelled while A's lease is still valid, B can claim
    only after the lease expired, A can no longer write, B finishes the saga once.

    A stalled heartbeat is simulated by cancelling A's heartbeat task (``_heartbeat``): A's
    event loop keeps running, as in a process whose renewals no longer get through (the
    database unreachable from it alone, or the renewal task starved). That is the case
    ``lease_guard`` exists for. A process that cannot run at all (SIGSTOP, a step blocking
    the event loop) is in the tests below.
    """
    lease = 2.0
    rec_a, rec_b = MemoryRecorder("A"), MemoryRecorder("B")
    async with (
        postgres_schema.repository(owner="A", lease_seconds=lease) as repo_a,
        postgres_schema.repository(owner="B", lease_seconds=lease) as repo_b,
    ):
        orch_a, orch_b = orchestrator(repo_a, rec_a), orchestrator(repo_b, rec_b)
        saga_id = await orch_a.submit(JobSaga(JobData(plan="block"), rec_a))
        worker_a = SagaWorker(orch_a, poll_interval_seconds=0.05, park_after_seconds=5.0)
        async with running(worker_a):
            run_a = await until(
                lambda: next((r for r in rec_a.runs if r.step == "b"), None), "A running step b"
            )
            assert repo_a._heartbeat is not None
            repo_a._heartbeat.cancel()
            await until(lambda: run_a.ended_at is not None, "A's step cancelled", lease + 2)
            assert run_a.outcome == "cancelled"
            row = await db.lease(saga_id)
            assert row.owner == "A"
            assert row.expires_at is not None
            assert run_a.ended_at is not None
            margin = (row.expires_at - run_a.ended_at).total_seconds()
            assert margin > 0, "the step outlived the lease"
            assert await repo_b.claim(10) == []  # A's lease is still valid
            assert await db.now() < row.expires_at  # (and that claim came before expiry)
        assert worker_a.lost == 1
        assert worker_a.finished == 0
        assert repo_a.held_leases == {}
        assert repo_a.leases_lost == 1

        probes = 0

        async def claim_b() -> list[SagaContext[Any]]:
            nonlocal probes
            probes += 1
            return await repo_b.claim(10)

        [context] = await until(claim_b, "B's claim after the expiry", lease + 3)
        taken = await db.lease(saga_id)
        assert taken.owner == "B"
        assert taken.epoch == row.epoch + 1
        assert taken.expires_at is not None
        assert taken.expires_at - timedelta(seconds=lease) >= row.expires_at  # claimed after

        stale = await stored(repo_a, saga_id)
        expected = stale.version
        stale.version += 1
        with pytest.raises(SagaLeaseError):
            await repo_a.update(stale, encode_context(stale), expected_version=expected)
        assert await db.lease(saga_id) == taken  # A's write changed nothing

        assert await repo_b.release(context.saga_id)
        worker_b = SagaWorker(orch_b, poll_interval_seconds=0.05)
        async with running(worker_b):
            await until(lambda: worker_b.finished == 1, "B finishing the saga")
        final = await stored(repo_b, saga_id)

    print(
        f"\nA's step cancelled {margin:.2f} s before its lease expired in the database;"
        f" B's claim returned nothing {probes - 1} more times until the expiry"
    )
    assert final.status is SagaStatus.COMPLETED
    assert step(final, "b").attempts == 2  # the interrupted attempt counts
    calls = sorted(rec_a.runs + rec_b.runs, key=lambda r: r.started_at)
    assert [(r.step, r.attempt, r.owner, r.outcome) for r in calls] == [
        ("a", 1, "A", "done"),
        ("b", 1, "A", "cancelled"),
        ("b", 2, "B", "done"),
        ("c", 1, "B", "done"),
    ]
    for earlier, later in itertools.pairwise(calls):
        assert earlier.ended_at is not None
        assert earlier.ended_at <= later.started_at
    events = await db.events(saga_id)
    assert [t for _, t, _ in events].count("saga.completed") == 1
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert await db.leased() == []


async def test_a_zombie_lease_holder_cannot_write_after_a_takeover(
    postgres_schema: PostgresSchema, db: Db, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A lease holder whose lease ran out while its step went on (the guard cancels a step
    only at an await) is taken over; when its step finishes, its write names a stale
    epoch (same version: only the epoch tells) and changes nothing.

    Simulated in process to reach exactly that write: A's heartbeat task is cancelled and its
    lease expired in the database; the lease is long, so A's own guard does not stop the step
    meanwhile. The two attempts overlap by construction (at least once); fencing keeps the
    record to one. The real thing, a step blocking its process, is the next test.
    """
    gate = tmp_path / "gate"
    rec_a, rec_b = MemoryRecorder("A"), MemoryRecorder("B")
    async with (
        postgres_schema.repository(owner="A", lease_seconds=30) as repo_a,
        postgres_schema.repository(owner="B", lease_seconds=30) as repo_b,
    ):
        orch_a, orch_b = orchestrator(repo_a, rec_a), orchestrator(repo_b, rec_b)
        saga_id = await orch_a.submit(JobSaga(JobData(plan="gate", gate=str(gate)), rec_a))
        # A polls rarely: its own claim loop must not take the expired saga back before B.
        worker_a = SagaWorker(orch_a, poll_interval_seconds=30)
        async with running(worker_a):
            await until(lambda: any(r.step == "b" for r in rec_a.runs), "A running step b")
            assert repo_a._heartbeat is not None
            repo_a._heartbeat.cancel()
            # A renewal already sent must land before the lease is expired, not after it.
            with contextlib.suppress(asyncio.CancelledError):
                await repo_a._heartbeat
            before = await db.lease(saga_id)
            await db.rows(
                "UPDATE sagas SET lease_expires_at = now() - interval '1 second'"
                " WHERE saga_id = %s",
                (saga_id,),
            )
            [context] = await repo_b.claim(10)
            assert (await db.lease(saga_id)).epoch == before.epoch + 1
            version = (await stored(repo_b, saga_id)).version
            gate.touch()  # A's step finishes; its write must be refused
            await until(lambda: worker_a.lost == 1, "A's write refused")
            assert repo_a.leases_lost == 1
            refusals = [r.getMessage() for r in caplog.records if "worker.lost" in r.getMessage()]
            assert len(refusals) == 1
            assert f"the lease of A (epoch {before.epoch}) was taken over by B" in refusals[0]
            after = await db.lease(saga_id)
            assert (after.owner, after.epoch) == ("B", before.epoch + 1)
            assert (await stored(repo_b, saga_id)).version == version  # nothing written
        assert await repo_b.release(context.saga_id)
        worker_b = SagaWorker(orch_b, poll_interval_seconds=0.05)
        async with running(worker_b):
            await until(lambda: worker_b.finished == 1, "B finishing the saga")
        final = await stored(repo_b, saga_id)

    assert final.status is SagaStatus.COMPLETED
    assert step(final, "b").attempts == 2
    assert [(r.step, r.attempt, r.owner, r.outcome) for r in rec_a.runs] == [
        ("a", 1, "A", "done"),
        ("b", 1, "A", "done"),  # it did act, but its result was never recorded
    ]
    assert [(r.step, r.attempt) for r in rec_b.runs] == [("b", 2), ("c", 1)]
    events = await db.events(saga_id)
    assert [(t, s) for _, t, s in events].count(("step.completed", "b")) == 1
    assert [t for _, t, _ in events].count("saga.completed") == 1
    assert await db.leased() == []


# ============================================================================ 3. SIGKILL


async def test_a_killed_workers_sagas_are_taken_over_after_its_leases_expire(
    postgres_schema: PostgresSchema, db: Db, workers: Workers
) -> None:
    """SIGKILL a worker process mid-step: another takes its sagas over once the leases
    expire; the interrupted attempt counts and may have acted."""
    local = MemoryRecorder("test")
    [w1] = await workers.start("w1", lease_seconds=1.5, poll=0.1)
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        completes = await orch.submit(JobSaga(JobData(plan="block"), local))
        refuses = await orch.submit(JobSaga(JobData(plan="block_refuse"), local))
        await until(lambda: _started(db, "b", {completes, refuses}), "w1 running both steps b", 15)
        w1.signal(signal.SIGKILL)
        assert await w1.exit_status() == -signal.SIGKILL
        killed_at = await db.now()
        leases = {saga_id: await db.lease(saga_id) for saga_id in (completes, refuses)}
        assert {row.owner for row in leases.values()} == {"w1"}

        async with takeover_worker(postgres_schema, "w2", lease_seconds=1.5) as w2:
            await until(
                lambda: _terminal(db, {completes, refuses}), "the sagas taken over and finished", 15
            )
        done, compensated = await stored(repository, completes), await stored(repository, refuses)

    assert done.status is SagaStatus.COMPLETED
    assert step(done, "b").attempts == 2
    assert compensated.status is SagaStatus.COMPENSATED
    b = step(compensated, "b")
    assert (b.attempts, b.effect_possible, b.status) == (2, True, StepStatus.COMPENSATED)
    calls = await db.calls()
    for saga_id in (completes, refuses):
        mine = [c for c in calls if c.saga_id == saga_id]
        assert [(c.step, c.attempt, c.owner) for c in mine if c.phase == "action"][:3] == [
            ("a", 1, "w1"),
            ("b", 1, "w1"),
            ("b", 2, "w2"),
        ]
        assert mine[1].ended_at is None  # killed mid-call
        expiry = leases[saga_id].expires_at
        assert expiry is not None
        assert mine[2].started_at >= expiry
    undo = [(c.step, c.owner) for c in calls if c.saga_id == refuses and c.phase == "undo"]
    assert undo == [("b", "w2"), ("a", "w2")]  # b may have acted: undone, then a
    assert [c.step for c in calls if c.saga_id == completes and c.phase == "action"] == [
        "a",
        "b",
        "b",
        "c",
    ]
    takeover = min(c.started_at for c in calls if c.owner == "w2") - killed_at
    print(
        f"\ntakeover: w2 resumed the killed worker's sagas {takeover.total_seconds():.2f} s"
        " after the kill (lease 1.5 s)"
    )
    assert w2.claimed == 2
    assert w2.finished == 2
    assert await db.leased() == []


async def test_a_step_blocking_its_process_past_the_lease_is_taken_over_and_fenced(
    postgres_schema: PostgresSchema, db: Db, workers: Workers
) -> None:
    """A step blocks its worker's whole event loop (a blocking call) for 4x the
    lease: the heartbeats stop, another worker takes the saga over and finishes it; when the
    blocked worker comes back, its step has finished, and its write is refused."""
    local = MemoryRecorder("test")
    w1, w2 = await workers.start("w1", "w2", lease_seconds=1.5, poll=0.1)
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        saga_id = await orch.submit(JobSaga(JobData(plan="stall", stall_seconds=6.0), local))
        await until(lambda: _terminal(db, {saga_id}), "the other worker finishing it", 15)
        done = await stored(repository, saga_id)
        events = await db.events(saga_id)
        [stalled] = await until(
            lambda: _calls_of(db, saga_id, "b", ended=True, attempt=1), "the stall ending", 15
        )
        blocked = w1 if stalled.owner == "w1" else w2
        other = w2 if blocked is w1 else w1
        blocked_summary = await stop(blocked)
        other_summary = await stop(other)
        after = await stored(repository, saga_id)
    calls = [c for c in await db.calls("action") if c.saga_id == saga_id]
    assert [(c.step, c.attempt, c.owner) for c in calls] == [
        ("a", 1, blocked.owner),
        ("b", 1, blocked.owner),
        ("b", 2, other.owner),
        ("c", 1, other.owner),
    ]
    finished_by_other = calls[3].ended_at
    assert finished_by_other is not None
    assert stalled.ended_at is not None
    assert finished_by_other < stalled.ended_at  # taken over while the step was stuck
    assert done.status is SagaStatus.COMPLETED
    assert after.version == done.version  # the late result was not recorded
    assert await db.events(saga_id) == events
    assert blocked_summary["lost"] == 1
    assert blocked_summary["finished"] == 0
    assert other_summary["finished"] == 1
    assert await db.leased() == []
    print(
        f"\nstep stalled 6 s (lease 1.5 s): taken over and finished"
        f" {(stalled.ended_at - finished_by_other).total_seconds():.2f} s before it came back;"
        f" its result ({stalled.outcome}) was refused"
    )


async def test_a_worker_frozen_past_its_lease_is_taken_over_and_writes_nothing_when_it_wakes(
    postgres_schema: PostgresSchema, db: Db, workers: Workers
) -> None:
    """SIGSTOP a worker mid-step for longer than its lease: another worker takes the saga
    over and finishes it; on SIGCONT the frozen worker's step is cancelled (its lease is
    gone) and it records nothing: the finished saga is left exactly as it was."""
    local = MemoryRecorder("test")
    w1, w2 = await workers.start("w1", "w2", lease_seconds=1.5, poll=0.1)
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        saga_id = await orch.submit(JobSaga(JobData(plan="block"), local))
        [first] = await until(lambda: _calls_of(db, saga_id, "b"), "a worker running step b", 15)
        frozen, other = (w1, w2) if first.owner == "w1" else (w2, w1)
        frozen.signal(signal.SIGSTOP)
        try:
            await until(lambda: _terminal(db, {saga_id}), "the other worker finishing it", 15)
            done = await stored(repository, saga_id)
            events = await db.events(saga_id)
        finally:
            frozen.signal(signal.SIGCONT)
        await until(
            lambda: _calls_of(db, saga_id, "b", outcome="cancelled"),
            "the woken worker's step cancelled",
        )
        frozen_summary = await stop(frozen)
        other_summary = await stop(other)
        after = await stored(repository, saga_id)
    assert done.status is SagaStatus.COMPLETED
    assert after.version == done.version  # the woken worker wrote nothing
    assert await db.events(saga_id) == events
    assert [t for _, t, _ in events].count("saga.completed") == 1
    calls = [c for c in await db.calls("action") if c.saga_id == saga_id]
    assert [(c.step, c.attempt, c.owner, c.outcome) for c in calls] == [
        ("a", 1, frozen.owner, "done"),
        ("b", 1, frozen.owner, "cancelled"),
        ("b", 2, other.owner, "done"),
        ("c", 1, other.owner, "done"),
    ]
    assert frozen_summary["lost"] == 1
    assert frozen_summary["finished"] == 0
    assert other_summary["finished"] == 1
    assert await db.leased() == []


async def _calls_of(
    db: Db,
    saga_id: UUID,
    step_name: str,
    *,
    outcome: str | None = None,
    ended: bool = False,
    attempt: int | None = None,
) -> list[StepCall]:
    return [
        c
        for c in await db.calls("action")
        if c.saga_id == saga_id
        and c.step == step_name
        and outcome in (None, c.outcome)
        and (c.ended_at is not None or not ended)
        and attempt in (None, c.attempt)
    ]


async def _started(db: Db, step_name: str, saga_ids: set[UUID]) -> bool:
    calls = await db.calls("action")
    return {c.saga_id for c in calls if c.step == step_name} >= saga_ids


async def _terminal(db: Db, saga_ids: set[UUID]) -> bool:
    rows = await db.rows(
        "SELECT count(*) FROM sagas WHERE saga_id = ANY(%s)"
        " AND status IN ('completed', 'compensated', 'failed')",
        (list(saga_ids),),
    )
    return bool(rows[0][0] == len(saga_ids))


# ============================================================================ 4. timers


async def test_a_long_backoff_is_a_durable_timer_that_another_worker_resumes(
    postgres_schema: PostgresSchema, db: Db
) -> None:
    """A retry backoff longer than park_after_seconds hands the saga back with its wake-up
    time stored; another worker resumes it at that time, not before."""
    rec_a, rec_b = MemoryRecorder("A"), MemoryRecorder("B")
    async with (
        postgres_schema.repository(owner="A", lease_seconds=2) as repo_a,
        postgres_schema.repository(owner="B", lease_seconds=2) as repo_b,
    ):
        orch_a, orch_b = orchestrator(repo_a, rec_a), orchestrator(repo_b, rec_b)
        worker_a = SagaWorker(orch_a, poll_interval_seconds=0.05, park_after_seconds=0.5)
        async with running(worker_a):
            saga_id = await orch_a.submit(
                JobSaga(JobData(plan="transient", backoff_seconds=2.0), rec_a)
            )
            await until(lambda: _parked(db, worker_a, saga_id), "the saga handed back")
        parked = await db.lease(saga_id)
        context = await stored(repo_a, saga_id)
        b = step(context, "b")
        assert (b.status, b.attempts) == (StepStatus.PENDING, 1)
        assert parked.owner is None
        assert parked.status == "running"
        assert parked.run_after == b.next_attempt_at  # the timer is in the row

        assert await repo_b.claim(10) == []  # not due yet
        assert await db.now() < parked.run_after
        worker_b = SagaWorker(orch_b, poll_interval_seconds=0.05, park_after_seconds=0.5)
        async with running(worker_b):
            await until(lambda: worker_b.finished == 1, "B resuming the saga", 10)
        final = await stored(repo_b, saga_id)

    assert final.status is SagaStatus.COMPLETED
    assert step(final, "b").attempts == 2
    assert [(r.step, r.attempt, r.outcome) for r in rec_a.runs] == [
        ("a", 1, "done"),
        ("b", 1, "failed"),
    ]
    assert [(r.step, r.attempt) for r in rec_b.runs] == [("b", 2), ("c", 1)]
    late = (rec_b.runs[0].started_at - parked.run_after).total_seconds()
    print(f"\ndurable timer: resumed by another worker {late * 1000:.0f} ms after its stored time")
    assert late >= 0  # not before
    assert worker_b.claimed == 1
    assert await db.leased() == []


async def test_a_deadline_before_the_next_attempt_is_the_timer_and_compensates(
    postgres_schema: PostgresSchema, db: Db
) -> None:
    """The stored timer is the saga's deadline when it comes before the next attempt: the
    saga is picked up at the deadline, not before, and compensates without another attempt."""
    local = MemoryRecorder("w")
    async with (
        postgres_schema.repository(lease_seconds=2) as repository,
        postgres_schema.repository(lease_seconds=2) as other,
    ):
        orch = orchestrator(repository, local)
        worker = SagaWorker(orch, poll_interval_seconds=0.05, park_after_seconds=0.5)
        async with running(worker):
            saga_id = await orch.submit(
                DeadlineJobSaga(JobData(plan="always_transient", backoff_seconds=30.0), local)
            )
            await until(lambda: _parked(db, worker, saga_id), "the saga handed back")
            parked = await db.lease(saga_id)
            context = await stored(repository, saga_id)
            b = step(context, "b")
            assert context.deadline is not None
            assert b.next_attempt_at is not None
            assert parked.owner is None
            assert parked.run_after == context.deadline < b.next_attempt_at
            assert await other.claim(10) == []
            assert await db.now() < context.deadline
            await until(lambda: worker.finished == 1, "the saga compensating at its deadline")
        final = await stored(repository, saga_id)

    assert final.status is SagaStatus.COMPENSATED
    assert "deadline" in (final.error or "")
    assert step(final, "b").attempts == 1  # no attempt after the deadline
    undo = [r for r in local.runs if r.phase == "undo"]
    assert [(r.step, r.outcome) for r in undo] == [("b", "done"), ("a", "done")]
    assert undo[0].started_at >= context.deadline
    assert worker.claimed == 2  # submitted, then at the deadline: no busy claiming
    assert await db.leased() == []


async def test_a_retriable_step_waiting_past_the_deadline_is_not_claimed_in_a_loop(
    postgres_schema: PostgresSchema, db: Db
) -> None:
    """After the pivot the deadline no longer applies: the stored timer is the next attempt,
    so the saga is picked up then, once, and not over and over from the deadline on."""
    local = MemoryRecorder("w")
    async with postgres_schema.repository(lease_seconds=2) as repository:
        orch = orchestrator(repository, local)
        worker = SagaWorker(orch, poll_interval_seconds=0.05, park_after_seconds=0.5)
        async with running(worker):
            saga_id = await orch.submit(
                PivotDeadlineJobSaga(JobData(plan="transient", backoff_seconds=3.0), local)
            )
            await until(lambda: _parked(db, worker, saga_id), "the saga handed back")
            parked = await db.lease(saga_id)
            context = await stored(repository, saga_id)
            assert context.deadline is not None
            b = step(context, "b")
            assert b.next_attempt_at is not None
            assert context.deadline < b.next_attempt_at
            assert parked.run_after == b.next_attempt_at
            await until(lambda: worker.finished == 1, "the saga completing", 10)
        final = await stored(repository, saga_id)
    assert final.status is SagaStatus.COMPLETED
    assert step(final, "b").attempts == 2
    assert worker.claimed == 2, f"claimed {worker.claimed} times"


async def _parked(db: Db, worker: SagaWorker, saga_id: UUID) -> bool:
    return worker.parked == 1 and (await db.lease(saga_id)).owner is None


# ============================================================================ 5. three workers


async def test_three_worker_processes_run_300_sagas_each_once(
    postgres_schema: PostgresSchema, db: Db, workers: Workers
) -> None:
    """Three worker processes, 300 sagas: every saga completes once, every action runs
    once, every saga is run by one worker only, and no lease is left."""
    total = 300
    children = await workers.start("w1", "w2", "w3", lease_seconds=2, poll=0.2)
    local = MemoryRecorder("test")
    started = time.monotonic()
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        async with anyio.create_task_group() as tg:
            for index in range(total):
                tg.start_soon(orch.submit, JobSaga(JobData(label=str(index)), local))
        await until(lambda: _count(db, "completed", total), f"{total} sagas completed", 40)
    elapsed = time.monotonic() - started
    summaries = [await stop(child) for child in children]

    assert await db.statuses() == {"completed": total}
    calls = await db.calls()
    actions = Counter((c.saga_id, c.step) for c in calls)
    assert len(actions) == total * 3
    assert set(actions.values()) == {1}
    assert {(c.phase, c.attempt, c.outcome) for c in calls} == {("action", 1, "done")}
    owners: dict[UUID, set[str]] = {}
    for call in calls:
        owners.setdefault(call.saga_id, set()).add(call.owner)
    assert {len(names) for names in owners.values()} == {1}  # one worker per saga
    per_worker = Counter(next(iter(names)) for names in owners.values())
    assert sum(s["claimed"] for s in summaries) == total
    assert sum(s["finished"] for s in summaries) == total
    assert {s["lost"] for s in summaries} == {0}
    assert [s["claimed"] for s in summaries] == [per_worker[c.owner] for c in children]
    assert all(per_worker[c.owner] > 0 for c in children), per_worker
    completed_events = await db.rows(
        "SELECT saga_id, count(*) FROM saga_events WHERE type = 'saga.completed' GROUP BY saga_id"
    )
    assert len(completed_events) == total
    assert {n for _, n in completed_events} == {1}
    assert await db.leased() == []
    print(
        f"\n{total} sagas on 3 worker processes in {elapsed:.1f} s"
        f" ({total / elapsed:.0f}/s); per worker: {dict(sorted(per_worker.items()))}"
    )


async def _count(db: Db, status: str, expected: int) -> bool:
    rows = await db.rows("SELECT count(*) FROM sagas WHERE status = %s", (status,))
    return bool(rows[0][0] == expected)


# ============================================================================ 6. SIGTERM


async def test_sigterm_lets_running_steps_finish_parks_the_rest_and_releases_everything(
    postgres_schema: PostgresSchema, db: Db, workers: Workers, tmp_path: Path
) -> None:
    """SIGTERM a busy worker: it claims nothing more, lets the running steps finish, starts
    no new step, hands back the sagas waiting in a backoff, exits 0 within its grace period
    holding no lease, and another worker finishes everything."""
    gate = tmp_path / "gate"
    grace = 10.0
    local = MemoryRecorder("test")
    [w1] = await workers.start("w1", lease_seconds=2, poll=0.1, park_after=5.0, grace=grace)
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        gated = [
            await orch.submit(JobSaga(JobData(plan="gate", gate=str(gate)), local))
            for _ in range(4)
        ]
        waiting = [
            await orch.submit(JobSaga(JobData(plan="transient", backoff_seconds=3.0), local))
            for _ in range(3)
        ]
        everything = {*gated, *waiting}
        await until(lambda: _started(db, "b", set(gated)), "the gated steps running")

        async def backing_off() -> bool:
            calls = await db.calls("action")
            failed = {c.saga_id for c in calls if c.step == "b" and c.outcome == "failed"}
            rows = await db.rows(
                "SELECT count(*) FROM sagas WHERE saga_id = ANY(%s) AND lease_owner = 'w1'"
                " AND run_after IS NOT NULL",
                (waiting,),
            )
            return failed >= set(waiting) and rows[0][0] == len(waiting)

        await until(backing_off, "the others sleeping in their backoff, leased")
        sigterm_at = await db.now()
        sent = time.monotonic()
        w1.signal(signal.SIGTERM)
        # The sagas sleeping in a backoff are handed back at once...
        await until(lambda: _unleased(db, set(waiting)), "the waiting sagas handed back", 2.0)
        # ...while the running steps are let finish.
        gate.touch()
        summary = await stop(w1, within=grace + 5)
        exited = time.monotonic() - sent
        assert await db.leased() == []  # right at exit, no expiry needed
        after_stop = {saga_id: await stored(repository, saga_id) for saga_id in everything}
        calls = await db.calls()
        assert [c for c in calls if c.started_at > sigterm_at] == []  # no step started
        for saga_id in gated:
            context = after_stop[saga_id]
            assert step(context, "b").status is StepStatus.COMPLETED
            c = step(context, "c")
            assert (c.status, c.attempts) == (StepStatus.PENDING, 0)  # not started, not counted
        for saga_id in waiting:
            context = after_stop[saga_id]
            b = step(context, "b")
            assert (b.status, b.attempts) == (StepStatus.PENDING, 1)
            assert (await db.lease(saga_id)).run_after == b.next_attempt_at
        assert summary == {
            **summary,
            "claimed": 7,
            "finished": 0,
            "parked": 7,
            "lost": 0,
            "handed_back": 0,
            "held_leases": 0,
        }

        async with takeover_worker(postgres_schema, "w2", lease_seconds=2):
            await until(lambda: _count(db, "completed", 7), "w2 finishing everything", 15)
        final = {saga_id: await stored(repository, saga_id) for saga_id in everything}
    print(f"\nSIGTERM: worker exited 0 after {exited:.2f} s (grace {grace:g} s)")
    assert exited < grace
    calls = await db.calls("action")
    for saga_id in gated:
        mine = [(c.step, c.attempt, c.owner) for c in calls if c.saga_id == saga_id]
        assert mine == [("a", 1, "w1"), ("b", 1, "w1"), ("c", 1, "w2")]
    for saga_id in waiting:
        mine_calls = [c for c in calls if c.saga_id == saga_id]
        assert [(c.step, c.attempt, c.owner) for c in mine_calls] == [
            ("a", 1, "w1"),
            ("b", 1, "w1"),
            ("b", 2, "w2"),
            ("c", 1, "w2"),
        ]
        due = after_stop[saga_id].steps[1].next_attempt_at
        assert due is not None
        assert mine_calls[2].started_at >= due
        assert step(final[saga_id], "b").attempts == 2
    assert await db.leased() == []


async def _unleased(db: Db, saga_ids: set[UUID]) -> bool:
    rows = await db.rows(
        f"SELECT count(*) FROM sagas WHERE saga_id = ANY(%s) AND (lease_owner IS NULL"
        f" OR NOT {ACTIVE})",
        (list(saga_ids),),
    )
    return bool(rows[0][0] == len(saga_ids))


async def test_sigterm_cancels_steps_that_outlast_the_grace_period_and_releases_at_once(
    postgres_schema: PostgresSchema, db: Db, workers: Workers
) -> None:
    """Steps that never finish are cancelled after the grace period and their leases released
    at once (the lease is 30 s: nobody waits for it); another worker resumes them and the
    interrupted attempt counts."""
    grace = 1.0
    local = MemoryRecorder("test")
    [w1] = await workers.start("w1", lease_seconds=30, poll=0.1, grace=grace)
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        completes = await orch.submit(JobSaga(JobData(plan="block"), local))
        refuses = await orch.submit(JobSaga(JobData(plan="block_refuse"), local))
        both = {completes, refuses}
        await until(lambda: _started(db, "b", both), "the steps running")
        sent = time.monotonic()
        summary = await stop(w1, within=grace + 10)
        exited = time.monotonic() - sent
        assert await db.leased() == []
        calls = await db.calls("action")
        assert {(c.step, c.outcome) for c in calls if c.step == "b"} == {("b", "cancelled")}
        assert summary["handed_back"] == 2
        assert summary["held_leases"] == 0

        resumed = time.monotonic()
        async with takeover_worker(postgres_schema, "w2", lease_seconds=30):
            await until(lambda: _terminal(db, both), "w2 resuming both", 15)
            resumed_in = time.monotonic() - resumed
        done, compensated = await stored(repository, completes), await stored(repository, refuses)
    print(
        f"\nSIGTERM with hung steps: exited 0 after {exited:.2f} s (grace {grace:g} s);"
        f" another worker had both finished {resumed_in:.2f} s later (lease 30 s)"
    )
    assert grace <= exited < grace + 5
    assert done.status is SagaStatus.COMPLETED
    assert step(done, "b").attempts == 2
    b = step(compensated, "b")
    assert compensated.status is SagaStatus.COMPENSATED
    assert (b.attempts, b.effect_possible, b.status) == (2, True, StepStatus.COMPENSATED)
    undo = [(c.step, c.owner) for c in await db.calls("undo") if c.saga_id == refuses]
    assert undo == [("b", "w2"), ("a", "w2")]
    assert await db.leased() == []


async def test_sigterm_cancels_a_hung_compensation_after_the_grace_period_too(
    postgres_schema: PostgresSchema, db: Db, workers: Workers
) -> None:
    """A compensation that never returns does not keep a stopping worker alive past its
    grace period: it is cancelled like a step, its lease released at once, and another worker
    runs it again (compensations tolerate running twice); the cut attempt counts."""
    grace = 1.0
    local = MemoryRecorder("test")
    [w1] = await workers.start("w1", lease_seconds=30, poll=0.1, grace=grace)
    async with postgres_schema.repository() as repository:
        orch = orchestrator(repository, local)
        saga_id = await orch.submit(JobSaga(JobData(plan="undo_hangs"), local))
        await until(lambda: _undoing(db, saga_id), "the compensation of a running")
        sent = time.monotonic()
        summary = await stop(w1, within=grace + 10)
        exited = time.monotonic() - sent
        assert await db.leased() == []
        assert summary["handed_back"] == 1
        async with takeover_worker(postgres_schema, "w2", lease_seconds=30):
            await until(lambda: _terminal(db, {saga_id}), "w2 finishing the compensation", 15)
        final = await stored(repository, saga_id)
    assert grace <= exited < grace + 5
    assert final.status is SagaStatus.COMPENSATED
    assert step(final, "a").compensation_attempts == 2
    undo = [(c.step, c.attempt, c.owner, c.outcome) for c in await db.calls("undo")]
    assert undo == [("a", 1, "w1", "cancelled"), ("a", 2, "w2", "done")]


async def _undoing(db: Db, saga_id: UUID) -> bool:
    return any(c.saga_id == saga_id for c in await db.calls("undo"))


# ============================================================================ 7. connections


async def test_workers_ride_out_terminated_connections(
    postgres_schema: PostgresSchema, db: Db
) -> None:
    """Every connection of the application is terminated several times while 200 sagas run:
    all complete, each action once, nothing is left stuck or leased, no conflict is raised."""
    total = 200
    app = f"saga_wk_{uuid4().hex[:12]}"
    conninfo = f"{postgres_schema.url}?application_name={app}"

    def repository(owner: str) -> PostgresSagaRepository:
        return PostgresSagaRepository(
            conninfo, schema=postgres_schema.name, owner=owner, lease_seconds=5
        )

    local = MemoryRecorder("w")
    kills: list[int] = []
    async with repository("w1") as repo_1, repository("w2") as repo_2:
        orch_1, orch_2 = orchestrator(repo_1, local), orchestrator(repo_2, local)
        async with anyio.create_task_group() as tg:
            for _ in range(total):
                tg.start_soon(orch_1.submit, JobSaga(JobData(plan="pause"), local))
        worker_1 = SagaWorker(orch_1, concurrency=16, poll_interval_seconds=0.1)
        worker_2 = SagaWorker(orch_2, concurrency=16, poll_interval_seconds=0.1)
        async with running(worker_1), running(worker_2):
            for threshold in (20, 60, 100, 140):
                await until(
                    partial(_at_least, db, "completed", threshold),
                    f"{threshold} sagas completed",
                    30,
                )
                rows = await db.rows(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = %s",
                    (app,),
                )
                kills.append(sum(1 for (killed,) in rows if killed))
            await until(lambda: _count(db, "completed", total), f"{total} sagas completed", 40)
        reconnects = repo_1.reconnects + repo_2.reconnects

    print(
        f"\nterminated {kills} backends in 4 rounds; {reconnects} reads/batches retried"
        f" (w1 {repo_1.reconnects}, w2 {repo_2.reconnects})"
    )
    assert all(count > 0 for count in kills)
    assert reconnects > 0
    assert await db.statuses() == {"completed": total}
    actions = Counter((r.saga_id, r.step) for r in local.runs)
    assert len(actions) == total * 3
    assert set(actions.values()) == {1}
    assert worker_1.lost == worker_2.lost == 0
    assert worker_1.claimed + worker_2.claimed == total
    assert worker_1.finished + worker_2.finished == total
    assert await db.leased() == []
    duplicated = await db.rows(
        "SELECT saga_id, sequence FROM saga_events GROUP BY saga_id, sequence HAVING count(*) > 1"
    )
    assert duplicated == []
    gaps = await db.rows(
        "SELECT saga_id FROM saga_events GROUP BY saga_id HAVING max(sequence) <> count(*)"
    )
    assert gaps == []


async def _at_least(db: Db, status: str, expected: int) -> bool:
    rows = await db.rows("SELECT count(*) FROM sagas WHERE status = %s", (status,))
    return bool(rows[0][0] >= expected)


class _CutCommit:
    """Makes the ``nth`` COMMIT of a repository's writer fail as if the connection dropped:
    after the COMMIT went through (``committed``) or before it reached the server. The
    backend is really terminated (by itself), so the error is psycopg's own."""

    def __init__(self, repository: PostgresSagaRepository, nth: int, committed: bool) -> None:
        self.real = repository._db.pool
        self.nth = nth
        self.committed = committed
        self.commits = 0
        self.cut = False

    async def pool(self, *, migrating: bool | None = None) -> Any:
        return _PoolProxy(await self.real(migrating=migrating), self)


class _PoolProxy:
    def __init__(self, pool: Any, cut: _CutCommit) -> None:
        self._pool, self._cut = pool, cut

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        async with self._pool.connection() as connection:
            yield _ConnectionProxy(connection, self._cut)


class _ConnectionProxy:
    def __init__(self, connection: Any, cut: _CutCommit) -> None:
        self._connection, self._cut = connection, cut

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def _commits(self, query: Any) -> bool:
        """COMMIT, or a saga write outside a transaction (a write alone in its batch is its
        own transaction: the statement commits)."""
        if query == "COMMIT":
            return True
        if self._connection.info.transaction_status != pq.TransactionStatus.IDLE:
            return False
        text = query.as_string(self._connection) if isinstance(query, sql.Composable) else query
        return isinstance(text, str) and text.startswith("WITH w AS (")

    async def execute(self, query: Any, params: Any = None) -> Any:
        cut = self._cut
        if self._commits(query):
            cut.commits += 1
            if cut.commits == cut.nth:
                cut.cut = True
                if cut.committed:
                    await self._connection.execute(query, params)
                await self._connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
                raise AssertionError("the backend survived terminating itself")
        return await self._connection.execute(query, params)


@pytest.mark.parametrize("committed", [True, False], ids=["committed", "not-committed"])
@pytest.mark.parametrize("nth", [1, 2], ids=["create", "update"])
async def test_a_write_whose_commit_was_cut_off_is_verified_and_applied_once(
    postgres_schema: PostgresSchema,
    db: Db,
    monkeypatch: pytest.MonkeyPatch,
    nth: int,
    committed: bool,
) -> None:
    """The connection dies during COMMIT (the saga's creation, or a step's completion):
    whether or not it committed, the saga runs on as if nothing happened, every transition
    recorded once (one outbox row per event, no gap), every action called once."""
    local = MemoryRecorder("w")
    async with postgres_schema.repository(lease_seconds=30) as repository:
        cut = _CutCommit(repository, nth, committed)
        monkeypatch.setattr(repository._db, "pool", cut.pool)
        saga = JobSaga(JobData(), local)
        result = await orchestrator(repository, local).execute(saga)
        assert cut.cut
        assert result.status is SagaStatus.COMPLETED
        assert repository.reconnects == 1
        assert repository.held_leases == {}
        # Four writes (the creation, three step ends): a cut COMMIT found committed is not
        # written again (three transactions counted), one found missing is (four).
        assert repository.transactions == (3 if committed else 4)
    assert [(r.step, r.attempt) for r in local.runs] == [("a", 1), ("b", 1), ("c", 1)]
    events = await db.events(saga.context.saga_id)
    assert [seq for seq, _, _ in events] == list(range(1, len(events) + 1))
    assert [t for _, t, _ in events] == [
        "saga.started",
        "step.started",
        *["step.completed", "step.started"] * 2,
        "step.completed",
        "saga.completed",
    ]
    assert await db.leased() == []


async def test_without_the_in_doubt_check_a_committed_write_would_look_like_a_conflict(
    postgres_schema: PostgresSchema, db: Db, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control for the test above: with ``_drop_committed`` bypassed, a step completion
    whose COMMIT went through but was cut off is written again and fails as a conflict."""
    local = MemoryRecorder("w")
    async with postgres_schema.repository(lease_seconds=30) as repository:
        cut = _CutCommit(repository, 2, committed=True)
        monkeypatch.setattr(repository._db, "pool", cut.pool)

        async def unchecked(connection: Any, pending: list[Any]) -> list[Any]:
            return pending

        monkeypatch.setattr(repository._db, "_drop_committed", unchecked)
        with pytest.raises(SagaConflictError):
            await orchestrator(repository, local).execute(JobSaga(JobData(), local))
        assert cut.cut


# ============================================================================ 8. bad input


async def test_a_worker_needs_a_repository_with_leases(tmp_path: Path) -> None:
    """SagaWorker names what a repository without leases lacks; submit refuses it too."""
    for repository in (InMemorySagaRepository(), SQLiteSagaRepository(tmp_path / "s.db")):
        orch = SagaOrchestrator(repository)
        name = type(repository).__name__
        with pytest.raises(TypeError) as error:
            SagaWorker(orch)
        assert str(error.value) == (
            "SagaWorker needs a repository with leases (LeasedSagaRepository, as "
            f"PostgresSagaRepository); {name} has no claim, release, release_all, "
            "wait_for_work, lease_guard"
        )
        register_all(orch, MemoryRecorder("x"))
        saga = JobSaga(JobData(), MemoryRecorder("x"))
        with pytest.raises(TypeError, match=f"{name} has no workers to submit to"):
            await orch.submit(saga)
        assert await repository.get(saga.context.saga_id) is None  # nothing stored
        if isinstance(repository, SQLiteSagaRepository):
            await repository.close()


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_a_lease_must_last(seconds: float) -> None:
    with pytest.raises(ValueError, match="lease_seconds must be > 0"):
        PostgresSagaRepository("postgresql://unused", lease_seconds=seconds)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("concurrency", 0, "concurrency must be >= 1"),
        ("poll_interval_seconds", 0.0, "poll_interval_seconds must be > 0"),
        ("poll_interval_seconds", float("nan"), "poll_interval_seconds must be > 0"),
    ],
)
def test_worker_options_are_checked(option: str, value: float, message: str) -> None:
    orch = SagaOrchestrator(PostgresSagaRepository("postgresql://unused"))
    with pytest.raises(ValueError, match=message):
        SagaWorker(orch, **{option: value})  # type: ignore[arg-type]
