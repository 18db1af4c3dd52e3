"""Sagas, step recorders and a worker process for ``tests/test_workers.py``.

Run with the repository root on ``PYTHONPATH``::

    python -m tests.worker_child --conninfo URL --schema NAME --owner NAME \\
        [--lease-seconds 2] [--poll 0.2] [--park-after 1] [--grace 10] [--concurrency 16] \\
        [--ready-fd N]

The process runs a [`SagaWorker`][saga_orchestrator.worker.SagaWorker] on the schema with
``run_until_signalled`` (SIGTERM stops it gracefully), with the sagas below registered. Every
action and compensation call is recorded in the schema's ``step_runs`` table (created by the
test) by a connection of its own: a row when the call starts (database clock), completed with
its end time and outcome when it ends, so a SIGKILLed call keeps a row without an end.

``--ready-fd``: one byte is written there once the worker is idle *and* listening: a claim
that started after the LISTEN connection was up, and after the worker's listener had taken in
the wake-up that connecting sends, found nothing. From then on only a notification (or the
poll interval) makes it claim again. On exit, one JSON line of the worker's counters is
printed on stdout.

The sagas carry their test plan in their data (``JobData.plan``), so every process, the test's
own included, runs them the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol
from uuid import UUID

import anyio
import psycopg
from psycopg import sql

from saga_orchestrator import (
    BaseSaga,
    RetryPolicy,
    SagaOrchestrator,
    SagaStep,
    StepRun,
    current_step,
)
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from saga_orchestrator.definitions import wait_for_event
from saga_orchestrator.state import SagaContext
from saga_orchestrator.worker import SagaWorker

JOB = "worker_job"
DEADLINE_JOB = "worker_job_deadline"
PIVOT_DEADLINE_JOB = "worker_job_pivot_deadline"
STEPS = ("a", "b", "c")

STEP_RUNS_DDL = (
    "CREATE TABLE step_runs ("
    " id bigserial PRIMARY KEY, saga_id uuid NOT NULL, step text NOT NULL,"
    " phase text NOT NULL, attempt integer NOT NULL, owner text NOT NULL, pid integer NOT NULL,"
    " started_at timestamptz NOT NULL DEFAULT clock_timestamp(), ended_at timestamptz,"
    " outcome text)"
)
"""The call log the child processes write (the test creates it in its schema)."""


class Refused(Exception):
    """A business refusal: never retried, and the step did not act."""

    retryable = False
    refused = True  # declared a refusal: the failed step is not compensated


@dataclass
class JobData:
    """A saga's data, carrying what its step ``b`` does (``plan``):

    - ``ok``: succeeds;
    - ``gate``: waits until the file ``gate`` exists, then succeeds;
    - ``block``: attempt 1 never returns, later attempts succeed;
    - ``block_refuse``: attempt 1 never returns, later attempts refuse;
    - ``transient``: attempt 1 fails with a ConnectionError (retried after
      ``backoff_seconds``), later attempts succeed;
    - ``always_transient``: every attempt fails with a ConnectionError;
    - ``pause``: takes 20 ms (work that keeps sagas in flight), then succeeds;
    - ``stall``: attempt 1 blocks its whole process (event loop included) for
      ``stall_seconds``, then succeeds; later attempts succeed at once;
    - ``undo_hangs``: refuses, and the first compensation attempt of step ``a`` never
      returns (later ones succeed).
    """

    plan: str = "ok"
    gate: str | None = None
    confirmation: str | None = None
    backoff_seconds: float = 0.1
    stall_seconds: float = 0.0
    label: str = ""


@dataclass
class Run:
    """One recorded call (in-process recorder)."""

    saga_id: UUID
    step: str
    phase: str
    attempt: int
    owner: str
    started_at: datetime
    ended_at: datetime | None = None
    outcome: str | None = None


class Recorder(Protocol):
    owner: str

    async def start(self, run: StepRun, phase: str) -> Any: ...

    async def end(self, token: Any, outcome: str) -> None: ...


@dataclass
class MemoryRecorder:
    """Records calls in a list (workers in the test's own process)."""

    owner: str
    runs: list[Run] = field(default_factory=list)

    async def start(self, run: StepRun, phase: str) -> Run:
        record = Run(run.saga_id, run.step, phase, run.attempt, self.owner, datetime.now(UTC))
        self.runs.append(record)
        return record

    async def end(self, token: Run, outcome: str) -> None:
        token.ended_at = datetime.now(UTC)
        token.outcome = outcome


class PostgresRecorder:
    """Records calls in ``step_runs`` with database-clock times, on a connection of its own."""

    def __init__(self, conninfo: str, schema: str, owner: str) -> None:
        self.conninfo = conninfo
        self.owner = owner
        self.table = sql.Identifier(schema, "step_runs")
        self._connection: psycopg.AsyncConnection[Any] | None = None

    async def open(self) -> None:
        self._connection = await psycopg.AsyncConnection.connect(self.conninfo, autocommit=True)

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()

    async def start(self, run: StepRun, phase: str) -> int:
        assert self._connection is not None
        cursor = await self._connection.execute(
            sql.SQL(
                "INSERT INTO {} (saga_id, step, phase, attempt, owner, pid)"
                " VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"
            ).format(self.table),
            (run.saga_id, run.step, phase, run.attempt, self.owner, os.getpid()),
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async def end(self, token: int, outcome: str) -> None:
        assert self._connection is not None
        await self._connection.execute(
            sql.SQL(
                "UPDATE {} SET ended_at = clock_timestamp(), outcome = %s WHERE id = %s"
            ).format(self.table),
            (outcome, token),
        )


async def _undo(step: str, data: JobData, attempt: int) -> None:
    if data.plan == "undo_hangs" and step == "a" and attempt == 1:
        await anyio.sleep_forever()


async def _behave(step: str, data: JobData, attempt: int) -> None:
    if step != "b" or data.plan == "ok":
        return
    if data.plan == "gate":
        assert data.gate is not None
        # The test creates the file to let the step finish (another process: no shared event).
        while not await anyio.Path(data.gate).exists():  # noqa: ASYNC110
            await anyio.sleep(0.02)
    elif data.plan in ("block", "block_refuse"):
        if attempt == 1:
            await anyio.sleep_forever()
        if data.plan == "block_refuse":
            raise Refused("refused after the interrupted attempt")
    elif data.plan == "transient":
        if attempt == 1:
            raise ConnectionError("transient failure of attempt 1")
    elif data.plan == "pause":
        await anyio.sleep(0.02)
    elif data.plan == "stall":
        if attempt == 1:
            time.sleep(data.stall_seconds)  # noqa: ASYNC251 - blocking on purpose
    elif data.plan == "always_transient":
        raise ConnectionError(f"transient failure of attempt {attempt}")
    elif data.plan == "undo_hangs":
        raise Refused("refused, so that step a is compensated")
    else:  # pragma: no cover - a typo in a test
        raise AssertionError(f"unknown plan {data.plan!r}")


class JobSaga(BaseSaga[JobData]):
    """Three steps ``a``, ``b``, ``c``; ``b`` follows the plan; every call is recorded."""

    saga_type = JOB
    retriable_from: int | None = None  # index of the first retriable (post-pivot) step

    def __init__(self, data: JobData, recorder: Recorder) -> None:
        self.recorder = recorder
        self.retry = RetryPolicy(
            max_attempts=3, initial_backoff_seconds=data.backoff_seconds, jitter_ratio=0.0
        )
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[JobData]]:
        pivot = self.retriable_from
        return [
            SagaStep(
                name,
                self._call(name, "action"),
                None if pivot is not None and index >= pivot else self._call(name, "undo"),
                retry=self.retry,
                retriable=pivot is not None and index >= pivot,
            )
            for index, name in enumerate(STEPS)
        ]

    def _call(self, name: str, phase: str) -> Callable[[JobData], Awaitable[None]]:
        async def call(data: JobData) -> None:
            run = current_step()
            token = await self.recorder.start(run, phase)
            outcome = "failed"
            try:
                if phase == "action":
                    await _behave(name, data, run.attempt)
                else:
                    await _undo(name, data, run.attempt)
                outcome = "done"
            except Refused:
                outcome = "refused"
                raise
            except anyio.get_cancelled_exc_class():
                outcome = "cancelled"
                raise
            finally:
                with anyio.CancelScope(shield=True):
                    await self.recorder.end(token, outcome)

        return call


class DeadlineJobSaga(JobSaga):
    """A JobSaga with a deadline 1.8 s after its start."""

    saga_type = DEADLINE_JOB
    timeout_minutes = 0.03


class PivotDeadlineJobSaga(DeadlineJobSaga):
    """Steps ``b`` and ``c`` come after the pivot (retriable: retried past the deadline)."""

    saga_type = PIVOT_DEADLINE_JOB
    retriable_from = 1


WAIT_JOB = "worker_wait_job"
CONFIRMED = "job.confirmed"


class WaitJobSaga(JobSaga):
    """``a``, then ``confirm``: waits (up to ten minutes) for the event ``job.confirmed``,
    whose payload's ``code`` it keeps as ``confirmation``, then ``c``."""

    saga_type = WAIT_JOB

    def define_steps(self) -> list[SagaStep[JobData]]:
        def accept(data: JobData, payload: Any) -> dict[str, Any]:
            return {"confirmation": payload["code"]}

        return [
            SagaStep("a", self._call("a", "action"), self._call("a", "undo"), retry=self.retry),
            wait_for_event("confirm", CONFIRMED, timeout_seconds=600, accept=accept),
            SagaStep("c", self._call("c", "action"), self._call("c", "undo"), retry=self.retry),
        ]


SAGAS: tuple[type[JobSaga], ...] = (JobSaga, DeadlineJobSaga, PivotDeadlineJobSaga, WaitJobSaga)


def register_all(orchestrator: SagaOrchestrator, recorder: Recorder) -> None:
    """Register every saga type of this module, recording with ``recorder``."""
    for cls in SAGAS:
        orchestrator.register(cls.saga_type, partial(cls, recorder=recorder))


class ObservedRepository(PostgresSagaRepository):
    """A repository that tells when its worker is idle and listening (``idle``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.idle = anyio.Event()
        self._listener_rearmed = False

    def _listening(self) -> bool:
        return self._notifier is not None and self._notifier.listening.is_set()

    async def wait_for_work(self, seconds: float) -> bool:
        # The worker's listener calls this again right after passing a wake-up on; once it does
        # so with LISTEN up, the wake-up that connecting sends has been taken in.
        if self._listening():
            self._listener_rearmed = True
        return await super().wait_for_work(seconds)

    async def claim(
        self, limit: int, *, saga_types: Collection[str] | None = None
    ) -> list[SagaContext[Any]]:
        counts = self._listener_rearmed
        claimed = await super().claim(limit, saga_types=saga_types)
        if counts and not claimed:
            self.idle.set()
        return claimed


async def deliver(args: argparse.Namespace) -> None:
    """Deliver the events listed in the JSON file ``args.deliver`` (``[saga id, event id]``
    pairs, in order) with ``drive=False``, as a webhook receiver with no workers of its own
    would; print the count of each answer as one JSON line."""
    with open(args.deliver, encoding="utf-8") as file:  # noqa: ASYNC230 - before any task
        pairs = json.load(file)
    answers: dict[str, int] = {}
    async with PostgresSagaRepository(args.conninfo, schema=args.schema, owner=args.owner) as repo:
        orchestrator = SagaOrchestrator(repo)
        limiter = anyio.CapacityLimiter(8)

        async def one(saga_id: str, event_id: str) -> None:
            async with limiter:
                delivery = await orchestrator.deliver_event(
                    CONFIRMED,
                    {"code": event_id},
                    event_id=event_id,
                    saga_id=UUID(saga_id),
                    drive=False,
                )
            answers[delivery.status.value] = answers.get(delivery.status.value, 0) + 1

        async with anyio.create_task_group() as tg:
            for saga_id, event_id in pairs:
                tg.start_soon(one, saga_id, event_id)
    print(json.dumps(answers), flush=True)


async def main(args: argparse.Namespace) -> None:
    if args.deliver is not None:
        await deliver(args)
        return
    repository = ObservedRepository(
        args.conninfo, schema=args.schema, owner=args.owner, lease_seconds=args.lease_seconds
    )
    recorder = PostgresRecorder(args.conninfo, args.schema, args.owner)
    async with repository:
        await recorder.open()
        orchestrator = SagaOrchestrator(repository)
        register_all(orchestrator, recorder)
        worker = SagaWorker(
            orchestrator,
            concurrency=args.concurrency,
            poll_interval_seconds=args.poll,
            park_after_seconds=args.park_after,
            shutdown_grace_seconds=args.grace,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run_until_signalled)
            if args.ready_fd is not None:
                with anyio.fail_after(30):
                    await repository.idle.wait()
                os.write(args.ready_fd, b"R")
                os.close(args.ready_fd)
        await recorder.close()
    summary = {
        "claimed": worker.claimed,
        "finished": worker.finished,
        "parked": worker.parked,
        "lost": worker.lost,
        "handed_back": worker.handed_back,
        "leases_lost": repository.leases_lost,
        "held_leases": len(repository.held_leases),
        "reconnects": repository.reconnects,
    }
    print(json.dumps(summary), flush=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conninfo", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--lease-seconds", type=float, default=2.0)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--park-after", type=float, default=1.0)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--ready-fd", type=int, default=None)
    parser.add_argument("--deliver", default=None, help="deliver the events of this JSON file")
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, _arguments())
