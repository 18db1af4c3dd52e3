"""The saga repository in PostgreSQL: rows, versions, leases and the outbox."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from ...errors import SagaAlreadyExistsError, SagaConflictError, SagaLeaseError
from ...events import SagaEvent
from ...machine import parked_for, wake_at
from ...serialization import StateChanges
from ...state import ACTIVE_STATUSES, SagaContext, SagaStatus, SkippedSaga
from .._common import ACTIVE_STATUS_FILTER, selection
from ._db import _Connection, _PostgresBase
from ._inbox import _Inbox, _status_list
from ._leases import _default_owner, _Lease, _LeaseHolder, decode_stored, stored_columns
from ._notify import _Notifications, _Notifier
from ._outbox import _OutboxReader, encode_events

logger = logging.getLogger("saga_orchestrator")

__all__ = ["PostgresSagaRepository"]


def _selection(
    statuses: Collection[SagaStatus] | None, saga_type: str | None
) -> tuple[list[sql.Composable], list[Any]]:
    """The filter clauses and parameters that ``list_sagas`` and ``list_saga_ids`` share."""
    return selection(
        statuses, saga_type, status_clause=_status_clause, type_clause=sql.SQL("saga_type = %s")
    )


def _status_clause(statuses: Collection[SagaStatus]) -> sql.Composable:
    return sql.SQL("status IN ({})").format(_status_list(statuses))


def _run_after(context: SagaContext[Any]) -> datetime | None:
    """The saga's durable timer: when a worker should next pick it up (None: now). The
    state machine's own rule (``machine.wake_at``)."""
    saga = context._saga
    return wake_at(context, saga.steps if saga is not None else None)


