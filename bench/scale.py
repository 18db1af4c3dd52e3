"""Scale benchmark: does throughput hold with 100k and 1M completed sagas already stored?

On SQLite (a file, ``synchronous=FULL``) and PostgreSQL (one schema per size), each database is
first filled with ``size`` completed sagas: one real saga is run through the repository (the
spec's order saga of engine.py, no-op services), and its row is copied ``size - 1`` times in
SQL with a new saga id and order id written into the columns and into the encoded state
(SQLite: ``INSERT ... SELECT`` over a recursive CTE; PostgreSQL: ``INSERT ... SELECT`` over
``generate_series``), with every index in place, so that the indexes grow as they would in
use. The template's outbox rows are deleted (in use, a relay sends and purges them); PostgreSQL
tables are then vacuumed and analysed (autovacuum's job in use) and checkpointed.

Then, on each database, interleaved over repeats: the same saga sequentially and with 64 in
flight for a fixed time each (sagas/s, median over repeats, and the ratio to the empty
database); once per database: ``get_by_correlation_id`` on random stored sagas,
``count_by_status`` of the active statuses, ``recover()`` with nothing to recover and with 20
interrupted sagas, and on PostgreSQL a worker's ``claim`` (nothing runnable; 16 runnable).

Filled databases are cached between runs (``bench/.cache/`` for SQLite files, schemas
``saga_bench_scale_<size>`` on PostgreSQL), keyed on the migrations and the state encoding;
rows a run adds are deleted at its end. ``--no-cache`` fills temporary ones and drops them.

    .venv/bin/python bench/scale.py              # ~2 min with the cache, ~4 min without
    .venv/bin/python bench/scale.py --quick      # smoke run: 0, 1k and 10k rows, ~20 s
    .venv/bin/python bench/scale.py --profile sqlite/1000000/64   # cProfile one cell
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import hashlib
import io
import json
import os
import pstats
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

import order_fulfillment.domain
import saga_orchestrator
from _support import (
    CACHE_DIR,
    DEFAULT_POSTGRES_URL,
    RESULTS_DIR,
    Column,
    Services,
    describe_machine,
    load_average,
    machine_line,
    make_order,
    make_saga,
    median,
    percentile,
    postgres_problem,
    render_markdown,
    render_table,
    write_results,
)
from order_fulfillment.saga import OrderFulfillmentSaga
from saga_orchestrator import SagaOrchestrator, SagaStatus, SQLiteSagaRepository
from saga_orchestrator.state import ACTIVE_STATUSES

FILL_VERSION = 1
"""Bump when the fill changes, to invalidate cached databases."""

SCHEMA_PREFIX = "saga_bench_scale_"
INTERRUPTED = 20  # sagas left in flight for the recover() measurement
CLAIM_BATCH = 16  # runnable sagas for the claim measurement


def size_label(size: int) -> str:
    if size >= 1_000_000 and size % 1_000_000 == 0:
        return f"{size // 1_000_000}M"
    if size >= 1_000 and size % 1_000 == 0:
        return f"{size // 1_000}k"
    return str(size)


def fingerprint(backend: str) -> str:
    """What a cached fill depends on: the backend's migrations, the state encoding, the
    saga's data classes."""
    package = Path(saga_orchestrator.__file__).parent
    digest = hashlib.sha256(f"fill {FILL_VERSION}".encode())
    files = sorted((package / "adapters" / "migrations" / backend).glob("*.sql"))
    files += sorted((package / "serialization").glob("*.py"))
    files += [Path(order_fulfillment.domain.__file__)]
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------------------- filling


async def run_template(repository: Any) -> None:
    """One real saga: its stored row is the template the fill copies."""
    result = await SagaOrchestrator(repository).execute(make_saga(make_order(), Services()))
    if result.status is not SagaStatus.COMPLETED:
        raise RuntimeError(f"template saga ended {result.status}")


def _sqlite_uuid(salt: int) -> str:
    """SQL for a UUID-shaped text from ``i``: scattered like uuid4s in an index, unique by
    its last group."""
    return (
        f"printf('%08x-%04x-4%03x-8%03x-%012x', (i * {2654435761 + 2 * salt}) % 4294967296,"
        f" (i * {40503 + 2 * salt}) % 65536, (i * {2897 + 2 * salt}) % 4096,"
        f" (i * {1489 + 2 * salt}) % 4096, i + {salt} * 100000000000)"
    )


