"""PostgreSQL adapters: many processes, on many hosts, sharing one database.

Needs the ``postgres`` extra (``pip install 'saga-orchestrator[postgres]'``: psycopg 3 and
psycopg-pool) and asyncio: psycopg's asynchronous connections do not run on trio, so unlike
the in-memory and SQLite adapters these work under asyncio only.

Each object owns a connection pool, opened on first use or by ``async with``/``open()``, and
applies the pending migrations when it opens (``apply_migrations=False`` leaves that to an
explicit ``migrate()``). Migrations are numbered SQL files recorded in a
``saga_schema_migrations`` table and run under a transaction-scoped advisory lock, so
processes starting together apply each one once. ``schema`` puts the tables in a schema of
their own (created if missing), for isolation between applications or tests.

Concurrent writes from one object are committed together (group commit): while one
transaction is being committed, the writes that arrive queue up and go in the next one, each
caller returning only once its own write is committed. A version mismatch (or an id that is
taken) is found from the statement's row count, so it never aborts the transaction the other
writes share; a write that fails otherwise is taken out and the others are committed without
it. Rows are written in key order, so two processes' batches cannot deadlock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from uuid import UUID, uuid4

import anyio

try:
    import psycopg
    from psycopg import sql
    from psycopg.rows import TupleRow
    from psycopg_pool import AsyncConnectionPool
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "saga_orchestrator.adapters.postgres needs psycopg 3 and psycopg-pool: "
        "pip install 'saga-orchestrator[postgres]'"
    ) from exc

from ..errors import SagaAlreadyExistsError, SagaConflictError, SagaLeaseError
from ..events import SagaEvent, decode_event, encode_event
from ..serialization import decode_context
from ..state import ACTIVE_STATUSES, SagaContext, SagaStatus, SkippedSaga
from ._lifecycle import AsyncLifecycle

logger = logging.getLogger("saga_orchestrator")

__all__ = ["PostgresIdempotencyStore", "PostgresSagaRepository", "migrate"]

_Connection = psycopg.AsyncConnection[TupleRow]

_MIGRATIONS_TABLE = "saga_schema_migrations"  # in the adapters' schema


def _migrations() -> list[tuple[int, str, str]]:
    folder = resources.files("saga_orchestrator.adapters.migrations") / "postgres"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            found.append((number, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


async def migrate(connection: _Connection, schema: str = "public") -> list[str]:
    """Apply the pending migrations to ``schema`` in one transaction; return their names.

    Creates the schema if it does not exist. Safe when several processes migrate the same
    schema at once: a transaction-scoped advisory lock (keyed on the schema name) lets one
    migrate while the others wait, and they then find nothing left to do. ``connection``
    must be in autocommit mode (as the adapters' pooled connections are) and is left so.
    """
    async with connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            (f"saga_orchestrator.migrate:{schema}",),
        )
        cursor = await connection.execute(
            "SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)
        )
        if await cursor.fetchone() is None:
            # Checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege on the
            # database even when the schema is there already.
            await connection.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        # The migration files name their tables unqualified: they land in `schema`.
        await connection.execute(
            sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema))
        )
        await connection.execute(
            f"CREATE TABLE IF NOT EXISTS {_MIGRATIONS_TABLE} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await connection.execute(f"SELECT version FROM {_MIGRATIONS_TABLE}")
        applied = {row[0] for row in await cursor.fetchall()}
        done: list[str] = []
        for number, name, script in _migrations():
            if number in applied:
                continue
            await connection.execute(script)  # several statements: no parameters
            await connection.execute(
                f"INSERT INTO {_MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",
                (number, name),
            )
            done.append(name)
    return done


@dataclass(slots=True, eq=False)
class _Write:
    key: tuple[str, str]  # what the write locks; batches lock in this order
    op: Callable[[_Connection], Awaitable[Any]]
    future: asyncio.Future[Any]
    # After a connection died during COMMIT: whether this write is in the database. None means
    # the write can simply run again (it is idempotent).
    verify: Callable[[_Connection], Awaitable[bool]] | None = None
    # A write that is one statement can be pipelined with the rest of its batch: the
    # statement, and what to make of the row it returns (None: no row) within the batch's
    # transaction.
    statement: tuple[str, tuple[Any, ...]] | None = None
    on_row: Callable[[Any, _Connection], Awaitable[Any]] | None = None

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.future.done():
            return  # the caller was cancelled
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)


def _backoff(attempt: int) -> float:
    return float(min(0.05 * 2 ** (attempt - 1), 2.0))


class _Database:
    """One pool, lazy opening with migrations, and the group-commit writer."""

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str,
        min_size: int,
        max_size: int,
        timeout_seconds: float,
        apply_migrations: bool,
        reconnect_attempts: int,
    ) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.timeout_seconds = timeout_seconds
        self.apply_migrations = apply_migrations
        self.reconnect_attempts = reconnect_attempts
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self._opening: asyncio.Lock | None = None
        self._queue: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self.transactions = 0
        """Write transactions committed, for tests and benchmarks."""
        self.reconnects = 0
        """Operations retried on a new connection after one was lost."""

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    async def pool(self, *, migrating: bool | None = None) -> AsyncConnectionPool[_Connection]:
        if self._pool is not None:
            return self._pool
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            library = "trio" if "trio" in sys.modules else "another event loop"
            raise RuntimeError(
                f"the PostgreSQL adapters run on asyncio only (psycopg's async connections), "
                f"not on {library}: run this code under asyncio "
                "(for example anyio.run(main, backend='asyncio'))"
            ) from None
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                pool: AsyncConnectionPool[_Connection] = AsyncConnectionPool(
                    self.conninfo,
                    min_size=self.min_size,
                    max_size=self.max_size,
                    timeout=self.timeout_seconds,
                    kwargs={"autocommit": True},
                    open=False,
                )
                try:
                    await pool.open(wait=True, timeout=self.timeout_seconds)
                    if self.apply_migrations if migrating is None else migrating:
                        async with pool.connection() as connection:
                            await migrate(connection, self.schema)
                except BaseException:
                    await asyncio.shield(pool.close())  # closes even if we are cancelled
                    raise
                self._pool = pool
        return self._pool

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[_Connection]:
        """A pooled connection (no round trip to check it: that would cost every statement
        one; a dead one is found by the statement, and ``lost`` then clears the pool)."""
        pool = await self.pool()
        async with pool.connection() as connection:
            yield connection

    async def lost(self, attempt: int) -> None:
        """After a statement failed on a lost connection: drop every dead idle connection of
        the pool at once (the server restarted, or terminated them all), then retry at once
        the first time, with a growing pause after that."""
        self.reconnects += 1
        if attempt > 1:
            await asyncio.sleep(_backoff(attempt - 1))
        if self._pool is not None:
            try:
                # Checks the idle connections now and replaces the dead ones. (The pool's own
                # check on checkout pauses 1, 2, 4 ... s after each dead one.)
                await self._pool.check()
            except Exception as exc:  # the retry finds out
                logger.warning("saga.postgres.pool_check_failed: %s", exc)

    async def migrate(self) -> list[str]:
        pool = await self.pool(migrating=False)
        async with pool.connection() as connection:
            return await migrate(connection, self.schema)

    async def read(self, fn: Callable[[_Connection], Awaitable[Any]]) -> Any:
        """Run ``fn`` on a pooled connection, again on a new one if the connection is lost."""
        attempt = 0
        while True:
            try:
                async with self.connection() as connection:
                    return await fn(connection)
            except psycopg.OperationalError as exc:
                attempt += 1
                if attempt > self.reconnect_attempts:
                    raise
                logger.warning("saga.postgres.reconnect: read failed (%s), retrying", exc)
                await self.lost(attempt)

    async def fetchone(self, query: sql.Composed, params: Sequence[Any] = ()) -> Any:
        async def fn(connection: _Connection) -> Any:
            cursor = await connection.execute(query, params)
            return await cursor.fetchone()

        return await self.read(fn)

    async def fetchall(self, query: sql.Composed, params: Sequence[Any] = ()) -> list[Any]:
        async def fn(connection: _Connection) -> list[Any]:
            cursor = await connection.execute(query, params)
            rows: list[Any] = await cursor.fetchall()
            return rows

        result: list[Any] = await self.read(fn)
        return result

    async def write(
        self,
        key: tuple[str, str],
        op: Callable[[_Connection], Awaitable[Any]],
        verify: Callable[[_Connection], Awaitable[bool]] | None = None,
        *,
        statement: tuple[str, tuple[Any, ...]] | None = None,
        on_row: Callable[[Any, _Connection], Awaitable[Any]] | None = None,
    ) -> Any:
        """Run ``op`` in a write transaction, shared with the writes queued meanwhile.

        ``op`` makes at most one writing statement: alone in its batch, it runs without
        ``BEGIN``/``COMMIT`` (the statement is the transaction). A write given as
        ``statement`` and ``on_row`` (equivalent to ``op``) is sent with the others of its
        batch in one pipeline: one round trip for the batch, not one per write."""
        loop = asyncio.get_running_loop()
        item = _Write(key, op, loop.create_future(), verify, statement, on_row)
        self._queue.append(item)
        if self._flusher is None:
            # A task of its own: a caller cancelled while its batch is being committed must
            # not abandon the other callers' writes half-way.
            self._flusher = loop.create_task(self._flush())
        try:
            return await item.future
        except asyncio.CancelledError:
            if item in self._queue:
                self._queue.remove(item)  # cancelled before its batch started: never written
            raise

    async def _flush(self) -> None:
        batch: list[_Write] = []
        try:
            while self._queue:
                # A caller cancelled before its batch starts is left out: never written.
                batch = [item for item in self._queue if not item.future.done()]
                self._queue = []
                if batch:
                    await self._commit_batch(batch)
        except BaseException as exc:  # cancelled with the event loop: nothing is left waiting
            for item in [*batch, *self._queue]:
                item.settle(error=exc)
            self._queue = []
            raise
        finally:
            self._flusher = None

    async def _commit_batch(self, batch: list[_Write]) -> None:
        # Every batch locks rows in key order, so concurrent batches (other objects, other
        # processes) wait for each other instead of deadlocking.
        pending = sorted(batch, key=lambda item: item.key)
        attempt = 0
        in_doubt = False  # the connection was lost during COMMIT: did the batch commit?
        while pending:
            committing = False
            try:
                async with self.connection() as connection:
                    if in_doubt:
                        pending = await self._drop_committed(connection, pending)
                        in_doubt = False
                    if len(pending) == 1:
                        # Alone in its batch: its one writing statement is its transaction,
                        # one round trip instead of BEGIN, statement, COMMIT.
                        item = pending[0]
                        committing = True
                        try:
                            result = await item.op(connection)
                        except (SagaConflictError, SagaAlreadyExistsError) as exc:
                            item.settle(error=exc)  # that statement wrote nothing
                            return
                        except psycopg.Error as exc:
                            if connection.broken or connection.closed:
                                raise
                            item.settle(error=exc)
                            return
                        self.transactions += 1
                        item.settle(result)
                        return
                    if len(pending) > 1 and all(item.statement is not None for item in pending):
                        # In doubt if the connection goes: the check then finds what committed.
                        committing = True
                        if await self._pipelined(connection, pending):
                            return
                        committing = False
                    while pending:
                        outcomes: list[tuple[_Write, Any, BaseException | None]] = []
                        failed: tuple[_Write, Exception] | None = None
                        await connection.execute("BEGIN")
                        for item in pending:
                            try:
                                outcomes.append((item, await item.op(connection), None))
                            except (SagaConflictError, SagaAlreadyExistsError) as exc:
                                outcomes.append((item, None, exc))  # that statement wrote nothing
                            except psycopg.Error as exc:
                                if connection.broken or connection.closed:
                                    raise
                                failed = (item, exc)
                                break
                        if failed is None:
                            committing = True
                            await connection.execute("COMMIT")
                            self.transactions += 1
                            for item, result, error in outcomes:
                                item.settle(result, error)
                            return
                        # One write failed and aborted the transaction: it alone gets its
                        # error, and the others are written again, without it, in a new one.
                        await connection.execute("ROLLBACK")
                        item, error = failed
                        item.settle(error=error)
                        pending.remove(item)
            except psycopg.OperationalError as exc:
                # The connection was lost (server restarted, backend terminated): the batch
                # runs again on a new connection. If COMMIT was under way, the writes that
                # did commit are found and settled first, so none is applied twice.
                attempt += 1
                if attempt > self.reconnect_attempts:
                    for item in pending:
                        item.settle(error=exc)
                    return
                in_doubt = in_doubt or committing
                logger.warning(
                    "saga.postgres.reconnect: write batch of %d failed (%s), retrying",
                    len(pending),
                    exc,
                )
                await self.lost(attempt)
            except BaseException as exc:
                for item in pending:
                    item.settle(error=exc)
                if not isinstance(exc, Exception):
                    raise
                return

    async def _pipelined(self, connection: _Connection, pending: list[_Write]) -> bool:
        """The batch in one transaction, its statements pipelined. False (nothing written) if
        a statement failed: the caller then runs the writes one by one to isolate it."""
        await connection.execute("BEGIN")
        try:
            cursors = []
            async with connection.pipeline() as pipeline:
                for item in pending:
                    assert item.statement is not None
                    cursor = connection.cursor()
                    await cursor.execute(*item.statement)
                    cursors.append(cursor)
                await pipeline.sync()
            outcomes: list[tuple[_Write, Any, BaseException | None]] = []
            for item, cursor in zip(pending, cursors, strict=True):
                assert item.on_row is not None
                row = await cursor.fetchone()
                try:
                    outcomes.append((item, await item.on_row(row, connection), None))
                except (SagaConflictError, SagaAlreadyExistsError) as exc:
                    outcomes.append((item, None, exc))  # that statement wrote nothing
        except psycopg.Error:
            if connection.broken or connection.closed:
                raise
            await connection.execute("ROLLBACK")
            return False
        await connection.execute("COMMIT")
        self.transactions += 1
        for item, result, error in outcomes:
            item.settle(result, error)
        return True

    async def _drop_committed(self, connection: _Connection, pending: list[_Write]) -> list[_Write]:
        left = []
        for item in pending:
            if item.verify is not None and await item.verify(connection):
                item.settle(None)  # it did commit
            else:
                left.append(item)
        return left

    async def close(self) -> None:
        if self._flusher is not None:
            # Let queued writes finish; waiting neither cancels the writer nor raises its error.
            await asyncio.wait([self._flusher])
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()


class _PostgresBase(AsyncLifecycle):
    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        timeout_seconds: float = 30.0,
        apply_migrations: bool = True,
        reconnect_attempts: int = 8,
    ) -> None:
        self._db = _Database(
            conninfo,
            schema=schema,
            min_size=min_size,
            max_size=max_size,
            timeout_seconds=timeout_seconds,
            apply_migrations=apply_migrations,
            reconnect_attempts=reconnect_attempts,
        )

    @property
    def schema(self) -> str:
        """The schema holding the tables."""
        return self._db.schema

    @property
    def transactions(self) -> int:
        """Write transactions this object committed."""
        return self._db.transactions

    @property
    def reconnects(self) -> int:
        """Reads and write batches retried on a new connection after one was lost."""
        return self._db.reconnects

    async def open(self) -> None:
        """Open the pool and apply migrations now (otherwise done on first use)."""
        await self._db.pool()

    async def migrate(self) -> list[str]:
        """Apply the pending migrations (opening the pool if needed); return their names."""
        return await self._db.migrate()

    async def close(self) -> None:
        """Wait for queued writes, then close the pool; using the object again reopens it."""
        await self._db.close()


def _selection(
    statuses: Collection[SagaStatus] | None, saga_type: str | None
) -> tuple[list[sql.Composable], list[Any]]:
    """The filter clauses and parameters that ``list_sagas`` and ``list_saga_ids`` share."""
    clauses: list[sql.Composable] = []
    params: list[Any] = []
    if statuses is not None:
        clauses.append(sql.SQL("status IN ({})").format(_status_list(statuses)))
    if saga_type is not None:
        clauses.append(sql.SQL("saga_type = %s"))
        params.append(saga_type)
    return clauses, params


def _status_list(statuses: Collection[SagaStatus]) -> sql.Composable:
    # Literals, not parameters: the planner can then match the partial indexes of active
    # and failed sagas. The values are the enum's own, in a stable order.
    values = sorted({SagaStatus(status).value for status in statuses})
    return sql.SQL(", ").join(sql.Literal(value) for value in values)


@dataclass(slots=True, eq=False)
class _Lease:
    epoch: int
    deadline: float  # event-loop time by which the lease must be renewed (less a margin)
    scopes: set[anyio.CancelScope] = field(default_factory=set)

    def extend(self, deadline: float) -> None:
        self.deadline = max(self.deadline, deadline)
        for scope in self.scopes:
            scope.deadline = self.deadline

    def lose(self) -> None:
        self.deadline = -math.inf
        for scope in self.scopes:
            scope.cancel()


def _run_after(context: SagaContext[Any]) -> datetime | None:
    """The saga's durable timer: when a worker should next pick it up (None: now)."""
    if context.is_terminal or not 0 <= context.current_step_index < len(context.steps):
        return None
    index = context.current_step_index
    when = context.steps[index].next_attempt_at
    saga = context._saga
    if (
        when is not None
        and context.status is SagaStatus.RUNNING
        and context.deadline is not None
        and context.deadline < when
        # A step after the pivot is retried past the deadline: its next attempt is the timer
        # (waking at the deadline would only find it waiting, over and over).
        and not (saga is not None and saga.steps[index].retriable)
    ):
        return context.deadline  # the deadline fails the step before its next attempt
    return when


def _default_owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:8]}"


