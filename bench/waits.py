"""Durable waits: how soon a delivered event resumes a parked saga, and what parked sagas cost.

Each saga is two steps: ``wait_for_event("await_go", "go")``, then a step ``after`` whose
action records the time it starts.

- **Latency** (PostgreSQL, ``SagaWorker``): ``--sagas`` sagas are started with ``execute()``
  and park at their wait (``running``, the step ``waiting``, no lease). A ``SagaWorker`` with
  a long ``--poll-interval`` (5 s) then runs, and the events are delivered one at a time at
  ``--rate`` per second with ``deliver_event(..., drive=False)``, which stores the event and
  NOTIFYs the workers. Measured per saga: from the start of the ``deliver_event`` call to the
  start of the ``after`` step's action. Mode ``same-process``: the deliverer is a task of the
  worker's process, on a repository (pool) of its own; ``other-process``: the deliverer is
  another process (times are then ``time.time()`` on both sides). Each mode runs in a fresh
  schema, dropped after.
- **Memory** (SQLite, a temporary file): ``--sizes`` sagas (10, 10,000 and 30,000) parked
  with ``execute()`` by 64 tasks, each size in a new process, after a warm-up; the process's
  memory before and after, once garbage is collected: the Python heap (``tracemalloc``,
  tracing from start-up with ``-X tracemalloc``) and, in a second process without
  ``tracemalloc`` (which would inflate it), the resident set size (``/proc/self/statm``) and
  pymalloc's bytes in use and held free. And the checks that nothing is kept per parked saga:
  ``orchestrator._in_flight`` empty, no ``SagaContext`` or saga object alive, one asyncio
  task. The file's size per saga too.

    .venv/bin/python bench/waits.py              # 300 sagas for latency; 10, 10,000, 30,000 parked
    .venv/bin/python bench/waits.py --quick      # 40 sagas, 10 and 1,000 parked
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio

from _support import (
    DEFAULT_POSTGRES_URL,
    RESULTS_DIR,
    Column,
    describe_machine,
    load_average,
    machine_line,
    percentile,
    postgres_problem,
    render_markdown,
    render_table,
    write_results,
)
from saga_orchestrator import (
    BaseSaga,
    SagaContext,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    SagaWorker,
    SQLiteSagaRepository,
    StepStatus,
)
from saga_orchestrator.definitions import wait_for_event
from saga_orchestrator.inbox import DeliveryStatus

SCRIPT = Path(__file__).resolve()
EVENT = "go"
MODES = ("same-process", "other-process")
PARTS = ("latency", "memory")

# ---------------------------------------------------------------------------- the saga


@dataclass
class WaitData:
    """The saga's data: its id, and the token the event's payload sets."""

    run_id: UUID
    token: str | None = None


class Arrivals:
    """The ``after`` step's action: records when it starts, by saga (``clock``'s time)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.at: dict[UUID, float] = {}
        self.expected = 0
        self.all_in = anyio.Event()

    async def after(self, data: WaitData) -> None:
        self.at.setdefault(data.run_id, self.clock())
        if self.expected and len(self.at) >= self.expected:
            self.all_in.set()


class WaitSaga(BaseSaga[WaitData]):
    """Waits for the event ``go``, then runs ``after``."""

    saga_type = "bench_waits"

    def __init__(self, data: WaitData, arrivals: Arrivals) -> None:
        self.arrivals = arrivals
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[WaitData]]:
        return [wait_for_event("await_go", EVENT), SagaStep("after", self.arrivals.after)]


def orchestrator_on(repository: Any, arrivals: Arrivals) -> SagaOrchestrator:
    orchestrator = SagaOrchestrator(repository)
    orchestrator.register(WaitSaga.saga_type, lambda data: WaitSaga(data, arrivals))
    return orchestrator