def sqlite_bulk(path: Path, copies: int, progress: Callable[[str], None]) -> int:
    """Copy the file's only saga ``copies`` times; return the last rowid."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # No journal and no syncs while filling (a failed fill is thrown away); the
        # repository turns WAL back on when it opens the file.
        connection.execute("PRAGMA journal_mode=OFF")
        connection.execute("PRAGMA synchronous=OFF")
        connection.execute("PRAGMA cache_size=-512000")
        saga_id, correlation_id = connection.execute(
            "SELECT saga_id, correlation_id FROM sagas"
        ).fetchone()
        order_id = correlation_id.removeprefix("order-")
        columns = [row[1] for row in connection.execute("PRAGMA table_info(sagas)")]
        new = {
            "saga_id": "ids.sid",
            "correlation_id": "'order-' || ids.oid",
            "state": "replace(replace(t.state, :sid, ids.sid), :oid, ids.oid)",
        }
        select = ", ".join(new.get(c, f"t.{c}") for c in columns)
        statement = (
            "WITH RECURSIVE s(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM s WHERE i < :hi),"
            f" ids(sid, oid) AS (SELECT {_sqlite_uuid(0)}, {_sqlite_uuid(1)} FROM s)"
            f" INSERT INTO sagas ({', '.join(columns)}) SELECT {select}"
            " FROM ids, (SELECT * FROM sagas WHERE saga_id = :sid) AS t"
        )
        chunk = 100_000
        for lo in range(1, copies + 1, chunk):
            hi = min(lo + chunk - 1, copies)
            connection.execute("BEGIN")
            connection.execute(statement, {"lo": lo, "hi": hi, "sid": saga_id, "oid": order_id})
            connection.execute("COMMIT")
            if copies > chunk:
                progress(f"{hi + 1:,} rows")
        connection.execute("DELETE FROM saga_outbox")
        last: int = connection.execute("SELECT max(rowid) FROM sagas").fetchone()[0]
        connection.execute("PRAGMA journal_mode=WAL")
    finally:
        connection.close()
    with open(path, "rb+") as file:  # the fill's dirty pages must not flush during the run
        os.fsync(file.fileno())
    return last


def postgres_bulk(url: str, schema: str, copies: int, progress: Callable[[str], None]) -> int:
    """Copy the schema's only saga ``copies`` times; return the last created_seq."""
    import psycopg

    from saga_orchestrator.serialization import decode_context, encode_context

    with psycopg.connect(url, autocommit=True) as connection:
        saga_id, correlation_id, state, patches = connection.execute(
            f"SELECT s.saga_id, s.correlation_id, s.state, ARRAY(SELECT j.patch FROM"
            f" {schema}.saga_journal AS j WHERE j.saga_id = s.saga_id AND j.version >"
            f" s.snapshot_version AND j.patch IS NOT NULL ORDER BY j.version)"
            f" FROM {schema}.sagas AS s"
        ).fetchone()  # type: ignore[misc]
        # The copies are whole documents: the template's journal is folded into its state.
        context = decode_context(state, patches=patches)
        connection.execute(
            f"UPDATE {schema}.sagas SET state = %s, snapshot_version = version",
            (encode_context(context),),
        )
        connection.execute(f"DELETE FROM {schema}.saga_journal")
        columns = [
            row[0]
            for row in connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s"
                " AND table_name = 'sagas' AND is_identity = 'NO' AND is_generated = 'NEVER'"
                " ORDER BY ordinal_position",
                (schema,),
            )
        ]
        new = {
            "saga_id": "ids.sid",
            "correlation_id": "'order-' || ids.oid",
            "state": "replace(replace(t.state, %(sid)s, ids.sid::text), %(oid)s, ids.oid::text)",
        }
        select = ", ".join(new.get(c, f"t.{c}") for c in columns)
        statement = (
            f"INSERT INTO {schema}.sagas ({', '.join(columns)}) SELECT {select}"
            f" FROM {schema}.sagas AS t, generate_series(%(lo)s::bigint, %(hi)s::bigint) AS i,"
            " LATERAL (SELECT md5(i::text || 's')::uuid AS sid, md5(i::text || 'o')::uuid AS oid)"
            " AS ids WHERE t.saga_id = %(tid)s"
        )
        params = {"sid": str(saga_id), "oid": correlation_id.removeprefix("order-"), "tid": saga_id}
        chunk = 100_000
        for lo in range(1, copies + 1, chunk):
            hi = min(lo + chunk - 1, copies)
            connection.execute(statement, {**params, "lo": lo, "hi": hi})  # type: ignore[arg-type]
            if copies > chunk:
                progress(f"{hi + 1:,} rows")
        connection.execute(f"DELETE FROM {schema}.saga_journal")
        connection.execute(f"VACUUM ANALYZE {schema}.sagas")
        connection.execute(f"VACUUM ANALYZE {schema}.saga_journal")
        connection.execute("CHECKPOINT")
        row = connection.execute(f"SELECT max(created_seq) FROM {schema}.sagas").fetchone()
        assert row is not None
        return int(row[0])


