"""PostgreSQL migrations: the numbered SQL files of ``adapters/migrations/postgres``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from psycopg import sql

from .._common import pending_migrations

if TYPE_CHECKING:
    from ._db import _Connection

__all__ = ["migrate"]

_MIGRATIONS_TABLE = "saga_schema_migrations"  # in the adapters' schema


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
        for number, name, script in pending_migrations("postgres", applied):
            await connection.execute(script)  # several statements: no parameters
            await connection.execute(
                f"INSERT INTO {_MIGRATIONS_TABLE} (version, name) VALUES (%s, %s)",
                (number, name),
            )
            done.append(name)
    return done
