"""Storage and event adapters shipped with the core: in-memory and SQLite.

The PostgreSQL adapters need the ``postgres`` extra and are imported from their own module,
``saga_orchestrator.adapters.postgres``, so that the core never needs psycopg.
"""

from .memory import InMemoryEventPublisher, InMemoryIdempotencyStore, InMemorySagaRepository
from .sqlite import SQLiteIdempotencyStore, SQLiteSagaRepository

__all__ = [
    "InMemoryEventPublisher",
    "InMemoryIdempotencyStore",
    "InMemorySagaRepository",
    "SQLiteIdempotencyStore",
    "SQLiteSagaRepository",
]
