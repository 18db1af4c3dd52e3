"""The idempotency store in PostgreSQL."""

from __future__ import annotations

from datetime import datetime

from psycopg import sql

from ._db import _Connection, _PostgresBase

__all__ = ["PostgresIdempotencyStore"]


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
