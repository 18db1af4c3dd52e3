"""Engine benchmark: sagas/s and per-step overhead of saga-orchestrator with no-op services.

Runs the worked example's order saga, ``OrderFulfillmentSaga`` from the installed package
``order_fulfillment`` (``examples/order_fulfillment``): the spec's 4 steps (reserve inventory,
process payment, create shipment, send confirmation; each with a compensation; dataclass data
with a Decimal total and UUID ids), against services that return at once, so that what is
measured is the engine and its repository: on the in-memory adapter, on SQLite (a temporary
file, ``synchronous=FULL``, the default) and on SQLite with ``synchronous=NORMAL``; one saga at
a time and with 64 in flight; on the happy path and with step 3 failing (steps 2 and 1
compensated).

A baseline awaits the same saga's actions (and, for fail@3, its compensations) directly,
without the orchestrator; the per-step overhead is
``(wall time per saga - baseline wall time per saga) / service calls per saga``.

    .venv/bin/python bench/engine.py              # default run, under ~2 minutes
    .venv/bin/python bench/engine.py --quick      # smoke run, ~15 s
    .venv/bin/python bench/engine.py --profile sqlite-full/64/happy   # cProfile one scenario
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio

import saga_orchestrator
from order_fulfillment.domain import OrderData, OrderItem, ShippingAddress
from order_fulfillment.saga import OrderFulfillmentSaga
from saga_orchestrator import (
    InMemorySagaRepository,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    SQLiteSagaRepository,
)

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent

# ---------------------------------------------------------------------------- the saga


class NoCarrierError(Exception):
    """A business refusal: not retryable, so the saga compensates at once."""


@dataclass(frozen=True)
class _Ref:
    id: UUID
    tracking_number: str = ""


_RESERVATION = _Ref(UUID("00000000-0000-4000-8000-000000000001"))
_PAYMENT = _Ref(UUID("00000000-0000-4000-8000-000000000002"))
_SHIPMENT = _Ref(UUID("00000000-0000-4000-8000-000000000003"), "TRACK-0001")


class Services:
    """The order saga's four services in one object; every call returns at once."""

    def __init__(self, *, fail_shipping: bool = False) -> None:
        self.fail_shipping = fail_shipping
        self.calls = 0

    # inventory
    async def reserve(self, **_: Any) -> _Ref:
        self.calls += 1
        return _RESERVATION

    async def release(self, **_: Any) -> None:
        self.calls += 1

    # payment
    async def charge(self, **_: Any) -> _Ref:
        self.calls += 1
        return _PAYMENT

    async def refund(self, **_: Any) -> None:
        self.calls += 1

    # shipping
    async def create(self, **_: Any) -> _Ref:
        self.calls += 1
        if self.fail_shipping:
            raise NoCarrierError("no carrier serves this address")
        return _SHIPMENT

    async def cancel(self, **_: Any) -> None:
        self.calls += 1

    async def initiate_return(self, **_: Any) -> None:
        self.calls += 1

    # notification
    async def send_email(self, **_: Any) -> None:
        self.calls += 1


def make_saga(data: OrderData, services: Services) -> OrderFulfillmentSaga:
    return OrderFulfillmentSaga(
        data,
        inventory_service=services,
        payment_service=services,
        shipping_service=services,
        notification_service=services,
    )


_ITEMS = (
    ("SKU-001", 2, Decimal("29.99"), "Widget"),
    ("SKU-002", 1, Decimal("149.00"), "Gadget"),
)


def make_order() -> OrderData:
    items = [OrderItem(sku, qty, price, name) for sku, qty, price, name in _ITEMS]
    return OrderData(
        customer_id=uuid4(),
        items=items,
        shipping_address=ShippingAddress("123 Main St", "Anytown", "CA", "12345", "US"),
        total=sum((i.unit_price * i.quantity for i in items), Decimal("0")),
    )


async def run_plain(steps: Sequence[SagaStep[OrderData]], data: OrderData) -> None:
    """The baseline: the saga's own actions awaited directly, without the orchestrator.

    Their results are set on the data; on the business error, the completed steps are
    compensated in reverse order.
    """
    for done, step in enumerate(steps):
        try:
            result = await step.action(data)
        except NoCarrierError:
            for undo in reversed(steps[:done]):
                if undo.compensation is not None:
                    await undo.compensation(data)
            return
        for key, value in (result or {}).items():
            setattr(data, key, value)


# ---------------------------------------------------------------------------- scenarios

