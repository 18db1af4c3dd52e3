"""What a benchmark costs PostgreSQL: the server's counters and a client-side statement count.

- ``Monitor`` reads ``pg_stat_database`` (committed and rolled-back transactions of one
  database) and ``pg_stat_wal`` (WAL records, bytes, writes and flushes of the whole cluster)
  from a connection to another database, so that its own queries are not counted.
- ``StatementCounter`` counts the SQL statements that psycopg 3 cursors (sync and async) send
  from this process, by patching ``execute``/``executemany`` of ``psycopg.Cursor`` and
  ``psycopg.AsyncCursor``. Transaction control sent as a statement (our adapter's ``BEGIN``
  and ``COMMIT``) is counted apart, since psycopg sends the implicit ``BEGIN``/``COMMIT`` of a
  non-autocommit connection (SQLAlchemy's, so DBOS's) without a cursor.

PostgreSQL 15 keeps a backend's statistics in the backend until it flushes them to shared
memory: when idle, at most once a second, else up to 10 s later, and always when the backend
exits. A measurement window must therefore close every connection of the database it
measures, wait until their backends are gone (``settle``) and read the counters only then:
see ``Window``.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

# ---------------------------------------------------------------------------- DSNs


def with_database(url: str, database: str) -> str:
    """``url`` (a ``postgresql://`` URI) naming ``database`` instead."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + database))


def database_of(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def server_info(url: str) -> dict[str, Any]:
    """Version and the settings that matter for commit costs; raises if unreachable."""
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as connection:
        names = (
            "server_version",
            "synchronous_commit",
            "fsync",
            "wal_sync_method",
            "full_page_writes",
            "commit_delay",
            "shared_buffers",
            "max_connections",
            "shared_preload_libraries",
        )
        info: dict[str, Any] = {}
        for name in names:
            row = connection.execute(
                "SELECT setting FROM pg_settings WHERE name = %s", (name,)
            ).fetchone()
            info[name] = row[0] if row else None
        row = connection.execute("SELECT version()").fetchone()
        info["version"] = row[0] if row else None
        return info


def recreate_database(admin_url: str, name: str) -> None:
    """Drop ``name`` (ending its sessions) and create it empty."""
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        ident = sql.Identifier(name)
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(ident))


def drop_database(admin_url: str, name: str) -> None:
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def pgbench_reference(
    url: str, clients: tuple[int, ...] = (1, 16), seconds: int = 3
) -> dict[str, Any]:
    """Single-row INSERT transactions per second with ``pgbench`` (if installed), with 1
    and 16 clients: what this server commits at best, to set the sagas' figures against."""
    import glob
    import shutil
    import subprocess
    import tempfile

    found = shutil.which("pgbench") or next(
        iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/pgbench"), reverse=True)), None
    )
    if found is None:
        return {"error": "pgbench not found"}
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            "CREATE TABLE IF NOT EXISTS bench_reference (id bigserial PRIMARY KEY, v int)"
        )
    parts = urlsplit(url)
    out: dict[str, Any] = {"pgbench": found, "seconds": seconds}
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as script:
        script.write("INSERT INTO bench_reference (v) VALUES (1);\n")
        script.flush()
        for n in clients:
            command = [found, "-n", "-c", str(n), "-j", str(min(n, 2)), "-T", str(seconds)]
            command += ["-f", script.name, "-h", parts.hostname or "127.0.0.1"]
            command += ["-p", str(parts.port or 5432), "-U", parts.username or "postgres"]
            command.append(database_of(url))
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            tps = [
                line.split("=", 1)[1].split()[0]
                for line in done.stdout.splitlines()
                if line.startswith("tps =")
            ]
            out[f"insert_tps_{n}_clients"] = float(tps[0]) if tps else None
    return out


# ---------------------------------------------------------------------------- server counters


@dataclass(frozen=True)
class ServerStats:
    xact_commit: int = 0  # of the measured database
    xact_rollback: int = 0
    sessions: int = 0  # connections opened to it; each one's startup commits a transaction
    other_commits: int = 0  # of every other database but the monitor's: activity not ours
    wal_records: int = 0  # pg_stat_wal: the whole cluster
    wal_fpi: int = 0
    wal_bytes: int = 0
    wal_write: int = 0
    wal_sync: int = 0

    def __sub__(self, other: ServerStats) -> ServerStats:
        return ServerStats(
            **{f.name: getattr(self, f.name) - getattr(other, f.name) for f in fields(self)}
        )