class PostgresSagaRepository(_PostgresBase):
    """A [`SagaRepository`][saga_orchestrator.protocols.SagaRepository] in PostgreSQL, for
    many processes on one database.

    It also implements [`SagaStatusCounter`][saga_orchestrator.protocols.SagaStatusCounter],
    [`SagaIdLister`][saga_orchestrator.protocols.SagaIdLister],
    [`StrandingRecorder`][saga_orchestrator.protocols.StrandingRecorder] and
    [`OutboxSource`][saga_orchestrator.protocols.OutboxSource]. Use it as an async context
    manager, or call ``open`` and ``close``, on one asyncio event loop (its pool belongs to the
    loop it was opened on; trio is not supported).

    **Leases.** A saga in flight is leased to the process driving it (``owner``), until an
    expiry on the database clock that a background heartbeat keeps pushing back while the
    saga runs. The process that stores a new saga holds its lease; one that resumes a stored
    saga takes the lease with its first write, if nobody else holds it; a
    [`SagaWorker`][saga_orchestrator.worker.SagaWorker] claims runnable sagas with
    ``FOR UPDATE SKIP LOCKED``. Every write names the lease's epoch, so a process whose lease
    expired and was taken over can no longer write the saga
    ([`SagaLeaseError`][saga_orchestrator.errors.SagaLeaseError]), and the step it was running
    is cancelled before the lease can expire (``lease_guard``), so no step runs in two
    processes at once. A terminal write releases the lease. If the process dies, its sagas
    are taken over when their leases expire.

    **Outbox.** Each transition's lifecycle events are written to the ``saga_outbox`` table
    in the transition's transaction (``stores_events``); an
    [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] publishes them.

    **Lost connections** (a server restart, ``pg_terminate_backend``) are retried on a new
    connection; a write whose ``COMMIT`` was cut off is checked in the database first, so it
    is never applied twice.

    Args:
        conninfo: a libpq connection string or URI
            (``postgresql://user@host:5432/dbname``).
        schema: the schema for the tables, created if missing.
        min_size: connections the pool keeps open.
        max_size: connections the pool may open.
        timeout_seconds: how long opening the pool, or waiting for a free connection, may
            take before failing.
        apply_migrations: apply pending migrations when the pool opens; if ``False``, call
            ``migrate()`` (or deploy the SQL files some other way) first.
        reconnect_attempts: how many times a read or a write batch is retried on a new
            connection before its error is raised.
        lease_seconds: how long a lease lasts without renewal; a dead process's sagas are
            taken over this long after its last heartbeat.
        owner: this process's name in the ``lease_owner`` column (default
            ``host:pid:random``); unique per repository object.
        outbox: write lifecycle events to the outbox (``False``: no outbox rows).
    """

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str = "public",
        min_size: int = 1,
        max_size: int = 10,
        timeout_seconds: float = 30.0,
        apply_migrations: bool = True,
        reconnect_attempts: int = 8,
        lease_seconds: float = 30.0,
        owner: str | None = None,
        outbox: bool = True,
    ) -> None:
        super().__init__(
            conninfo,
            schema=schema,
            min_size=min_size,
            max_size=max_size,
            timeout_seconds=timeout_seconds,
            apply_migrations=apply_migrations,
            reconnect_attempts=reconnect_attempts,
        )
        if not lease_seconds > 0:
            raise ValueError("lease_seconds must be > 0")
        self.lease_seconds = float(lease_seconds)
        """How long a lease lasts without renewal."""
        self.owner = owner or _default_owner()
        """This object's name as a lease holder."""
        self.stores_events = outbox
        """Whether lifecycle events are written to the outbox with their transition."""
        # Renew well before expiry; stop a step well before the lease can expire.
        self._heartbeat_seconds = self.lease_seconds / 3
        self._margin = min(self.lease_seconds / 4, 2.0)
        self._leases: dict[UUID, _Lease] = {}
        self._statements: dict[tuple[str, int, bool], str] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._notifier: _Notifier | None = None
        self._relay_connection: _Connection | None = None
        self._relay_lock_held = False
        self.leases_lost = 0
        """Leases this object found taken over (or expired) while it held them."""

    # ------------------------------------------------------------------ writes

    def _channel(self, kind: str) -> str:
        return f"saga_orchestrator_{kind}:{self._db.schema}"[:63]

    def _write_statement(
        self,
        write: str,
        write_params: Sequence[Any],
        events: Sequence[SagaEvent],
        notify: tuple[str, str] | None,
    ) -> tuple[str, tuple[Any, ...]]:
        """One statement: the row's write (``RETURNING lease_epoch``), its events into the
        outbox only if the row was written, and a notification only then too. A statement
        alone is a transaction, so a write alone in its batch costs one round trip."""
        with_events = len(events) if self.stores_events else 0
        key = (write, with_events, notify is not None)
        query = self._statements.get(key)
        if query is None:
            parts: list[sql.Composable] = [
                sql.SQL("WITH w AS ("),
                sql.SQL(write).format(self._db.table("sagas")),
            ]
            if with_events:
                # One row of parameters per event (a transition has 1 to 3): text parameters
                # go as they are, where a text[] parameter would be escaped quote by quote.
                rows = sql.SQL(", ").join(
                    sql.SQL("(%s::uuid, %s::integer, %s::text)") for _ in range(with_events)
                )
                parts.append(
                    sql.SQL(
                        "), o AS (INSERT INTO {} (saga_id, sequence, event) SELECT e.* FROM"
                        " (VALUES {}) AS e WHERE EXISTS (SELECT 1 FROM w)"
                    ).format(self._db.table("saga_outbox"), rows)
                )
            if notify is not None:
                parts.append(sql.SQL(") SELECT lease_epoch, pg_notify(%s, %s) FROM w"))
            else:
                parts.append(sql.SQL(") SELECT lease_epoch FROM w"))
            # Built once per shape: the same text each time also lets psycopg prepare it.
            query = self._statements[key] = sql.Composed(parts).as_string(None)
        params: list[Any] = list(write_params)
        if with_events:
            for event in events:
                params += [event.saga_id, event.sequence, encode_event(event)]
        if notify is not None:
            params += notify
        return query, tuple(params)

    def _local_deadline(self, sent_at: float) -> float:
        return sent_at + self.lease_seconds - self._margin

    async def create(
        self,
        context: SagaContext[Any],
        state: str,
        events: Sequence[SagaEvent] = (),
        *,
        lease: bool = True,
    ) -> None:
        """Insert a new saga; raises ``SagaAlreadyExistsError`` if its id is taken.

        With ``lease=False`` (a saga submitted for workers) nobody holds it yet, and waiting
        workers are notified.
        """
        owner = self.owner if lease and not context.is_terminal else None
        insert = (
            "INSERT INTO {} (saga_id, saga_type, correlation_id, status, version,"
            " created_at, updated_at, state, run_after, lease_owner, lease_expires_at,"
            " lease_epoch) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " CASE WHEN %s THEN clock_timestamp() + %s * interval '1 second' END, %s)"
            " ON CONFLICT (saga_id) DO NOTHING RETURNING lease_epoch"
        )
        values = (
            context.saga_id,
            context.saga_type,
            context.correlation_id,
            context.status.value,
            context.version,
            context.created_at or datetime.now(UTC),
            context.updated_at or datetime.now(UTC),
            state,
            _run_after(context),
            owner,
            owner is not None,
            self.lease_seconds,
            1 if owner is not None else 0,
        )
        notify = None if owner is not None else (self._channel("ready"), "")
        statement = self._write_statement(insert, values, events, notify)
        saga_id = context.saga_id

        async def on_row(row: Any, connection: _Connection) -> None:
            if row is None:
                raise SagaAlreadyExistsError(saga_id)

        async def op(connection: _Connection) -> None:
            cursor = await connection.execute(*statement)
            await on_row(await cursor.fetchone(), connection)

        version = context.version
        verify = self._verifier(saga_id, version)
        sent_at = asyncio.get_running_loop().time()
        await self._db.write(
            ("sagas", str(saga_id)), op, verify, statement=statement, on_row=on_row
        )
        if owner is not None:
            self._hold(saga_id, 1, self._local_deadline(sent_at))

    def _verifier(self, saga_id: UUID, version: int) -> Callable[[_Connection], Awaitable[bool]]:
        query = self._statements.get(("verify", 0, False))
        if query is None:
            query = (
                sql.SQL("SELECT version, lease_owner FROM {} WHERE saga_id = %s")
                .format(self._db.table("sagas"))
                .as_string(None)
            )
            self._statements[("verify", 0, False)] = query

        async def verify(connection: _Connection) -> bool:
            cursor = await connection.execute(query, (saga_id,))
            row = await cursor.fetchone()
            return row is not None and row[0] == version and row[1] in (self.owner, None)

        return verify

    async def update(
        self,
        context: SagaContext[Any],
        state: str,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        """Replace the saga's row if its stored version is ``expected_version`` and this
        object holds its lease (or can take it: nobody holds it, or it expired).

        Raises ``SagaConflictError`` (a version mismatch) or ``SagaLeaseError`` (another
        process holds the lease, or took it over), and writes nothing, otherwise. A terminal
        status releases the lease.
        """
        saga_id = context.saga_id
        held = self._leases.get(saga_id)
        release = context.is_terminal
        common = (
            "status = %s, version = %s, updated_at = %s, state = %s, run_after = %s,"
            " lease_owner = CASE WHEN %s THEN NULL ELSE %s END,"
            " lease_expires_at = CASE WHEN %s THEN NULL"
            " ELSE clock_timestamp() + %s * interval '1 second' END"
        )
        values = (
            context.status.value,
            context.version,
            context.updated_at or datetime.now(UTC),
            state,
            _run_after(context),
            release,
            self.owner,
            release,
            self.lease_seconds,
        )
        if held is not None:
            write = (
                "UPDATE {} SET " + common + " WHERE saga_id = %s AND version = %s"
                " AND lease_owner = %s AND lease_epoch = %s RETURNING lease_epoch"
            )
            params: tuple[Any, ...] = (*values, saga_id, expected_version, self.owner, held.epoch)
        else:
            write = (
                "UPDATE {} SET " + common + ", lease_epoch = lease_epoch + 1"
                " WHERE saga_id = %s AND version = %s AND (lease_owner IS NULL"
                " OR lease_owner = %s OR lease_expires_at < now()) RETURNING lease_epoch"
            )
            params = (*values, saga_id, expected_version, self.owner)
        notify = (self._channel("done"), str(saga_id)) if release else None
        statement = self._write_statement(write, params, events, notify)

        async def on_row(row: Any, connection: _Connection) -> int:
            if row is None:
                raise await self._refusal(connection, saga_id, expected_version, held)
            return int(row[0])

        async def op(connection: _Connection) -> int:
            cursor = await connection.execute(*statement)
            return await on_row(await cursor.fetchone(), connection)

        sent_at = asyncio.get_running_loop().time()
        epoch = await self._db.write(
            ("sagas", str(saga_id)),
            op,
            self._verifier(saga_id, context.version),
            statement=statement,
            on_row=on_row,
        )
        if release:
            self._leases.pop(saga_id, None)
        elif held is not None:
            held.extend(self._local_deadline(sent_at))
        elif isinstance(epoch, int):
            self._hold(saga_id, epoch, self._local_deadline(sent_at))
        else:  # committed, found so after a lost connection: the epoch is read back
            self._hold(saga_id, await self._epoch(saga_id), self._local_deadline(sent_at))

    async def _epoch(self, saga_id: UUID) -> int:
        row = await self._db.fetchone(
            sql.SQL("SELECT lease_epoch FROM {} WHERE saga_id = %s").format(
                self._db.table("sagas")
            ),
            (saga_id,),
        )
        return int(row[0]) if row is not None else 0

    async def _refusal(
        self, connection: _Connection, saga_id: UUID, expected_version: int, held: _Lease | None
    ) -> SagaConflictError:
        cursor = await connection.execute(
            sql.SQL(
                "SELECT version, lease_owner, lease_epoch, lease_expires_at FROM {}"
                " WHERE saga_id = %s"
            ).format(self._db.table("sagas")),
            (saga_id,),
        )
        row = await cursor.fetchone()
        if row is None or row[0] != expected_version:
            return SagaConflictError(saga_id, expected_version)
        if held is not None:
            self._lose(saga_id)
            return SagaLeaseError(
                saga_id,
                f"saga {saga_id}: the lease of {self.owner} (epoch {held.epoch}) was taken "
                f"over by {row[1] or 'nobody'} (epoch {row[2]}); this process stopped "
                "driving it",
            )
        return SagaLeaseError(
            saga_id,
            f"saga {saga_id} is leased to {row[1]} until {row[3].isoformat()}; "
            "another process is driving it",
        )

    async def get(self, saga_id: UUID) -> SagaContext[Any] | None:
        """The stored saga, or ``None``."""
        row = await self._db.fetchone(
            sql.SQL("SELECT state FROM {} WHERE saga_id = %s").format(self._db.table("sagas")),
            (saga_id,),
        )
        return decode_context(row[0]) if row is not None else None

    async def get_by_correlation_id(self, correlation_id: str) -> SagaContext[Any] | None:
        """The most recently created saga with this correlation id, or ``None``."""
        row = await self._db.fetchone(
            sql.SQL(
                "SELECT state FROM {} WHERE correlation_id = %s ORDER BY created_seq DESC LIMIT 1"
            ).format(self._db.table("sagas")),
            (correlation_id,),
        )
        return decode_context(row[0]) if row is not None else None

    async def list_sagas(
        self,
        *,
        statuses: Collection[SagaStatus] | None = None,
        saga_type: str | None = None,
        limit: int = 1000,
    ) -> list[SagaContext[Any]]:
        """Stored sagas, oldest first, filtered by status and type, at most ``limit``."""
        if statuses is not None and not statuses:
            return []
        clauses, params = _selection(statuses, saga_type)
        rows = await self._db.fetchall(self._select("state", clauses), [*params, int(limit)])
        return [decode_context(row[0]) for row in rows]

    async def list_saga_ids(
        self,
        *,
        statuses: Collection[SagaStatus] | None = None,
        saga_type: str | None = None,
        limit: int = 1000,
    ) -> list[UUID]:
        """Ids of stored sagas, oldest first, without decoding their state: the same
        selection as ``list_sagas``, so that a caller can read them one by one and get past
        a row that cannot be decoded."""
        if statuses is not None and not statuses:
            return []
        clauses, params = _selection(statuses, saga_type)
        rows = await self._db.fetchall(self._select("saga_id", clauses), [*params, int(limit)])
        return [row[0] for row in rows]

    def _select(self, column: str, clauses: list[sql.Composable]) -> sql.Composed:
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
        return sql.SQL("SELECT {} FROM {}{} ORDER BY created_seq LIMIT %s").format(
            sql.Identifier(column), self._db.table("sagas"), where
        )

    async def count_by_status(
        self, statuses: Collection[SagaStatus]
    ) -> dict[tuple[str, SagaStatus], int]:
        """``{(saga_type, status): count}`` for the given statuses (absent means 0).

        Cheap for active and failed statuses, which partial indexes cover, however many
        finished sagas the table holds.
        """
        if not statuses:
            return {}
        rows = await self._db.fetchall(
            sql.SQL(
                "SELECT saga_type, status, count(*) FROM {} WHERE status IN ({})"
                " GROUP BY saga_type, status"
            ).format(self._db.table("sagas"), _status_list(statuses))
        )
        return {(row[0], SagaStatus(row[1])): row[2] for row in rows}

    async def mark_stranded(
        self, saga_id: UUID, reason: str, *, saga_version: int | None = None
    ) -> None:
        """Record that ``saga_id`` could not be resumed, and why (see
        [`StrandingRecorder`][saga_orchestrator.protocols.StrandingRecorder])."""
        query = sql.SQL(
            "INSERT INTO {} (saga_id, version, saga_version, reason)"
            " SELECT saga_id, version, %s, %s FROM {} WHERE saga_id = %s"
            " ON CONFLICT (saga_id) DO UPDATE SET version = excluded.version,"
            " saga_version = excluded.saga_version, reason = excluded.reason,"
            " marked_at = excluded.marked_at"
        ).format(self._db.table("saga_stranded"), self._db.table("sagas"))
        params = (saga_version, reason, saga_id)

        async def op(connection: _Connection) -> None:
            await connection.execute(query, params)

        await self._db.write(("saga_stranded", str(saga_id)), op)

    async def list_stranded(self, *, limit: int = 1000) -> list[SkippedSaga]:
        """The unfinished sagas whose mark still holds, oldest mark first."""
        rows = await self._db.fetchall(
            sql.SQL(
                "SELECT m.saga_id, s.saga_type, m.reason, m.saga_version FROM {} m"
                " JOIN {} s ON s.saga_id = m.saga_id AND s.version = m.version"
                " WHERE s.status IN ({}) ORDER BY m.marked_at, m.saga_id LIMIT %s"
            ).format(
                self._db.table("saga_stranded"),
                self._db.table("sagas"),
                _status_list(ACTIVE_STATUSES),
            ),
            (int(limit),),
        )
        return [SkippedSaga(row[0], row[1], row[2], row[3]) for row in rows]

    # ------------------------------------------------------------------ leases

    def _hold(self, saga_id: UUID, epoch: int, deadline: float) -> None:
        lease = self._leases.get(saga_id)
        if lease is None or lease.epoch != epoch:
            lease = self._leases[saga_id] = _Lease(epoch, deadline)
        else:
            lease.extend(deadline)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._beat())

    def _lose(self, saga_id: UUID) -> None:
        lease = self._leases.pop(saga_id, None)
        if lease is not None:
            self.leases_lost += 1
            logger.warning(
                "saga.lease.lost: saga %s (epoch %d) is no longer leased to %s",
                saga_id,
                lease.epoch,
                self.owner,
                extra={"event": "saga.lease.lost", "saga_id": str(saga_id)},
            )
            lease.lose()

    @property
    def held_leases(self) -> dict[UUID, int]:
        """The sagas this object holds leases on, with each lease's epoch."""
        return {saga_id: lease.epoch for saga_id, lease in self._leases.items()}

    async def _beat(self) -> None:
        """Renew every held lease, every third of ``lease_seconds``, in one statement."""
        loop = asyncio.get_running_loop()
        table = self._db.table("sagas")
        # Rows locked in key order, as the group-commit writer does: never a deadlock.
        renew = sql.SQL(
            "UPDATE {} AS s SET"
            " lease_expires_at = clock_timestamp() + %s * interval '1 second'"
            " FROM (SELECT saga_id FROM {} WHERE lease_owner = %s AND (saga_id, lease_epoch)"
            " IN (SELECT * FROM unnest(%s::uuid[], %s::bigint[])) ORDER BY saga_id FOR UPDATE)"
            " AS mine WHERE s.saga_id = mine.saga_id RETURNING s.saga_id"
        ).format(table, table)
        while self._leases:
            await asyncio.sleep(self._heartbeat_seconds)
            snapshot = [(saga_id, lease.epoch) for saga_id, lease in self._leases.items()]
            if not snapshot:
                break
            sent_at = loop.time()
            try:
                rows = await self._db.fetchall(
                    renew,
                    (
                        self.lease_seconds,
                        self.owner,
                        [saga_id for saga_id, _ in snapshot],
                        [epoch for _, epoch in snapshot],
                    ),
                )
            except Exception as exc:
                # The steps in flight stop on their own when their leases run out.
                logger.warning("saga.lease.heartbeat_failed: %s", exc)
                continue
            renewed = {row[0] for row in rows}
            for saga_id, epoch in snapshot:
                lease = self._leases.get(saga_id)
                if lease is None or lease.epoch != epoch:
                    continue  # released or re-taken meanwhile
                if saga_id in renewed:
                    lease.extend(self._local_deadline(sent_at))
                else:
                    self._lose(saga_id)

    @contextmanager
    def lease_guard(self, saga_id: UUID) -> Iterator[None]:
        """Cancel the body (a step's action or compensation) before this object's lease on
        the saga can expire, and raise ``SagaLeaseError`` then.

        Heartbeats push the deadline back while they succeed; if they fail (the database is
        unreachable) or find the lease taken over, the body is cancelled while the lease is
        still valid, so another process that takes the saga over never overlaps it. The
        orchestrator calls this around every action and compensation.

        The lease is checked once more before the body starts: a process that was frozen
        (SIGSTOP, a long GC pause, a suspended VM) past its lease's deadline raises
        ``SagaLeaseError`` here instead of calling the action at all.
        """
        lease = self._leases.get(saga_id)
        if lease is not None and asyncio.get_running_loop().time() >= lease.deadline:
            self._lose(saga_id)
            raise SagaLeaseError(
                saga_id,
                f"saga {saga_id}: {self.owner}'s lease ran out before the step could start; "
                "the step was not called",
            )
        scope = anyio.CancelScope(deadline=lease.deadline if lease is not None else math.inf)
        if lease is not None:
            lease.scopes.add(scope)
        try:
            with scope:
                yield
        finally:
            if lease is not None:
                lease.scopes.discard(scope)
        if scope.cancelled_caught:
            self._lose(saga_id)
            raise SagaLeaseError(
                saga_id,
                f"saga {saga_id}: {self.owner} could not renew its lease in time; "
                "the running step was cancelled",
            )

    async def claim(
        self, limit: int, *, saga_types: Collection[str] | None = None
    ) -> list[SagaContext[Any]]:
        """Lease up to ``limit`` runnable sagas to this object and return them.

        Runnable: in flight, not leased (or the lease expired), and due (``run_after``).
        ``FOR UPDATE SKIP LOCKED`` lets concurrent claimers take different sagas without
        waiting for each other. A row that cannot be decoded here (its data class is not
        installed) is put back for a minute and logged.
        """
        if limit < 1:
            return []
        table = self._db.table("sagas")
        types = sql.SQL(" AND saga_type = ANY(%s)") if saga_types is not None else sql.SQL("")
        query = sql.SQL(
            "UPDATE {} AS s SET lease_owner = %s,"
            " lease_expires_at = clock_timestamp() + %s * interval '1 second',"
            " lease_epoch = s.lease_epoch + 1 FROM (SELECT saga_id FROM {}"
            " WHERE status IN ('pending', 'running', 'compensating')"
            " AND (lease_owner IS NULL OR lease_expires_at < now())"
            " AND (run_after IS NULL OR run_after <= now()){}"
            " ORDER BY run_after NULLS FIRST, created_seq LIMIT %s FOR UPDATE SKIP LOCKED)"
            " AS due WHERE s.saga_id = due.saga_id RETURNING s.saga_id, s.lease_epoch, s.state"
        ).format(table, table, types)
        params: list[Any] = [self.owner, self.lease_seconds]
        if saga_types is not None:
            params.append(list(saga_types))
        params.append(int(limit))
        sent_at = asyncio.get_running_loop().time()

        async def fn(connection: _Connection) -> list[Any]:
            cursor = await connection.execute(query, params)
            rows: list[Any] = await cursor.fetchall()
            return rows

        claimed: list[SagaContext[Any]] = []
        for saga_id, epoch, state in await self._db.read(fn):
            self._hold(saga_id, epoch, self._local_deadline(sent_at))
            try:
                claimed.append(decode_context(state))
            except Exception as exc:
                logger.exception(
                    "saga.claim.undecodable: saga %s is put back for a minute",
                    saga_id,
                    extra={"event": "saga.claim.undecodable", "saga_id": str(saga_id)},
                )
                try:
                    await self.mark_stranded(saga_id, f"unreadable: {exc}")
                except Exception as mark_exc:  # the log says it already
                    logger.warning("saga.stranded.mark_failed: saga %s: %s", saga_id, mark_exc)
                await self.release(saga_id, delay_seconds=60.0)
        return claimed

    async def release(self, saga_id: UUID, *, delay_seconds: float = 0.0) -> bool:
        """Give up this object's lease on the saga, so any worker can pick it up (after
        ``delay_seconds``, if later than its own timer). Returns whether it was still held.
        """
        lease = self._leases.pop(saga_id, None)
        if lease is None:
            return False
        query = sql.SQL(
            "UPDATE {} SET lease_owner = NULL, lease_expires_at = NULL, run_after ="
            " CASE WHEN %s > 0 THEN greatest(coalesce(run_after, now()),"
            " clock_timestamp() + %s * interval '1 second') ELSE run_after END"
            " WHERE saga_id = %s AND lease_owner = %s AND lease_epoch = %s"
        ).format(self._db.table("sagas"))
        params = (delay_seconds, delay_seconds, saga_id, self.owner, lease.epoch)
        channel = self._channel("ready")

        async def op(connection: _Connection) -> bool:
            cursor = await connection.execute(query, params)
            await connection.execute("SELECT pg_notify(%s, '')", (channel,))
            return bool(cursor.rowcount == 1)

        released: bool = await self._db.write(("sagas", str(saga_id)), op)
        return released

    async def release_all(self) -> int:
        """Release every lease this object holds (at shutdown); return how many."""
        count = 0
        for saga_id in list(self._leases):
            try:
                count += await self.release(saga_id)
            except Exception as exc:  # they expire on their own
                logger.warning("saga.lease.release_failed: saga %s: %s", saga_id, exc)
        return count

    # ------------------------------------------------------------------ notifications

    def _notifications(self) -> _Notifier:
        if self._notifier is None:
            self._notifier = _Notifier(
                self._db.conninfo, ready=self._channel("ready"), done=self._channel("done")
            )
        self._notifier.start()
        return self._notifier

    async def wait_for_work(self, seconds: float) -> bool:
        """Wait until a saga is submitted or handed back (LISTEN/NOTIFY), at most
        ``seconds``; return whether notified. Workers poll as well, so a missed
        notification only delays."""
        return await self._notifications().wait_ready(seconds)

    async def wait_for_terminal(self, saga_id: UUID, seconds: float) -> bool:
        """Wait until a write makes ``saga_id`` terminal (LISTEN/NOTIFY), at most
        ``seconds``; return whether notified."""
        return await self._notifications().wait_done(str(saga_id), seconds)

    # ------------------------------------------------------------------ outbox

    async def _relay(self) -> _Connection | None:
        """The relay's own connection, holding the outbox lock; None if another holds it."""
        connection = self._relay_connection
        if connection is not None and (connection.closed or connection.broken):
            self._relay_connection = connection = None
            self._relay_lock_held = False
        if connection is None:
            connection = await psycopg.AsyncConnection.connect(
                self._db.conninfo, autocommit=True, connect_timeout=10
            )
            self._relay_connection = connection
        if not self._relay_lock_held:
            cursor = await connection.execute(
                "SELECT pg_try_advisory_lock(hashtextextended(%s, 0))",
                (f"saga_orchestrator.outbox:{self._db.schema}",),
            )
            row = await cursor.fetchone()
            self._relay_lock_held = bool(row is not None and row[0])
        return connection if self._relay_lock_held else None

    async def fetch_unsent(self, limit: int) -> list[tuple[int, SagaEvent]]:
        """Up to ``limit`` unsent outbox events, oldest first, as ``(id, event)``.

        Only one process reads at a time: the first to ask holds a session advisory lock
        (until its connection closes); the others get ``[]`` and stand by.
        """
        await self._db.pool()  # migrations first
        connection = await self._relay()
        if connection is None:
            return []
        cursor = await connection.execute(
            sql.SQL("SELECT id, event FROM {} WHERE sent_at IS NULL ORDER BY id LIMIT %s").format(
                self._db.table("saga_outbox")
            ),
            (int(limit),),
        )
        return [(int(row[0]), decode_event(row[1])) for row in await cursor.fetchall()]

    async def mark_sent(self, ids: Sequence[int]) -> None:
        """Mark these outbox entries published."""
        if not ids:
            return
        await self._db.write(
            ("saga_outbox", f"sent:{ids[0]}"),
            self._sent_op(list(ids)),
        )

    def _sent_op(self, ids: list[int]) -> Callable[[_Connection], Awaitable[None]]:
        query = sql.SQL("UPDATE {} SET sent_at = now() WHERE id = ANY(%s)").format(
            self._db.table("saga_outbox")
        )

        async def op(connection: _Connection) -> None:
            await connection.execute(query, (ids,))

        return op

    async def purge_sent_before(self, cutoff: datetime) -> int:
        """Delete outbox entries sent before ``cutoff``; return how many."""
        query = sql.SQL("DELETE FROM {} WHERE sent_at < %s").format(self._db.table("saga_outbox"))

        async def op(connection: _Connection) -> int:
            cursor = await connection.execute(query, (cutoff,))
            return int(cursor.rowcount)

        count: int = await self._db.write(("saga_outbox", f"purge:{cutoff.isoformat()}"), op)
        return count

    async def close(self) -> None:
        """Stop the heartbeat and listeners, release held leases, wait for queued writes,
        then close the pool; using the object again reopens it."""
        if self._leases and self._db._pool is not None:
            await self.release_all()
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._notifier is not None:
            await self._notifier.stop()
        if self._relay_connection is not None:
            connection, self._relay_connection = self._relay_connection, None
            if self._relay_lock_held and not (connection.closed or connection.broken):
                # Released now, not when the server notices the connection is gone: another
                # process's relay can take over at once.
                try:
                    await connection.execute(
                        "SELECT pg_advisory_unlock(hashtextextended(%s, 0))",
                        (f"saga_orchestrator.outbox:{self._db.schema}",),
                    )
                except psycopg.Error as exc:  # released with the connection anyway
                    logger.warning("saga.outbox.unlock_failed: %s", exc)
            self._relay_lock_held = False
            await connection.close()
        await super().close()