async def park(
    orchestrator: SagaOrchestrator, arrivals: Arrivals, count: int, concurrency: int
) -> list[UUID]:
    """Start ``count`` sagas with ``execute()``, by ``concurrency`` tasks (not one per saga);
    each must come back ``running``, parked at its wait. Their ids, in the order started."""
    ids: list[UUID] = []

    async def starter() -> None:
        while len(ids) < count:
            data = WaitData(uuid4())
            saga = WaitSaga(data, arrivals)
            saga.context.saga_id = data.run_id  # the action records its time by this id
            ids.append(data.run_id)
            result = await orchestrator.execute(saga)
            if result.status is not SagaStatus.RUNNING or result.steps[0].status is not (
                StepStatus.WAITING
            ):
                raise RuntimeError(
                    f"a saga came back {result.status.value}, its wait "
                    f"{result.steps[0].status.value}, not parked: {result.error}"
                )

    async with anyio.create_task_group() as tg:
        for _ in range(min(concurrency, count)):
            tg.start_soon(starter)
    return ids


# ---------------------------------------------------------------------------- latency


def postgres_repository(url: str, schema: str, owner: str, *, migrate: bool = True) -> Any:
    from saga_orchestrator.adapters.postgres import PostgresSagaRepository

    return PostgresSagaRepository(url, schema=schema, owner=owner, apply_migrations=migrate)


async def deliver(
    url: str, schema: str, ids: list[UUID], rate: float, clock: Callable[[], float]
) -> list[tuple[float, float, str]]:
    """Deliver ``go`` to each saga in turn, at ``rate`` per second, ``drive=False``, from an
    orchestrator on a repository of its own: (call start, call end, delivery status) each."""
    sent: list[tuple[float, float, str]] = []
    async with postgres_repository(url, schema, "bench-waits-deliverer", migrate=False) as repo:
        orchestrator = orchestrator_on(repo, Arrivals())
        started = clock()
        for index, saga_id in enumerate(ids):
            delay = started + index / rate - clock()
            if delay > 0:
                await anyio.sleep(delay)
            t0 = clock()
            delivery = await orchestrator.deliver_event(
                EVENT, {"token": f"t{index}"}, event_id=uuid4(), saga_id=saga_id, drive=False
            )
            sent.append((t0, clock(), delivery.status.value))
    return sent


