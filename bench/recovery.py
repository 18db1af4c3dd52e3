"""Recovery benchmark: 10,000 sagas in flight, the process SIGKILLed, time until all terminal.

A loader process starts ``--sagas`` order sagas at once (engine.py's saga; step 1 returns at
once, step 2 awaits an event that never comes) and the benchmark waits, by counting rows, until
every one is stored with step 1 completed and step 2 running. It then SIGKILLs the loader and
measures how long it takes until every saga is terminal, in new processes:

- ``sqlite-recover``: SQLite (the default ``synchronous=FULL``): a new process opens the file
  and calls ``orchestrator.recover()``.
- ``postgres-workers-N``: PostgreSQL, the loader's leases ``--lease`` seconds long: N
  ``SagaWorker`` processes started right after the kill take the sagas over once the leases
  have expired. The wait for the leases to expire is reported apart from the processing time
  (from the last expiry to the last saga terminal).
- ``postgres-recover``: the same, with one new process calling ``recover()`` once the leases
  have expired (``recover()`` leaves a saga leased by another process alone).

Every recovered saga retries its interrupted step 2 (its attempt counts as possibly done) and
runs steps 3 and 4 with no-op services; the benchmark checks that all end ``completed``.

    .venv/bin/python bench/recovery.py             # 10,000 sagas, every scenario
    .venv/bin/python bench/recovery.py --quick     # 300 sagas, smoke run
    .venv/bin/python bench/recovery.py --scenarios sqlite-recover --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _support import (
    DEFAULT_POSTGRES_URL,
    RESULTS_DIR,
    Column,
    describe_machine,
    load_average,
    machine_line,
    postgres_problem,
    render_markdown,
    render_table,
    write_results,
)

SCENARIOS = ("sqlite-recover", "postgres-workers-1", "postgres-workers-3", "postgres-recover")
LOADER = "bench-loader"
ACTIVE_SQL = "status IN ('pending', 'running', 'compensating')"

# ---------------------------------------------------------------------------- child processes


def _repository(args: argparse.Namespace, owner: str | None = None) -> Any:
    if args.backend == "sqlite":
        from saga_orchestrator import SQLiteSagaRepository

        return SQLiteSagaRepository(args.db)
    from saga_orchestrator.adapters.postgres import PostgresSagaRepository

    return PostgresSagaRepository(
        args.postgres_url, schema=args.schema, lease_seconds=args.lease, owner=owner
    )


def _orchestrator(repository: Any, concurrency: int = 16) -> Any:
    from _support import Services, make_saga
    from order_fulfillment.saga import OrderFulfillmentSaga
    from saga_orchestrator import SagaOrchestrator

    orchestrator = SagaOrchestrator(repository, recovery_concurrency=concurrency)
    services = Services()
    orchestrator.register(OrderFulfillmentSaga.saga_type, lambda data: make_saga(data, services))
    return orchestrator


async def child_load(args: argparse.Namespace) -> None:
    """Start ``args.sagas`` sagas that stop in step 2, then wait to be killed.

    At most ``args.start_concurrency`` are between their start and step 2 at a time (a saga
    in step 2 lets the next one start), so that all end up in flight without thousands of
    writes in one batch.
    """
    import anyio

    from _support import Services, make_order, make_saga

    starting = anyio.Semaphore(args.start_concurrency)

    class Stalled(Services):
        async def charge(self, **_: Any) -> Any:
            starting.release()  # step 2 is stored as running before its action is called
            await anyio.sleep_forever()

    services = Stalled()
    async with _repository(args, owner=LOADER) as repository:
        orchestrator = _orchestrator(repository)

        async def start() -> None:
            await starting.acquire()
            await orchestrator.execute(make_saga(make_order(), services))

        async with anyio.create_task_group() as tg:
            for _ in range(args.sagas):
                tg.start_soon(start)


async def child_recover(args: argparse.Namespace) -> dict[str, Any]:
    """Open the database and recover; the times of each phase (wall clock)."""
    from saga_orchestrator import SagaStatus

    times: dict[str, Any] = {"imported": time.time()}
    async with _repository(args, owner="bench-recover") as repository:
        times["opened"] = time.time()
        orchestrator = _orchestrator(repository, args.recovery_concurrency)
        profiler = cProfile.Profile() if args.profile_to else None
        if profiler is not None:
            profiler.enable()
        results = await orchestrator.recover()
        if profiler is not None:
            profiler.disable()
            _dump_profile(profiler, args.profile_to)
        times["recovered"] = time.time()
    times["results"] = len(results)
    times["completed"] = sum(r.status is SagaStatus.COMPLETED for r in results)
    return times


async def child_worker(args: argparse.Namespace) -> dict[str, Any]:
    """A SagaWorker until SIGTERM; its counters."""
    from saga_orchestrator import SagaWorker

    times: dict[str, Any] = {"imported": time.time()}
    async with _repository(args, owner=args.owner) as repository:
        orchestrator = _orchestrator(repository)
        worker = SagaWorker(orchestrator, concurrency=args.worker_concurrency)
        profiler = cProfile.Profile() if args.profile_to else None
        if profiler is not None:
            profiler.enable()
        await worker.run_until_signalled()
        if profiler is not None:
            profiler.disable()
            _dump_profile(profiler, args.profile_to)
    times.update(claimed=worker.claimed, finished=worker.finished, lost=worker.lost)
    return times


async def child_reference(args: argparse.Namespace) -> dict[str, Any]:
    """Normal running for comparison: new sagas, ``args.concurrency`` in flight, one process."""
    import anyio

    from _support import Services, make_order, make_saga
    from saga_orchestrator import SagaStatus

    services = Services()
    async with _repository(args, owner="bench-reference") as repository:
        orchestrator = _orchestrator(repository)
        clock = time.perf_counter
        done = 0

        async def loop(deadline: float) -> None:
            nonlocal done
            while clock() < deadline:
                result = await orchestrator.execute(make_saga(make_order(), services))
                if result.status is not SagaStatus.COMPLETED:
                    raise RuntimeError(f"reference saga ended {result.status}")
                done += 1

        for seconds in (min(0.5, args.seconds), args.seconds):  # warm-up, then measured
            done = 0
            started = clock()
            async with anyio.create_task_group() as tg:
                for _ in range(args.concurrency):
                    tg.start_soon(loop, started + seconds)
            wall = clock() - started
    return {"sagas": done, "wall_s": wall, "sagas_per_s": done / wall}


def _dump_profile(profiler: cProfile.Profile, path: str) -> None:
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    Path(path).write_text(stream.getvalue(), encoding="utf-8")


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/recovery.py (child)")
    parser.add_argument("role", choices=("_load", "_recover", "_worker", "_reference"))
    parser.add_argument("--backend", choices=("sqlite", "postgres"), required=True)
    parser.add_argument("--db")
    parser.add_argument("--postgres-url")
    parser.add_argument("--schema")
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--sagas", type=int, default=0)
    parser.add_argument("--start-concurrency", type=int, default=64)
    parser.add_argument("--owner")
    parser.add_argument("--recovery-concurrency", type=int, default=16)
    parser.add_argument("--worker-concurrency", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--profile-to")
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], Any] = {
        "_load": child_load,
        "_recover": child_recover,
        "_worker": child_worker,
        "_reference": child_reference,
    }[args.role]
    result = asyncio.run(run(args))
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------------------- the parent


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Database:
    """The benchmark's own view of the store: counts, leases, and clean-up."""

    def __init__(self, backend: str, location: str, url: str) -> None:
        self.backend = backend
        self.location = location  # file or schema
        self.url = url

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (none if the table is not there yet)."""
        if self.backend == "sqlite":
            connection = sqlite3.connect(self.location, timeout=30)
            try:
                return connection.execute(sql).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
            finally:
                connection.close()
        import psycopg

        with psycopg.connect(
            self.url, autocommit=True, options=f"-c search_path={self.location}"
        ) as connection:
            try:
                return connection.execute(sql).fetchall()  # type: ignore[arg-type]
            except psycopg.errors.UndefinedTable:
                return []

    def loaded(self) -> int:
        """Sagas stored with step 1 completed and step 2 running (and leased, on PostgreSQL)."""
        extra = ""
        if self.backend == "postgres":  # and the lease still valid
            extra = f" AND lease_owner = '{LOADER}' AND lease_expires_at > clock_timestamp()"
        rows = self.query(
            f"SELECT count(*) FROM sagas WHERE status = 'running' AND version >= 2{extra}"
        )
        return int(rows[0][0]) if rows else 0

    def counts(self) -> dict[str, int]:
        rows = self.query("SELECT status, count(*) FROM sagas GROUP BY status")
        return {str(status): int(count) for status, count in rows}

    def active(self) -> int:
        return int(self.query(f"SELECT count(*) FROM sagas WHERE {ACTIVE_SQL}")[0][0])

    def progress(self) -> tuple[int, int]:
        """(sagas in flight, sagas a worker has taken)."""
        rows = self.query(
            f"SELECT count(*) FILTER (WHERE {ACTIVE_SQL}),"
            " count(*) FILTER (WHERE lease_owner LIKE 'bench-worker-%' OR lease_epoch > 1)"
            " FROM sagas"
        )
        return int(rows[0][0]), int(rows[0][1])

    def lease_left(self) -> float:
        """Seconds until the loader's last lease expires (database clock)."""
        rows = self.query(
            "SELECT extract(epoch FROM max(lease_expires_at) - clock_timestamp())"
            f" FROM sagas WHERE lease_owner = '{LOADER}'"
        )
        return float(rows[0][0]) if rows and rows[0][0] is not None else 0.0

    def drop(self) -> None:
        if self.backend == "postgres":
            import psycopg

            with psycopg.connect(self.url, autocommit=True) as connection:
                connection.execute(f"DROP SCHEMA IF EXISTS {self.location} CASCADE")  # type: ignore[arg-type]


