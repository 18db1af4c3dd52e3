"""The outbox of the PostgreSQL saga repository: the events of a transition, kept compact in
its journal row (``saga_journal.events``), and the relay's side: read, mark, purge.

A journal row's events are a JSON array, one item per event: when they share the row's
``occurred_at`` and their saga's id, type and correlation id (a transition's events do), an
array ``[event_id, type, sequence, step,
attempt, error, will_retry, duration_seconds, wait]`` without its trailing nulls and falses, with
``null`` for an ``event_id`` that is ``event_id_for(saga_id, sequence)`` and the type as its
code (``TYPE_CODES``);
otherwise the whole event
(``encode_event``). The saga's id, type and correlation id are the row's and its saga's.
An event's outbox id is ``row id * EVENTS_PER_ROW + its index in the row``; events written
before the journal (``saga_outbox``, 0.1.0) are read first, their ids ``row id - LEGACY``
(negative, so still in order).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote
from uuid import UUID

import psycopg
from psycopg import sql

from ...events import (
    SagaEvent,
    SagaEventType,
    _float,
    decode_event,
    encode_event,
    event_id_for,
)
from ._db import _Connection, _Database

LEGACY = 2**62
"""Subtracted from a ``saga_outbox`` row id to make its outbox id."""

TYPE_CODES: tuple[str, ...] = (
    "saga.started",
    "saga.completed",
    "saga.compensated",
    "saga.failed",
    "step.started",
    "step.completed",
    "step.failed",
    "compensation.started",
    "step.compensated",
    "step.compensation_failed",
    "step.waiting",
)
"""An event type's code in a compact event: its position here. Stored rows name types by
these codes, so the tuple is only ever appended to (tests check every type has a code)."""
_CODE = {value: code for code, value in enumerate(TYPE_CODES)}

EVENTS_PER_ROW = 64
"""Outbox ids leave room for this many events per journal row (a transition has 1 to 4; at
most 62 are stored in one row, one bit each of ``sent_mask``)."""


def _nullable(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def encode_events(
    events: Sequence[SagaEvent], saga_id: UUID, saga_type: str, correlation_id: str | None
) -> str:
    """A transition's events as the ``events`` of a journal row of the saga ``saga_id``, whose
    type and correlation id are given (see the module)."""
    if len(events) > 62:
        raise ValueError(f"{len(events)} events in one transition; at most 62")
    at = events[0].occurred_at
    if any(
        event.occurred_at != at
        or event.saga_id != saga_id
        or event.saga_type != saga_type
        or event.correlation_id != correlation_id
        for event in events
    ):  # not all the row's and its saga's: each written whole
        return f"[{','.join(encode_event(event) for event in events)}]"
    items = []
    for event in events:
        duration = event.duration_seconds
        derived = event.event_id == event_id_for(event.saga_id, event.sequence)
        fields = [
            "null" if derived else f'"{event.event_id}"',
            str(_CODE[event.type._value_]),
            f"{event.sequence:d}",
            _nullable(event.step),
            "null" if event.attempt is None else f"{event.attempt:d}",
            _nullable(event.error),
            "true" if event.will_retry else "false",
            "null" if duration is None else _float(duration),
            _nullable(event.wait),
        ]
        while fields[-1] in ("null", "false"):  # trailing defaults are left out
            fields.pop()
        items.append(f"[{','.join(fields)}]")
    return f"[{','.join(items)}]"


def decode_events(
    text: str, saga_id: UUID, saga_type: str, correlation_id: str | None, at: datetime
) -> list[SagaEvent]:
    """The events ``encode_events`` wrote, with the row's and its saga's fields."""
    events = []
    occurred_at = at.astimezone(UTC)
    for item in json.loads(text):
        if type(item) is dict:
            events.append(decode_event(json.dumps(item)))
            continue
        event_id, kind, sequence, step, attempt, error, will_retry, duration, wait = (
            item + [None, None, None, False, None, None][len(item) - 3 :]
        )
        events.append(
            SagaEvent(
                event_id=(event_id_for(saga_id, sequence) if event_id is None else UUID(event_id)),
                type=SagaEventType(TYPE_CODES[kind] if type(kind) is int else kind),
                saga_id=saga_id,
                saga_type=saga_type,
                sequence=sequence,
                occurred_at=occurred_at,
                correlation_id=correlation_id,
                step=step,
                attempt=attempt,
                error=error,
                will_retry=will_retry,
                duration_seconds=duration,
                wait=wait,
            )
        )
    return events


class _OutboxReader:
    """The outbox half of ``PostgresSagaRepository``, which sets these attributes."""

    _db: _Database
    _relay_connection: _Connection | None
    _relay_lock_held: bool
    _legacy_unsent: bool

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
        if self._legacy_unsent:  # events written before the journal, until there are none
            cursor = await connection.execute(
                sql.SQL(
                    "SELECT id, event FROM {} WHERE sent_at IS NULL ORDER BY id LIMIT %s"
                ).format(self._db.table("saga_outbox")),
                (int(limit),),
            )
            legacy = [
                (int(row[0]) - LEGACY, decode_event(row[1])) for row in await cursor.fetchall()
            ]
            if legacy:
                return legacy
            self._legacy_unsent = False
        cursor = await connection.execute(
            sql.SQL(
                "SELECT j.id, j.saga_id, j.occurred_at, j.events, j.sent_mask, s.saga_type,"
                " s.correlation_id FROM {} AS j JOIN {} AS s ON s.saga_id = j.saga_id"
                " WHERE j.sent_at IS NULL ORDER BY j.id LIMIT %s"
            ).format(self._db.table("saga_journal"), self._db.table("sagas")),
            (int(limit),),
        )
        found: list[tuple[int, SagaEvent]] = []
        for row_id, saga_id, at, text, mask, saga_type, correlation_id in await cursor.fetchall():
            events = decode_events(text or "[]", saga_id, saga_type, correlation_id, at)
            base = int(row_id) * EVENTS_PER_ROW
            found += [
                (base + index, event)
                for index, event in enumerate(events)
                if not (mask >> index) & 1  # not sent yet
            ]
            if len(found) >= limit:
                break
        return found[:limit]

    async def mark_sent(self, ids: Sequence[int]) -> None:
        """Mark these outbox entries published (a transition's row is sent once all its
        events are)."""
        if not ids:
            return
        await self._db.write(("saga_journal", f"sent:{ids[0]}"), self._sent_op(list(ids)))

    def _sent_op(self, ids: list[int]) -> Callable[[_Connection], Awaitable[None]]:
        legacy = [item + LEGACY for item in ids if item < 0]
        masks: dict[int, int] = {}
        for item in ids:
            if item >= 0:
                row, index = divmod(item, EVENTS_PER_ROW)
                masks[row] = masks.get(row, 0) | 1 << index
        rows = list(masks)
        marks = [masks[row] for row in rows]
        journal = sql.SQL(
            "UPDATE {} AS j SET sent_mask = j.sent_mask | u.m, sent_at = CASE WHEN"
            " j.sent_mask | u.m = (1::bigint << j.event_count) - 1 THEN now() END"
            " FROM unnest(%s::bigint[], %s::bigint[]) AS u(id, m)"
            " WHERE j.id = u.id AND j.sent_at IS NULL"
        ).format(self._db.table("saga_journal"))
        old = sql.SQL("UPDATE {} SET sent_at = now() WHERE id = ANY(%s)").format(
            self._db.table("saga_outbox")
        )

        async def op(connection: _Connection) -> None:
            if rows:
                await connection.execute(journal, (rows, marks))
            if legacy:
                await connection.execute(old, (legacy,))

        return op

    async def purge_sent_before(self, cutoff: datetime) -> int:
        """Delete outbox entries sent before ``cutoff``; return how many events they held.
        A transition's events go together, once all of them were sent before ``cutoff``; a
        journal row whose patch its saga still needs (no whole document written since) is
        kept."""
        journal = sql.SQL(
            "DELETE FROM {} AS j USING {} AS s WHERE j.sent_at IS NOT NULL"
            " AND j.event_count > 0 AND j.sent_at < %s AND s.saga_id = j.saga_id"
            " AND j.version <= s.snapshot_version RETURNING j.event_count"
        ).format(self._db.table("saga_journal"), self._db.table("sagas"))
        old = sql.SQL("DELETE FROM {} WHERE sent_at < %s").format(self._db.table("saga_outbox"))

        async def op(connection: _Connection) -> int:
            cursor = await connection.execute(journal, (cutoff,))
            count = sum(int(row[0]) for row in await cursor.fetchall())
            cursor = await connection.execute(old, (cutoff,))
            return count + int(cursor.rowcount)

        purged: int = await self._db.write(("saga_journal", f"purge:{cutoff.isoformat()}"), op)
        return purged
