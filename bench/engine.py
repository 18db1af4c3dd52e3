"""Engine benchmark: saga-orchestrator on memory, SQLite and PostgreSQL, beside DBOS Transact.

Runs the spec's order saga (``bench/workload.py``: the example's ``OrderFulfillmentSaga``, 4
steps with compensations, dataclass data with a Decimal total and UUID ids) against no-op
services, so that what is measured is the engine and its storage:

- ``baseline``: the same service calls awaited directly, no library;
- ``memory``: ``InMemorySagaRepository``;
- ``sqlite-full``: ``SQLiteSagaRepository`` on a temporary file (WAL, ``synchronous=FULL``);
- ``postgres``: ``PostgresSagaRepository`` (defaults: group commit, leases, outbox) in a
  schema of its own per scenario, in a database created for the run;
- ``dbos``: the same saga as a DBOS Transact workflow (``bench/dbos_saga.py``), on the same
  PostgreSQL server, in a database of its own;

each one saga at a time and with 16, 64 and 256 in flight, on the happy path and with step 3
failing (steps 2 and 1 compensated). Reported: sagas/s, p50/p99 latency, the overhead per
service call against the baseline, and for PostgreSQL what each saga costs the database:
committed transactions, WAL flushes, WAL records and bytes, statements (``bench/pgstats.py``).

    .venv/bin/python bench/engine.py              # default run, about 4-5 minutes
    .venv/bin/python bench/engine.py --quick      # smoke run, under a minute
    .venv/bin/python bench/engine.py --profile postgres/64/happy --profiler py-spy
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio

import saga_orchestrator
from saga_orchestrator import (
    InMemorySagaRepository,
    SagaOrchestrator,
    SQLiteSagaRepository,
)
from workload import (
    CALLS,
    EXPECTED,
    PATHS,
    NoCarrierError,
    Services,
    make_order,
    make_saga,
    run_plain,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
SAGA_DB = "saga_bench_engine"  # databases created (and dropped) by the run
DBOS_DB = "dbos_bench_engine"

ADAPTERS = (
    "memory",
    "sqlite-full",
    "sqlite-normal",
    "postgres",
    "postgres-nooutbox",
    "postgres-x2",
    "dbos",
)
DEFAULT_ADAPTERS = ("memory", "sqlite-full", "postgres", "dbos")
PG_ADAPTERS = ("postgres", "postgres-nooutbox", "postgres-x2", "dbos")
DEFAULT_LEVELS = (1, 16, 64, 256)
QUICK_LEVELS = (1, 16)

__all__ = [  # re-exported for the other benchmark scripts
    "CALLS",
    "EXPECTED",
    "PATHS",
    "NoCarrierError",
    "Services",
    "machine_info",
    "make_order",
    "make_saga",
    "run_plain",
]

# ---------------------------------------------------------------------------- scenarios


@dataclass
class Measurement:
    wall_s: float
    latencies_s: list[float]
    writes: int | None
    cpu_s: float | None = None  # the client processes' CPU time (user + system) in the batch
    cost: Any = None  # pgstats.Cost of the repeat's window (PostgreSQL adapters)


@dataclass
class Settings:
    repeats: int
    target_s: float
    min_sagas: int
    max_sagas: int
    sagas: int | None  # fixed batch size (overrides the sizing)
    warmup: int | None
    pg_url: str
    saga_db: str = SAGA_DB
    dbos_db: str = DBOS_DB


class Scenario:
    """One cell of the matrix: an adapter, a number in flight, a path."""

    adapter = "?"
    database: str | None = None  # the PostgreSQL database whose counters are read

    def __init__(self, concurrency: int, path: str, workdir: Path, settings: Settings) -> None:
        self.concurrency = concurrency
        self.path = path
        self.workdir = workdir
        self.settings = settings
        self.services = Services(fail_shipping=path == "fail@3")
        self.repeats: list[Measurement] = []
        self.count: int | None = settings.sagas  # measured sagas per repeat, once sized
        self.run_total = 0  # sagas run so far (warm-ups included)
        self.problems: list[str] = []

    # identity

    @property
    def mode(self) -> str:
        return "sequential" if self.concurrency == 1 else f"{self.concurrency} in flight"

    @property
    def key(self) -> str:
        level = "seq" if self.concurrency == 1 else str(self.concurrency)
        return f"{self.adapter}/{level}/{self.path}"

    @property
    def slug(self) -> str:
        return self.key.replace("/", "_").replace("@", "").replace("-", "_")

    @property
    def warmup(self) -> int:
        if self.settings.warmup is not None:
            return self.settings.warmup
        return min(max(self.concurrency, 10), 64)

    # lifecycle: prepare once, open/close around each repeat (kept open where cheap)

    async def prepare(self) -> None:
        """Once before the first repeat (schemas, migrations)."""

    async def open(self) -> None:
        """Before a repeat."""

    async def close(self) -> None:
        """After a repeat (the PostgreSQL adapters close their connections here)."""

    async def teardown(self) -> None:
        """After the last repeat."""

    def writes(self) -> int | None:
        """Write transactions (or repository writes) so far, if the adapter counts them."""
        return None

    def one(self) -> Callable[[], Awaitable[None]]:
        raise NotImplementedError

    async def verify(self) -> None:
        """After a repeat: check the stored outcome; append to ``problems``."""

    # running

    @property
    def local_concurrency(self) -> int:
        """Sagas in flight in this process (``postgres-x2`` leaves the rest to its peer)."""
        return self.concurrency

    async def start_peers(self, count: int) -> int:
        """Hand part of ``count`` to other processes; return how many this one runs."""
        return count

    async def join_peers(self) -> None:
        """Wait until the other processes have run their part."""

    def calls(self) -> int:
        """Service calls made so far (in every process of the scenario)."""
        return self.services.calls

    def cpu_seconds(self) -> float:
        """CPU time (user + system, every thread) used so far by the scenario's processes."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    async def run(self, count: int) -> Measurement:
        """Run ``count`` sagas; the wall time, each saga's latency (in this process) and the
        writes made."""
        one = self.one()
        latencies: list[float] = []
        clock = time.perf_counter
        writes_before = self.writes()
        calls_before = self.calls()
        gc.collect()
        cpu_before = self.cpu_seconds()
        started = clock()
        local = await self.start_peers(count)
        if self.local_concurrency == 1:
            for _ in range(local):
                t0 = clock()
                await one()
                latencies.append(clock() - t0)
        else:
            limiter = anyio.CapacityLimiter(self.local_concurrency)

            async def task() -> None:
                async with limiter:
                    t0 = clock()
                    await one()
                    latencies.append(clock() - t0)

            async with anyio.create_task_group() as tg:
                for _ in range(local):
                    tg.start_soon(task)
        await self.join_peers()
        wall = clock() - started
        cpu = self.cpu_seconds() - cpu_before
        self.run_total += count
        calls = self.calls() - calls_before
        if calls != count * CALLS[self.path]:  # the baseline and the saga make the same calls
            raise RuntimeError(f"{self.key}: {calls} service calls for {count} sagas")
        writes_after = self.writes()
        writes = (
            writes_after - writes_before
            if writes_after is not None and writes_before is not None
            else None
        )
        return Measurement(wall, latencies, writes, cpu)

    def size(self, warmup: Measurement) -> int:
        """The measured batch: about ``target_s`` seconds at the warm-up's rate, at least
        ``min_sagas`` and twice the number in flight, at most ``max_sagas``."""
        if self.count is None:
            s = self.settings
            rate = len(warmup.latencies_s) / max(warmup.wall_s, 1e-9)
            want = max(s.min_sagas, 2 * self.concurrency, math.ceil(rate * s.target_s))
            self.count = min(want, max(s.max_sagas, 2 * self.concurrency))
        return self.count