class Child:
    """A child process of this script, its output in files (a full pipe would block it)."""

    def __init__(self, role: str, args: argparse.Namespace, db: Database, *extra: str) -> None:
        command = [sys.executable, str(Path(__file__).resolve()), role, "--backend", db.backend]
        if db.backend == "sqlite":
            command += ["--db", db.location]
        else:
            command += ["--postgres-url", db.url, "--schema", db.location]
            command += ["--lease", str(args.lease)]
        name = f"{role.strip('_')}-{os.urandom(3).hex()}"
        self.out = args.workdir / f"{name}.out"
        self.err = args.workdir / f"{name}.err"
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(
                [*command, *extra], stdout=out, stderr=err, start_new_session=True
            )

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        if self.alive():
            os.killpg(self.process.pid, signum)

    def errors(self) -> str:
        return self.err.read_text(encoding="utf-8", errors="replace")[-3000:]

    def finish(self, timeout: float) -> dict[str, Any]:
        """Wait for it to exit; the JSON it printed last."""
        code = self.process.wait(timeout=timeout)
        if code != 0:
            raise RuntimeError(f"child exited {code}:\n{self.errors()}")
        lines = [
            line
            for line in self.out.read_text(encoding="utf-8").splitlines()
            if line.startswith("{")
        ]
        return json.loads(lines[-1]) if lines else {}


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, poll: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def load_and_kill(args: argparse.Namespace, db: Database) -> dict[str, Any]:
    """Start the loader, wait until every saga is stored in step 2, SIGKILL it."""
    started = time.time()
    loader = Child(
        "_load",
        args,
        db,
        "--sagas",
        str(args.sagas),
        "--start-concurrency",
        str(args.start_concurrency),
    )

    def ready() -> bool:
        if not loader.alive():
            raise RuntimeError(f"the loader exited early:\n{loader.errors()}")
        return db.loaded() >= args.sagas

    wait_until(ready, args.load_timeout, f"{args.sagas} sagas in flight", poll=0.1)
    loaded = time.time()
    loader.signal(signal.SIGKILL)
    killed = time.time()
    loader.process.wait()
    counts = db.counts()
    if counts.get("running", 0) != args.sagas:
        raise RuntimeError(f"after the kill: {counts}, expected {args.sagas} running")
    return {"load_s": loaded - started, "killed_at": killed}


