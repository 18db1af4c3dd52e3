"""SQLite adapters: durable, zero-configuration, safe with several processes on one file.

The standard library's ``sqlite3`` runs in worker threads (through anyio), so the event loop
never blocks on disk. The database uses WAL, every write transaction begins ``IMMEDIATE`` (a
deferred one can fail with ``SQLITE_BUSY`` regardless of the busy timeout), and commits are
``synchronous=FULL`` by default: a transition acknowledged to the orchestrator survives power
loss.

Concurrent writes from one process are committed together (group commit): while one
transaction is being flushed, the writes that arrive queue up and go in the next one, each
caller returning only once its own write is durable. Sequential use costs one transaction per
write; many sagas in flight share fsyncs.

The saga repository has a transactional outbox: each transition's lifecycle events are
inserted into ``saga_outbox`` in the transaction that records the transition, for an
[`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] to publish.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from ..errors import SagaAlreadyExistsError, SagaConflictError
from ..events import SagaEvent, decode_event, encode_event
from ..inbox import InboxEvent, StoreOutcome
from ..machine import parked_for, parked_until
from ..serialization import decode_context
from ..state import ACTIVE_STATUSES, SagaContext, SagaStatus, SkippedSaga
from ._common import fetch_all, selection, status_filter
from ._sqlite_db import Synchronous, _SQLiteBase, migrate

__all__ = ["SQLiteIdempotencyStore", "SQLiteSagaRepository", "migrate"]


class SQLiteSagaRepository(_SQLiteBase):
    """A [`SagaRepository`][saga_orchestrator.protocols.SagaRepository] in one SQLite file.

    It also implements [`SagaStatusCounter`][saga_orchestrator.protocols.SagaStatusCounter],
    [`StrandingRecorder`][saga_orchestrator.protocols.StrandingRecorder] and
    [`SagaInbox`][saga_orchestrator.protocols.SagaInbox] (events in ``saga_inbox``).
    Use it as an async context manager, or call ``open`` and ``close``.

    Args:
        path: the database file (created with its folder if missing).
        synchronous: SQLite's ``PRAGMA synchronous``; ``FULL`` makes each acknowledged
            transition survive power loss, ``NORMAL`` only process crashes.
        busy_timeout_seconds: how long to wait for another process's write lock.
        keep_unknown_types: read sagas whose data classes cannot be imported here, with
            [`UnresolvedValue`][saga_orchestrator.serialization.UnresolvedValue]s in their
            place (for tools that only show sagas, like the admin CLI's `--db`).
        outbox: store each transition's lifecycle events in the ``saga_outbox`` table, in
            the transaction that records the transition (``stores_events``), for an
            [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] to publish. Off by default:
            without a relay reading it the table would only grow; turn it on in every
            process that writes the file when a relay publishes from it.

    With the outbox it also implements
    [`OutboxSource`][saga_orchestrator.protocols.OutboxSource]; sent events stay in the
    table until ``purge_sent_before`` deletes them.
    """

    stores_events: bool = False
    """Whether transitions store their events in the outbox (``True`` when made with
    ``outbox=True``)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_seconds: float = 30.0,
        keep_unknown_types: bool = False,
        outbox: bool = False,
    ) -> None:
        """Set up the repository; the file is opened (and migrated) on first use."""
        super().__init__(path, synchronous=synchronous, busy_timeout_seconds=busy_timeout_seconds)
        self._keep_unknown_types = keep_unknown_types
        if outbox:
            self.stores_events = True

    def _outbox_rows(self, events: Sequence[SagaEvent]) -> list[tuple[str, int, str, str]] | None:
        # Encoded before the write is queued: an event that cannot be encoded fails its own
        # call, not the group-commit transaction it would share with other callers.
        if not events or not self.stores_events:
            return None
        now = _utc(datetime.now(UTC))
        return [(str(e.saga_id), e.sequence, encode_event(e), now) for e in events]

    def _decode(self, state: str) -> SagaContext[Any]:
        return decode_context(state, keep_unknown_types=self._keep_unknown_types)

    async def create(
        self, context: SagaContext[Any], state: str, events: Sequence[SagaEvent] = ()
    ) -> None:
        """Insert a new saga; raises ``SagaAlreadyExistsError`` if its id is taken."""
        row = (
            str(context.saga_id),
            context.saga_type,
            context.correlation_id,
            context.status.value,
            context.version,
            _iso(context.created_at),
            _iso(context.updated_at),
            state,
            _wake(context),
            parked_for(context),
        )

        outbox = self._outbox_rows(events)

        def op(connection: sqlite3.Connection) -> None:
            try:
                connection.execute(
                    "INSERT INTO sagas (saga_id, saga_type, correlation_id, status, version,"
                    " created_at, updated_at, state, wake_at, waiting_for)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    row,
                )
            except sqlite3.IntegrityError:
                raise SagaAlreadyExistsError(context.saga_id) from None
            if outbox:
                connection.executemany(_INSERT_OUTBOX, outbox)

        await self._db.write(op)

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
        params = (
            context.status.value,
            context.version,
            _iso(context.updated_at),
            state,
            _wake(context),
            parked_for(context),
            str(context.saga_id),
            expected_version,
        )
        saga_id = context.saga_id
        outbox = self._outbox_rows(events)

        def op(connection: sqlite3.Connection) -> None:
            cursor = connection.execute(
                "UPDATE sagas SET status = ?, version = ?, updated_at = ?, state = ?,"
                " wake_at = ?, waiting_for = ? WHERE saga_id = ? AND version = ?",
                params,
            )
            if cursor.rowcount != 1:
                raise SagaConflictError(saga_id, expected_version)
            if outbox:
                connection.executemany(_INSERT_OUTBOX, outbox)

        await self._db.write(op)

    async def get(self, saga_id: UUID) -> SagaContext[Any] | None:
        """The stored saga, or ``None``."""
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT state FROM sagas WHERE saga_id = ?", (str(saga_id),)
            ).fetchone()
        )
        return self._decode(row[0]) if row is not None else None

    async def get_by_correlation_id(self, correlation_id: str) -> SagaContext[Any] | None:
        """The most recently created saga with this correlation id, or ``None``."""
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT state FROM sagas WHERE correlation_id = ? ORDER BY rowid DESC LIMIT 1",
                (correlation_id,),
            ).fetchone()
        )
        return self._decode(row[0]) if row is not None else None

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
        where, params = _selection(statuses, saga_type)
        params.append(int(limit))
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT state FROM sagas{where} ORDER BY rowid LIMIT ?", params
            ).fetchall()
        )
        return [self._decode(row[0]) for row in rows]

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
        where, params = _selection(statuses, saga_type)
        params.append(int(limit))
        rows = await self._db.read(
            lambda c: c.execute(
                f"SELECT saga_id FROM sagas{where} ORDER BY rowid LIMIT ?", params
            ).fetchall()
        )
        return [UUID(row[0]) for row in rows]

    async def count_by_status(
        self, statuses: Collection[SagaStatus]
    ) -> dict[tuple[str, SagaStatus], int]:
        """``{(saga_type, status): count}`` for the given statuses (absent means 0).

        Cheap for active and failed statuses, which partial indexes cover, however many
        finished sagas the file holds.
        """
        if not statuses:
            return {}
        # One query per partial index (active, failed), so each is served by its index:
        # cheap however many finished sagas are stored.
        wanted = {SagaStatus(s) for s in statuses}
        groups = [group for group in (wanted & ACTIVE_STATUSES, wanted - ACTIVE_STATUSES) if group]
        counts: dict[tuple[str, SagaStatus], int] = {}
        for group in groups:
            query = (
                "SELECT saga_type, status, count(*) FROM sagas"
                f" WHERE {status_filter(group)} GROUP BY saga_type, status"
            )
            rows = await self._db.read(fetch_all(query))
            counts.update({(row[0], SagaStatus(row[1])): row[2] for row in rows})
        return counts

    async def mark_stranded(
        self, saga_id: UUID, reason: str, *, saga_version: int | None = None
    ) -> None:
        """Record that ``saga_id`` could not be resumed, and why (see
        [`StrandingRecorder`][saga_orchestrator.protocols.StrandingRecorder])."""
        params = (saga_version, reason, datetime.now(UTC).isoformat(), str(saga_id))

        def op(connection: sqlite3.Connection) -> None:
            connection.execute(
                "INSERT INTO saga_stranded (saga_id, version, saga_version, reason, marked_at)"
                " SELECT saga_id, version, ?, ?, ? FROM sagas WHERE saga_id = ?"
                " ON CONFLICT (saga_id) DO UPDATE SET version = excluded.version,"
                " saga_version = excluded.saga_version, reason = excluded.reason,"
                " marked_at = excluded.marked_at",
                params,
            )

        await self._db.write(op)

    async def list_stranded(self, *, limit: int = 1000) -> list[SkippedSaga]:
        """The unfinished sagas whose mark still holds, oldest mark first."""
        active = ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES)
        rows = await self._db.read(
            fetch_all(
                "SELECT m.saga_id, s.saga_type, m.reason, m.saga_version FROM saga_stranded m"
                " JOIN sagas s ON s.saga_id = m.saga_id AND s.version = m.version"
                f" WHERE s.status IN ({active}) ORDER BY m.marked_at, m.rowid LIMIT {int(limit)}"
            )
        )
        return [SkippedSaga(UUID(row[0]), row[1], row[2], row[3]) for row in rows]

    async def store_event(self, event: InboxEvent) -> StoreOutcome:
        """Keep ``event`` for its running saga, unless its id is kept already, and make the
        saga due if it is parked at a wait for this event (see
        [`SagaInbox`][saga_orchestrator.protocols.SagaInbox])."""
        saga_id = str(event.saga_id)
        received = _utc(event.received_at)
        row = (event.event_id, saga_id, event.name, event.payload, received)

        def op(connection: sqlite3.Connection) -> StoreOutcome:
            found = connection.execute(
                "SELECT status FROM sagas WHERE saga_id = ?", (saga_id,)
            ).fetchone()
            if found is None:
                return StoreOutcome.NO_SAGA
            if connection.execute(
                "SELECT 1 FROM saga_inbox WHERE event_id = ?", (event.event_id,)
            ).fetchone():
                return StoreOutcome.DUPLICATE
            if found[0] != SagaStatus.RUNNING.value:
                return StoreOutcome.NOT_RUNNING
            connection.execute(
                "INSERT INTO saga_inbox (event_id, saga_id, name, payload, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                row,
            )
            connection.execute(
                "UPDATE sagas SET wake_at = ? WHERE saga_id = ? AND waiting_for = ?"
                " AND wake_at > ?",
                (received, saga_id, event.name, received),
            )
            return StoreOutcome.STORED

        outcome: StoreOutcome = await self._db.write(op)
        return outcome

    async def saga_events(self, saga_id: UUID) -> list[InboxEvent]:
        """Every event kept for the saga, in the order stored."""
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT event_id, name, payload, received_at FROM saga_inbox"
                " WHERE saga_id = ? ORDER BY seq",
                (str(saga_id),),
            ).fetchall()
        )
        return [
            InboxEvent(row[0], saga_id, row[1], row[2], datetime.fromisoformat(row[3]))
            for row in rows
        ]

    async def purge_events_before(self, cutoff: datetime) -> int:
        """Delete the events received before ``cutoff`` by sagas that are finished (or no
        longer stored); return how many. A running saga's events are kept, however old.
        ``cutoff`` must be timezone-aware (``ValueError`` otherwise)."""
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        bound = _utc(cutoff)
        active = ", ".join(f"'{s.value}'" for s in ACTIVE_STATUSES)

        def op(connection: sqlite3.Connection) -> int:
            deleted = connection.execute(
                "DELETE FROM saga_inbox WHERE received_at < ? AND saga_id NOT IN"
                f" (SELECT saga_id FROM sagas WHERE status IN ({active}))",
                (bound,),
            ).rowcount
            return int(deleted)

        count: int = await self._db.write(op)
        return count

    async def due_waits(self, now: datetime, limit: int = 1000) -> list[UUID]:
        """Sagas parked at a wait step that are due at ``now``, soonest first."""
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT saga_id FROM sagas WHERE wake_at IS NOT NULL AND wake_at <= ?"
                " ORDER BY wake_at LIMIT ?",
                (_utc(now), int(limit)),
            ).fetchall()
        )
        return [UUID(row[0]) for row in rows]

    async def fetch_unsent(self, limit: int) -> list[tuple[int, SagaEvent]]:
        """Up to ``limit`` events not yet marked sent, as ``(outbox id, event)``, oldest
        first (each saga's in ``sequence`` order).

        Every caller gets them (SQLite has no lock to hand them to one relay only): run one
        relay per database file, or each event is published once per relay.
        """
        rows = await self._db.read(
            lambda c: c.execute(
                "SELECT id, event FROM saga_outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?",
                (int(limit),),
            ).fetchall()
        )
        return [(int(row[0]), decode_event(row[1])) for row in rows]

    async def mark_sent(self, ids: Sequence[int]) -> None:
        """Record that these outbox entries were published (ids already marked stay as
        they are)."""
        if not ids:
            return
        now = _utc(datetime.now(UTC))
        values = [int(i) for i in ids]

        def op(connection: sqlite3.Connection) -> None:
            for start in range(0, len(values), _MAX_PARAMETERS):
                chunk = values[start : start + _MAX_PARAMETERS]
                connection.execute(
                    f"UPDATE saga_outbox SET sent_at = ?"
                    f" WHERE sent_at IS NULL AND id IN ({', '.join('?' for _ in chunk)})",
                    [now, *chunk],
                )

        await self._db.write(op)

    async def purge_sent_before(self, cutoff: datetime) -> int:
        """Delete the outbox entries marked sent before ``cutoff``; return how many.

        Unsent entries are never deleted, however old. ``cutoff`` must be timezone-aware
        (``ValueError`` otherwise).
        """
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        bound = _utc(cutoff)

        def op(connection: sqlite3.Connection) -> int:
            deleted = connection.execute(
                "DELETE FROM saga_outbox WHERE sent_at IS NOT NULL AND sent_at < ?", (bound,)
            ).rowcount
            return int(deleted)

        count: int = await self._db.write(op)
        return count


