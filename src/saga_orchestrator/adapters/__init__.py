"""Storage and event adapters shipped with the core: in-memory and SQLite."""

from .memory import InMemoryEventPublisher, InMemoryIdempotencyStore, InMemorySagaRepository
from .sqlite import SQLiteIdempotencyStore, SQLiteSagaRepository

__all__ = [
    "InMemoryEventPublisher",
    "InMemoryIdempotencyStore",
    "InMemorySagaRepository",
    "SQLiteIdempotencyStore",
    "SQLiteSagaRepository",
]