def scenario(name: str, args: argparse.Namespace, workdir: Path, run_id: str) -> dict[str, Any]:
    backend = "sqlite" if name.startswith("sqlite") else "postgres"
    if backend == "sqlite":
        db = Database("sqlite", str(workdir / f"{name}.db"), args.postgres_url)
    else:
        db = Database("postgres", f"saga_bench_recovery_{run_id}", args.postgres_url)
        db.drop()
    profile_to = str(args.results_dir / f"profile-recovery-{name}.txt") if args.profile else None
    row: dict[str, Any] = {"scenario": name, "backend": backend, "sagas": args.sagas}
    concurrency = args.recovery_concurrency if name.endswith("recover") else args.worker_concurrency
    row["concurrency"] = concurrency
    try:
        if backend == "sqlite":
            ref = Database("sqlite", str(workdir / f"{name}-reference.db"), args.postgres_url)
        else:
            ref = Database("postgres", f"{db.location}_reference", args.postgres_url)
            ref.drop()
        try:
            reference = Child(
                "_reference",
                args,
                ref,
                "--concurrency",
                str(concurrency),
                "--seconds",
                str(args.reference_seconds),
            ).finish(120)
        finally:
            ref.drop()
        row["normal_per_s"] = reference["sagas_per_s"]
        say(f"{name}: starting {args.sagas:,} sagas")
        loaded = load_and_kill(args, db)
        killed = loaded["killed_at"]
        row["load_s"] = loaded["load_s"]
        say(f"{name}: {args.sagas:,} in flight after {loaded['load_s']:.1f} s; SIGKILLed")
        if backend == "postgres":  # from the kill to the last lease's expiry
            row["lease_left_s"] = max(0.0, db.lease_left() + (time.time() - killed))
        extra = ["--profile-to", profile_to] if profile_to else []
        if name.endswith("recover"):
            if backend == "postgres":
                wait_until(lambda: db.lease_left() <= 0, args.lease + 30, "the leases to expire")
            spawned = time.time()
            child = Child(
                "_recover",
                args,
                db,
                "--recovery-concurrency",
                str(args.recovery_concurrency),
                *extra,
            )
            times = child.finish(args.recover_timeout)
            done = times["recovered"]
            row["processes"] = 1
            row["startup_s"] = times["opened"] - spawned
            row["takeover_s"] = times["opened"] - killed
            row["process_s"] = times["recovered"] - times["opened"]
            if times["completed"] != args.sagas:
                raise RuntimeError(f"{name}: recover() completed {times['completed']}")
        else:
            count = int(name.rsplit("-", 1)[1])
            workers = [
                Child(
                    "_worker",
                    args,
                    db,
                    "--owner",
                    f"bench-worker-{i}",
                    "--worker-concurrency",
                    str(args.worker_concurrency),
                    *(extra if i == 0 else []),
                )
                for i in range(count)
            ]
            first: list[float] = []

            def finished() -> bool:
                active, taken = db.progress()
                if taken and not first:
                    first.append(time.time())
                return active == 0

            try:
                wait_until(finished, args.recover_timeout, "all sagas terminal")
                done = time.time()
            finally:
                for worker in workers:
                    worker.signal(signal.SIGTERM)
            stats = [worker.finish(60) for worker in workers]
            row["processes"] = count
            row["claimed"] = sum(s.get("claimed", 0) for s in stats)
            row["takeover_s"] = first[0] - killed
            row["process_s"] = done - first[0]
        row["total_s"] = done - killed
        row["sagas_per_s"] = args.sagas / row["process_s"]
        row["vs_normal"] = row["sagas_per_s"] / row["normal_per_s"]
        counts = db.counts()
        row["final"] = counts
        if counts.get("completed", 0) != args.sagas:
            raise RuntimeError(f"{name}: final statuses {counts}")
        say(
            f"{name}: all terminal {row['total_s']:.1f} s after the kill "
            f"({row['sagas_per_s']:,.0f} sagas/s of processing)"
        )
        return row
    finally:
        db.drop()


