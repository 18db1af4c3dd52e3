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
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from uuid import UUID

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

from ..errors import SagaAlreadyExistsError, SagaConflictError
from ..events import SagaEvent
from ..serialization import decode_context
from ..state import SagaContext, SagaStatus
from ._lifecycle import AsyncLifecycle

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

    def settle(self, result: Any = None, error: BaseException | None = None) -> None:
        if self.future.done():
            return  # the caller was cancelled
        if error is None:
            self.future.set_result(result)
        else:
            self.future.set_exception(error)


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
    ) -> None:
        self.conninfo = conninfo
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.timeout_seconds = timeout_seconds
        self.apply_migrations = apply_migrations
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self._opening: asyncio.Lock | None = None
        self._queue: list[_Write] = []
        self._flusher: asyncio.Task[None] | None = None
        self.transactions = 0
        """Write transactions committed, for tests and benchmarks."""

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    async def pool(self, *, migrating: bool | None = None) -> AsyncConnectionPool[_Connection]:
        if self._pool is not None:
            return self._pool
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

    async def migrate(self) -> list[str]:
        pool = await self.pool(migrating=False)
        async with pool.connection() as connection:
            return await migrate(connection, self.schema)

    async def fetchone(self, query: sql.Composed, params: Sequence[Any] = ()) -> Any:
        pool = await self.pool()
        async with pool.connection() as connection:
            cursor = await connection.execute(query, params)
            return await cursor.fetchone()

    async def fetchall(self, query: sql.Composed, params: Sequence[Any] = ()) -> list[Any]:
        pool = await self.pool()
        async with pool.connection() as connection:
            cursor = await connection.execute(query, params)
            rows: list[Any] = await cursor.fetchall()
            return rows

    async def write(self, key: tuple[str, str], op: Callable[[_Connection], Awaitable[Any]]) -> Any:
        """Run ``op`` in a write transaction, shared with the writes queued meanwhile."""
        loop = asyncio.get_running_loop()
        item = _Write(key, op, loop.create_future())
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
        try:
            pool = await self.pool()
            async with pool.connection() as connection:
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
                        await connection.execute("COMMIT")
                        self.transactions += 1
                        for item, result, error in outcomes:
                            item.settle(result, error)
                        return
                    # One write failed and aborted the transaction: it alone gets its error,
                    # and the others are written again, without it, in a new transaction.
                    await connection.execute("ROLLBACK")
                    item, error = failed
                    item.settle(error=error)
                    pending.remove(item)
        except BaseException as exc:
            for item in pending:
                item.settle(error=exc)
            if not isinstance(exc, Exception):
                raise

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
    ) -> None:
        self._db = _Database(
            conninfo,
            schema=schema,
            min_size=min_size,
            max_size=max_size,
            timeout_seconds=timeout_seconds,
            apply_migrations=apply_migrations,
        )

    @property
    def schema(self) -> str:
        """The schema holding the tables."""
        return self._db.schema

    @property
    def transactions(self) -> int:
        """Write transactions this object committed."""
        return self._db.transactions

    async def open(self) -> None:
        """Open the pool and apply migrations now (otherwise done on first use)."""
        await self._db.pool()

    async def migrate(self) -> list[str]:
        """Apply the pending migrations (opening the pool if needed); return their names."""
        return await self._db.migrate()

    async def close(self) -> None:
        """Wait for queued writes, then close the pool; using the object again reopens it."""
        await self._db.close()


def _status_list(statuses: Collection[SagaStatus]) -> sql.Composable:
    # Literals, not parameters: the planner can then match the partial indexes of active
    # and failed sagas. The values are the enum's own, in a stable order.
    values = sorted({SagaStatus(status).value for status in statuses})
    return sql.SQL(", ").join(sql.Literal(value) for value in values)


class PostgresSagaRepository(_PostgresBase):
    """A [`SagaRepository`][saga_orchestrator.protocols.SagaRepository] in PostgreSQL.

    It also implements [`SagaStatusCounter`][saga_orchestrator.protocols.SagaStatusCounter]
    and [`SagaIdLister`][saga_orchestrator.protocols.SagaIdLister]. Use it as an async context
    manager, or call ``open`` and ``close``, on one asyncio event loop (its pool belongs to the
    loop it was opened on; trio is not supported).

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
    """

    stores_events = False
    """No outbox yet: lifecycle events are not stored with the transition."""

    async def create(
        self, context: SagaContext[Any], state: str, events: Sequence[SagaEvent] = ()
    ) -> None:
        """Insert a new saga; raises ``SagaAlreadyExistsError`` if its id is taken."""
        query = sql.SQL(
            "INSERT INTO {} (saga_id, saga_type, correlation_id, status, version,"
            " created_at, updated_at, state) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (saga_id) DO NOTHING"
        ).format(self._db.table("sagas"))
        params = (
            context.saga_id,
            context.saga_type,
            context.correlation_id,
            context.status.value,
            context.version,
            context.created_at or datetime.now(UTC),
            context.updated_at or datetime.now(UTC),
            state,
        )
        saga_id = context.saga_id

        async def op(connection: _Connection) -> None:
            cursor = await connection.execute(query, params)
            if cursor.rowcount != 1:
                raise SagaAlreadyExistsError(saga_id)

        await self._db.write(("sagas", str(saga_id)), op)

    async def update(
        self,
        context: SagaContext[Any],
        state: str,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        """Replace the saga's row if its stored version is ``expected_version``.

        Raises ``SagaConflictError``, and writes nothing, otherwise.
        """
        query = sql.SQL(
            "UPDATE {} SET status = %s, version = %s, updated_at = %s, state = %s"
            " WHERE saga_id = %s AND version = %s"
        ).format(self._db.table("sagas"))
        params = (
            context.status.value,
            context.version,
            context.updated_at or datetime.now(UTC),
            state,
            context.saga_id,
            expected_version,
        )
        saga_id = context.saga_id

        async def op(connection: _Connection) -> None:
            cursor = await connection.execute(query, params)
            if cursor.rowcount != 1:
                raise SagaConflictError(saga_id, expected_version)

        await self._db.write(("sagas", str(saga_id)), op)

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
        clauses: list[sql.Composable] = []
        params: list[Any] = []
        if statuses is not None:
            if not statuses:
                return []
            clauses.append(sql.SQL("status IN ({})").format(_status_list(statuses)))
        if saga_type is not None:
            clauses.append(sql.SQL("saga_type = %s"))
            params.append(saga_type)
        rows = await self._db.fetchall(self._select("state", clauses), [*params, int(limit)])
        return [decode_context(row[0]) for row in rows]

    async def list_saga_ids(
        self, *, statuses: Collection[SagaStatus] | None = None, limit: int = 1000
    ) -> list[UUID]:
        """Ids of stored sagas, oldest first, without decoding their state."""
        clauses: list[sql.Composable] = []
        if statuses is not None:
            if not statuses:
                return []
            clauses.append(sql.SQL("status IN ({})").format(_status_list(statuses)))
        rows = await self._db.fetchall(self._select("saga_id", clauses), [int(limit)])
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
