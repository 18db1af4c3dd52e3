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

# The modules follow the adapters' seams: _db (the pool, group commit, and the check of a
# batch whose COMMIT was cut off), _migrate (migrations), _leases (lease bookkeeping, the
# heartbeat, claiming), _notify (LISTEN/NOTIFY), _outbox (the relay's side of the outbox),
# repository and idempotency. The public names are re-exported here, and documented here.

from __future__ import annotations

try:
    import psycopg  # noqa: F401
    import psycopg_pool  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "saga_orchestrator.adapters.postgres needs psycopg 3 and psycopg-pool: "
        "pip install 'saga-orchestrator[postgres]'"
    ) from exc

from ._migrate import migrate
from .idempotency import PostgresIdempotencyStore
from .repository import PostgresSagaRepository

__all__ = ["PostgresIdempotencyStore", "PostgresSagaRepository", "migrate"]