COLUMNS = (
    Column("scenario", "scenario", align="<"),
    Column("sagas", "sagas", "{:,}"),
    Column("load_s", "load s", "{:.1f}"),
    Column("lease_left_s", "lease left s", "{:.1f}"),
    Column("takeover_s", "takeover s", "{:.1f}"),
    Column("process_s", "processing s", "{:.1f}"),
    Column("total_s", "total s", "{:.1f}"),
    Column("sagas_per_s", "sagas/s", "{:,.0f}"),
    Column("normal_per_s", "normal sagas/s", "{:,.0f}"),
    Column("vs_normal", "vs normal", "{:.2f}"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/recovery.py",
        description="Sagas in flight, their process SIGKILLed: time until all are terminal, "
        "on SQLite (recover()) and PostgreSQL (SagaWorker processes, recover()).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 300 sagas, 2 s leases")
    parser.add_argument("--sagas", type=int, default=None, help="default 10,000 (300 --quick)")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument(
        "--lease",
        type=float,
        default=None,
        help="PostgreSQL lease, seconds, of every process (default 10; 2 with --quick)",
    )
    parser.add_argument(
        "--start-concurrency",
        type=int,
        default=64,
        help="the loader's sagas between their start and step 2 at a time (all end up in "
        "flight; starting all at once makes write batches of thousands)",
    )
    parser.add_argument("--worker-concurrency", type=int, default=64, help="per SagaWorker")
    parser.add_argument(
        "--recovery-concurrency", type=int, default=16, help="recover()'s (the library default)"
    )
    parser.add_argument(
        "--reference-seconds",
        type=float,
        default=None,
        help="normal running measured before each scenario, in one process at the "
        "recovering process's concurrency (default 3; 1 with --quick)",
    )
    parser.add_argument("--load-timeout", type=float, default=600.0)
    parser.add_argument("--recover-timeout", type=float, default=1800.0)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the recovering process (the first worker) of each scenario into "
        "bench/results/profile-recovery-<scenario>.txt",
    )
    args = parser.parse_args(argv)
    if args.sagas is None:
        args.sagas = 300 if args.quick else 10_000
    if args.reference_seconds is None:
        args.reference_seconds = 1.0 if args.quick else 3.0
    if args.lease is None:
        args.lease = 2.0 if args.quick else 10.0
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown or not args.scenarios:
        parser.error(f"--scenarios: some of {', '.join(SCENARIOS)}")
    if args.sagas < 1:
        parser.error("--sagas must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        return child_main(argv)
    args = parse_args(argv)
    if any(s.startswith("postgres") for s in args.scenarios):
        problem = postgres_problem(args.postgres_url)
        if problem is not None:
            say(f"PostgreSQL left out: {problem}")
            args.scenarios = [s for s in args.scenarios if not s.startswith("postgres")]
            if not args.scenarios:
                return 1
    uses_postgres = any(s.startswith("postgres") for s in args.scenarios)
    info = describe_machine(args.postgres_url if uses_postgres else None)
    if args.profile:
        args.results_dir.mkdir(parents=True, exist_ok=True)
    workdir = args.workdir = Path(tempfile.mkdtemp(prefix="saga-bench-recovery-"))
    run_id = os.urandom(4).hex()
    started = time.perf_counter()
    try:
        rows = [scenario(name, args, workdir, run_id) for name in args.scenarios]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    info["load_average_at_end"] = load_average()
    header = machine_line(info)
    settings = (
        f"{args.sagas:,} sagas in flight (step 2 of 4 running) when SIGKILLed; PostgreSQL "
        f"leases {args.lease:g} s; SagaWorker concurrency {args.worker_concurrency}; "
        f"recover() concurrency {args.recovery_concurrency}"
    )
    table = render_table(COLUMNS, rows)
    print(f"{header}\n{settings}\n\n{table}")
    say(f"(benchmark took {elapsed:.0f} s)")
    if not args.no_save:
        command = "bench/recovery.py" + (" --quick" if args.quick else "")
        markdown = "\n".join(
            [
                "# Recovery: sagas in flight, the process SIGKILLed",
                "",
                f"`.venv/bin/python {command}`: {header}. {settings}; took {elapsed:.0f} s.",
                "",
                render_markdown(COLUMNS, rows),
            ]
        )
        document = {
            "benchmark": "recovery",
            "machine": info,
            "settings": {
                "sagas": args.sagas,
                "scenarios": args.scenarios,
                "lease_s": args.lease,
                "worker_concurrency": args.worker_concurrency,
                "recovery_concurrency": args.recovery_concurrency,
                "quick": args.quick,
                "duration_s": round(elapsed, 1),
            },
            "results": rows,
        }
        paths = write_results("recovery", document, markdown, args.results_dir)
        say(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