class BaselineScenario(Scenario):
    adapter = "baseline"

    def one(self) -> Callable[[], Awaitable[None]]:
        # Built once: the baseline times the service calls, not building a saga.
        steps = make_saga(make_order(), self.services).steps

        async def plain() -> None:
            await run_plain(steps, make_order())

        return plain


class EngineScenario(Scenario):
    """saga-orchestrator on some repository."""

    repo: Any = None
    orchestrator: SagaOrchestrator | None = None

    def one(self) -> Callable[[], Awaitable[None]]:
        orchestrator = self.orchestrator
        assert orchestrator is not None
        services = self.services
        expected = EXPECTED[self.path]

        async def saga() -> None:
            result = await orchestrator.execute(make_saga(make_order(), services))
            if result.status is not expected:
                raise RuntimeError(f"{self.key}: saga ended {result.status}: {result.error}")

        return saga


class MemoryScenario(EngineScenario):
    adapter = "memory"

    async def open(self) -> None:
        if self.repo is None:
            self.repo = InMemorySagaRepository()
            self.orchestrator = SagaOrchestrator(self.repo)

    def writes(self) -> int | None:
        return self.repo.writes if self.repo is not None else None


class SQLiteScenario(EngineScenario):
    def __init__(self, synchronous: str, *args: Any) -> None:
        super().__init__(*args)
        self.synchronous = synchronous
        self.adapter = "sqlite-full" if synchronous == "FULL" else "sqlite-normal"

    async def open(self) -> None:
        if self.repo is None:
            file = self.workdir / f"{self.slug}.db"
            self.repo = SQLiteSagaRepository(file, synchronous=self.synchronous)
            await self.repo.open()
            self.orchestrator = SagaOrchestrator(self.repo)

    async def teardown(self) -> None:
        if self.repo is not None:
            await self.repo.close()
            self.repo = None

    def writes(self) -> int | None:
        return self.repo.transactions if self.repo is not None else None


class PostgresScenario(EngineScenario):
    """PostgresSagaRepository with its defaults, in schema ``<scenario>`` of SAGA_DB; a new
    repository (pool) for each repeat, closed after it so that its backends report their
    statistics."""

    def __init__(self, outbox: bool, *args: Any) -> None:
        super().__init__(*args)
        self.database = self.settings.saga_db
        self.outbox = outbox
        self.adapter = "postgres" if outbox else "postgres-nooutbox"

    @property
    def url(self) -> str:
        from pgstats import with_database

        return with_database(self.settings.pg_url, self.settings.saga_db)

    def _repository(self, *, migrate: bool) -> Any:
        from saga_orchestrator.adapters.postgres import PostgresSagaRepository

        return PostgresSagaRepository(
            self.url, schema=self.slug, apply_migrations=migrate, outbox=self.outbox
        )

    async def prepare(self) -> None:
        repo = self._repository(migrate=True)
        await repo.open()  # creates the schema and its tables
        await repo.close()

    async def open(self) -> None:
        self.repo = self._repository(migrate=False)
        await self.repo.open()
        self.orchestrator = SagaOrchestrator(self.repo)

    async def close(self) -> None:
        if self.repo is not None:
            await self.repo.close()

    def writes(self) -> int | None:
        return self.repo.transactions if self.repo is not None else None

    async def verify(self) -> None:
        import psycopg
        from psycopg import sql

        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            cursor = await conn.execute(
                sql.SQL(
                    "SELECT status, count(*), count(*) FILTER (WHERE lease_owner IS NOT NULL"
                    " AND status IN ('pending', 'running', 'compensating')) FROM {}"
                    " GROUP BY status"
                ).format(sql.Identifier(self.slug, "sagas"))
            )
            rows = await cursor.fetchall()
        statuses = {status: count for status, count, _ in rows}
        leased = sum(held for _, _, held in rows)
        want = {EXPECTED[self.path].value: self.run_total}
        if statuses != want or leased:
            self.problems.append(f"stored {statuses} ({leased} still leased), expected {want}")


