"""The inbox of the PostgreSQL saga repository: events kept for wait steps (``saga_inbox``),
and the sagas parked at a wait that are due (see ``SagaInbox``)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from psycopg import sql

from ...inbox import InboxEvent, StoreOutcome
from ...state import ACTIVE_STATUSES, SagaStatus
from .._common import status_values
from ._db import _Connection, _Database


def _status_list(statuses: Collection[SagaStatus]) -> sql.Composable:
    # Literals, not parameters: the planner can then match the partial indexes of active
    # and failed sagas. The values are the enum's own, in a stable order.
    return sql.SQL(", ").join(sql.Literal(value) for value in status_values(statuses))


class _Inbox:
    """The inbox half of ``PostgresSagaRepository``, which sets these attributes."""

    _db: _Database

    if TYPE_CHECKING:

        def _channel(self, kind: str) -> str: ...

    async def store_event(self, event: InboxEvent) -> StoreOutcome:
        """Keep ``event`` for its running saga, unless its id is kept already; if the saga is
        parked at a wait for this event, make it due and wake the workers (see
        [`SagaInbox`][saga_orchestrator.protocols.SagaInbox]). One statement, so one
        transaction."""
        sagas, inbox = self._db.table("sagas"), self._db.table("saga_inbox")
        query = sql.SQL(
            "WITH s AS (SELECT status FROM {sagas} WHERE saga_id = %(saga)s),"
            " i AS (INSERT INTO {inbox} (event_id, saga_id, name, payload, received_at)"
            " SELECT %(id)s, %(saga)s, %(name)s, %(payload)s, %(at)s"
            " WHERE EXISTS (SELECT 1 FROM s WHERE status = 'running')"
            " ON CONFLICT (event_id) DO NOTHING RETURNING 1),"
            " u AS (UPDATE {sagas} SET run_after = %(at)s WHERE saga_id = %(saga)s"
            " AND waiting_for = %(name)s AND EXISTS (SELECT 1 FROM i) AND run_after > %(at)s"
            " RETURNING 1)"
            " SELECT (SELECT status FROM s), EXISTS (SELECT 1 FROM i),"
            " EXISTS (SELECT 1 FROM {inbox} WHERE event_id = %(id)s),"
            " (SELECT pg_notify(%(channel)s, '') FROM u), (SELECT count(*) FROM u)"
        ).format(sagas=sagas, inbox=inbox)
        params = {
            "saga": event.saga_id,
            "id": event.event_id,
            "name": event.name,
            "payload": event.payload,
            "at": event.received_at,
            "channel": self._channel("ready"),
        }

        async def op(connection: _Connection) -> Any:
            cursor = await connection.execute(query, params)
            return await cursor.fetchone()

        status, stored, existed, _, _ = await self._db.write(("sagas", str(event.saga_id)), op)
        if status is None:
            return StoreOutcome.NO_SAGA
        if stored:
            return StoreOutcome.STORED
        if existed:
            return StoreOutcome.DUPLICATE
        return (
            StoreOutcome.NOT_RUNNING
            if status != SagaStatus.RUNNING.value
            else StoreOutcome.DUPLICATE
        )

    async def saga_events(self, saga_id: UUID) -> list[InboxEvent]:
        """Every event kept for the saga, in the order stored."""
        rows = await self._db.fetchall(
            sql.SQL(
                "SELECT event_id, name, payload, received_at FROM {} WHERE saga_id = %s"
                " ORDER BY seq"
            ).format(self._db.table("saga_inbox")),
            (saga_id,),
        )
        return [InboxEvent(row[0], saga_id, row[1], row[2], row[3]) for row in rows]

    async def purge_events_before(self, cutoff: datetime) -> int:
        """Delete the events received before ``cutoff`` by sagas that are finished (or no
        longer stored); return how many. A running saga's events are kept, however old.
        ``cutoff`` must be timezone-aware (``ValueError`` otherwise)."""
        if cutoff.tzinfo is None:
            raise ValueError("cutoff must be timezone-aware")
        query = sql.SQL(
            "DELETE FROM {} AS i WHERE i.received_at < %s AND NOT EXISTS (SELECT 1 FROM {} AS s"
            " WHERE s.saga_id = i.saga_id AND s.status IN ({}))"
        ).format(
            self._db.table("saga_inbox"), self._db.table("sagas"), _status_list(ACTIVE_STATUSES)
        )

        async def op(connection: _Connection) -> int:
            cursor = await connection.execute(query, (cutoff,))
            return int(cursor.rowcount)

        count: int = await self._db.write(("saga_inbox", "purge"), op)
        return count

    async def due_waits(self, now: datetime, limit: int = 1000) -> list[UUID]:
        """Running sagas leased to nobody whose ``run_after`` has come at ``now`` (parked at
        a wait step, or left by a process that stopped), soonest first. For a process
        without workers; workers claim these themselves."""
        rows = await self._db.fetchall(
            sql.SQL(
                "SELECT saga_id FROM {} WHERE status = 'running' AND run_after <= %s"
                " AND (lease_owner IS NULL OR lease_expires_at < now())"
                " ORDER BY run_after LIMIT %s"
            ).format(self._db.table("sagas")),
            (now, int(limit)),
        )
        return [row[0] for row in rows]
