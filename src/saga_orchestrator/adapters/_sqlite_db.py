"""The SQLite adapters' database: migrations, one connection per object with its thread lock,
and the group-commit writer (see ``saga_orchestrator.adapters.sqlite``)."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.to_thread

from ..errors import SagaAlreadyExistsError, SagaConflictError
from ._common import pending_migrations, script_statements
from ._lifecycle import AsyncLifecycle

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]


def migrate(connection: sqlite3.Connection) -> list[str]:
    """Apply the pending migrations in one IMMEDIATE transaction; return their names.

    Safe when several processes open the same file at once: the first takes the write lock
    and migrates, the others wait (busy timeout), then find nothing left to do.
    """
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS saga_schema_migrations ("
            " version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        applied = {
            row[0] for row in connection.execute("SELECT version FROM saga_schema_migrations")
        }
        done: list[str] = []
        for number, name, script in pending_migrations("sqlite", applied):
            for statement in script_statements(script):
                connection.execute(statement)
            connection.execute(
                "INSERT INTO saga_schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (number, name, datetime.now(UTC).isoformat()),
            )
            done.append(name)
        connection.execute("COMMIT")
        return done
    except BaseException:
        if connection.in_transaction:  # some errors (disk full, I/O) roll back themselves
            connection.execute("ROLLBACK")
        raise


@dataclass(slots=True)
class _Write:
    op: Callable[[sqlite3.Connection], Any]
    result: Any = None
    error: BaseException | None = None
    done: bool = False


class _Database:
    """One connection, its thread lock, lazy opening and the group-commit writer."""

    def __init__(self, path: str | Path, synchronous: Synchronous, busy_timeout_seconds: float):
        if not isinstance(path, str | os.PathLike):
            raise TypeError(
                f"the SQLite database path must be a str or a pathlib.Path, got "
                f"{type(path).__name__} {path!r:.60}"
            )
        self.path = os.fspath(path)
        self.synchronous = synchronous
        self.busy_timeout_seconds = busy_timeout_seconds
        self._connection: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._queue: list[_Write] = []
        self._flushing = False
        self._flushed: anyio.Event | None = None
        self.transactions = 0
        """Write transactions committed, for tests and benchmarks."""

    def _open(self) -> sqlite3.Connection:
        with self._lock:
            if self._connection is None:
                if self.path != ":memory:":
                    Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                connection = sqlite3.connect(
                    self.path,
                    timeout=self.busy_timeout_seconds,
                    isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                    check_same_thread=False,
                )
                try:
                    connection.execute("PRAGMA journal_mode=WAL")
                    connection.execute(f"PRAGMA synchronous={self.synchronous}")
                    busy_ms = int(self.busy_timeout_seconds * 1000)
                    connection.execute(f"PRAGMA busy_timeout={busy_ms}")
                    migrate(connection)
                except BaseException:
                    connection.close()  # not a usable store (or busy): never left open
                    raise
                self._connection = connection
            return self._connection

    async def read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            connection = self._open()
            with self._lock:
                return fn(connection)

        return await anyio.to_thread.run_sync(run)

    async def write(self, op: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``op`` in a write transaction, shared with the writes queued meanwhile."""
        item = _Write(op)
        self._queue.append(item)
        try:
            while not item.done:
                if self._flushing:
                    assert self._flushed is not None
                    await self._flushed.wait()
                    continue
                self._flushing = True
                flushed = self._flushed = anyio.Event()
                batch, self._queue = self._queue, []
                try:
                    # A batch carries other callers' writes: it is never abandoned half-way.
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(self._commit_batch, batch)
                finally:
                    self._flushing = False
                    flushed.set()
        except BaseException:
            if not item.done and item in self._queue:
                self._queue.remove(item)  # cancelled before its batch started: never written
            raise
        if item.error is not None:
            raise item.error
        return item.result

    def _commit_batch(self, batch: list[_Write]) -> None:
        connection = self._open()
        with self._lock:
            try:
                connection.execute("BEGIN IMMEDIATE")
                for item in batch:
                    try:
                        item.result = item.op(connection)
                    except (SagaConflictError, SagaAlreadyExistsError) as exc:
                        item.error = exc  # that statement wrote nothing; the others go on
                connection.execute("COMMIT")
                self.transactions += 1
            except BaseException as exc:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                for item in batch:
                    item.error = exc
            finally:
                for item in batch:
                    item.done = True

    async def close(self) -> None:
        def run() -> None:
            with self._lock:
                if self._connection is not None:
                    self._connection.close()
                    self._connection = None

        # Shielded: a close in a cancelled scope (``__aexit__`` of a cancelled task) still
        # closes the connection; anyio would otherwise raise before the thread starts.
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(run)


class _SQLiteBase(AsyncLifecycle):
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "FULL",
        busy_timeout_seconds: float = 30.0,
    ) -> None:
        self._db = _Database(path, synchronous, busy_timeout_seconds)

    @property
    def path(self) -> str:
        """The database file, as given."""
        return self._db.path

    @property
    def transactions(self) -> int:
        """Write transactions this object committed."""
        return self._db.transactions

    async def open(self) -> None:
        """Open the file and apply migrations now (otherwise done on first use)."""
        await self._db.read(lambda connection: None)

    async def close(self) -> None:
        """Close the connection; using the object again reopens it."""
        await self._db.close()
