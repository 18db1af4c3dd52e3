"""The PostgreSQL adapters' database: one pool, lazy opening with migrations, group commit,
and the check, after a connection died during ``COMMIT``, of which writes did commit."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from ...errors import SagaAlreadyExistsError, SagaConflictError
from ...retry import RetryPolicy
from .._lifecycle import AsyncLifecycle
from ._migrate import migrate

logger = logging.getLogger("saga_orchestrator")

_Connection = psycopg.AsyncConnection[TupleRow]


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


RECONNECT_RETRY = RetryPolicy(
    max_attempts=1_000_000, initial_backoff_seconds=0.05, max_backoff_seconds=2.0, jitter_ratio=0.0
)
"""The delays between reconnection attempts (0.05 s, doubling, at most 2 s): the library's one
backoff formula, ``RetryPolicy``'s. Only the number of attempts is the adapter's own
(``reconnect_attempts``)."""


BATCHES_IN_FLIGHT = 2
"""Group commit: at most this many write transactions of one repository in flight at once."""


def _backoff(attempt: int) -> float:
    return RECONNECT_RETRY.backoff_seconds(attempt)


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
        self._flushers: set[asyncio.Task[None]] = set()
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
        if len(self._flushers) < BATCHES_IN_FLIGHT:
            # A task of its own: a caller cancelled while its batch is being committed must
            # not abandon the other callers' writes half-way. While one batch waits for the
            # database (its round trip, its WAL flush), the writes queued meanwhile go in a
            # second one on another connection: the event loop's work and the database's
            # overlap instead of taking turns.
            task = loop.create_task(self._flush())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
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
                batch = []
        except BaseException as exc:  # cancelled with the event loop: nothing is left waiting
            others = self._flushers - {asyncio.current_task()}
            left = [] if others else self._queue  # another writer takes the queue on
            for item in [*batch, *left]:
                item.settle(error=exc)
            if not others:
                self._queue = []
            raise
        finally:
            # Out of the set before the task ends (no await between the empty queue and
            # here): a write queued from now on starts a writer of its own.
            self._flushers.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]

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
        """The batch in one transaction, in one round trip: ``BEGIN``, its statements and
        ``COMMIT`` pipelined. False (nothing written) if a statement failed: the caller then
        runs the writes one by one to isolate it.

        A statement that matched no row (a version conflict, a lost lease, an id taken) wrote
        nothing, so committing the others with it is right; its ``on_row`` says why, after."""
        try:
            cursors = []
            async with connection.pipeline() as pipeline:
                await connection.execute("BEGIN")
                for item in pending:
                    assert item.statement is not None
                    cursor = connection.cursor()
                    await cursor.execute(*item.statement)
                    cursors.append(cursor)
                await connection.execute("COMMIT")
                await pipeline.sync()
            rows = [await cursor.fetchone() for cursor in cursors]
        except psycopg.Error:
            if connection.broken or connection.closed:
                raise
            # A failed statement aborted the transaction (the pipelined COMMIT was skipped):
            # end it; nothing of the batch was written.
            await connection.execute("ROLLBACK")
            return False
        self.transactions += 1
        for item, row in zip(pending, rows, strict=True):
            assert item.on_row is not None
            try:
                item.settle(await item.on_row(row, connection))
            except (SagaConflictError, SagaAlreadyExistsError) as exc:
                item.settle(error=exc)  # that statement wrote nothing
            except Exception as exc:  # its refusal could not be read: it still wrote nothing
                item.settle(error=exc)
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
        while self._flushers:
            # Let queued writes finish; waiting neither cancels the writers nor raises their
            # errors.
            await asyncio.wait(set(self._flushers))
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