class PostgresSagaRepository(_LeaseHolder, _Notifications, _OutboxReader, _Inbox, _PostgresBase):
    """A [`SagaRepository`][saga_orchestrator.protocols.SagaRepository] in PostgreSQL, for
    many processes on one database.

    It also implements [`SagaStatusCounter`][saga_orchestrator.protocols.SagaStatusCounter],
    [`SagaIdLister`][saga_orchestrator.protocols.SagaIdLister],
    [`StrandingRecorder`][saga_orchestrator.protocols.StrandingRecorder],
    [`SagaInbox`][saga_orchestrator.protocols.SagaInbox] and
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
    processes at once. A terminal write ends the lease (a finished saga is never claimed; its
    lease columns are left as they were). If the process dies, its sagas are taken over when
    their leases expire.

    **Journal.** A saga's document is written whole when it is created (``state``), and each
    later transition appends a row to ``saga_journal`` with a patch of what it changed
    ([`IncrementalSagaRepository`][saga_orchestrator.protocols.IncrementalSagaRepository]);
    reads apply the patches.

    **Waits.** A saga parked at a wait step is leased to nobody, its ``run_after`` at its
    timer or timeout; an event stored for it (``saga_inbox``) makes it due at once and wakes
    the workers (LISTEN/NOTIFY).

    **Outbox.** Each transition's lifecycle events are written to its journal row in the
    transition's transaction (``stores_events``); an
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
        outbox: write lifecycle events to the outbox (``False``: no events are stored).
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
        self._statements: dict[tuple[str, bool, bool, bool], str] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._notifier: _Notifier | None = None
        self._relay_connection: _Connection | None = None
        self._relay_lock_held = False
        self._legacy_unsent = True
        self.leases_lost = 0
        """Leases this object found taken over (or expired) while it held them."""

    # ------------------------------------------------------------------ writes

    def _journal_row(
        self, context: SagaContext[Any], patch: str | None, events: Sequence[SagaEvent]
    ) -> tuple[Any, ...] | None:
        """The transition's journal row (saga id, version, patch, occurred_at, events, their
        count, sent): for a patch, and for events when they go to the outbox."""
        stored = events if self.stores_events else ()
        if patch is None and not stored:
            return None
        at = stored[0].occurred_at if stored else None
        text = (
            encode_events(stored, context.saga_id, context.saga_type, context.correlation_id)
            if stored
            else None
        )
        return (context.saga_id, context.version, patch, at, text, len(stored), not stored)

    def _write_statement(
        self,
        write: str,
        write_params: Sequence[Any],
        journal: tuple[Any, ...] | None,
        notify: tuple[str, str] | None,
        prune: tuple[UUID, int] | None = None,
    ) -> tuple[str, tuple[Any, ...]]:
        """One statement: the row's write (``RETURNING lease_epoch``), the transition's
        journal row (``journal``), and the deletion of the journal rows a whole document makes
        useless (``prune``: saga id and version; those already sent), each only if the row was
        written, and a notification only then too. A statement alone is a transaction, so a
        write alone in its batch costs one round trip."""
        key = (write, journal is not None, prune is not None, notify is not None)
        query = self._statements.get(key)
        if query is None:
            parts: list[sql.Composable] = [
                sql.SQL("WITH w AS ("),
                sql.SQL(write).format(self._db.table("sagas")),
            ]
            if journal is not None:
                parts.append(
                    sql.SQL(
                        "), j AS (INSERT INTO {} (saga_id, version, patch, occurred_at, events,"
                        " event_count, sent_at) SELECT %s, %s, %s, %s, %s, %s,"
                        " CASE WHEN %s THEN now() END WHERE EXISTS (SELECT 1 FROM w)"
                    ).format(self._db.table("saga_journal"))
                )
            if prune is not None:
                parts.append(
                    sql.SQL(
                        "), d AS (DELETE FROM {} WHERE saga_id = %s AND version < %s"
                        " AND sent_at IS NOT NULL AND EXISTS (SELECT 1 FROM w)"
                    ).format(self._db.table("saga_journal"))
                )
            if notify is not None:
                parts.append(sql.SQL(") SELECT lease_epoch, pg_notify(%s, %s) FROM w"))
            else:
                parts.append(sql.SQL(") SELECT lease_epoch FROM w"))
            # Built once per shape: the same text each time also lets psycopg prepare it.
            query = self._statements[key] = sql.Composed(parts).as_string(None)
        params: list[Any] = list(write_params)
        if journal is not None:
            params += journal
        if prune is not None:
            params += prune
        if notify is not None:
            params += notify
        return query, tuple(params)

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
            " lease_epoch, snapshot_version, waiting_for) VALUES (%s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, CASE WHEN %s THEN clock_timestamp() + %s * interval '1 second' END, %s,"
            " %s, %s)"
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
            context.version,
            parked_for(context),
        )
        notify = None if owner is not None else (self._channel("ready"), "")
        statement = self._write_statement(
            insert, values, self._journal_row(context, None, events), notify
        )
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
        query = self._statements.get(("verify", False, False, False))
        if query is None:
            query = (
                sql.SQL("SELECT version, lease_owner FROM {} WHERE saga_id = %s")
                .format(self._db.table("sagas"))
                .as_string(None)
            )
            self._statements[("verify", False, False, False)] = query

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
        status ends the lease: the saga is no longer held by this object, and its
        ``lease_owner`` and ``lease_expires_at`` no longer mean anything (a write keeps them
        as they were, so that PostgreSQL logs only what changed).
        """
        await self._update(context, state, None, expected_version, events)

    async def update_changes(
        self,
        context: SagaContext[Any],
        changes: StateChanges,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        """``update``, with the write given as what changed: a whole document is written as
        by ``update``; a patch is appended to the saga's journal (``saga_journal``), in the
        same statement as the row's new status, version and timer, which leaves ``state``
        alone. Reads apply the patches written after the last whole document."""
        await self._update(context, changes.document, changes.patch, expected_version, events)

    async def _update(
        self,
        context: SagaContext[Any],
        state: str | None,
        patch: str | None,
        expected_version: int,
        events: Sequence[SagaEvent],
    ) -> None:
        saga_id = context.saga_id
        held = self._leases.get(saga_id)
        release = context.is_terminal
        # The columns before `state` first: a patch leaves `state` and what follows it as it
        # was, and the lease columns too while this object holds the lease (the heartbeat
        # renews it), so that the new row version shares them with the old one.
        common = "status = %s, version = %s, updated_at = %s, run_after = %s, waiting_for = %s"
        values: tuple[Any, ...] = (
            context.status.value,
            context.version,
            context.updated_at or datetime.now(UTC),
            _run_after(context),
            parked_for(context),
        )
        if state is not None:
            common += ", state = %s, snapshot_version = %s"
            values += (state, context.version)
        if held is not None:
            write = (
                "UPDATE {} SET " + common + " WHERE saga_id = %s AND version = %s"
                " AND lease_owner = %s AND lease_epoch = %s RETURNING lease_epoch"
            )
            params: tuple[Any, ...] = (*values, saga_id, expected_version, self.owner, held.epoch)
        else:
            write = (
                "UPDATE {} SET " + common + ", lease_owner = CASE WHEN %s THEN NULL ELSE %s END,"
                " lease_expires_at = CASE WHEN %s THEN NULL"
                " ELSE clock_timestamp() + %s * interval '1 second' END,"
                " lease_epoch = lease_epoch + 1"
                " WHERE saga_id = %s AND version = %s AND (lease_owner IS NULL"
                f" OR lease_owner = %s OR lease_expires_at < now() OR NOT {ACTIVE_STATUS_FILTER})"
                " RETURNING lease_epoch"
            )
            params = (
                *values,
                release,
                self.owner,
                release,
                self.lease_seconds,
                saga_id,
                expected_version,
                self.owner,
            )
        notify = (self._channel("done"), str(saga_id)) if release else None
        prune = (saga_id, context.version) if state is not None else None
        statement = self._write_statement(
            write, params, self._journal_row(context, patch, events), notify, prune
        )

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
            pass  # the heartbeat renews the lease
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
            sql.SQL("SELECT {} FROM {} AS s WHERE s.saga_id = %s").format(
                self._document, self._db.table("sagas")
            ),
            (saga_id,),
        )
        return decode_stored(row[0], row[1]) if row is not None else None

    async def get_by_correlation_id(self, correlation_id: str) -> SagaContext[Any] | None:
        """The most recently created saga with this correlation id, or ``None``."""
        row = await self._db.fetchone(
            sql.SQL(
                "SELECT {} FROM {} AS s WHERE s.correlation_id = %s"
                " ORDER BY s.created_seq DESC LIMIT 1"
            ).format(self._document, self._db.table("sagas")),
            (correlation_id,),
        )
        return decode_stored(row[0], row[1]) if row is not None else None

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
        rows = await self._db.fetchall(self._select(self._document, clauses), [*params, int(limit)])
        return [decode_stored(row[0], row[1]) for row in rows]

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
        rows = await self._db.fetchall(
            self._select(sql.SQL("s.saga_id"), clauses), [*params, int(limit)]
        )
        return [row[0] for row in rows]

    def _select(self, column: sql.Composable, clauses: list[sql.Composable]) -> sql.Composed:
        where = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(clauses) if clauses else sql.SQL("")
        return sql.SQL("SELECT {} FROM {} AS s{} ORDER BY s.created_seq LIMIT %s").format(
            column, self._db.table("sagas"), where
        )

    @property
    def _document(self) -> sql.Composed:
        """The stored saga of the row ``s``: its last whole document and the patches after
        it (``decode_stored``)."""
        return stored_columns(self._db.table("saga_journal"))

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