class _Notifier:
    """One LISTEN connection; reconnects, and wakes every waiter after a reconnect (a
    notification may have been missed meanwhile)."""

    def __init__(self, conninfo: str, *, ready: str, done: str) -> None:
        self.conninfo = conninfo
        self.ready_channel = ready
        self.done_channel = done
        self._ready = asyncio.Event()
        self._done: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while the LISTEN connection is up."""

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def _wake_ready(self) -> None:
        self._ready.set()
        self._ready = asyncio.Event()

    def _wake_all(self) -> None:
        self._wake_ready()
        for event in self._done.values():
            event.set()

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=10
                )
                async with connection:
                    for channel in (self.ready_channel, self.done_channel):
                        await connection.execute(
                            sql.SQL("LISTEN {}").format(sql.Identifier(channel))
                        )
                    attempt = 0
                    self.listening.set()
                    self._wake_all()
                    async for note in connection.notifies():
                        if note.channel == self.ready_channel:
                            self._wake_ready()
                        else:
                            event = self._done.get(note.payload)
                            if event is not None:
                                event.set()
            except psycopg.Error as exc:
                self.listening.clear()
                attempt += 1
                logger.warning("saga.postgres.listen_failed: %s; reconnecting", exc)
                await asyncio.sleep(_backoff(attempt))

    async def _wait(self, event: asyncio.Event, seconds: float) -> bool:
        try:
            await asyncio.wait_for(event.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def wait_ready(self, seconds: float) -> bool:
        return await self._wait(self._ready, seconds)

    async def wait_done(self, saga_id: str, seconds: float) -> bool:
        event = self._done.setdefault(saga_id, asyncio.Event())
        try:
            return await self._wait(event, seconds)
        finally:
            if self._done.get(saga_id) is event and not event.is_set():
                del self._done[saga_id]
            elif event.is_set():
                self._done.pop(saga_id, None)


class PostgresIdempotencyStore(_PostgresBase):
    """An [`IdempotencyStore`][saga_orchestrator.protocols.IdempotencyStore] in PostgreSQL.

    It may share the repository's database and schema (it uses its own table and pool), and
    takes the same arguments as
    [`PostgresSagaRepository`][saga_orchestrator.adapters.postgres.PostgresSagaRepository].
    """

    async def get(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        row = await self._db.fetchone(
            sql.SQL("SELECT value FROM {} WHERE key = %s").format(
                self._db.table("idempotency_keys")
            ),
            (key,),
        )
        return str(row[0]) if row is not None else None

    async def put_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless ``key`` has one already; return the value that is stored."""
        table = self._db.table("idempotency_keys")
        insert = sql.SQL(
            "INSERT INTO {} (key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING"
        ).format(table)
        select = sql.SQL("SELECT value FROM {} WHERE key = %s").format(table)

        async def op(connection: _Connection) -> str:
            cursor = await connection.execute(insert, (key, value))
            if cursor.rowcount == 1:
                return value
            # ON CONFLICT waited for the other writer to commit; a new statement sees its row.
            cursor = await connection.execute(select, (key,))
            row = await cursor.fetchone()
            assert row is not None
            return str(row[0])

        result: str = await self._db.write(("idempotency_keys", key), op)
        return result

    async def purge_before(self, cutoff: datetime) -> int:
        """Forget entries stored before ``cutoff``; return how many."""
        delete = sql.SQL("DELETE FROM {} WHERE created_at < %s").format(
            self._db.table("idempotency_keys")
        )

        async def op(connection: _Connection) -> int:
            cursor = await connection.execute(delete, (cutoff,))
            return int(cursor.rowcount)

        count: int = await self._db.write(("idempotency_keys", f"purge:{cutoff.isoformat()}"), op)
        return count