ADAPTERS = ("memory", "sqlite-full", "sqlite-normal")
PATHS = ("happy", "fail@3")
CALLS = {"happy": 4, "fail@3": 5}  # service calls per saga: 4 actions / 3 actions + 2 undos
EXPECTED = {"happy": SagaStatus.COMPLETED, "fail@3": SagaStatus.COMPENSATED}


@dataclass
class Measurement:
    wall_s: float
    latencies_s: list[float]
    writes: int


class Scenario:
    """One cell of the matrix; keeps its repository open across repeats."""

    def __init__(self, adapter: str, concurrency: int, path: str, workdir: Path) -> None:
        self.adapter = adapter
        self.concurrency = concurrency
        self.path = path
        self.workdir = workdir
        self.services = Services(fail_shipping=path == "fail@3")
        self.repo: InMemorySagaRepository | SQLiteSagaRepository | None = None
        self.orchestrator: SagaOrchestrator | None = None
        self.repeats: list[Measurement] = []

    @property
    def mode(self) -> str:
        return "sequential" if self.concurrency == 1 else f"{self.concurrency} in flight"

    @property
    def key(self) -> str:
        return f"{self.adapter}/{'seq' if self.concurrency == 1 else self.concurrency}/{self.path}"

    async def open(self) -> None:
        if self.adapter == "baseline" or self.repo is not None:
            return
        if self.adapter == "memory":
            self.repo = InMemorySagaRepository()
        else:
            file = self.workdir / f"{self.key.replace('/', '_').replace('@', '')}.db"
            if self.adapter == "sqlite-full":
                repo = SQLiteSagaRepository(file)  # the default: synchronous=FULL
            else:
                repo = SQLiteSagaRepository(file, synchronous="NORMAL")
            await repo.open()
            self.repo = repo
        self.orchestrator = SagaOrchestrator(self.repo)

    async def close(self) -> None:
        if isinstance(self.repo, SQLiteSagaRepository):
            await self.repo.close()

    def _writes(self) -> int:
        if isinstance(self.repo, SQLiteSagaRepository):
            return self.repo.transactions
        if isinstance(self.repo, InMemorySagaRepository):
            return self.repo.writes
        return 0

    def _one(self) -> Callable[[], Awaitable[None]]:
        services = self.services
        if self.orchestrator is None:
            # Built once: the baseline times the service calls, not building a saga.
            steps = make_saga(make_order(), services).steps

            async def plain() -> None:
                await run_plain(steps, make_order())

            return plain
        orchestrator = self.orchestrator
        expected = EXPECTED[self.path]

        async def saga() -> None:
            result = await orchestrator.execute(make_saga(make_order(), services))
            if result.status is not expected:
                raise RuntimeError(f"{self.key}: saga ended {result.status}: {result.error}")

        return saga

    async def run(self, count: int) -> Measurement:
        """Run ``count`` sagas; the wall time, each saga's latency and the writes made."""
        one = self._one()
        latencies: list[float] = []
        clock = time.perf_counter
        writes_before = self._writes()
        calls_before = self.services.calls
        gc.collect()
        started = clock()
        if self.concurrency == 1:
            for _ in range(count):
                t0 = clock()
                await one()
                latencies.append(clock() - t0)
        else:
            limiter = anyio.CapacityLimiter(self.concurrency)

            async def task() -> None:
                async with limiter:
                    t0 = clock()
                    await one()
                    latencies.append(clock() - t0)

            async with anyio.create_task_group() as tg:
                for _ in range(count):
                    tg.start_soon(task)
        wall = clock() - started
        calls = self.services.calls - calls_before
        if calls != count * CALLS[self.path]:  # the baseline and the saga make the same calls
            raise RuntimeError(f"{self.key}: {calls} service calls for {count} sagas")
        return Measurement(wall, latencies, self._writes() - writes_before)


def build_matrix(workdir: Path, concurrency: int) -> list[Scenario]:
    modes = (1, concurrency)
    scenarios = [Scenario("baseline", c, p, workdir) for c in modes for p in PATHS]
    scenarios += [Scenario(a, c, p, workdir) for a in ADAPTERS for c in modes for p in PATHS]
    return scenarios


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarise(scenario: Scenario, count: int, baseline: Scenario | None) -> dict[str, Any]:
    """Median over repeats of each metric."""
    runs = scenario.repeats
    per_saga = statistics.median(m.wall_s / count for m in runs)
    row: dict[str, Any] = {
        "scenario": scenario.key,
        "adapter": scenario.adapter,
        "mode": scenario.mode,
        "concurrency": scenario.concurrency,
        "path": scenario.path,
        "sagas_per_repeat": count,
        "repeats": len(runs),
        "sagas_per_s": statistics.median(count / m.wall_s for m in runs),
        "wall_per_saga_us": per_saga * 1e6,
        "p50_ms": statistics.median(_percentile(m.latencies_s, 0.50) for m in runs) * 1e3,
        "p99_ms": statistics.median(_percentile(m.latencies_s, 0.99) for m in runs) * 1e3,
        "sagas_per_s_each_repeat": [round(count / m.wall_s, 1) for m in runs],
        "service_calls_per_saga": CALLS[scenario.path],
    }
    if baseline is not None:
        base = statistics.median(m.wall_s / count for m in baseline.repeats)
        overhead = per_saga - base
        row["overhead_per_saga_us"] = overhead * 1e6
        row["overhead_per_step_us"] = overhead * 1e6 / CALLS[scenario.path]
        row["writes_per_saga"] = statistics.median(m.writes / count for m in runs)
    return row


