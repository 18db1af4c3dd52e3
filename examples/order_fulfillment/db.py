"""The services' SQLite database: one file (by default the saga store's), one connection.

Every write runs in a `BEGIN IMMEDIATE` transaction in a worker thread, so the event loop
never blocks and concurrent orders cannot oversell: the stock check and the decrement are one
transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


def money(text: str) -> Decimal:
    return Decimal(text)


class ShopDatabase:
    """The connection the example's services share, with its schema."""

    def __init__(self, path: str | Path, *, busy_timeout_seconds: float = 30.0) -> None:
        self.path = str(path)
        self.busy_timeout_seconds = busy_timeout_seconds
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            if self.path != ":memory:":
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout_seconds,
                isolation_level=None,
                check_same_thread=False,
            )
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                schema = resources.files(__package__).joinpath("schema.sql").read_text("utf-8")
                connection.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _statements(schema):
                        connection.execute(statement)
                    connection.execute("COMMIT")
                except BaseException:
                    if connection.in_transaction:
                        connection.execute("ROLLBACK")
                    raise
            except BaseException:
                connection.close()  # not usable (not a database, busy...): never left open
                raise
            self._connection = connection
        return self._connection

    async def open(self) -> None:
        await anyio.to_thread.run_sync(self._locked, lambda c: None)

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        with anyio.CancelScope(shield=True):  # closes even in a cancelled task
            await anyio.to_thread.run_sync(run)

    def _locked(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            return fn(self._open())

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            connection = self._open()
            connection.execute("BEGIN IMMEDIATE")
            try:
                result = fn(connection)
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
            return result

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(connection)` in one write transaction; an exception rolls it back."""
        return await anyio.to_thread.run_sync(self._in_transaction, fn)

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await anyio.to_thread.run_sync(self._locked, fn)


def _statements(script: str) -> list[str]:
    out: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer.strip())
            buffer = ""
    return [s for s in out if s]