class PostgresTwoProcessScenario(PostgresScenario):
    """``postgres`` (defaults, outbox on) run by two processes on one schema: this one and a
    peer (``bench/_pg_peer.py``, started for each repeat), each with half the sagas and half
    the number in flight. Latencies are this process's sagas only."""

    def __init__(self, *args: Any) -> None:
        super().__init__(True, *args)
        self.adapter = "postgres-x2"
        self.peer: subprocess.Popen[str] | None = None
        self.peer_calls = 0
        self.peer_writes = 0
        self.peer_counts = (0, 0, 0)  # pgstats.COUNTER's, in the peer
        self.peer_cpu = 0.0  # the peer's CPU seconds, as it last reported them

    @property
    def local_concurrency(self) -> int:
        return self.concurrency - self.concurrency // 2

    async def open(self) -> None:
        await super().open()
        # Started once per repeat, before the measured window's sagas: blocking is fine here.
        self.peer = subprocess.Popen(  # noqa: ASYNC220
            [
                sys.executable,
                str(BENCH_DIR / "_pg_peer.py"),
                self.url,
                self.slug,
                self.path,
                str(self.concurrency // 2),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.peer_calls = self.peer_writes = 0
        self.peer_counts = (0, 0, 0)
        self.peer_cpu = 0.0
        await self._peer_line("ready")

    async def _peer_line(self, want: str) -> str:
        assert self.peer is not None
        assert self.peer.stdout is not None
        line = await anyio.to_thread.run_sync(self.peer.stdout.readline)
        if not line.startswith(want):
            raise RuntimeError(f"{self.key}: the peer process said {line.strip()!r}")
        return line

    async def start_peers(self, count: int) -> int:
        assert self.peer is not None
        assert self.peer.stdin is not None
        self.peer.stdin.write(f"{count // 2}\n")
        self.peer.stdin.flush()
        return count - count // 2

    async def join_peers(self) -> None:
        from pgstats import COUNTER

        _, calls, writes, cpu, *counts = (await self._peer_line("done")).split()
        self.peer_calls, self.peer_writes = int(calls), int(writes)
        self.peer_cpu = float(cpu)
        # The peer's statements count in this run's database cost as this process's do.
        now = tuple(int(n) for n in counts)
        COUNTER.statements += now[0] - self.peer_counts[0]
        COUNTER.txn_control += now[1] - self.peer_counts[1]
        COUNTER.autocommit_prepares += now[2] - self.peer_counts[2]
        self.peer_counts = (now[0], now[1], now[2])

    def calls(self) -> int:
        return self.services.calls + self.peer_calls

    def cpu_seconds(self) -> float:
        return super().cpu_seconds() + self.peer_cpu

    def writes(self) -> int | None:
        local = super().writes()
        return None if local is None else local + self.peer_writes

    async def close(self) -> None:
        if self.peer is not None:
            peer, self.peer = self.peer, None
            assert peer.stdin is not None
            peer.stdin.write("quit\n")
            peer.stdin.flush()
            code = await anyio.to_thread.run_sync(peer.wait)
            if code != 0:
                self.problems.append(f"the peer process exited with status {code}")
        await super().close()


class DBOSScenario(Scenario):
    """The DBOS Transact workflow; DBOS launched for each repeat and destroyed after it."""

    adapter = "dbos"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.database = self.settings.dbos_db
        self.ids: list[str] = []

    @property
    def url(self) -> str:
        from pgstats import with_database

        return with_database(self.settings.pg_url, self.settings.dbos_db)

    async def prepare(self) -> None:
        import dbos_saga

        dbos_saga.launch(self.url)  # migrates the system database the first time
        dbos_saga.destroy()

    async def open(self) -> None:
        import dbos_saga

        dbos_saga.bind(self.services)
        dbos_saga.launch(self.url)

    async def close(self) -> None:
        import dbos_saga

        dbos_saga.destroy()

    def one(self) -> Callable[[], Awaitable[None]]:
        import dbos_saga

        run_one = dbos_saga.run_one
        expected = EXPECTED[self.path].value  # "completed" or "compensated"
        ids = self.ids

        async def workflow() -> None:
            workflow_id, result = await run_one(make_order())
            if result != expected:
                raise RuntimeError(f"{self.key}: workflow {workflow_id} returned {result!r}")
            ids.append(workflow_id)

        return workflow

    async def verify(self) -> None:
        import dbos_saga

        checkpoints = 4 if self.path == "happy" else 5  # step outputs: actions + undos
        problem = await anyio.to_thread.run_sync(
            dbos_saga.verify, self.url, self.ids, EXPECTED[self.path].value, checkpoints
        )
        if problem:
            self.problems.append(problem)
        self.ids.clear()


def build_matrix(
    adapters: tuple[str, ...], levels: tuple[int, ...], workdir: Path, settings: Settings
) -> list[Scenario]:
    scenarios: list[Scenario] = []
    for adapter in ("baseline", *adapters):
        for level in levels:
            for path in PATHS:
                args = (level, path, workdir, settings)
                if adapter == "baseline":
                    scenarios.append(BaselineScenario(*args))
                elif adapter == "memory":
                    scenarios.append(MemoryScenario(*args))
                elif adapter in ("sqlite-full", "sqlite-normal"):
                    sync = "FULL" if adapter == "sqlite-full" else "NORMAL"
                    scenarios.append(SQLiteScenario(sync, *args))
                elif adapter in ("postgres", "postgres-nooutbox"):
                    scenarios.append(PostgresScenario(adapter == "postgres", *args))
                elif adapter == "postgres-x2":
                    if level >= 2:  # two processes: at least one saga in flight in each
                        scenarios.append(PostgresTwoProcessScenario(*args))
                elif adapter == "dbos":
                    scenarios.append(DBOSScenario(*args))
                else:
                    raise ValueError(f"unknown adapter {adapter!r}")
    return scenarios


# ---------------------------------------------------------------------------- running


async def run_repeat(scenario: Scenario, monitor: Any) -> Measurement:
    """One repeat: open, warm up, measure, close; for a PostgreSQL adapter all of it inside a
    window of the database's counters (the warm-up's sagas are counted in the window)."""
    window = None
    if scenario.database is not None:
        from pgstats import Window

        window = Window(monitor, scenario.database)
        await window.start()
    await scenario.open()
    try:
        warm = await scenario.run(scenario.warmup)
        count = scenario.size(warm)
        measurement = await scenario.run(count)
        repo_tx = scenario.writes() if isinstance(scenario, PostgresScenario) else None
    finally:
        await scenario.close()
    if window is not None:
        measurement.cost = await window.stop(scenario.warmup + count, repo_tx)
        await scenario.verify()
    return measurement


async def idle_cost(scenario: Scenario, monitor: Any, cycles: int = 3) -> Any:
    """What opening and closing the client costs with no saga run: the median of a few idle
    windows, subtracted from each measured window."""
    from pgstats import Cost, ServerStats, Window

    costs = []
    for _ in range(cycles):
        window = Window(monitor, scenario.database or "")
        await window.start()
        await scenario.open()
        await scenario.close()
        costs.append(await window.stop(0, 0))

    def med(values: list[int]) -> int:
        return int(statistics.median_low(values))

    server = ServerStats(
        **{
            name: med([getattr(c.server, name) for c in costs])
            for name in ServerStats.__dataclass_fields__
        }
    )
    return Cost(
        sagas=0,
        server=server,
        statements=med([c.statements for c in costs]),
        txn_control=med([c.txn_control for c in costs]),
        prepares=med([c.prepares for c in costs]),
        repo_transactions=0,
        settled=all(c.settled for c in costs),
    )


@dataclass
class RunState:
    scenarios: list[Scenario]
    fixed: dict[str, Any] = field(default_factory=dict)  # adapter -> idle Cost
    skipped: dict[str, str] = field(default_factory=dict)  # adapter -> why
    reference: dict[str, Any] | None = None  # pgbench: the server's single-row commit rate


async def run_matrix(args: argparse.Namespace, workdir: Path) -> RunState:
    settings = _settings(args)
    state = RunState(build_matrix(args.adapters, args.levels, workdir, settings))
    monitor = None
    pg = [s for s in state.scenarios if s.database is not None]
    if pg:
        from pgstats import COUNTER, Monitor, recreate_database

        COUNTER.install()
        monitor = Monitor(args.pg_url)
        for name in {s.database for s in pg if s.database}:
            recreate_database(args.pg_url, name)
        if args.reference and any(isinstance(s, PostgresScenario) for s in pg):
            from pgstats import pgbench_reference, with_database

            _progress("measuring the server's single-row commit rate (pgbench)")
            state.reference = await anyio.to_thread.run_sync(
                pgbench_reference, with_database(args.pg_url, settings.saga_db)
            )
        _progress("preparing the PostgreSQL schemas and DBOS' system database")
        for scenario in pg:
            await scenario.prepare()
        for scenario in pg:  # one idle open/close cost per adapter
            if scenario.adapter not in state.fixed:
                state.fixed[scenario.adapter] = await idle_cost(scenario, monitor, args.idle_cycles)
    started = time.perf_counter()
    try:
        for repeat in range(args.repeats):
            for scenario in state.scenarios:  # interleaved, so that drift hits every scenario
                scenario.repeats.append(await run_repeat(scenario, monitor))
                if repeat == 0:
                    last = scenario.repeats[-1]
                    _progress(
                        f"  {scenario.key}: {scenario.count} sagas, "
                        f"{(scenario.count or 0) / last.wall_s:,.1f} sagas/s "
                        f"({time.perf_counter() - started:.0f} s)"
                    )
            _progress(f"repeat {repeat + 1}/{args.repeats} done")
    finally:
        for scenario in state.scenarios:
            await scenario.teardown()
        if monitor is not None:
            await monitor.close()
        if pg and not args.keep_databases:
            from pgstats import drop_database

            for name in {s.database for s in pg if s.database}:
                drop_database(args.pg_url, name)
    return state


def _progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- summaries


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(scenario: Scenario, baseline: Scenario | None, fixed: Any | None) -> dict[str, Any]:
    """Median over repeats of each metric."""
    runs = scenario.repeats
    count = scenario.count or 0
    per_saga = statistics.median(m.wall_s / count for m in runs)
    row: dict[str, Any] = {
        "scenario": scenario.key,
        "adapter": scenario.adapter,
        "mode": scenario.mode,
        "concurrency": scenario.concurrency,
        "path": scenario.path,
        "sagas_per_repeat": count,
        "warmup_per_repeat": scenario.warmup,
        "repeats": len(runs),
        "sagas_per_s": statistics.median(count / m.wall_s for m in runs),
        "wall_per_saga_us": per_saga * 1e6,
        "p50_ms": statistics.median(_percentile(m.latencies_s, 0.50) for m in runs) * 1e3,
        "p99_ms": statistics.median(_percentile(m.latencies_s, 0.99) for m in runs) * 1e3,
        "sagas_per_s_each_repeat": [round(count / m.wall_s, 1) for m in runs],
        "client_cpu_per_saga_us": (
            statistics.median(m.cpu_s / count for m in runs if m.cpu_s is not None) * 1e6
            if all(m.cpu_s is not None for m in runs)
            else None
        ),
        "service_calls_per_saga": CALLS[scenario.path],
    }
    if baseline is not None:
        base = statistics.median(m.wall_s / (baseline.count or 1) for m in baseline.repeats)
        overhead = per_saga - base
        row["overhead_per_saga_us"] = overhead * 1e6
        row["overhead_per_step_us"] = overhead * 1e6 / CALLS[scenario.path]
    if all(m.writes is not None for m in runs) and scenario.adapter != "baseline":
        row["writes_per_saga"] = statistics.median((m.writes or 0) / count for m in runs)
    costs = [m.cost for m in runs if m.cost is not None]
    if costs:
        per = [c.per_saga(fixed) for c in costs]
        # The WAL counters are the cluster's: taken from the window with the least activity
        # in other databases. The others are this database's and this process's: medians.
        quiet = min(per, key=lambda p: p["other_db_commits"] or 0)
        db: dict[str, Any] = {}
        for name in per[0]:
            values = [p[name] for p in per]
            if name == "settled":
                db[name] = all(values)
            elif name.startswith("wal_") or name == "other_db_commits":
                db[name] = quiet[name]
            elif any(v is None for v in values):
                db[name] = None
            else:
                db[name] = statistics.median(values)  # type: ignore[type-var]
        db["windows"] = [c.raw() for c in costs]
        row["db"] = db
    if scenario.problems:
        row["problems"] = list(scenario.problems)
    return row


def summarise_all(state: RunState) -> list[dict[str, Any]]:
    scenarios = state.scenarios
    baselines = {(s.concurrency, s.path): s for s in scenarios if s.adapter == "baseline"}
    rows = []
    for scenario in scenarios:
        base = baselines.get((scenario.concurrency, scenario.path))
        rows.append(
            summarise(
                scenario,
                None if scenario is base else base,
                state.fixed.get(scenario.adapter),
            )
        )
    return rows


# ---------------------------------------------------------------------------- reporting


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return spec.format(value)


def markdown_table(header: list[str], rows: list[list[str]], align: str) -> str:
    """A pipe table padded to be readable as text too; ``align`` has one of ``<>`` per
    column."""
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [f"{c:{a}{w}}" for c, a, w in zip(cells, align, widths, strict=True)]
        return "| " + " | ".join(parts) + " |"

    rule = (
        "|"
        + "|".join(
            "-" * (w + 1) + ":" if a == ">" else "-" * (w + 2)
            for a, w in zip(align, widths, strict=True)
        )
        + "|"
    )
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _level(row: dict[str, Any]) -> str:
    return "1" if row["concurrency"] == 1 else str(row["concurrency"])


def main_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "adapter",
        "in flight",
        "path",
        "sagas/s",
        "p50 ms",
        "p99 ms",
        "µs/saga",
        "µs/step",
        "CPU µs/saga",
        "tx/saga",
        "sagas x repeats",
    ]
    body = [
        [
            r["adapter"],
            _level(r),
            r["path"],
            _fmt(r["sagas_per_s"], "{:,.1f}" if r["sagas_per_s"] < 1000 else "{:,.0f}"),
            _fmt(r["p50_ms"], "{:.3f}" if r["p50_ms"] < 10 else "{:.1f}"),
            _fmt(r["p99_ms"], "{:.3f}" if r["p99_ms"] < 10 else "{:.1f}"),
            _fmt(r.get("overhead_per_saga_us"), "{:,.0f}"),
            _fmt(r.get("overhead_per_step_us"), "{:,.1f}"),
            _fmt(r.get("client_cpu_per_saga_us"), "{:,.0f}"),
            _fmt(r.get("writes_per_saga"), "{:.2f}"),
            f"{r['sagas_per_repeat']} x {r['repeats']}",
        ]
        for r in rows
    ]
    return markdown_table(header, body, "<<<>>>>>>>>")


def db_table(rows: list[dict[str, Any]]) -> str:
    header = [
        "adapter",
        "in flight",
        "path",
        "commits",
        "write tx",
        "statements",
        "BEGIN/COMMIT stmts",
        "WAL flushes",
        "WAL writes",
        "WAL records",
        "WAL bytes",
        "other-DB commits",
    ]
    body = []
    for r in rows:
        db = r.get("db")
        if db is None:
            continue
        body.append(
            [
                r["adapter"],
                _level(r),
                r["path"],
                _fmt(db["commits_per_saga"], "{:.2f}"),
                _fmt(db["repo_transactions_per_saga"], "{:.2f}"),
                _fmt(db["statements_per_saga"], "{:.1f}"),
                _fmt(db["txn_control_per_saga"], "{:.2f}"),
                _fmt(db["wal_flushes_per_saga"], "{:.2f}"),
                _fmt(db["wal_writes_per_saga"], "{:.2f}"),
                _fmt(db["wal_records_per_saga"], "{:.1f}"),
                _fmt(db["wal_bytes_per_saga"], "{:,.0f}"),
                str(db["other_db_commits"]) + ("" if db["settled"] else " (unsettled)"),
            ]
        )
    return markdown_table(header, body, "<<<>>>>>>>>>") if body else ""


def _by_key(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {row["scenario"]: row for row in rows}


def _key(adapter: str, level: int, path: str) -> str:
    return f"{adapter}/{'seq' if level == 1 else level}/{path}"


def versus_table(rows: list[dict[str, Any]], levels: tuple[int, ...]) -> str:
    by = _by_key(rows)
    header = [
        "in flight",
        "path",
        "ours sagas/s",
        "DBOS sagas/s",
        "ours/DBOS",
        "ours p50 ms",
        "DBOS p50 ms",
        "ours p99 ms",
        "DBOS p99 ms",
        "ours commits",
        "DBOS commits",
        "ours WAL flushes",
        "DBOS WAL flushes",
        "ours stmts",
        "DBOS stmts",
    ]
    body = []
    for level in levels:
        for path in PATHS:
            ours, theirs = by.get(_key("postgres", level, path)), by.get(_key("dbos", level, path))
            if ours is None or theirs is None:
                continue
            o, t = ours.get("db", {}), theirs.get("db", {})
            body.append(
                [
                    str(level),
                    path,
                    f"{ours['sagas_per_s']:,.1f}",
                    f"{theirs['sagas_per_s']:,.1f}",
                    f"{ours['sagas_per_s'] / theirs['sagas_per_s']:.2f}x",
                    f"{ours['p50_ms']:.1f}",
                    f"{theirs['p50_ms']:.1f}",
                    f"{ours['p99_ms']:.1f}",
                    f"{theirs['p99_ms']:.1f}",
                    _fmt(o.get("commits_per_saga"), "{:.2f}"),
                    _fmt(t.get("commits_per_saga"), "{:.2f}"),
                    _fmt(o.get("wal_flushes_per_saga"), "{:.2f}"),
                    _fmt(t.get("wal_flushes_per_saga"), "{:.2f}"),
                    _fmt(o.get("statements_per_saga"), "{:.1f}"),
                    _fmt(t.get("statements_per_saga"), "{:.1f}"),
                ]
            )
    return markdown_table(header, body, "<<>>>>>>>>>>>>>") if body else ""


def sqlite_table(rows: list[dict[str, Any]], levels: tuple[int, ...]) -> str:
    by = _by_key(rows)
    header = ["in flight", "path", "sqlite-full sagas/s", "postgres sagas/s", "sqlite/postgres"]
    body = []
    for level in levels:
        for path in PATHS:
            lite, pg = (
                by.get(_key("sqlite-full", level, path)),
                by.get(_key("postgres", level, path)),
            )
            if lite is None or pg is None:
                continue
            body.append(
                [
                    str(level),
                    path,
                    f"{lite['sagas_per_s']:,.1f}",
                    f"{pg['sagas_per_s']:,.1f}",
                    f"{lite['sagas_per_s'] / pg['sagas_per_s']:.2f}x",
                ]
            )
    return markdown_table(header, body, "<<>>>") if body else ""


def targets(rows: list[dict[str, Any]], levels: tuple[int, ...]) -> list[dict[str, Any]]:
    """The issue's targets, each met or missed by this run's figures."""
    by = _by_key(rows)
    out: list[dict[str, Any]] = []

    def ratio(a: str, b: str) -> float | None:
        if a in by and b in by:
            return float(by[a]["sagas_per_s"] / by[b]["sagas_per_s"])
        return None

    def db(key: str, name: str) -> float | None:
        value = by.get(key, {}).get("db", {}).get(name)
        return float(value) if value is not None else None

    for level, want in ((64, 10.0), (1, 5.0)):
        got = ratio(_key("postgres", level, "happy"), _key("dbos", level, "happy"))
        mode = "sequentially" if level == 1 else f"with {level} in flight"
        out.append(
            {
                "target": f">= {want:g}x DBOS's sagas/s {mode} (happy path)",
                "measured": None if got is None else f"{got:.2f}x",
                "met": None if got is None else got >= want,
            }
        )
    commits = db(_key("postgres", 1, "happy"), "commits_per_saga")
    writes = db(_key("postgres", 1, "happy"), "repo_transactions_per_saga")
    out.append(
        {
            "target": "<= 5 commits per saga, happy path, sequential (no batching)",
            "measured": None
            if commits is None
            else f"{commits:.2f} commits/saga ({writes:.2f} write transactions)",
            "met": None if commits is None else commits <= 5.005,
        }
    )
    flushes = db(_key("postgres", 64, "happy"), "wal_flushes_per_saga")
    out.append(
        {
            "target": "< 1 WAL flush per saga with 64 in flight (happy path)",
            "measured": None if flushes is None else f"{flushes:.2f} flushes/saga",
            "met": None if flushes is None else flushes < 1.0,
        }
    )
    # Issue 13 (engine core): throughput with 64 in flight, one process and two, against
    # DBOS's best configuration in this run; WAL per 4-step saga.
    dbos_best = max(
        (r for r in rows if r["adapter"] == "dbos" and r["path"] == "happy"),
        key=lambda r: r["sagas_per_s"],
        default=None,
    )
    for adapter, label in (
        ("postgres", "one process, 64 in flight"),
        ("postgres-x2", "two processes, 32 in flight each"),
    ):
        row = by.get(_key(adapter, 64, "happy"))
        rate = None if row is None else float(row["sagas_per_s"])
        out.append(
            {
                "target": f">= 1,000 sagas/s, {label} (happy path)",
                "measured": None if rate is None else f"{rate:,.0f} sagas/s",
                "met": None if rate is None else rate >= 1000,
            }
        )
        versus = None if rate is None or dbos_best is None else rate / dbos_best["sagas_per_s"]
        best = (
            ""
            if dbos_best is None
            else f" ({dbos_best['scenario']}: {dbos_best['sagas_per_s']:,.1f})"
        )
        out.append(
            {
                "target": f">= 15x DBOS's best configuration in this run{best}, {label}",
                "measured": None if versus is None else f"{versus:.1f}x",
                "met": None if versus is None else versus >= 15,
            }
        )
    for level in (1, 64):
        wal = db(_key("postgres", level, "happy"), "wal_bytes_per_saga")
        mode = "sequential" if level == 1 else f"{level} in flight"
        out.append(
            {
                "target": f"<= 6,500 WAL bytes per saga (half of 0.1.0's ~13 KB), {mode}, happy",
                "measured": None if wal is None else f"{wal:,.0f} bytes",
                "met": None if wal is None else wal <= 6500,
            }
        )
    found = {
        level: ratio(_key("sqlite-full", level, "happy"), _key("postgres", level, "happy"))
        for level in levels
    }
    known = {k: v for k, v in found.items() if v is not None}
    out.append(
        {
            "target": "SQLite >= 2x our PostgreSQL sagas/s (happy path, each level)",
            "measured": ", ".join(f"{k}: {v:.2f}x" for k, v in known.items()) or None,
            "met": None if not known else all(v >= 2.0 for v in known.values()),
        }
    )
    return out


def targets_text(found: list[dict[str, Any]]) -> str:
    lines = []
    for t in found:
        mark = {True: "met", False: "MISSED", None: "not measured"}[t["met"]]
        lines.append(f"- **{mark}**: {t['target']}: {t['measured'] or '-'}")
    return "\n".join(lines)


def _reference_text(reference: dict[str, Any] | None) -> str:
    if not reference or "error" in reference:
        return ""
    rates = [
        f"{reference[key]:,.0f} with {key.split('_')[2]} client"
        + ("s" if key.split("_")[2] != "1" else "")
        for key in reference
        if key.startswith("insert_tps_") and reference[key] is not None
    ]
    if not rates:
        return ""
    return (
        " The server commits single-row INSERT transactions at "
        + " and ".join(rates)
        + f" per second (pgbench, {reference['seconds']} s each, before the run)."
    )


def _loads(values: list[float] | None) -> str:
    return "/".join(f"{v:.2f}" for v in values) if values else "?"


def render_report(
    info: dict[str, Any], settings: dict[str, Any], rows: list[dict[str, Any]], state: RunState
) -> str:
    levels = tuple(settings["levels"])
    pg = info.get("postgresql") or {}
    dirty = " (with uncommitted changes in src/ or examples/)" if info["library_dirty"] else ""
    parts = [
        f"# Engine benchmark, {info['timestamp_utc']}",
        "",
        f"saga-orchestrator {info['saga_orchestrator']} at "
        f"`{(info['git_commit'] or '?')[:12]}`{dirty}"
        f"; {info['cpu_model']}, {info['cpu_count']} CPUs, {info['memory_gib']} GiB; "
        f"{info['platform']}; Python {info['python']}; SQLite {info['sqlite']}; "
        f"PostgreSQL {pg.get('server_version', '-')} (synchronous_commit="
        f"{pg.get('synchronous_commit', '-')}, wal_sync_method={pg.get('wal_sync_method', '-')})"
        f"; psycopg {info['psycopg']}, DBOS Transact {info['dbos'] or '-'}, "
        f"SQLAlchemy {info['sqlalchemy'] or '-'}.{_reference_text(state.reference)}",
        "",
        f"Median of {settings['repeats']} interleaved repeats; each repeat warms up first "
        f"(min(max(in flight, 10), 64) sagas) and measures about {settings['target_s']} s "
        f"of sagas (at least {settings['min_sagas']} and twice the number in flight). "
        f"Run took {settings['duration_s']:.0f} s; load average (1, 5, 15 min) "
        f"{_loads(info.get('load_average_at_start'))} at the start, "
        f"{_loads(info.get('load_average_at_end'))} at the end.",
        "",
        "## Throughput, latency and overhead",
        "",
        main_table(rows),
    ]
    versus = versus_table(rows, levels)
    if versus:
        parts += [
            "",
            "## saga-orchestrator vs DBOS Transact, same PostgreSQL",
            "",
            "Per saga: committed transactions, WAL flushes and client statements (details below).",
            "",
            versus,
        ]
    sqlite = sqlite_table(rows, levels)
    if sqlite:
        parts += ["", "## SQLite vs PostgreSQL (saga-orchestrator)", "", sqlite]
    dbt = db_table(rows)
    if dbt:
        parts += [
            "",
            "## Database cost per saga (PostgreSQL)",
            "",
            "`commits`: `pg_stat_database.xact_commit` of the benchmark's database (reads in "
            "autocommit count too); `write tx`: `PostgresSagaRepository.transactions`; "
            "`statements`: SQL statements sent through psycopg from this process, "
            "transaction control apart (`BEGIN/COMMIT stmts`: sent as statements by our "
            "adapter; psycopg sends SQLAlchemy's, so DBOS', without a cursor); `WAL "
            "flushes`/`writes`/`records`/`bytes`: `pg_stat_wal` (`wal_sync`, `wal_write`, "
            "...; cluster-wide: from the repeat with the fewest commits in other databases, "
            "shown as `other-DB commits`; 0 means no other activity was seen). "
            "Per saga over each window (warm-up + measured sagas), less an idle "
            "open/close cycle of the client ("
            + "; ".join(
                f"{name}: {cost.server.xact_commit} commits, {cost.statements} statements"
                for name, cost in state.fixed.items()
            )
            + "). `commits` leaves out two one-off costs of each new connection, counted "
            "apart: its startup transaction (`pg_stat_database.sessions`) and the implicit "
            "transaction of psycopg's server-side PREPARE of each statement shape when run "
            "outside a transaction block (after 5 uses on the connection).",
            "",
            dbt,
        ]
    busy = sum(
        w["server_other_commits"] for r in rows for w in (r.get("db") or {}).get("windows", [])
    )
    load = info.get("load_average_at_start") or [0.0]
    if busy or load[0] > 0.5 * (info.get("cpu_count") or 1):
        parts += [
            "",
            f"**Other activity during the run**: other databases of the server committed "
            f"{busy:,} transactions during the PostgreSQL windows, and the load average was "
            f"{_loads(info.get('load_average_at_start'))} at the start, "
            f"{_loads(info.get('load_average_at_end'))} at the end: the machine was shared, "
            "so the figures are lower (and the WAL counters, which are the cluster's, higher) "
            "than on a quiet one.",
        ]
    found = targets(rows, levels)
    parts += ["", "## Targets (issues 7 and 13)", "", targets_text(found)]
    problems = [f"- {r['scenario']}: {p}" for r in rows for p in r.get("problems", [])]
    if problems:
        parts += ["", "## Problems", "", *problems]
    skipped = [f"- {name}: {why}" for name, why in state.skipped.items()]
    if skipped:
        parts += ["", "## Skipped", "", *skipped]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- the machine


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(pg_url: str | None = None) -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return out.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    library = git("status", "--porcelain", "--untracked-files=no", "--", "src", "examples")
    info: dict[str, Any] = {
        "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "saga_orchestrator": saga_orchestrator.__version__,
        "anyio": _version("anyio"),
        "psycopg": _version("psycopg"),
        "psycopg_pool": _version("psycopg-pool"),
        "dbos": _version("dbos"),
        "sqlalchemy": _version("sqlalchemy"),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "library_dirty": bool(library) if library is not None else None,
        # Porcelain lines are "XY path": the status's two columns may be blanks that the
        # output's strip() ate on the first line, so the path is what follows them.
        "git_changed_files": [line[2:].lstrip() for line in (status or "").splitlines()],
        "load_average_at_start": _load(),
    }
    if pg_url is not None:
        try:
            from pgstats import server_info

            info["postgresql"] = server_info(pg_url)
        except Exception as exc:  # reported, not fatal: the PostgreSQL rows are skipped
            info["postgresql"] = {"error": str(exc)}
    return info


# ---------------------------------------------------------------------------- profiling


_CATEGORIES = (
    ("waiting for I/O (event loop idle in epoll)", ("select (selectors.py",)),
    ("JSON encoding/decoding of the saga state", ("serialization/", "json/")),
    ("saga-orchestrator PostgreSQL adapter", ("adapters/postgres/",)),
    ("saga-orchestrator engine", ("saga_orchestrator/",)),
    ("psycopg / psycopg-pool", ("psycopg",)),
    ("asyncio / anyio", ("asyncio/", "anyio/", "selectors.py")),
    ("DBOS / SQLAlchemy", ("dbos/", "sqlalchemy/")),
    (
        "benchmark harness and example saga",
        ("engine.py:", "workload.py:", "pgstats.py:", "dbos_saga.py:", "order_fulfillment/"),
    ),
)
_OTHER = "other (stdlib: uuid, datetime, dataclasses, logging, ...)"


def _category(frame: str) -> str:
    for name, needles in _CATEGORIES:
        if any(needle in frame for needle in needles):
            return name
    return _OTHER


def summarize_collapsed(text: str, *, thread: str = "MainThread", top: int = 25) -> str:
    """Where the time goes, from py-spy's collapsed stacks (``--format raw --threads``):
    the samples of one thread (the event loop's), by category and by frame."""
    stacks: list[tuple[list[str], int]] = []
    for line in text.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            if not frames[0].endswith(": " + thread):
                continue
            frames = frames[1:]
        if frames:
            stacks.append((frames, int(count_text)))
    total = sum(count for _, count in stacks)
    if not total:
        return "no samples\n"
    self_by_cat: dict[str, int] = {}
    self_by_frame: dict[str, int] = {}
    incl_by_frame: dict[str, int] = {}
    for frames, count in stacks:
        leaf = frames[-1]
        self_by_frame[leaf] = self_by_frame.get(leaf, 0) + count
        cat = _category(leaf)
        if cat == _OTHER:
            # A stdlib leaf is charged to its nearest caller of a known category (not the
            # event loop's own frames).
            for frame in reversed(frames[:-1]):
                caller = _category(frame)
                if caller not in (_OTHER, "asyncio / anyio"):
                    cat = f"{caller} (in stdlib calls)"
                    break
        self_by_cat[cat] = self_by_cat.get(cat, 0) + count
        for frame in set(frames):
            incl_by_frame[frame] = incl_by_frame.get(frame, 0) + count
    out = [f"{total} samples of thread {thread}", "", "self time by category (leaf frame):"]
    for name, count in sorted(self_by_cat.items(), key=lambda kv: -kv[1]):
        out.append(f"  {100 * count / total:5.1f}%  {name}")
    out += ["", f"top {top} frames by inclusive time (leaving out those on >95% of stacks):"]
    inclusive = [(f, c) for f, c in incl_by_frame.items() if c <= 0.95 * total]
    for frame, count in sorted(inclusive, key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * count / total:5.1f}%  {frame}")
    out += ["", f"top {top} leaf frames (self time):"]
    for frame, count in sorted(self_by_frame.items(), key=lambda kv: -kv[1])[:top]:
        out.append(f"  {100 * count / total:5.1f}%  {frame}")
    return "\n".join(out) + "\n"


async def run_profile(args: argparse.Namespace, workdir: Path) -> str:
    settings = _settings(args)
    level_text, _, _path = args.profile.partition("/")[2].partition("/")
    adapter = args.profile.split("/", 1)[0]
    level = 1 if level_text == "seq" else int(level_text)
    scenarios = build_matrix(
        (adapter,) if adapter != "baseline" else (), (level,), workdir, settings
    )
    by_key = {s.key: s for s in scenarios}
    scenario = by_key.get(args.profile)
    if scenario is None:
        raise SystemExit(
            f"unknown scenario {args.profile!r}; e.g. postgres/64/happy, memory/seq/fail@3"
        )
    if scenario.database is not None:
        from pgstats import recreate_database

        recreate_database(args.pg_url, scenario.database)
        await scenario.prepare()
    count = args.sagas or (2000 if scenario.database is None else 1000)
    await scenario.open()
    out = io.StringIO()
    try:
        await scenario.run(max(scenario.warmup, 50))
        if args.profiler == "pyinstrument":
            from pyinstrument import Profiler

            sampler = Profiler(interval=0.0002, async_mode="disabled")
            sampler.start()
            measurement = await scenario.run(count)
            sampler.stop()
            report = sampler.output_text(unicode=True, color=False, show_all=False)
        elif args.profiler == "py-spy":
            raw = workdir / "py-spy.txt"
            with (workdir / "py-spy.log").open("wb") as log:
                spy = await anyio.open_process(
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        "record",
                        "--pid",
                        str(os.getpid()),
                        "--rate",
                        "500",
                        "--idle",
                        "--threads",
                        "--format",
                        "raw",
                        "--output",
                        str(raw),
                    ],
                    stdout=log,
                    stderr=log,
                )
                await anyio.sleep(1.0)  # let it attach
                measurement = await scenario.run(count)
                spy.send_signal(signal.SIGINT)
                with anyio.fail_after(60):
                    await spy.wait()
            if not raw.exists():
                log_text = (workdir / "py-spy.log").read_text(errors="replace")
                raise SystemExit(f"py-spy wrote nothing: {log_text}")
            collapsed = raw.read_text()
            report = summarize_collapsed(collapsed)
            if args.profile_raw is not None:
                args.profile_raw.write_text(collapsed)
        else:
            profiler = cProfile.Profile()
            profiler.enable()
            measurement = await scenario.run(count)
            profiler.disable()
            stream = io.StringIO()
            stats = pstats.Stats(profiler, stream=stream).strip_dirs()
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
            report = stream.getvalue()
    finally:
        await scenario.close()
        await scenario.teardown()
        if scenario.database is not None and not args.keep_databases:
            from pgstats import drop_database

            drop_database(args.pg_url, scenario.database)
    out.write(
        f"{scenario.key}: {count} sagas in {measurement.wall_s:.3f} s under "
        f"{args.profiler} ({count / measurement.wall_s:,.1f} sagas/s; profiling "
        "inflates times)\n"
    )
    out.write(report)
    return out.getvalue()


# ---------------------------------------------------------------------------- main


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the ``None`` of options whose default depends on others."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def _csv(kind: Callable[[str], Any]) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(part.strip()) for part in text.split(",") if part.strip())

    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/engine.py",
        description="Benchmark saga-orchestrator with no-op services on memory, SQLite and "
        "PostgreSQL, beside DBOS Transact on the same PostgreSQL: sagas/s, latency, per-step "
        "overhead and database cost per saga, sequential and concurrent.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--adapters",
        type=_csv(str),
        default=None,
        help=f"comma-separated, of {', '.join(ADAPTERS)} (default: {','.join(DEFAULT_ADAPTERS)})",
    )
    parser.add_argument(
        "--concurrency",
        dest="levels",
        type=_csv(int),
        default=None,
        help="sagas in flight, comma-separated; 1 is sequential "
        "(default: 1,16,64,256, or 1,16 with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="measured repeats per scenario, interleaved; the median is reported "
        "(default: 2, or 1 with --quick)",
    )
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=None,
        help="size each measured batch to about this long (default: 1.0, or 0.25 with --quick)",
    )
    parser.add_argument(
        "--sagas", type=int, default=None, help="a fixed batch size instead of --target-seconds"
    )
    parser.add_argument(
        "--min-sagas",
        type=int,
        default=None,
        help="smallest measured batch (default: 50, or 20 with --quick)",
    )
    parser.add_argument("--max-sagas", type=int, default=4000, help="largest measured batch")
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="sagas run before each measured batch (default: min(max(in flight, 10), 64))",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (1 and 16 in flight, 1 repeat)"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("SAGA_BENCH_POSTGRES_URL", DEFAULT_PG_URL),
        help="a PostgreSQL database to connect to as a superuser (or a role that may create "
        "databases); the run creates --saga-db and --dbos-db beside it and drops them "
        "after (env SAGA_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--saga-db", default=SAGA_DB, help="database created for saga-orchestrator's rows"
    )
    parser.add_argument("--dbos-db", default=DBOS_DB, help="database created for DBOS' rows")
    parser.add_argument(
        "--idle-cycles",
        type=int,
        default=3,
        help="idle open/close cycles of each PostgreSQL client, whose median cost is "
        "subtracted from each measured window",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip measuring the server's single-row commit rate with pgbench",
    )
    parser.add_argument(
        "--keep-databases", action="store_true", help="do not drop the benchmark databases"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=BENCH_DIR / "results",
        help="where engine-<timestamp>.json and engine-latest.{json,md} go",
    )
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    parser.add_argument(
        "--profile",
        metavar="SCENARIO",
        default=None,
        help="instead of the matrix, run one scenario (e.g. postgres/64/happy, "
        "memory/seq/happy) once under a profiler and print where the time goes",
    )
    parser.add_argument(
        "--profiler",
        choices=("cprofile", "pyinstrument", "py-spy"),
        default="cprofile",
        help="profiler for --profile (pyinstrument and py-spy must be installed; py-spy "
        "attaches to this process, which needs ptrace)",
    )
    parser.add_argument(
        "--profile-raw",
        type=Path,
        default=None,
        help="with --profiler py-spy: also write the collapsed stacks here",
    )
    args = parser.parse_args(argv)
    if args.adapters is None:
        args.adapters = DEFAULT_ADAPTERS
    unknown = [a for a in args.adapters if a not in ADAPTERS]
    if unknown:
        parser.error(f"unknown adapters {unknown}; choose from {', '.join(ADAPTERS)}")
    if args.levels is None:
        args.levels = QUICK_LEVELS if args.quick else DEFAULT_LEVELS
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.target_seconds is None:
        args.target_seconds = 0.25 if args.quick else 1.0
    if args.min_sagas is None:
        args.min_sagas = 20 if args.quick else 50
    if (
        args.repeats < 1
        or (args.sagas is not None and args.sagas < 1)
        or (args.warmup is not None and args.warmup < 0)
        or not args.levels
        or min(args.levels) < 1
    ):
        parser.error("--repeats and --sagas must be >= 1, --warmup >= 0, --concurrency >= 1")
    return args


