"""A chaos-test worker process: the order example's shop on PostgreSQL, run by a SagaWorker.

The controller (``test_order_chaos.py``) starts these with ``multiprocessing``'s forkserver
(this module preloaded, so a restart costs a fork rather than an interpreter start and its
imports), SIGKILLs them at random and starts new ones. Each one:

- builds ``Shop(services_file, repository=PostgresSagaRepository(...))``: the sagas in a
  PostgreSQL schema shared by all workers, the services' state (stock, payments, shipments,
  emails) in one SQLite file shared by all workers, with the example's fault injection;
- records every action and compensation call in ``chaos_attempts`` (``AttemptRecorder``, a
  step interceptor): a row committed before the call with the database clock's
  ``clock_timestamp()``, its end and outcome written after the call. A call cut short by a
  SIGKILL has no end; the controller counts it as running until the process's death;
- counts each charge that found the payment already made (a retried or taken-over charge
  that the idempotency key kept from charging twice) in the services file;
- runs a ``SagaWorker`` until SIGTERM (it tells the controller when SIGTERM stops it
  cleanly), then writes its counters as JSON.

Its PostgreSQL connections carry ``application_name = chaos-target-<owner>`` so the controller
can ``pg_terminate_backend`` them; the attempt recorder's connections are named apart
(``chaos-recorder``), so the measurement survives the chaos it measures.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import json
import logging
import random
import signal
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol
from uuid import UUID, uuid4

import anyio
import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from order_fulfillment.faults import FaultConfig
from order_fulfillment.services import Fence, Payment, SQLitePayments
from order_fulfillment.shop import Shop
from saga_orchestrator import RetryPolicy, SagaWorker
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from saga_orchestrator.runtime import StepRun

TARGET_PREFIX = "chaos-target-"
"""Connections with an application_name starting so are the ones the controller terminates."""
RECORDER_NAME = "chaos-recorder"

ATTEMPTS_DDL = """
CREATE TABLE IF NOT EXISTS chaos_attempts (
    id         uuid PRIMARY KEY,
    saga_id    uuid NOT NULL,
    step       text NOT NULL,
    phase      text NOT NULL,
    attempt    integer NOT NULL,
    owner      text NOT NULL,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz,
    outcome    text
);
CREATE TABLE IF NOT EXISTS chaos_workers (
    owner      text PRIMARY KEY,
    started_at timestamptz NOT NULL,
    ended_at   timestamptz,
    how        text
);
"""
"""The controller's tables, in the test's schema next to the sagas."""

REPLAYS_DDL = (
    "CREATE TABLE IF NOT EXISTS chaos_charge_replays ("
    " id INTEGER PRIMARY KEY AUTOINCREMENT, idempotency_key TEXT NOT NULL)"
)
"""In the services file: one row per charge call that found its payment already made."""


@dataclass(frozen=True, kw_only=True)
class WorkerConfig:
    url: str
    schema: str
    services_path: str
    owner: str
    seed: int
    log_path: str
    stats_path: str
    faults: FaultConfig
    lease_seconds: float
    concurrency: int
    dispatch_delay_seconds: float


RETRY = RetryPolicy(max_attempts=5, initial_backoff_seconds=0.05, max_backoff_seconds=0.5)
"""Forward steps: a few quick attempts (an attempt cut off by a kill counts as one)."""
COMPENSATION_RETRY = RetryPolicy(
    max_attempts=100, initial_backoff_seconds=0.05, max_backoff_seconds=0.5
)
"""Compensations: far more attempts than transient faults and kills can use up, so that no
saga ends FAILED (the test asserts none does)."""


class EventLike(Protocol):
    """A ``multiprocessing`` event, as far as the worker uses it."""

    def set(self) -> None: ...


class AttemptRecorder:
    """A StepInterceptor writing each call's start (before it) and end (after it) to
    ``chaos_attempts``, on the database clock, retrying over lost connections."""

    def __init__(self, url: str, schema: str, owner: str) -> None:
        self.owner = owner
        self.pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            make_conninfo(url, application_name=RECORDER_NAME),
            min_size=1,
            max_size=4,
            kwargs={"autocommit": True},
            open=False,
        )
        table = sql.Identifier(schema, "chaos_attempts")
        self._start = sql.SQL(
            "INSERT INTO {} (id, saga_id, step, phase, attempt, owner, started_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, clock_timestamp()) ON CONFLICT (id) DO NOTHING"
        ).format(table)
        self._end = sql.SQL(
            "UPDATE {} SET ended_at = clock_timestamp(), outcome = %s"
            " WHERE id = %s AND ended_at IS NULL"
        ).format(table)

    async def _write(self, query: sql.Composed, params: tuple[Any, ...]) -> bool:
        """Run one statement, again over lost connections, for up to 10 s; whether it ran.

        Both statements are idempotent: run again after a lost connection, a start that did
        commit keeps its earlier time, an end that did keeps its own."""
        with anyio.move_on_after(10):
            attempt = 0
            while True:
                try:
                    async with self.pool.connection() as connection:
                        await connection.execute(query, params)
                    return True
                except psycopg.OperationalError:
                    attempt += 1
                    await anyio.sleep(min(0.01 * 2**attempt, 0.5))
        return False

    async def __call__(self, run: StepRun, proceed: Callable[[], Awaitable[Any]]) -> Any:
        attempt_id = uuid4()
        # Shielded, so that an attempt is either recorded (start, then end) or not made: a
        # cancellation (the lease guard, shutdown) waits for the start to be written.
        with anyio.CancelScope(shield=True):
            started = await self._write(
                self._start,
                (attempt_id, run.saga_id, run.step, run.phase.value, run.attempt, self.owner),
            )
        if not started:
            raise ConnectionError("chaos_attempts: could not record the attempt's start")
        outcome = "cancelled"
        try:
            result = await proceed()
            outcome = "ok"
            return result
        except Exception as exc:
            outcome = type(exc).__name__
            raise
        finally:
            # The call is over (done, failed or cancelled). An end that cannot be written
            # leaves the attempt counted as running until its process died.
            with anyio.CancelScope(shield=True):
                await self._write(self._end, (outcome, attempt_id))


_charging: contextvars.ContextVar[str | None] = contextvars.ContextVar("charging", default=None)


class CountingPayments(SQLitePayments):
    """The example's payments, also recording each charge that found its payment made."""

    async def charge(
        self,
        *,
        customer_id: UUID | None,
        amount: Decimal,
        currency: str,
        order_id: UUID,
        idempotency_key: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Payment:
        token = _charging.set(idempotency_key)
        try:
            return await super().charge(
                customer_id=customer_id,
                amount=amount,
                currency=currency,
                order_id=order_id,
                idempotency_key=idempotency_key,
                fencing_token=fencing_token,
                saga_id=saga_id,
            )
        finally:
            _charging.reset(token)

    async def _call(
        self,
        operation: str,
        fn: Callable[[sqlite3.Connection], Any],
        *,
        compensating: bool,
        fence: Fence | None = None,
    ) -> Any:
        key = _charging.get()
        if operation != "payment.charge" or key is None:
            return await super()._call(operation, fn, compensating=compensating, fence=fence)

        def counted(c: sqlite3.Connection) -> Any:  # in the charge's own transaction
            made = c.execute("SELECT 1 FROM payments WHERE idempotency_key = ?", (key,)).fetchone()
            result = fn(c)
            if made is not None:
                c.execute("INSERT INTO chaos_charge_replays (idempotency_key) VALUES (?)", (key,))
            return result

        return await super()._call(operation, counted, compensating=compensating, fence=fence)


async def serve(config: WorkerConfig, ready: EventLike) -> dict[str, Any]:
    """Run the worker until SIGTERM (``ready`` is set once that stops it cleanly); return
    its counters."""
    recorder = AttemptRecorder(config.url, config.schema, config.owner)
    repository = PostgresSagaRepository(
        make_conninfo(config.url, application_name=TARGET_PREFIX + config.owner),
        schema=config.schema,
        lease_seconds=config.lease_seconds,
        owner=config.owner,
        max_size=6,
        apply_migrations=False,  # the controller migrated the schema
    )
    shop = Shop(
        config.services_path,
        repository=repository,
        faults=dataclasses.replace(config.faults, seed=config.seed),
        dispatch_delay_seconds=config.dispatch_delay_seconds,
        retry=RETRY,
        compensation_retry=COMPENSATION_RETRY,
        interceptors=[recorder],
    )
    shop.payments = CountingPayments(shop.db, shop.faults)
    await recorder.pool.open(wait=True, timeout=30)
    try:
        async with shop:
            worker = SagaWorker(
                shop.orchestrator,
                concurrency=config.concurrency,
                poll_interval_seconds=0.25,
                park_after_seconds=1.0,
                shutdown_grace_seconds=10.0,
            )
            # SIGTERM stops the worker cleanly from here on; the controller sends it only
            # once told so (before, it would kill the process as SIGKILL does).
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, worker.stop)
            ready.set()
            await worker.run()
            stats = {
                "owner": config.owner,
                "claimed": worker.claimed,
                "finished": worker.finished,
                "parked": worker.parked,
                "lost": worker.lost,
                "handed_back": worker.handed_back,
                "leases_lost": repository.leases_lost,
                "reconnects": repository.reconnects,
                "faults": shop.faults.injected,
            }
    finally:
        await recorder.pool.close()
    return stats


def main(config: WorkerConfig, ready: EventLike) -> None:
    """The process's entry point (a ``multiprocessing`` target)."""
    random.seed(config.seed)  # forked from one server: each its own retry jitter
    logging.basicConfig(
        filename=config.log_path,
        level=logging.WARNING,
        format="%(asctime)s %(process)d %(levelname)s %(name)s %(message)s",
        force=True,
    )
    stats = asyncio.run(serve(config, ready))
    Path(config.stats_path).write_text(json.dumps(stats), encoding="utf-8")