async def deliver_elsewhere(
    args: argparse.Namespace, schema: str, ids: list[UUID]
) -> list[tuple[float, float, str]]:
    """``deliver`` in a new process of this script (times from ``time.time()``)."""
    done = await anyio.run_process(
        [
            sys.executable,
            str(SCRIPT),
            "_deliver",
            "--postgres-url",
            args.postgres_url,
            "--schema",
            schema,
            "--rate",
            str(args.rate),
        ],
        input="\n".join(map(str, ids)).encode(),
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the deliverer exited {done.returncode}:\n{done.stderr.decode()}")
    rows = json.loads(done.stdout.decode().splitlines()[-1])
    return [(float(t0), float(t1), str(status)) for t0, t1, status in rows]


async def listening(repository: Any) -> None:
    """Until the worker's LISTEN connection is up (else the first events would wait for a
    poll). ``wait_for_work`` starts it; whether it is up is the repository's private
    notifier's to say (the warm-up's events cover for it, should that ever change)."""
    await repository.wait_for_work(0)
    notifier = getattr(repository, "_notifier", None)
    if notifier is not None:
        with anyio.move_on_after(10):
            await notifier.listening.wait()


async def latency_mode(args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """One mode: park, run a worker, deliver, and the latencies of the measured sagas."""
    import psycopg
    from psycopg import sql

    schema = f"saga_bench_waits_{mode.replace('-', '_')}_{os.urandom(4).hex()}"
    clock = time.perf_counter if mode == "same-process" else time.time
    arrivals = Arrivals(clock)
    total = args.warmup + args.sagas
    arrivals.expected = total
    try:
        async with postgres_repository(args.postgres_url, schema, "bench-waits-worker") as repo:
            orchestrator = orchestrator_on(repo, arrivals)
            say(f"latency, {mode}: parking {total} sagas in schema {schema}")
            ids = await park(orchestrator, arrivals, total, 16)
            worker = SagaWorker(
                orchestrator,
                concurrency=args.worker_concurrency,
                poll_interval_seconds=args.poll_interval,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(worker.run)
                await worker.started()
                await listening(repo)
                say(f"latency, {mode}: delivering {total} events at {args.rate:g}/s")
                if mode == "same-process":
                    sent = await deliver(args.postgres_url, schema, ids, args.rate, clock)
                else:
                    sent = await deliver_elsewhere(args, schema, ids)
                with anyio.move_on_after(args.poll_interval * 2 + 30):
                    await arrivals.all_in.wait()
                worker.stop()
        with psycopg.connect(args.postgres_url, autocommit=True) as connection:
            stored = connection.execute(
                sql.SQL("SELECT status, count(*) FROM {} GROUP BY status ORDER BY 1").format(
                    sql.Identifier(schema, "sagas")
                )
            ).fetchall()
    finally:
        drop_schema(args.postgres_url, schema)
    statuses = dict(Counter(status for _, _, status in sent))
    problems = []
    if statuses != {DeliveryStatus.STORED.value: total}:
        problems.append(f"deliveries {statuses}, expected {total} stored")
    if dict(stored) != {SagaStatus.COMPLETED.value: total}:
        problems.append(f"stored {dict(stored)}, expected {total} completed")
    measured = list(zip(ids, sent, strict=True))[args.warmup :]
    latencies = [arrivals.at[i] - t0 for i, (t0, _, _) in measured if i in arrivals.at]
    calls = [t1 - t0 for _, (t0, t1, _) in measured]
    if len(latencies) != args.sagas:
        problems.append(f"{args.sagas - len(latencies)} measured sagas never ran their step")
    ms = [x * 1000 for x in latencies]
    slow = sum(x >= args.poll_interval / 2 for x in latencies)
    return {
        "mode": mode,
        "sagas": args.sagas,
        "warmup": args.warmup,
        "rate_per_s": args.rate,
        "poll_interval_s": args.poll_interval,
        "worker_concurrency": args.worker_concurrency,
        "p50_ms": percentile(ms, 0.5),
        "p90_ms": percentile(ms, 0.9),
        "p99_ms": percentile(ms, 0.99),
        "max_ms": max(ms, default=float("nan")),
        "min_ms": min(ms, default=float("nan")),
        "deliver_p50_ms": percentile([x * 1000 for x in calls], 0.5),
        "after_store_p50_ms": percentile(
            [(arrivals.at[i] - t1) * 1000 for i, (_, t1, _) in measured if i in arrivals.at],
            0.5,
        ),
        "over_half_poll": slow,
        "worker": {
            "claimed": worker.claimed,
            "finished": worker.finished,
            "parked": worker.parked,
            "lost": worker.lost,
        },
        "stored": dict(stored),
        "latencies_ms": [round(x, 3) for x in ms],
        "problems": problems,
    }


def drop_schema(url: str, schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


async def latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    return [await latency_mode(args, mode) for mode in args.modes]


# ---------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    """The resident set size now (``/proc/self/statm``; the peak from ``getrusage`` where
    there is no ``/proc``)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return pages * os.sysconf("SC_PAGE_SIZE")


def pymalloc() -> dict[str, int] | None:
    """CPython's small-object allocator now (``sys._debugmallocstats``): arenas held (1 MiB
    each), bytes in blocks in use, and bytes held free (free blocks and unused pools); None
    where it cannot be read. What the resident set holds beyond the live objects."""
    debug = getattr(sys, "_debugmallocstats", None)
    if debug is None:
        return None
    sys.stderr.flush()
    with tempfile.TemporaryFile() as out:  # it writes to the C stderr
        saved = os.dup(2)
        try:
            os.dup2(out.fileno(), 2)
            debug()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode(errors="replace")
    found = {"free": 0}
    for line in text.splitlines():
        label, _, value = line.partition("=")
        number = value.strip().replace(",", "")
        if not number.isdigit():
            continue
        if label.startswith("# arenas allocated current"):
            found["arenas"] = int(number)
        elif label.startswith("# bytes in allocated blocks"):
            found["in_use"] = int(number)
        elif label.startswith("# bytes in available blocks") or "unused pools" in label:
            found["free"] += int(number)
    return found if {"arenas", "in_use"} <= found.keys() else None


async def memory_child(args: argparse.Namespace) -> dict[str, Any]:
    """Park ``args.size`` sagas in this process, on SQLite; its memory before and after."""
    trace = tracemalloc.is_tracing()  # from the start (-X tracemalloc): the whole heap
    arrivals = Arrivals()
    repository = SQLiteSagaRepository(args.db, synchronous=args.synchronous)
    await repository.open()
    orchestrator = orchestrator_on(repository, arrivals)
    await park(orchestrator, arrivals, args.warmup, args.concurrency)
    gc.collect()
    before = {
        "traced": tracemalloc.get_traced_memory()[0] if trace else None,
        "rss": rss_bytes(),
        "threads": threading.active_count(),
        "pymalloc": pymalloc(),
    }
    if trace:
        tracemalloc.reset_peak()
    started = time.perf_counter()
    await park(orchestrator, arrivals, args.size, args.concurrency)
    wall = time.perf_counter() - started
    gc.collect()
    after = {
        "traced": tracemalloc.get_traced_memory()[0] if trace else None,
        "rss": rss_bytes(),
        "pymalloc": pymalloc(),
    }
    peak = tracemalloc.get_traced_memory()[1] if trace else None
    tasks = len(asyncio.all_tasks())
    threads = threading.active_count()
    in_flight = len(orchestrator._in_flight)  # what the orchestrator holds per saga
    poked = len(orchestrator._poked)
    live = sum(isinstance(o, SagaContext | BaseSaga) for o in gc.get_objects())
    await repository.close()
    with sqlite3.connect(args.db) as connection:
        rows = connection.execute(
            "SELECT status, count(*) FROM sagas GROUP BY status ORDER BY 1"
        ).fetchall()
    connection.close()
    files = [Path(args.db), Path(f"{args.db}-wal")]
    return {
        "size": args.size,
        "trace": trace,
        "park_s": wall,
        "traced_before": before["traced"],
        "traced_after": after["traced"],
        "traced_peak": peak,
        "rss_before": before["rss"],
        "rss_after": after["rss"],
        "pymalloc_before": before["pymalloc"],
        "pymalloc_after": after["pymalloc"],
        "tasks": tasks,
        "threads_before": before["threads"],
        "threads": threads,
        "in_flight": in_flight,
        "poked": poked,
        "live_sagas": live,
        "stored": dict(rows),
        "file_bytes": sum(f.stat().st_size for f in files if f.exists()),
    }


def run_memory_child(args: argparse.Namespace, size: int, trace: bool, db: Path) -> dict[str, Any]:
    command = [
        sys.executable,
        *(["-X", "tracemalloc"] if trace else []),
        str(SCRIPT),
        "_memory",
        "--size",
        str(size),
        "--db",
        str(db),
        "--warmup",
        str(args.memory_warmup),
        "--concurrency",
        str(args.park_concurrency),
        "--synchronous",
        args.synchronous,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the memory child ({size}) exited {done.returncode}:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def memory(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    """Each size twice, each run a new process on a new file: with tracemalloc (Python's
    allocations), then without (the resident set size)."""
    rows = []
    for size in args.sizes:
        say(f"memory: {size:,} sagas parked on SQLite (traced, then untraced)")
        traced = run_memory_child(args, size, True, workdir / f"traced-{size}.db")
        plain = run_memory_child(args, size, False, workdir / f"plain-{size}.db")
        parked = args.memory_warmup + size
        problems = []
        for run in (traced, plain):
            want = {SagaStatus.RUNNING.value: parked}
            if run["stored"] != want:
                problems.append(f"stored {run['stored']}, expected {want}")
            if run["in_flight"] or run["poked"] or run["live_sagas"] or run["tasks"] != 1:
                problems.append(
                    f"{run['in_flight']} sagas in flight, {run['poked']} poked, "
                    f"{run['live_sagas']} saga objects alive, {run['tasks']} tasks"
                )
        traced_delta = traced["traced_after"] - traced["traced_before"]
        rss_delta = plain["rss_after"] - plain["rss_before"]
        heap = (plain["pymalloc_before"], plain["pymalloc_after"])
        if heap[0] is not None and heap[1] is not None:
            heap_delta = {key: heap[1][key] - heap[0][key] for key in heap[0]}
        else:
            heap_delta = {"arenas": None, "in_use": None, "free": None}
        rows.append(
            {
                "size": size,
                "parked": parked,
                "park_s": plain["park_s"],
                "parked_per_s": size / plain["park_s"],
                "traced_before": traced["traced_before"],
                "traced_after": traced["traced_after"],
                "traced_delta": traced_delta,
                "traced_per_saga": traced_delta / size,
                "traced_peak_delta": traced["traced_peak"] - traced["traced_before"],
                "rss_before": plain["rss_before"],
                "rss_after": plain["rss_after"],
                "rss_delta": rss_delta,
                "rss_per_saga": rss_delta / size,
                "pymalloc_arenas_delta": heap_delta["arenas"],
                "pymalloc_in_use_delta": heap_delta["in_use"],
                "pymalloc_free_delta": heap_delta["free"],
                "in_flight": max(traced["in_flight"], plain["in_flight"]),
                "live_sagas": max(traced["live_sagas"], plain["live_sagas"]),
                "tasks": max(traced["tasks"], plain["tasks"]),
                "threads": plain["threads"],
                "file_bytes": plain["file_bytes"],
                "file_per_saga": plain["file_bytes"] / parked,
                "runs": {"traced": traced, "plain": plain},
                "problems": problems,
            }
        )
    return rows


def memory_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each size against the smallest: the process's memory and the file after parking
    (and their ratios), the ratios of the deltas, and the bytes per saga parked beyond the
    smallest size's (what each extra waiting saga costs)."""
    small = rows[0] if rows else None
    found = []
    for large in rows[1:]:
        assert small is not None
        extra = large["size"] - small["size"]
        item: dict[str, Any] = {"small": small["size"], "large": large["size"]}
        for key in ("traced_after", "rss_after", "file_bytes", "traced_delta", "rss_delta"):
            item[f"{key}_small"] = small[key]
            item[f"{key}_large"] = large[key]
            item[f"{key}_ratio"] = large[key] / small[key] if small[key] > 0 else None
        for key in ("traced_delta", "rss_delta", "file_bytes"):
            item[f"{key}_per_extra_saga"] = (large[key] - small[key]) / extra if extra else None
        found.append(item)
    return found


# ---------------------------------------------------------------------------- report

LATENCY_COLUMNS = (
    Column("mode", "deliverer", align="<"),
    Column("sagas", "sagas", "{:,}"),
    Column("rate_per_s", "events/s", "{:g}"),
    Column("poll_interval_s", "poll s", "{:g}"),
    Column("p50_ms", "p50 ms", "{:.1f}"),
    Column("p90_ms", "p90 ms", "{:.1f}"),
    Column("p99_ms", "p99 ms", "{:.1f}"),
    Column("max_ms", "max ms", "{:.1f}"),
    Column("deliver_p50_ms", "deliver_event p50 ms", "{:.1f}"),
    Column("after_store_p50_ms", "stored->step p50 ms", "{:.1f}"),
    Column("over_half_poll", ">= poll/2", "{:,}"),
)

MEMORY_COLUMNS = (
    Column("size", "waiting sagas", "{:,}"),
    Column("park_s", "park s", "{:.1f}"),
    Column("traced_after", "traced after KiB", "{:,.0f}"),
    Column("traced_delta", "traced delta B", "{:,}"),
    Column("traced_per_saga", "traced B/saga", "{:,.1f}"),
    Column("traced_peak_delta", "traced peak delta B", "{:,}"),
    Column("rss_after", "RSS after KiB", "{:,.0f}"),
    Column("rss_delta", "RSS delta B", "{:,}"),
    Column("rss_per_saga", "RSS B/saga", "{:,.1f}"),
    Column("pymalloc_in_use_delta", "pymalloc in use delta B", "{:,}"),
    Column("pymalloc_free_delta", "pymalloc free delta B", "{:,}"),
    Column("in_flight", "_in_flight", "{:,}"),
    Column("live_sagas", "saga objects", "{:,}"),
    Column("tasks", "tasks", "{:,}"),
    Column("threads", "threads", "{:,}"),
    Column("file_per_saga", "file B/saga", "{:,.0f}"),
)


def _kib(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {**row, "rss_after": row["rss_after"] / 1024, "traced_after": row["traced_after"] / 1024}
        for row in rows
    ]


def summary_lines(summary: list[dict[str, Any]]) -> list[str]:
    def sizes(item: dict[str, Any], key: str) -> str:
        mib = 1024 * 1024
        ratio = item[f"{key}_ratio"]
        return f"{item[f'{key}_small'] / mib:,.2f} -> {item[f'{key}_large'] / mib:,.2f} MiB" + (
            f" ({ratio:.2f}x)" if ratio is not None else ""
        )

    def per_saga(item: dict[str, Any], key: str) -> str:
        value = item[f"{key}_per_extra_saga"]
        return f"{value:,.0f} B" if value is not None else "-"

    return [
        f"{item['large']:,} waiting sagas against {item['small']:,}, after parking: "
        f"RSS {sizes(item, 'rss_after')}, Python heap (tracemalloc) "
        f"{sizes(item, 'traced_after')}, SQLite file {sizes(item, 'file_bytes')}. Per extra "
        f"waiting saga: {per_saga(item, 'traced_delta')} of Python heap, "
        f"{per_saga(item, 'rss_delta')} of RSS, {per_saga(item, 'file_bytes')} of file."
        for item in summary
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/waits.py",
        description="Durable waits: event delivery to next step latency with a SagaWorker on "
        "PostgreSQL, and the memory of many sagas parked at a wait on SQLite.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="40 sagas for latency; 10 and 1,000 parked"
    )
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated, of " + ", ".join(PARTS)
    )
    parser.add_argument(
        "--modes", default=",".join(MODES), help="latency: comma-separated, of " + ", ".join(MODES)
    )
    parser.add_argument(
        "--sagas", type=int, default=None, help="latency: measured sagas per mode (300; 40 --quick)"
    )
    parser.add_argument(
        "--warmup", type=int, default=10, help="latency: sagas delivered first, not measured"
    )
    parser.add_argument(
        "--rate", type=float, default=20.0, help="latency: events delivered per second"
    )
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=5.0,
        help="latency: the worker's poll_interval_seconds",
    )
    parser.add_argument(
        "--worker-concurrency", type=int, default=16, help="latency: the worker's concurrency"
    )
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES_URL,
        help="latency: a database where the run may create (and drop) a schema "
        "(env SAGA_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help="memory: waiting sagas per run, comma-separated, smallest first "
        "(10,10000,30000; 10,1000 --quick)",
    )
    parser.add_argument(
        "--memory-warmup",
        type=int,
        default=200,
        help="memory: sagas parked before the first measurement",
    )
    parser.add_argument(
        "--park-concurrency", type=int, default=64, help="memory: sagas started at a time"
    )
    parser.add_argument(
        "--synchronous",
        default="FULL",
        choices=("FULL", "NORMAL", "OFF"),
        help="memory: SQLite's synchronous",
    )
    parser.add_argument("--note", default=None, help="a note on the machine, kept with the results")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.parts or set(args.parts) - set(PARTS):
        parser.error(f"--parts: some of {', '.join(PARTS)}")
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes: some of {', '.join(MODES)}")
    if args.sagas is None:
        args.sagas = 40 if args.quick else 300
    sizes = args.sizes or ("10,1000" if args.quick else "10,10000,30000")
    try:
        args.sizes = sorted(int(s) for s in sizes.split(",") if s.strip())
    except ValueError:
        parser.error("--sizes: integers, comma-separated")
    if args.sagas < 1 or args.warmup < 0 or not args.rate > 0 or not args.poll_interval > 0:
        parser.error("--sagas must be >= 1, --warmup >= 0, --rate and --poll-interval > 0")
    if not args.sizes or min(args.sizes) < 1 or args.memory_warmup < 0:
        parser.error("--sizes must be >= 1, --memory-warmup >= 0")
    return args


def child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/waits.py (child)")
    parser.add_argument("role", choices=("_deliver", "_memory"))
    parser.add_argument("--postgres-url")
    parser.add_argument("--schema")
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--size", type=int, default=0)
    parser.add_argument("--db")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--synchronous", default="FULL")
    args = parser.parse_args(argv)
    if args.role == "_deliver":
        ids = [UUID(line) for line in sys.stdin.read().split()]
        sent = anyio.run(deliver, args.postgres_url, args.schema, ids, args.rate, time.time)
        print(json.dumps(sent), flush=True)
    else:
        print(json.dumps(anyio.run(memory_child, args)), flush=True)
    return 0


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0].startswith("_"):
        return child_main(argv)
    args = parse_args(argv)
    command = shlex.join(["bench/waits.py", *argv])
    if "latency" in args.parts:
        problem = postgres_problem(args.postgres_url)
        if problem is not None:
            say(f"latency left out: {problem}")
            args.parts.remove("latency")
            if not args.parts:
                return 1
    info = describe_machine(args.postgres_url if "latency" in args.parts else None)
    if args.note:
        info["note"] = args.note
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-waits-"))
    started = time.perf_counter()
    try:
        latency_rows = anyio.run(latency, args) if "latency" in args.parts else []
        memory_rows = memory(args, workdir) if "memory" in args.parts else []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    elapsed = time.perf_counter() - started
    info["load_average_at_end"] = load_average()
    summary = memory_summary(memory_rows)
    header = machine_line(info) + (f"; {args.note}" if args.note else "")
    latency_text = (
        f"Latency: deliver_event(..., drive=False) call start -> the next step's action start; "
        f"PostgreSQL, one SagaWorker (concurrency {args.worker_concurrency}, "
        f"poll_interval_seconds={args.poll_interval:g}), {args.sagas} sagas per mode after "
        f"{args.warmup} warm-up, one event at a time at {args.rate:g}/s."
    )
    memory_text = (
        f"Memory: sagas parked at wait_for_event with execute() on SQLite "
        f"(synchronous={args.synchronous}), {args.park_concurrency} started at a time, after "
        f"{args.memory_warmup} warm-up; each size in a new process, traced (tracemalloc) and "
        "untraced (RSS); deltas after gc.collect()."
    )
    out = [header, ""]
    markdown = [
        "# Durable waits",
        "",
        f"`.venv/bin/python {command}`: {header}. Took {elapsed:.0f} s.",
    ]
    if latency_rows:
        out += [latency_text, "", render_table(LATENCY_COLUMNS, latency_rows), ""]
        markdown += ["", latency_text, "", render_markdown(LATENCY_COLUMNS, latency_rows)]
    if memory_rows:
        out += [memory_text, "", render_table(MEMORY_COLUMNS, _kib(memory_rows)), ""]
        out += summary_lines(summary)
        markdown += ["", memory_text, "", render_markdown(MEMORY_COLUMNS, _kib(memory_rows))]
        markdown += ["", *summary_lines(summary)]
    problems = [p for row in [*latency_rows, *memory_rows] for p in row["problems"]]
    out += [f"PROBLEM: {p}" for p in problems]
    print("\n".join(out).rstrip())
    say(f"(benchmark took {elapsed:.0f} s)")
    if not args.no_save:
        document = {
            "benchmark": "waits",
            "command": command,
            "machine": info,
            "settings": {
                "parts": args.parts,
                "modes": args.modes,
                "sagas": args.sagas,
                "warmup": args.warmup,
                "rate_per_s": args.rate,
                "poll_interval_s": args.poll_interval,
                "worker_concurrency": args.worker_concurrency,
                "sizes": args.sizes,
                "memory_warmup": args.memory_warmup,
                "park_concurrency": args.park_concurrency,
                "sqlite_synchronous": args.synchronous,
                "quick": args.quick,
                "duration_s": round(elapsed, 1),
            },
            "latency": latency_rows,
            "memory": memory_rows,
            "memory_summary": summary,
            "problems": problems,
        }
        paths = write_results("waits", document, "\n".join(markdown), args.results_dir)
        say(f"wrote {', '.join(str(p) for p in paths)}")
    return 1 if problems else 0


if __name__ == "__main__":
    # Imported under its own name, like steps.py: the stored data class is waits:WaitData,
    # which the deliverer's process imports too, and SQLite gives no MainModuleDataWarning.
    sys.exit(import_module(Path(__file__).stem).main())