def _pg_connect(url: str) -> Any:
    import psycopg

    return psycopg.connect(url, autocommit=True)


def _pg_execute(url: str, *statements: str) -> list[Any]:
    import psycopg

    out: list[Any] = []
    with psycopg.connect(url, autocommit=True) as connection:
        for statement in statements:
            cursor = connection.execute(statement)  # type: ignore[arg-type]
            out.append(cursor.fetchall() if cursor.description else None)
    return out


# ---------------------------------------------------------------------------- stores


class _Stuck(Services):
    """Step 1 never returns: the saga stays in flight until cancelled."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.count = count
        self.entered = 0
        self.all_in = anyio.Event()

    async def reserve(self, **_: Any) -> Any:
        self.entered += 1
        if self.entered >= self.count:
            self.all_in.set()
        await anyio.sleep_forever()


@dataclass
class Store:
    """One database (a SQLite file or a PostgreSQL schema) holding ``size`` completed sagas."""

    backend: str  # sqlite | postgres
    size: int
    location: str  # the file, or the schema
    fill_key: int  # rowid / created_seq of the last filled row: later rows are the run's
    fill_s: float | None  # None: taken from the cache
    url: str = ""
    temporary: bool = True
    repo: Any = None
    orchestrator: SagaOrchestrator | None = None
    services: Services = field(default_factory=Services)
    runs: dict[str, list[tuple[int, float, int | None]]] = field(default_factory=dict)
    probes: dict[str, Any] = field(default_factory=dict)
    _pg: Any = None  # the benchmark's own connection, for WAL positions and sizes

    @property
    def key(self) -> str:
        return f"{self.backend}/{self.size}"

    async def open(self) -> None:
        await self.trim()
        if self.backend == "sqlite":
            self.repo = SQLiteSagaRepository(self.location)
        else:
            from saga_orchestrator.adapters.postgres import PostgresSagaRepository

            self.repo = PostgresSagaRepository(self.url, schema=self.location)
            self._pg = await anyio.to_thread.run_sync(_pg_connect, self.url)
        await self.repo.open()
        self.orchestrator = SagaOrchestrator(self.repo)
        services = self.services
        self.orchestrator.register(
            OrderFulfillmentSaga.saga_type, lambda data: make_saga(data, services)
        )

    async def close(self) -> None:
        if self.repo is not None:
            await self.repo.close()
            self.repo = None
        if self._pg is not None:
            self._pg.close()
            self._pg = None
        await self.trim()

    def _wal_position(self) -> str | None:
        if self._pg is None:
            return None
        return str(self._pg.execute("SELECT pg_current_wal_lsn()").fetchone()[0])

    def _wal_bytes(self, start: str | None) -> int | None:
        if self._pg is None or start is None:
            return None
        row = self._pg.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s::pg_lsn)", (start,)
        ).fetchone()
        return int(row[0])

    def sizes(self) -> dict[str, float]:
        """The sagas table and its indexes, in MB (SQLite: the file)."""
        if self.backend == "postgres":
            table = f"{self.location}.sagas"
            row = self._pg.execute(
                "SELECT pg_table_size(%s::regclass), pg_indexes_size(%s::regclass)", (table, table)
            ).fetchone()
            return {"table_mb": row[0] / 1e6, "indexes_mb": row[1] / 1e6}
        connection = sqlite3.connect(self.location, timeout=30)
        try:
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
            page = connection.execute("PRAGMA page_size").fetchone()[0]
            indexes = connection.execute(
                "SELECT sum(pgsize) FROM dbstat WHERE name IN (SELECT name FROM sqlite_master"
                " WHERE type = 'index' AND tbl_name = 'sagas')"
            ).fetchone()[0]
        finally:
            connection.close()
        return {"table_mb": (pages * page - indexes) / 1e6, "indexes_mb": indexes / 1e6}

    async def trim(self) -> None:
        """Delete the rows added after the fill (this run's, or a crashed run's)."""
        if self.backend == "sqlite":

            def run() -> None:
                connection = sqlite3.connect(self.location, isolation_level=None, timeout=30)
                try:
                    connection.execute("BEGIN IMMEDIATE")
                    connection.execute("DELETE FROM sagas WHERE rowid > ?", (self.fill_key,))
                    connection.execute("DELETE FROM saga_outbox")
                    connection.execute("COMMIT")
                    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                finally:
                    connection.close()

        else:
            schema = self.location

            def run() -> None:
                _pg_execute(
                    self.url,
                    f"DELETE FROM {schema}.sagas WHERE created_seq > {int(self.fill_key)}",
                    f"DELETE FROM {schema}.saga_journal",
                    f"VACUUM {schema}.sagas",
                    f"VACUUM {schema}.saga_journal",
                )

        await anyio.to_thread.run_sync(run)

    async def throughput(self, concurrency: int, seconds: float) -> tuple[int, float, int | None]:
        """Run sagas for ``seconds`` with ``concurrency`` in flight; (sagas, wall time, WAL
        bytes written meanwhile by the whole PostgreSQL server)."""
        orchestrator = self.orchestrator
        assert orchestrator is not None
        services = self.services
        clock = time.perf_counter
        done = 0

        async def loop(deadline: float) -> None:
            nonlocal done
            while clock() < deadline:
                result = await orchestrator.execute(make_saga(make_order(), services))
                if result.status is not SagaStatus.COMPLETED:
                    raise RuntimeError(f"{self.key}: saga ended {result.status}: {result.error}")
                done += 1

        wal = await anyio.to_thread.run_sync(self._wal_position)
        gc.collect()
        started = clock()
        if concurrency == 1:
            await loop(started + seconds)
        else:
            async with anyio.create_task_group() as tg:
                for _ in range(concurrency):
                    tg.start_soon(loop, started + seconds)
        wall = clock() - started
        return done, wall, await anyio.to_thread.run_sync(self._wal_bytes, wal)

    # ------------------------------------------------------------------ probes

    def _sample(self, count: int) -> list[str]:
        """Correlation ids of random stored sagas (filled or run)."""
        rng = random.Random(7)
        if self.backend == "sqlite":
            connection = sqlite3.connect(self.location, timeout=30)
            try:
                top = connection.execute("SELECT max(rowid) FROM sagas").fetchone()[0]
                keys = [rng.randint(1, top) for _ in range(count)]
                marks = ",".join("?" * len(keys))
                rows = connection.execute(
                    f"SELECT correlation_id FROM sagas WHERE rowid IN ({marks})", keys
                ).fetchall()
            finally:
                connection.close()
        else:
            top = _pg_execute(self.url, f"SELECT max(created_seq) FROM {self.location}.sagas")
            keys = [rng.randint(1, top[0][0][0]) for _ in range(count)]
            rows = _pg_execute(
                self.url,
                f"SELECT correlation_id FROM {self.location}.sagas"
                f" WHERE created_seq IN ({','.join(map(str, keys))})",
            )[0]
        return [row[0] for row in rows]

    async def probe(self, budget_s: float) -> None:
        repo, orchestrator = self.repo, self.orchestrator
        assert orchestrator is not None
        found: dict[str, Any] = {}

        ids = await anyio.to_thread.run_sync(self._sample, 200)
        latencies = []
        for correlation_id in ids:
            t0 = time.perf_counter()
            context = await repo.get_by_correlation_id(correlation_id)
            latencies.append(time.perf_counter() - t0)
            if context is None:
                raise RuntimeError(f"{self.key}: {correlation_id} not found")
        found["by_correlation_p50_ms"] = percentile(latencies, 0.5) * 1e3
        found["by_correlation_p99_ms"] = percentile(latencies, 0.99) * 1e3

        counts = await timed(lambda: repo.count_by_status(ACTIVE_STATUSES), 20, budget_s)
        found["count_active_ms"] = median(counts) * 1e3
        found["count_active_calls"] = len(counts)

        idle = await timed(orchestrator.recover, 5, budget_s)
        found["recover_idle_ms"] = median(idle) * 1e3
        found["recover_idle_calls"] = len(idle)

        await self.interrupt(INTERRUPTED)
        t0 = time.perf_counter()
        results = await orchestrator.recover()
        found["recover_20_ms"] = (time.perf_counter() - t0) * 1e3
        completed = sum(r.status is SagaStatus.COMPLETED for r in results)
        if completed != INTERRUPTED:
            raise RuntimeError(f"{self.key}: recover() completed {completed}/{INTERRUPTED}")

        if self.backend == "postgres":
            empty = await timed(lambda: repo.claim(CLAIM_BATCH), 50, budget_s)
            found["claim_empty_ms"] = median(empty) * 1e3
            for _ in range(CLAIM_BATCH):
                await orchestrator.submit(make_saga(make_order(), self.services))
            batch: list[float] = []
            started = time.perf_counter()
            while len(batch) < 20 and (not batch or time.perf_counter() - started < budget_s):
                t0 = time.perf_counter()
                claimed = await repo.claim(CLAIM_BATCH)
                batch.append(time.perf_counter() - t0)
                if len(claimed) != CLAIM_BATCH:
                    raise RuntimeError(f"{self.key}: claimed {len(claimed)}/{CLAIM_BATCH}")
                for context in claimed:
                    await repo.release(context.saga_id)
            found["claim_16_ms"] = median(batch) * 1e3
            await orchestrator.recover()  # the submitted sagas, so that nothing stays in flight
        found.update(await anyio.to_thread.run_sync(self.sizes))
        self.probes = found

    async def interrupt(self, count: int) -> None:
        """Leave ``count`` sagas in flight, their first step interrupted."""
        assert self.orchestrator is not None
        stuck = _Stuck(count)
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(self.orchestrator.execute, make_saga(make_order(), stuck))
            with anyio.fail_after(60):
                await stuck.all_in.wait()
            tg.cancel_scope.cancel()


async def timed(fn: Callable[[], Awaitable[Any]], most: int, budget_s: float) -> list[float]:
    """Seconds per call of ``fn``: at least once, at most ``most`` times or ``budget_s``."""
    out: list[float] = []
    started = time.perf_counter()
    while len(out) < most and (not out or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------- preparing


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def prepare_sqlite(size: int, args: argparse.Namespace, workdir: Path) -> Store:
    fill = fingerprint("sqlite")
    cached = args.cache and size > 0
    if cached:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        path = CACHE_DIR / f"scale-sqlite-{size}-{fill}.db"
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists() and not args.refill:
            info = json.loads(meta.read_text(encoding="utf-8"))
            say(f"  sqlite/{size_label(size)}: cached {path.name}")
            return Store("sqlite", size, str(path), info["fill_key"], None, temporary=False)
        for stale in CACHE_DIR.glob(f"scale-sqlite-{size}-*"):
            stale.unlink()
    else:
        path = workdir / f"scale-sqlite-{size}.db"
    building = path.with_name(path.name + ".filling")
    for leftover in path.parent.glob(building.name + "*"):
        leftover.unlink()
    started = time.perf_counter()
    async with SQLiteSagaRepository(building) as repository:
        if size > 0:
            await run_template(repository)
    last = min(size, 1)
    if size > 1:
        last = await anyio.to_thread.run_sync(
            sqlite_bulk, building, size - 1, lambda s: say(f"  sqlite/{size_label(size)}: {s}")
        )
    elapsed = time.perf_counter() - started
    building.rename(path)
    if cached:
        path.with_suffix(".json").write_text(
            json.dumps({"fill_key": last, "fill_s": elapsed, "rows": size}), encoding="utf-8"
        )
    say(f"  sqlite/{size_label(size)}: filled in {elapsed:.1f} s")
    return Store("sqlite", size, str(path), last, elapsed, temporary=not cached)


async def prepare_postgres(size: int, args: argparse.Namespace, run_id: str) -> Store:
    from saga_orchestrator.adapters.postgres import PostgresSagaRepository

    url = args.postgres_url
    fill = fingerprint("postgres")
    cached = args.cache and size > 0
    schema = f"{SCHEMA_PREFIX}{size}" if cached else f"{SCHEMA_PREFIX}{size}_{run_id}"
    if cached and not args.refill:
        rows = await anyio.to_thread.run_sync(
            lambda: _pg_execute(
                url,
                "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace"
                f" WHERE nspname = '{schema}'",
            )[0]
        )
        if rows and rows[0][0]:
            info = json.loads(rows[0][0])
            if info.get("fingerprint") == fill and info.get("rows") == size:
                say(f"  postgres/{size_label(size)}: cached schema {schema}")
                return Store("postgres", size, schema, info["fill_key"], None, url, False)
    building = f"{schema}_filling"
    await anyio.to_thread.run_sync(
        lambda: _pg_execute(
            url,
            f"DROP SCHEMA IF EXISTS {building} CASCADE",
            f"DROP SCHEMA IF EXISTS {schema} CASCADE",
        )
    )
    started = time.perf_counter()
    async with PostgresSagaRepository(url, schema=building) as repository:
        if size > 0:
            await run_template(repository)
    last = 0
    if size > 0:
        last = await anyio.to_thread.run_sync(
            postgres_bulk,
            url,
            building,
            size - 1,
            lambda s: say(f"  postgres/{size_label(size)}: {s}"),
        )
    elapsed = time.perf_counter() - started
    comment = json.dumps({"fingerprint": fill, "rows": size, "fill_key": last, "fill_s": elapsed})
    await anyio.to_thread.run_sync(
        lambda: _pg_execute(
            url,
            f"ALTER SCHEMA {building} RENAME TO {schema}",
            f"COMMENT ON SCHEMA {schema} IS '{comment}'",
        )
    )
    say(f"  postgres/{size_label(size)}: filled in {elapsed:.1f} s")
    return Store("postgres", size, schema, last, elapsed, url, not cached)


async def prepare(args: argparse.Namespace, workdir: Path, run_id: str) -> list[Store]:
    """Every store; the SQLite and PostgreSQL fills run side by side (2 cores)."""
    by_backend: dict[str, list[Store]] = {b: [] for b in args.backends}

    async def lane(backend: str) -> None:
        for size in args.sizes:
            if backend == "sqlite":
                by_backend[backend].append(await prepare_sqlite(size, args, workdir))
            else:
                by_backend[backend].append(await prepare_postgres(size, args, run_id))

    async with anyio.create_task_group() as tg:
        for backend in args.backends:
            tg.start_soon(lane, backend)
    return [store for backend in args.backends for store in by_backend[backend]]


async def discard(stores: list[Store], url: str) -> None:
    schemas = [s.location for s in stores if s.backend == "postgres" and s.temporary]
    if schemas:
        await anyio.to_thread.run_sync(
            lambda: _pg_execute(url, *(f"DROP SCHEMA IF EXISTS {s} CASCADE" for s in schemas))
        )


# ---------------------------------------------------------------------------- running

MODES = ("seq", "64")


async def measure(args: argparse.Namespace, stores: list[Store]) -> None:
    for store in stores:
        await store.open()
    try:
        for store in stores:  # warm-up: connections, caches, code paths
            await store.throughput(args.concurrency, args.warmup)
        for repeat in range(args.repeats):
            for backend in args.backends:
                for mode in MODES:
                    concurrency, seconds = (
                        (1, args.seq_seconds) if mode == "seq" else (args.concurrency, args.seconds)
                    )
                    cells = [s for s in stores if s.backend == backend]
                    if repeat % 2:  # every other repeat largest first: drift evens out
                        cells.reverse()
                    for store in cells:
                        sample = await store.throughput(concurrency, seconds)
                        store.runs.setdefault(mode, []).append(sample)
            say(f"  repeat {repeat + 1}/{args.repeats} done")
        for store in stores:
            await store.probe(args.probe_budget)
        say("  probes done")
    finally:
        for store in stores:
            await store.close()


def summarise(stores: list[Store], args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    empty = {s.backend: s for s in stores if s.size == min(args.sizes)}
    for store in stores:
        row: dict[str, Any] = {
            "backend": store.backend,
            "stored": store.size,
            "stored_label": size_label(store.size),
            "fill_s": store.fill_s,
            "cached": store.fill_s is None and store.size > 0,
        }
        for mode in MODES:
            samples = store.runs.get(mode, [])
            rate = median(n / wall for n, wall, _ in samples)
            row[f"{mode}_per_s"] = rate
            row[f"{mode}_per_s_each_repeat"] = [round(n / wall, 1) for n, wall, _ in samples]
            row[f"{mode}_sagas"] = sum(n for n, _, _ in samples)
            wal = [w / n for n, _, w in samples if w is not None and n]
            if wal:
                row[f"{mode}_wal_kb_per_saga"] = median(wal) / 1e3
            base = empty[store.backend].runs.get(mode, [])
            if base:
                row[f"{mode}_ratio"] = rate / median(n / wall for n, wall, _ in base)
        row.update(store.probes)
        rows.append(row)
    return rows


COLUMNS = (
    Column("backend", "backend", align="<"),
    Column("stored_label", "stored", align="<"),
    Column("seq_per_s", "seq/s", "{:,.0f}"),
    Column("seq_ratio", "vs 0", "{:.2f}"),
    Column("64_per_s", "64 fl/s", "{:,.0f}"),
    Column("64_ratio", "vs 0", "{:.2f}"),
    Column("by_correlation_p50_ms", "by corr p50 ms", "{:.3f}"),
    Column("by_correlation_p99_ms", "p99 ms", "{:.3f}"),
    Column("count_active_ms", "count ms", "{:,.2f}"),
    Column("recover_idle_ms", "recover(0) ms", "{:,.1f}"),
    Column("recover_20_ms", "recover(20) ms", "{:,.1f}"),
    Column("claim_empty_ms", "claim(0) ms", "{:.2f}"),
    Column("claim_16_ms", "claim(16) ms", "{:.2f}"),
    Column("64_wal_kb_per_saga", "WAL kB/saga", "{:.1f}"),
    Column("table_mb", "table MB", "{:,.0f}"),
    Column("indexes_mb", "indexes MB", "{:,.1f}"),
    Column("fill_s", "fill s", "{:.0f}"),
)


def verdicts(rows: list[dict[str, Any]], sizes: list[int]) -> list[str]:
    """The target: at the largest size, within 10% of empty, per backend and mode."""
    top = max(sizes)
    out = []
    for row in rows:
        if row["stored"] != top or top == min(sizes):
            continue
        for mode, name in (("seq", "sequential"), ("64", "64 in flight")):
            ratio = row.get(f"{mode}_ratio")
            if ratio is None:
                continue
            verdict = "met" if ratio >= 0.9 else "MISSED"
            out.append(
                f"{row['backend']} {name}: {size_label(top)} stored / empty = {ratio:.2f}"
                f" (target >= 0.90: {verdict})"
            )
    return out


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part.replace("_", "").replace("k", "000").replace("M", "000000"))
                    for part in text.split(",") if part.strip()})  # fmt: skip
    if not sizes or sizes[0] < 0:
        raise argparse.ArgumentTypeError("sizes are counts >= 0, e.g. 0,100k,1M")
    return sizes


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/scale.py",
        description="Throughput of the order saga (no-op services) on SQLite and PostgreSQL "
        "with 0, 100k and 1M completed sagas stored, and the cost of lookups, counts, "
        "recover() and claims at those sizes.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 0, 1k, 10k rows")
    parser.add_argument("--sizes", type=parse_sizes, default=None, help="e.g. 0,100k,1M")
    parser.add_argument(
        "--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres"
    )
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--concurrency", type=int, default=64, help="sagas in flight")
    parser.add_argument("--repeats", type=int, default=None, help="default 5 (1 with --quick)")
    parser.add_argument("--seq-seconds", type=float, default=None, help="per sequential sample")
    parser.add_argument("--seconds", type=float, default=None, help="per 64-in-flight sample")
    parser.add_argument("--warmup", type=float, default=None, help="seconds per database")
    parser.add_argument("--probe-budget", type=float, default=None, help="seconds per probe")
    parser.add_argument(
        "--no-cache", dest="cache", action="store_false", help="fill temporary databases"
    )
    parser.add_argument("--refill", action="store_true", help="rebuild the cached databases")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    parser.add_argument(
        "--profile",
        metavar="BACKEND/SIZE/MODE",
        help="instead of the matrix, cProfile one cell, e.g. sqlite/1000000/64",
    )
    args = parser.parse_args(argv)
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not set(args.backends) <= {"sqlite", "postgres"} or not args.backends:
        parser.error("--backends: sqlite, postgres")
    quick = args.quick
    if args.sizes is None:
        args.sizes = [0, 1_000, 10_000] if quick else [0, 100_000, 1_000_000]
    if quick:
        args.cache = False
    defaults = {
        "repeats": (1, 5),
        "seq_seconds": (0.3, 1.5),
        "seconds": (0.5, 2.0),
        "warmup": (0.3, 1.0),
        "probe_budget": (0.3, 3.0),
    }
    for name, (short, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    if args.concurrency < 2 or args.repeats < 1:
        parser.error("--concurrency must be >= 2 and --repeats >= 1")
    return args


async def run_profile(args: argparse.Namespace, stores: list[Store]) -> str:
    backend, size, mode = args.profile.split("/")
    store = next(s for s in stores if s.backend == backend and s.size == int(size))
    await store.open()
    try:
        concurrency = 1 if mode == "seq" else args.concurrency
        await store.throughput(concurrency, args.warmup)
        profiler = cProfile.Profile()
        profiler.enable()
        count, wall, _ = await store.throughput(concurrency, args.seconds)
        profiler.disable()
    finally:
        await store.close()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(25)
    return (
        f"{args.profile}: {count} sagas in {wall:.2f} s under cProfile "
        f"({count / wall:,.0f} sagas/s; profiling inflates times)\n{stream.getvalue()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "postgres" in args.backends:
        problem = postgres_problem(args.postgres_url)
        if problem is not None:
            say(f"PostgreSQL left out: {problem}")
            args.backends = [b for b in args.backends if b != "postgres"]
            if not args.backends:
                return 1
    if args.profile:
        backend, size, _ = args.profile.split("/")
        args.backends, args.sizes = [backend], [int(size)]
    info = describe_machine(args.postgres_url if "postgres" in args.backends else None)
    say(
        f"scale benchmark: {', '.join(map(size_label, args.sizes))} stored sagas on "
        f"{', '.join(args.backends)}; {args.repeats} repeats of {args.seq_seconds:g} s "
        f"sequential and {args.seconds:g} s with {args.concurrency} in flight"
    )
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-scale-"))
    run_id = os.urandom(4).hex()
    started = time.perf_counter()
    stores: list[Store] = []

    async def go() -> str | None:
        nonlocal stores
        try:
            say("preparing databases")
            stores = await prepare(args, workdir, run_id)
            if args.profile:
                return await run_profile(args, stores)
            say("measuring")
            await measure(args, stores)
            return None
        finally:
            await discard(stores, args.postgres_url)

    try:
        profile = anyio.run(go)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if profile is not None:
        print(profile)
        return 0
    elapsed = time.perf_counter() - started
    rows = summarise(stores, args)
    found = verdicts(rows, args.sizes)
    if args.quick:
        found = [f"{line} [--quick: one short sample, mostly noise]" for line in found]
    info["load_average_at_end"] = load_average()
    header = machine_line(info)
    settings = (
        f"{args.repeats} repeats (median) of {args.seq_seconds:g} s sequential and "
        f"{args.seconds:g} s with {args.concurrency} in flight per database"
    )
    table = render_table(COLUMNS, rows)
    text = "\n".join([header, settings, "", table, "", *found]) + "\n"
    print(text, end="")
    say(f"(benchmark took {elapsed:.0f} s)")
    if not args.no_save:
        command = "bench/scale.py" + (" --quick" if args.quick else "")
        markdown = "\n".join(
            [
                "# Scale: throughput with completed sagas stored",
                "",
                f"`.venv/bin/python {command}`: {header}. {settings}; took {elapsed:.0f} s.",
                "",
                render_markdown(COLUMNS, rows),
                "",
                *(f"- {line}" for line in found),
            ]
        )
        document = {
            "benchmark": "scale",
            "machine": info,
            "settings": {
                "sizes": args.sizes,
                "backends": args.backends,
                "repeats": args.repeats,
                "seq_seconds": args.seq_seconds,
                "seconds": args.seconds,
                "concurrency": args.concurrency,
                "interrupted_for_recover": INTERRUPTED,
                "claim_batch": CLAIM_BATCH,
                "quick": args.quick,
                "cache": args.cache,
                "duration_s": round(elapsed, 1),
            },
            "results": rows,
            "targets": found,
        }
        paths = write_results("scale", document, markdown, args.results_dir)
        say(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
