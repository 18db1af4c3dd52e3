"""The relay's side of the PostgreSQL saga repository's outbox: read, mark, purge."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime

import psycopg
from psycopg import sql

from ...events import SagaEvent, decode_event
from ._db import _Connection, _Database


class _OutboxReader:
    """The outbox half of ``PostgresSagaRepository``, which sets these attributes."""

    _db: _Database
    _relay_connection: _Connection | None
    _relay_lock_held: bool

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