def _settings(args: argparse.Namespace) -> Settings:
    return Settings(
        repeats=args.repeats,
        target_s=args.target_seconds,
        min_sagas=args.min_sagas,
        max_sagas=args.max_sagas,
        sagas=args.sagas,
        warmup=args.warmup,
        pg_url=args.pg_url,
        saga_db=args.saga_db,
        dbos_db=args.dbos_db,
    )


def _check_optional(args: argparse.Namespace, info: dict[str, Any]) -> dict[str, str]:
    """Drop the adapters that cannot run here; why, by adapter."""
    skipped: dict[str, str] = {}
    pg_error = (info.get("postgresql") or {}).get("error")
    for adapter in args.adapters:
        if adapter in PG_ADAPTERS and pg_error:
            skipped[adapter] = f"PostgreSQL unreachable at {args.pg_url}: {pg_error}"
        elif adapter in PG_ADAPTERS and _version("psycopg") is None:
            skipped[adapter] = "psycopg is not installed (pip install -e '.[bench]')"
        elif adapter == "dbos" and _version("dbos") is None:
            skipped[adapter] = "DBOS Transact is not installed (pip install -e '.[bench]')"
    args.adapters = tuple(a for a in args.adapters if a not in skipped)
    return skipped


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-"))
    try:
        if args.profile:
            print(anyio.run(run_profile, args, workdir), end="")
            return 0
        needs_pg = any(a in PG_ADAPTERS for a in args.adapters)
        info = machine_info(args.pg_url if needs_pg else None)
        skipped = _check_optional(args, info)
        for adapter, why in skipped.items():
            _progress(f"skipping {adapter}: {why}")
        _progress(
            f"saga-orchestrator engine benchmark: {', '.join(args.adapters)}; in flight "
            f"{', '.join(map(str, args.levels))}; {args.repeats} repeats of ~"
            f"{args.target_seconds} s; {info['cpu_count']} CPUs, Python {info['python']}"
        )
        started = time.perf_counter()
        state = anyio.run(run_matrix, args, workdir)
        state.skipped.update(skipped)
        elapsed = time.perf_counter() - started
        info["load_average_at_end"] = _load()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    rows = summarise_all(state)
    settings = {
        "adapters": list(args.adapters),
        "levels": list(args.levels),
        "repeats": args.repeats,
        "target_s": args.target_seconds,
        "min_sagas": args.min_sagas,
        "max_sagas": args.max_sagas,
        "fixed_sagas": args.sagas,
        "warmup": args.warmup,
        "quick": args.quick,
        "duration_s": round(elapsed, 2),
    }
    report = render_report(info, settings, rows, state)
    print(report, end="", flush=True)
    _progress(f"(benchmark took {elapsed:.1f} s)")

    if not args.no_save:
        document = {
            "benchmark": "engine",
            "machine": info,
            "settings": settings,
            "idle_open_close_cost": {name: cost.raw() for name, cost in state.fixed.items()},
            "postgresql_reference": state.reference,
            "results": rows,
            "targets": targets(rows, tuple(args.levels)),
            "skipped": state.skipped,
        }
        results = args.results_dir
        results.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        payload = json.dumps(document, indent=2) + "\n"
        (results / f"engine-{stamp}.json").write_text(payload, encoding="utf-8")
        (results / "engine-latest.json").write_text(payload, encoding="utf-8")
        (results / "engine-latest.md").write_text(report, encoding="utf-8")
        _progress(f"wrote {results / f'engine-{stamp}.json'} and engine-latest.{{json,md}}")
    problems = [p for row in rows for p in row.get("problems", [])]
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