# ---------------------------------------------------------------------------- reporting

COLUMNS = (
    ("adapter", "adapter", "<", "{}"),
    ("mode", "mode", "<", "{}"),
    ("path", "path", "<", "{}"),
    ("sagas_per_s", "sagas/s", ">", "{:,.0f}"),
    ("p50_ms", "p50 ms", ">", "{:.3f}"),
    ("p99_ms", "p99 ms", ">", "{:.3f}"),
    ("overhead_per_saga_us", "µs/saga", ">", "{:,.0f}"),
    ("overhead_per_step_us", "µs/step", ">", "{:,.1f}"),
    ("writes_per_saga", "tx/saga", ">", "{:.2f}"),
)


def render_table(rows: list[dict[str, Any]]) -> str:
    cells = [[title for _, title, _, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(row[key]) if key in row else "-" for key, _, _, fmt in COLUMNS])
    widths = [max(len(line[i]) for line in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, line in enumerate(cells):
        parts = [
            f"{text:{align}{width}}"
            for text, width, (_, _, align, _) in zip(line, widths, COLUMNS, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def ratios(rows: list[dict[str, Any]], concurrency: int) -> dict[str, float]:
    """Throughput ratios between scenarios measured in the same run."""
    by_key = {row["scenario"]: row for row in rows}
    out: dict[str, float] = {}

    def ratio(name: str, a: str, b: str) -> None:
        if a in by_key and b in by_key:
            out[name] = by_key[a]["sagas_per_s"] / by_key[b]["sagas_per_s"]

    for adapter in ADAPTERS:
        for path in PATHS:
            ratio(
                f"{adapter} {path}: {concurrency} in flight / sequential",
                f"{adapter}/{concurrency}/{path}",
                f"{adapter}/seq/{path}",
            )
    for mode in ("seq", str(concurrency)):
        ratio(
            f"memory / sqlite-full, {mode} happy",
            f"memory/{mode}/happy",
            f"sqlite-full/{mode}/happy",
        )
        ratio(
            f"sqlite-normal / sqlite-full, {mode} happy",
            f"sqlite-normal/{mode}/happy",
            f"sqlite-full/{mode}/happy",
        )
    return out


def machine_info() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(
                ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            return None
        return out.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "timestamp_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "anyio": _version("anyio"),
        "saga_orchestrator": saga_orchestrator.__version__,
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
    }


def _version(dist: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------- main


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the ``None`` of options whose default depends on others."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/engine.py",
        description="Benchmark saga-orchestrator with no-op services: sagas/s, latency and "
        "per-step overhead on the in-memory and SQLite adapters, sequential and concurrent.",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument(
        "--sagas",
        type=int,
        default=None,
        help="sagas measured per scenario and repeat (default: 800, or 300 with --quick)",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="measured repeats per scenario, interleaved; the median is reported "
        "(default: 5, or 2 with --quick)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="sagas run before each measured repeat (default: sagas/10, at least 20)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="sagas in flight")
    parser.add_argument(
        "--quick", action="store_true", help="a short smoke run (~15 s instead of ~90 s)"
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=BENCH_DIR / "results",
        help="where engine-<timestamp>.json and engine-latest.{json,txt} go",
    )
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    parser.add_argument(
        "--profile",
        metavar="SCENARIO",
        default=None,
        help="instead of the matrix, run one scenario (e.g. sqlite-full/64/happy, "
        "memory/seq/happy) once under a profiler and print where the time goes",
    )
    parser.add_argument(
        "--profiler",
        choices=("cprofile", "pyinstrument"),
        default="cprofile",
        help="profiler for --profile (pyinstrument must be installed: pip install pyinstrument)",
    )
    args = parser.parse_args(argv)
    if args.sagas is None:
        args.sagas = 300 if args.quick else 800
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.warmup is None:
        args.warmup = max(args.sagas // 10, 20)
    if args.sagas < 1 or args.repeats < 1 or args.warmup < 0 or args.concurrency < 2:
        parser.error("--sagas and --repeats must be >= 1, --warmup >= 0, --concurrency >= 2")
    return args


async def run_matrix(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    scenarios = build_matrix(workdir, args.concurrency)
    try:
        for repeat in range(args.repeats):
            for scenario in scenarios:  # interleaved, so that drift hits every scenario
                await scenario.open()
                await scenario.run(args.warmup)
                scenario.repeats.append(await scenario.run(args.sagas))
            print(f"  repeat {repeat + 1}/{args.repeats} done", file=sys.stderr)
    finally:
        for scenario in scenarios:
            await scenario.close()
    baselines = {(s.concurrency, s.path): s for s in scenarios if s.adapter == "baseline"}
    rows = []
    for scenario in scenarios:
        base = baselines[scenario.concurrency, scenario.path]
        rows.append(summarise(scenario, args.sagas, None if scenario is base else base))
    return rows


async def run_profile(args: argparse.Namespace, workdir: Path) -> str:
    by_key = {s.key: s for s in build_matrix(workdir, args.concurrency)}
    scenario = by_key.get(args.profile)
    if scenario is None:
        raise SystemExit(f"unknown scenario {args.profile!r}; one of: {', '.join(by_key)}")
    await scenario.open()
    out = io.StringIO()
    try:
        await scenario.run(args.warmup)
        if args.profiler == "pyinstrument":
            from pyinstrument import Profiler

            sampler = Profiler(interval=0.0002, async_mode="disabled")
            sampler.start()
            measurement = await scenario.run(args.sagas)
            sampler.stop()
            report = sampler.output_text(unicode=True, color=False, show_all=False)
        else:
            profiler = cProfile.Profile()
            profiler.enable()
            measurement = await scenario.run(args.sagas)
            profiler.disable()
            stream = io.StringIO()
            stats = pstats.Stats(profiler, stream=stream).strip_dirs()
            stats.sort_stats("tottime").print_stats(30)
            stats.sort_stats("cumulative").print_stats(30)
            report = stream.getvalue()
    finally:
        await scenario.close()
    out.write(
        f"{scenario.key}: {args.sagas} sagas in {measurement.wall_s:.3f} s under "
        f"{args.profiler} ({args.sagas / measurement.wall_s:,.0f} sagas/s; profiling "
        "inflates times)\n"
    )
    out.write(report)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-"))
    try:
        if args.profile:
            print(anyio.run(run_profile, args, workdir))
            return 0
        info = machine_info()
        print(
            f"saga-orchestrator engine benchmark: {args.sagas} sagas x {args.repeats} repeats "
            f"per scenario, warm-up {args.warmup}, {args.concurrency} in flight; "
            f"{info['cpu_count']} CPUs, Python {info['python']}, SQLite {info['sqlite']}",
            file=sys.stderr,
            flush=True,
        )
        started = time.perf_counter()
        rows = anyio.run(run_matrix, args, workdir)
        elapsed = time.perf_counter() - started
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = render_table(rows)
    found = ratios(rows, args.concurrency)
    lines = [
        f"saga-orchestrator {info['saga_orchestrator']} @ {(info['git_commit'] or '?')[:12]}, "
        f"{info['timestamp_utc']}; {info['cpu_count']} CPUs, Python {info['python']}, "
        f"SQLite {info['sqlite']}; {args.sagas} sagas x {args.repeats} repeats (median)",
        "",
        table,
        "",
        "ratios (same run, sagas/s):",
        *(f"  {name:<48} {value:6.2f}x" for name, value in found.items()),
    ]
    text = "\n".join(lines) + "\n"
    print(text, end="", flush=True)
    print(f"(benchmark took {elapsed:.1f} s)", file=sys.stderr)

    if not args.no_save:
        document = {
            "benchmark": "engine",
            "machine": info,
            "settings": {
                "sagas": args.sagas,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "concurrency": args.concurrency,
                "quick": args.quick,
                "duration_s": round(elapsed, 2),
            },
            "results": rows,
            "ratios": found,
        }
        results = args.results_dir
        results.mkdir(parents=True, exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        payload = json.dumps(document, indent=2) + "\n"
        (results / f"engine-{stamp}.json").write_text(payload, encoding="utf-8")
        (results / "engine-latest.json").write_text(payload, encoding="utf-8")
        (results / "engine-latest.txt").write_text(text, encoding="utf-8")
        print(f"wrote {results / f'engine-{stamp}.json'} and engine-latest.*", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
