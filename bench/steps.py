"""Per-step cost against the number of steps: sagas of N no-op steps, one at a time.

For each adapter and each N (4, 16, 64 and 256 by default), sagas whose N steps are no-op
coroutines returning ``None`` (no compensation, data a dataclass with one UUID field) run
sequentially through ``SagaOrchestrator.execute``:

- ``memory``: ``InMemorySagaRepository``;
- ``sqlite``: ``SQLiteSagaRepository(path, synchronous="FULL")`` on a new temporary file per N.

Each cell warms up (at least 3 sagas and 256 steps), then runs a batch sized from the warm-up
to about ``--target-seconds`` (3 s). Reported per cell: sagas run, wall time, µs per step
(wall ÷ (sagas * N)), µs per step inside ``execute`` alone (``time.perf_counter`` around each
call, so building the saga is left out), writes per saga, and the ratio of µs/step to that of
the smallest N on the same adapter. The roadmap's targets (µs/step at 256 steps at most 1.5
times that at 4 on both adapters; at most 40 µs inside ``execute`` per step of the 4-step saga
on memory) are printed as met or missed; nothing is asserted. ``--profile`` also runs the
memory 4-step batch again under cProfile.

    .venv/bin/python bench/steps.py             # about 35 s
    .venv/bin/python bench/steps.py --quick     # smoke run, a few seconds
    .venv/bin/python bench/steps.py --profile   # and a cProfile of memory, 4 steps
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import math
import os
import pstats
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio

from _support import (
    RESULTS_DIR,
    Column,
    describe_machine,
    load_average,
    machine_line,
    render_markdown,
    render_table,
    write_results,
)
from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    SQLiteSagaRepository,
)

ADAPTERS = ("memory", "sqlite", "postgres")
DEFAULT_ADAPTERS = ("memory", "sqlite")
DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PG_DATABASE = "saga_bench_steps"  # created and dropped by a run with --adapters ...,postgres
DEFAULT_STEPS = (4, 16, 64, 256)
TARGET_RATIO = 1.5  # roadmap: µs/step at 256 steps <= 1.5 x µs/step at 4 steps
TARGET_ENGINE_US = 40.0  # roadmap: <= 40 µs inside execute per step, 4 steps, memory


@dataclass
class NoOpData:
    """The saga's data: one UUID, never changed by the steps."""

    run_id: UUID


async def noop(data: NoOpData) -> None:
    """Every step's action: returns at once, sets nothing."""
    return None


class NoOpSaga(BaseSaga[NoOpData]):
    """``steps`` no-op steps named ``step-0`` ... (no compensations)."""

    saga_type = "bench_noop_steps"

    def __init__(self, data: NoOpData, steps: int) -> None:
        self.step_count = steps
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[NoOpData]]:
        return [SagaStep(f"step-{i}", noop) for i in range(self.step_count)]


@dataclass
class Batch:
    sagas: int
    wall_s: float
    execute_s: float
    writes: int


async def run_batch(orchestrator: SagaOrchestrator, steps: int, sagas: int) -> Batch:
    """``sagas`` sagas of ``steps`` steps, one after another; each must complete."""
    repository: Any = orchestrator.repository
    writes_before = _writes(repository)
    clock = time.perf_counter
    in_execute = 0.0
    gc.collect()
    started = clock()
    for _ in range(sagas):
        saga = NoOpSaga(NoOpData(uuid4()), steps)
        t0 = clock()
        result = await orchestrator.execute(saga)
        in_execute += clock() - t0
        if result.status is not SagaStatus.COMPLETED:
            raise RuntimeError(f"a {steps}-step saga ended {result.status}: {result.error}")
    wall = clock() - started
    return Batch(sagas, wall, in_execute, _writes(repository) - writes_before)


def _writes(repository: Any) -> int:
    """Committed writes: memory's ``writes``, SQLite's and PostgreSQL's ``transactions``."""
    if hasattr(repository, "transactions"):
        return int(repository.transactions)
    return int(repository.writes)


def warmup_sagas(args: argparse.Namespace, steps: int) -> int:
    return max(int(args.warmup), math.ceil(int(args.warmup_steps) / steps))