class Monitor:
    """A connection to the admin database that reads the counters of another database."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.admin_db = database_of(admin_url)
        self._connection: psycopg.AsyncConnection[Any] | None = None

    async def _conn(self) -> psycopg.AsyncConnection[Any]:
        if self._connection is None or self._connection.closed:
            self._connection = await psycopg.AsyncConnection.connect(
                self.admin_url, autocommit=True
            )
        return self._connection

    async def close(self) -> None:
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def snapshot(self, database: str) -> ServerStats:
        connection = await self._conn()
        await connection.execute("SELECT pg_stat_clear_snapshot()")  # read fresh values
        cursor = await connection.execute(
            "SELECT coalesce(sum(xact_commit) FILTER (WHERE datname = %s), 0),"
            " coalesce(sum(xact_rollback) FILTER (WHERE datname = %s), 0),"
            " coalesce(sum(sessions) FILTER (WHERE datname = %s), 0),"
            " coalesce(sum(xact_commit) FILTER (WHERE datname IS NOT NULL"
            "   AND datname NOT IN (%s, %s)), 0)"
            " FROM pg_stat_database",
            (database, database, database, database, self.admin_db),
        )
        db = await cursor.fetchone()
        cursor = await connection.execute(
            "SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync FROM pg_stat_wal"
        )
        wal = await cursor.fetchone()
        assert db is not None
        assert wal is not None
        return ServerStats(*(int(value) for value in (*db, *wal)))

    async def settle(self, database: str, *, wait_s: float = 15.0) -> bool:
        """Wait until no backend is connected to ``database`` (so each has flushed its
        statistics on exit), then a moment for the WAL writer's own report. False on
        timeout."""
        connection = await self._conn()
        deadline = time.monotonic() + wait_s
        settled = False
        while time.monotonic() < deadline:
            cursor = await connection.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (database,)
            )
            row = await cursor.fetchone()
            if row is not None and row[0] == 0:
                settled = True
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.25)  # the WAL writer reports every wal_writer_delay (200 ms)
        return settled


# ---------------------------------------------------------------------------- client counter

_TXN_CONTROL = frozenset({"BEGIN", "COMMIT", "ROLLBACK", "START", "END", "SAVEPOINT", "RELEASE"})


def _first_word(query: Any) -> str:
    if isinstance(query, bytes):
        text = query[:16].decode("ascii", "replace")
    elif isinstance(query, str):
        text = query[:16]
    else:  # a psycopg sql.Composed: none of ours is transaction control
        return ""
    word = text.lstrip().split(None, 1)
    return word[0].upper().rstrip(";") if word else ""


class StatementCounter:
    """Counts statements sent through psycopg cursors in this process (all threads)."""

    def __init__(self) -> None:
        self.statements = 0
        self.txn_control = 0
        self.autocommit_prepares = 0
        self._lock = threading.Lock()
        self._installed = False

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.statements, self.txn_control, self.autocommit_prepares

    def _count(self, query: Any, many: int = 1) -> None:
        control = _first_word(query) in _TXN_CONTROL
        with self._lock:
            if control:
                self.txn_control += 1
            else:
                self.statements += many

    def install(self) -> None:
        if self._installed:
            return
        self._installed = True
        count = self._count

        def wrap_sync(method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
                count(query)
                return method(cursor, query, *args, **kwargs)

            return execute

        def wrap_async(method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            async def execute(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
                count(query)
                return await method(cursor, query, *args, **kwargs)

            return execute

        for cls, wrap in ((psycopg.Cursor, wrap_sync), (psycopg.AsyncCursor, wrap_async)):
            # executemany is one statement prepared once and run for each parameter set:
            # counted once, as a round trip (pipelined) rather than per row.
            cls.execute = wrap(cls.execute)  # type: ignore[method-assign]
            cls.executemany = wrap(cls.executemany)  # type: ignore[method-assign]

        # psycopg prepares a statement on the server once it has run `prepare_threshold` (5)
        # times on a connection. Outside a transaction block that Parse commits an implicit
        # transaction of its own: one per statement shape and connection, not per saga.
        from psycopg import pq
        from psycopg._cursor_base import BaseCursor  # internal: guarded

        send_prepare = getattr(BaseCursor, "_send_prepare", None)
        if send_prepare is None:
            return
        lock = self._lock

        def counted_prepare(cursor: Any, *args: Any, **kwargs: Any) -> Any:
            if cursor._pgconn.transaction_status == pq.TransactionStatus.IDLE:
                with lock:
                    self.autocommit_prepares += 1
            return send_prepare(cursor, *args, **kwargs)

        BaseCursor._send_prepare = counted_prepare  # type: ignore[method-assign]


COUNTER = StatementCounter()


# ---------------------------------------------------------------------------- windows


@dataclass
class Cost:
    """What one measurement window cost the database, in total."""

    sagas: int
    server: ServerStats
    statements: int
    txn_control: int
    prepares: int  # server-side PREPAREs outside a transaction block: a commit each
    repo_transactions: int | None
    settled: bool

    def per_saga(self, fixed: Cost | None = None) -> dict[str, float | int | bool | None]:
        """Per-saga figures, less ``fixed`` (an idle open/close cycle) if given.

        Only the counters of the measured database and of this process are corrected: the
        WAL counters are the whole cluster's, so an idle cycle's are mostly other sessions'
        activity (an idle open/close of either client writes next to no WAL).
        """
        server = self.server
        if fixed is not None:
            f = fixed.server
            server = replace(
                server,
                xact_commit=server.xact_commit - f.xact_commit,
                xact_rollback=server.xact_rollback - f.xact_rollback,
                sessions=server.sessions - f.sessions,
            )
        statements = self.statements - (fixed.statements if fixed else 0)
        control = self.txn_control - (fixed.txn_control if fixed else 0)
        prepares = self.prepares - (fixed.prepares if fixed else 0)
        n = max(self.sagas, 1)
        out: dict[str, float | int | bool | None] = {
            "window_sagas": self.sagas,
            # A new connection's startup commits one transaction, and so does psycopg's
            # first server-side PREPARE of each statement shape outside a transaction:
            # once per connection, not the sagas' doing.
            "commits_per_saga": (server.xact_commit - server.sessions - prepares) / n,
            "commits_all_per_saga": server.xact_commit / n,
            "connections_opened": server.sessions,
            "autocommit_prepares": prepares,
            "rollbacks_per_saga": server.xact_rollback / n,
            "wal_flushes_per_saga": server.wal_sync / n,
            "wal_writes_per_saga": server.wal_write / n,
            "wal_records_per_saga": server.wal_records / n,
            "wal_fpi_per_saga": server.wal_fpi / n,
            "wal_bytes_per_saga": server.wal_bytes / n,
            "statements_per_saga": statements / n,
            "txn_control_per_saga": control / n,
            "other_db_commits": self.server.other_commits,
            "settled": self.settled,
        }
        out["repo_transactions_per_saga"] = (
            self.repo_transactions / n if self.repo_transactions is not None else None
        )
        return out

    def raw(self) -> dict[str, Any]:
        return {
            "sagas": self.sagas,
            "statements": self.statements,
            "txn_control": self.txn_control,
            "autocommit_prepares": self.prepares,
            "repo_transactions": self.repo_transactions,
            "settled": self.settled,
            **{f"server_{f.name}": getattr(self.server, f.name) for f in fields(self.server)},
        }


class Window:
    """Counters around one open → run → close cycle of a client of ``database``.

    ``await window.start()`` before opening the client (waits until the database has no
    backend left, then reads the counters); ``await window.stop(sagas, repo_transactions)``
    after closing it.
    """

    def __init__(self, monitor: Monitor, database: str) -> None:
        self.monitor = monitor
        self.database = database
        self._server: ServerStats | None = None
        self._client = (0, 0, 0)
        self._settled = True

    async def start(self) -> None:
        self._settled = await self.monitor.settle(self.database)
        self._server = await self.monitor.snapshot(self.database)
        self._client = COUNTER.snapshot()

    async def stop(self, sagas: int, repo_transactions: int | None = None) -> Cost:
        assert self._server is not None, "Window.start() first"
        statements, control, prepares = COUNTER.snapshot()
        settled = await self.monitor.settle(self.database)
        server = await self.monitor.snapshot(self.database)
        return Cost(
            sagas=sagas,
            server=server - self._server,
            statements=statements - self._client[0],
            txn_control=control - self._client[1],
            prepares=prepares - self._client[2],
            repo_transactions=repo_transactions,
            settled=self._settled and settled,
        )