class SQLiteIdempotencyStore(_SQLiteBase):
    """An [`IdempotencyStore`][saga_orchestrator.protocols.IdempotencyStore] in a SQLite file.

    It may share the repository's file (it uses its own table and connection), and takes the
    same arguments as
    [`SQLiteSagaRepository`][saga_orchestrator.adapters.sqlite.SQLiteSagaRepository].
    """

    async def get(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        row = await self._db.read(
            lambda c: c.execute(
                "SELECT value FROM idempotency_keys WHERE key = ?", (key,)
            ).fetchone()
        )
        return row[0] if row is not None else None

    async def put_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless ``key`` has one already; return the value that is stored."""
        now = datetime.now(UTC).isoformat()

        def op(connection: sqlite3.Connection) -> str:
            connection.execute(
                "INSERT INTO idempotency_keys (key, value, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO NOTHING",
                (key, value, now),
            )
            row = connection.execute(
                "SELECT value FROM idempotency_keys WHERE key = ?", (key,)
            ).fetchone()
            return str(row[0])

        result: str = await self._db.write(op)
        return result

    async def purge_before(self, cutoff: datetime) -> int:
        """Forget entries stored before ``cutoff``; return how many."""
        bound = cutoff.astimezone(UTC).isoformat()

        def op(connection: sqlite3.Connection) -> int:
            deleted = connection.execute(
                "DELETE FROM idempotency_keys WHERE created_at < ?", (bound,)
            ).rowcount
            return int(deleted)

        count: int = await self._db.write(op)
        return count


_INSERT_OUTBOX = (
    "INSERT INTO saga_outbox (saga_id, sequence, event, created_at) VALUES (?, ?, ?, ?)"
)

_MAX_PARAMETERS = 500
"""Ids per ``IN (...)`` list: well below SQLite's limit on bound parameters (999 before
3.32)."""


def _iso(value: datetime | None) -> str:
    return (value or datetime.now(UTC)).isoformat()


def _wake(context: SagaContext[Any]) -> str | None:
    """The ``wake_at`` column: when a saga parked at a wait step is due (else NULL)."""
    when = parked_until(context)
    return _utc(when) if when is not None else None


def _utc(value: datetime) -> str:
    """Outbox times: UTC, always with microseconds, so that they compare as text."""
    return value.astimezone(UTC).isoformat(timespec="microseconds")


def _selection(
    statuses: Collection[SagaStatus] | None, saga_type: str | None
) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and parameters that ``list_sagas`` and ``list_saga_ids``
    share."""
    clauses, params = selection(
        statuses, saga_type, status_clause=status_filter, type_clause="saga_type = ?"
    )
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params