def batch_size(args: argparse.Namespace, adapter: str, steps: int, warm: Batch) -> int:
    """``--sagas`` if given, else enough for about ``--target-seconds`` at the warm-up's rate."""
    fixed = args.sagas.get(adapter) if args.sagas else None
    if fixed is not None:
        return int(fixed)
    per_saga = warm.wall_s / warm.sagas
    return max(int(args.min_sagas), round(float(args.target_seconds) / per_saga))


async def measure(
    args: argparse.Namespace, adapter: str, steps: int, workdir: Path
) -> tuple[Batch, Batch]:
    """The warm-up and the measured batch of one cell, on a new repository."""
    if adapter == "memory":
        repository: Any = InMemorySagaRepository()
    elif adapter == "sqlite":
        repository = SQLiteSagaRepository(workdir / f"steps-{steps}.db", synchronous="FULL")
        await repository.open()
    else:
        from pgstats import with_database
        from saga_orchestrator.adapters.postgres import PostgresSagaRepository

        repository = PostgresSagaRepository(
            with_database(args.pg_url, PG_DATABASE), schema=f"steps_{steps}"
        )
        await repository.open()
    try:
        orchestrator = SagaOrchestrator(repository)
        warm = await run_batch(orchestrator, steps, warmup_sagas(args, steps))
        batch = await run_batch(orchestrator, steps, batch_size(args, adapter, steps, warm))
    finally:
        if adapter != "memory":
            await repository.close()
    return warm, batch


async def profile(args: argparse.Namespace, sagas: int) -> str:
    """The memory 4-step batch again (same size, after a warm-up), under cProfile."""
    orchestrator = SagaOrchestrator(InMemorySagaRepository())
    await run_batch(orchestrator, 4, warmup_sagas(args, 4))
    profiler = cProfile.Profile()
    profiler.enable()
    batch = await run_batch(orchestrator, 4, sagas)
    profiler.disable()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).strip_dirs()
    stats.sort_stats("cumulative").print_stats(20)
    stats.sort_stats("tottime").print_stats(20)
    us = batch.wall_s / (batch.sagas * 4) * 1e6
    return (
        f"memory, 4 steps: {batch.sagas:,} sagas ({batch.sagas * 4:,} steps) in "
        f"{batch.wall_s:.2f} s under cProfile, {us:.1f} µs/step (profiling inflates times).\n"
        f"Top 20 by cumulative time, then top 20 by own time:\n{stream.getvalue()}"
    )


def summarise(cells: list[dict[str, Any]]) -> None:
    """Adds each row's ratio of µs/step to the smallest N's on the same adapter."""
    for adapter in ADAPTERS:
        rows = sorted((r for r in cells if r["adapter"] == adapter), key=lambda r: r["steps"])
        if rows:
            for row in rows:
                row["ratio_to_smallest"] = row["us_per_step"] / rows[0]["us_per_step"]


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The roadmap's targets, as this run measured them (informational, never asserted)."""
    lines = []
    cell = {(r["adapter"], r["steps"]): r for r in rows}
    for adapter in ADAPTERS:
        low, high = cell.get((adapter, 4)), cell.get((adapter, 256))
        if low is None or high is None:
            continue
        ratio = high["us_per_step"] / low["us_per_step"]
        verdict = "met" if ratio <= TARGET_RATIO else "MISSED"
        lines.append(
            f"{verdict}: {adapter}: µs/step at 256 steps <= {TARGET_RATIO:g}x that at 4 steps: "
            f"{ratio:.2f}x ({high['us_per_step']:.1f} against {low['us_per_step']:.1f} µs)"
        )
    memory4 = cell.get(("memory", 4))
    if memory4 is not None:
        us = memory4["execute_us_per_step"]
        verdict = "met" if us <= TARGET_ENGINE_US else "MISSED"
        lines.append(
            f"{verdict}: memory: time inside execute per step of the 4-step saga "
            f"<= {TARGET_ENGINE_US:g} µs: {us:.1f} µs"
        )
    return lines


COLUMNS = (
    Column("adapter", "adapter", align="<"),
    Column("steps", "steps", "{:,}"),
    Column("sagas", "sagas", "{:,}"),
    Column("wall_s", "wall s", "{:.2f}"),
    Column("sagas_per_s", "sagas/s", "{:,.1f}"),
    Column("us_per_step", "µs/step", "{:,.1f}"),
    Column("execute_us_per_step", "execute µs/step", "{:,.1f}"),
    Column("writes_per_saga", "writes/saga", "{:,.1f}"),
    Column("ratio_to_smallest", "vs fewest steps", "{:.2f}x"),
)


def _int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of integers >= 1")
    return sorted(set(values))


def _adapters(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ADAPTERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(ADAPTERS)}")
    return [name for name in ADAPTERS if name in names]


def _sagas(text: str) -> dict[str, int]:
    """``40`` (every adapter) or ``memory=400,sqlite=20``."""
    found: dict[str, int] = {}
    for part in text.split(","):
        name, _, value = part.rpartition("=")
        count = int(value)
        if count < 1 or (name and name not in ADAPTERS):
            raise argparse.ArgumentTypeError("N, or adapter=N pairs such as memory=400,sqlite=20")
        for adapter in [name] if name else ADAPTERS:
            found[adapter] = count
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/steps.py",
        description="Per-step cost against the number of steps: sagas of N no-op steps, run "
        "one at a time on memory and on SQLite (synchronous=FULL).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run, a few seconds")
    parser.add_argument(
        "--steps", type=_int_list, default=list(DEFAULT_STEPS), help="steps per saga, e.g. 4,256"
    )
    parser.add_argument(
        "--adapters",
        type=_adapters,
        default=list(DEFAULT_ADAPTERS),
        help="of memory, sqlite, postgres (PostgresSagaRepository, defaults, in the database "
        f"{PG_DATABASE}, created and dropped)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("SAGA_BENCH_POSTGRES_URL", DEFAULT_PG_URL),
        help="for postgres: a role that may create databases (env SAGA_BENCH_POSTGRES_URL)",
    )
    parser.add_argument(
        "--target-seconds",
        type=float,
        default=None,
        help="size each measured batch to about this long (default 3; 0.1 with --quick)",
    )
    parser.add_argument(
        "--sagas",
        type=_sagas,
        default=None,
        help="fixed sagas per cell instead: N, or memory=N,sqlite=M",
    )
    parser.add_argument(
        "--min-sagas", type=int, default=None, help="at least this many (default 3; 2 --quick)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="warm-up sagas per cell (default 3; 1 --quick)"
    )
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="and at least this many warm-up steps (default 256; 16 with --quick)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also cProfile the memory 4-step batch (steps-profile-memory-4.txt)",
    )
    parser.add_argument(
        "--against",
        metavar="REF",
        default=None,
        help="also time the memory 4-step saga's engine against this git ref (a tag such as "
        "v0.1.0, a commit), in alternation: this script on REF's src/ and on this tree's, "
        "--rounds times each, one process per run; reports both medians and their ratio",
    )
    parser.add_argument("--rounds", type=int, default=6, help="runs of each side for --against")
    parser.add_argument("--engine-sample", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    defaults = {
        "target_seconds": (0.1, 3.0),
        "min_sagas": (2, 3),
        "warmup": (1, 3),
        "warmup_steps": (16, 256),
    }
    for name, (short, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, short if args.quick else full)
    if args.target_seconds <= 0 or args.min_sagas < 1 or args.warmup < 1:
        parser.error("--target-seconds must be > 0, --min-sagas and --warmup >= 1")
    return args


async def run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    if "postgres" not in args.adapters:
        return await _run(args, workdir)
    from pgstats import drop_database, recreate_database

    recreate_database(args.pg_url, PG_DATABASE)
    try:
        return await _run(args, workdir)
    finally:
        drop_database(args.pg_url, PG_DATABASE)


async def _run(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    rows = []
    for adapter in args.adapters:
        for steps in args.steps:
            warm, batch = await measure(args, adapter, steps, workdir)
            step_count = batch.sagas * steps
            row = {
                "adapter": adapter,
                "steps": steps,
                "sagas": batch.sagas,
                "wall_s": batch.wall_s,
                "sagas_per_s": batch.sagas / batch.wall_s,
                "us_per_step": batch.wall_s / step_count * 1e6,
                "execute_us_per_step": batch.execute_s / step_count * 1e6,
                "writes_per_saga": batch.writes / batch.sagas,
                "warmup_sagas": warm.sagas,
                "warmup_us_per_step": warm.wall_s / (warm.sagas * steps) * 1e6,
            }
            rows.append(row)
            print(
                f"  {adapter:<6} {steps:>4} steps: {batch.sagas:,} sagas in {batch.wall_s:.2f} s,"
                f" {row['us_per_step']:.1f} µs/step",
                file=sys.stderr,
                flush=True,
            )
    return rows


AGAINST_SAGAS = 3000  # measured sagas per run of --against (after 500 warm-up sagas)


async def engine_sample(sagas: int) -> float:
    """µs per step inside ``execute()``, memory, 4 steps: one run of ``--against``."""
    orchestrator = SagaOrchestrator(InMemorySagaRepository())
    await run_batch(orchestrator, 4, 500)
    batch = await run_batch(orchestrator, 4, sagas)
    return batch.execute_s / (batch.sagas * 4) * 1e6


def against(ref: str, rounds: int, sagas: int) -> dict[str, Any]:
    """This script's engine sample run on ``ref``'s ``src/`` and on this tree's, alternately,
    each in a new process: the medians, the minima and the ratio of the medians."""
    repo = Path(__file__).resolve().parent.parent
    checkout = Path(tempfile.mkdtemp(prefix="saga-bench-against-"))
    git = ["git", "-C", str(repo)]
    added = subprocess.run(
        [*git, "worktree", "add", "--detach", str(checkout), ref],
        capture_output=True,
        text=True,
        check=False,
    )
    if added.returncode != 0:
        shutil.rmtree(checkout, ignore_errors=True)
        raise SystemExit(f"--against {ref}: git worktree add failed: {added.stderr.strip()}")
    commit = subprocess.run(
        [*git, "rev-parse", "--short", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    samples: dict[str, list[float]] = {"ref": [], "tree": []}
    try:
        for round_ in range(rounds):
            for side, src in (("ref", checkout / "src"), ("tree", repo / "src")):
                env = {**os.environ, "PYTHONPATH": str(src)}
                done = subprocess.run(
                    [sys.executable, __file__, "--engine-sample", "--sagas", str(sagas)],
                    capture_output=True,
                    text=True,
                    env=env,
                    check=True,
                )
                value, _, loaded = done.stdout.strip().splitlines()[-1].partition(" ")
                if Path(loaded).resolve() != (src / "saga_orchestrator").resolve():
                    raise SystemExit(f"--against: the {side} run loaded {loaded}, not {src}")
                samples[side].append(float(value))
            print(
                f"  against {ref}: round {round_ + 1}/{rounds}: {samples['ref'][-1]:.1f} µs/step"
                f" on {ref}, {samples['tree'][-1]:.1f} on this tree",
                file=sys.stderr,
                flush=True,
            )
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(checkout)], check=False)
        shutil.rmtree(checkout, ignore_errors=True)
    ref_median = statistics.median(samples["ref"])
    tree_median = statistics.median(samples["tree"])
    return {
        "ref": ref,
        "ref_commit": commit,
        "rounds": rounds,
        "sagas_per_run": sagas,
        "ref_us_per_step": samples["ref"],
        "tree_us_per_step": samples["tree"],
        "ref_median": ref_median,
        "tree_median": tree_median,
        "ref_min": min(samples["ref"]),
        "tree_min": min(samples["tree"]),
        "ratio_of_medians": tree_median / ref_median,
    }


def against_text(found: dict[str, Any]) -> str:
    return (
        f"engine time per step, memory, 4 steps, inside execute(), {found['rounds']} runs of "
        f"each in alternation ({found['sagas_per_run']:,} sagas per run): {found['ref']} "
        f"({found['ref_commit']}) median {found['ref_median']:.1f} µs (min "
        f"{found['ref_min']:.1f}), this tree median {found['tree_median']:.1f} µs (min "
        f"{found['tree_min']:.1f}): {found['ratio_of_medians']:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.engine_sample:
        sagas = args.sagas.get("memory", AGAINST_SAGAS) if args.sagas else AGAINST_SAGAS
        import saga_orchestrator

        print(f"{anyio.run(engine_sample, sagas):.3f} {Path(saga_orchestrator.__file__).parent}")
        return 0
    command = shlex.join(["bench/steps.py", *(sys.argv[1:] if argv is None else argv)])
    info = describe_machine()
    print(
        f"steps benchmark: {', '.join(args.adapters)}; "
        f"{', '.join(map(str, args.steps))} steps per saga, sequential",
        file=sys.stderr,
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-steps-"))
    started = time.perf_counter()
    try:
        rows = anyio.run(run, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summarise(rows)
    profile_text = None
    if args.profile:
        memory4 = next((r for r in rows if (r["adapter"], r["steps"]) == ("memory", 4)), None)
        sagas = memory4["sagas"] if memory4 else max(args.min_sagas, 500)
        print(f"  profiling memory, 4 steps: {sagas:,} sagas", file=sys.stderr, flush=True)
        profile_text = anyio.run(profile, args, sagas)
    compared = None
    if args.against:
        sagas = AGAINST_SAGAS if not args.quick else 300
        compared = against(args.against, max(1, args.rounds if not args.quick else 1), sagas)
    elapsed = time.perf_counter() - started
    info["load_average_at_end"] = load_average()
    header = machine_line(info)
    sizing = (
        f"fixed batches ({', '.join(f'{k}={v}' for k, v in args.sagas.items())} sagas)"
        if args.sagas
        else f"batches sized to about {args.target_seconds:g} s (at least {args.min_sagas} sagas)"
    )
    settings = (
        f"sagas of N no-op steps run one at a time; {sizing}, after a warm-up of at least "
        f"{args.warmup} saga{'s' if args.warmup != 1 else ''} and {args.warmup_steps} steps; "
        "SQLite synchronous=FULL, a new file per N; PostgreSQL: the repository's defaults, "
        "a schema per N; µs/step = wall ÷ (sagas * N); "
        "execute µs/step = time inside execute() only"
    )
    table = render_table(COLUMNS, rows)
    verdicts = targets(rows)
    print(f"{header}\n{settings}\n\n{table}")
    if verdicts:
        print("\nroadmap targets (informational):\n" + "\n".join(f"- {v}" for v in verdicts))
    if compared is not None:
        print(f"\nagainst {args.against}: {against_text(compared)}")
    print(f"(benchmark took {elapsed:.0f} s)", file=sys.stderr)
    if profile_text is not None:
        print(f"\n{profile_text}")
    if not args.no_save:
        markdown_lines = [
            "# Per-step cost against the number of steps",
            "",
            f"`.venv/bin/python {command}`: {header}. {settings}. Took {elapsed:.0f} s.",
            "",
            render_markdown(COLUMNS, rows),
        ]
        if verdicts:
            markdown_lines += ["", "Roadmap targets (informational, not asserted):", ""]
            markdown_lines += [f"- {v}" for v in verdicts]
        if compared is not None:
            markdown_lines += ["", f"Against `{args.against}`: {against_text(compared)}."]
        document = {
            "benchmark": "steps",
            "command": command,
            "machine": info,
            "settings": {
                "adapters": args.adapters,
                "steps": args.steps,
                "target_seconds": args.target_seconds,
                "sagas": args.sagas,
                "min_sagas": args.min_sagas,
                "warmup": args.warmup,
                "warmup_steps": args.warmup_steps,
                "quick": args.quick,
                "sqlite_synchronous": "FULL",
                "duration_s": round(elapsed, 1),
            },
            "results": rows,
            "targets": verdicts,
            "against": compared,
        }
        paths = write_results("steps", document, "\n".join(markdown_lines), args.results_dir)
        if profile_text is not None:
            paths.append(args.results_dir / "steps-profile-memory-4.txt")
            paths[-1].write_text(f"`{command}`: {header}\n\n{profile_text}", encoding="utf-8")
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # Run the module imported under its own name (``steps``), not as ``__main__``: the stored
    # data class is then ``steps:NoOpData``, which another process could import, and the
    # orchestrator has no reason to warn (``MainModuleDataWarning``) on the SQLite rows.
    sys.exit(import_module(Path(__file__).stem).main())
