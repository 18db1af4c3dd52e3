"""The worked example end to end: the order saga on its real SQLite-backed services, as a
ratio to the bare engine, in-process and through the example's HTTP API.

Scenarios, interleaved over repeats, each run for a fixed time:

- ``engine``: engine.py's saga with no-op services on ``SQLiteSagaRepository`` (a temporary
  file, ``synchronous=FULL``): the bare engine on the same kind of repository.
- ``example``: the example's ``Shop`` (``examples/order_fulfillment/shop.py``) on a temporary
  file, no faults: each order is priced from the catalog (``price_order``, two reads) and
  placed (``place``: the saga, whose four services are SQLite transactions on the shop's own
  connection, ``synchronous=FULL``, in the same file as the sagas). Random orders of 1-3
  lines, as the demo makes them, by customers with ample balances and stock.
- ``http``: the example's API server started as ``python -m order_fulfillment --serve``
  does (uvicorn, one process, ``--port 0``), driven by httpx async clients, each on its own
  connection, each posting orders (``POST /api/v1/orders`` with an ``Idempotency-Key``, as
  the demo's curl line does) one after another: 1 client, and 64 at once. The clients run on
  the same 2 cores as the server. Latency: from sending the request to reading the answer.

All with 1 and 64 in flight; ratios are sagas/s of a scenario over the engine's in the same
mode, medians over the repeats.

    .venv/bin/python bench/example_e2e.py            # ~1.5 min
    .venv/bin/python bench/example_e2e.py --quick    # smoke run, ~15 s
    .venv/bin/python bench/example_e2e.py --profile example/64   # cProfile one scenario
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import pstats
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import httpx

from _support import (
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
    render_markdown,
    render_table,
    write_results,
)
from order_fulfillment.domain import ShippingAddress
from order_fulfillment.shop import DEMO_CATALOG, OrderLine, Shop
from saga_orchestrator import SagaOrchestrator, SagaStatus, SQLiteSagaRepository

ADDRESS = ShippingAddress("123 Main St", "Anytown", "CA", "12345", "US")
ADDRESS_JSON = {
    "street": "123 Main St",
    "city": "Anytown",
    "state": "CA",
    "postal_code": "12345",
    "country": "US",
}
CUSTOMERS = 200
BALANCE = "1000000000.00"  # nobody runs out of money: no order is declined
STOCK = 10**12


@dataclass
class Sample:
    sagas: int
    wall_s: float
    latencies_s: list[float]
    saga_tx: int | None = None  # write transactions of the saga repository
    service_tx: int | None = None  # write transactions of the example's services


@dataclass
class Scenario:
    kind: str  # engine | example | http
    concurrency: int
    samples: list[Sample] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.kind}/{'seq' if self.concurrency == 1 else self.concurrency}"


def random_lines(rng: random.Random) -> list[tuple[str, int]]:
    """An order as the demo makes them: 1-3 distinct SKUs, 1-3 of each."""
    skus = rng.sample([sku for sku, _, _ in DEMO_CATALOG], k=rng.randint(1, 3))
    return [(sku, rng.randint(1, 3)) for sku in skus]


async def for_a_while(
    one: Callable[[], Awaitable[None]], concurrency: int, seconds: float
) -> Sample:
    """Call ``one`` from ``concurrency`` loops until ``seconds`` have passed."""
    clock = time.perf_counter
    latencies: list[float] = []

    async def loop(deadline: float) -> None:
        while clock() < deadline:
            t0 = clock()
            await one()
            latencies.append(clock() - t0)

    gc.collect()
    started = clock()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(loop, started + seconds)
    return Sample(len(latencies), clock() - started, latencies)


# ---------------------------------------------------------------------------- in-process


class Engine:
    """The bare engine: no-op services, SQLiteSagaRepository (FULL)."""

    def __init__(self, workdir: Path) -> None:
        self.repo = SQLiteSagaRepository(workdir / "engine.db")
        self.orchestrator = SagaOrchestrator(self.repo)
        self.services = Services()

    async def open(self) -> None:
        await self.repo.open()

    async def close(self) -> None:
        await self.repo.close()

    def counters(self) -> tuple[int | None, int | None]:
        return self.repo.transactions, None

    async def one(self) -> None:
        result = await self.orchestrator.execute(make_saga(make_order(), self.services))
        if result.status is not SagaStatus.COMPLETED:
            raise RuntimeError(f"engine: saga ended {result.status}: {result.error}")


class Example:
    """The example's Shop on its own file, no faults."""

    def __init__(self, workdir: Path) -> None:
        self.shop = Shop(workdir / "shop.db")
        self.rng = random.Random(7)
        self.customers: list[UUID] = []
        # Count the services' write transactions (each its own commit on the shop's
        # connection, synchronous=FULL).
        self.service_tx = 0
        run = self.shop.db._in_transaction

        def counted(fn: Any) -> Any:
            self.service_tx += 1
            return run(fn)

        self.shop.db._in_transaction = counted  # type: ignore[method-assign]

    def counters(self) -> tuple[int | None, int | None]:
        repository = self.shop.repository
        assert isinstance(repository, SQLiteSagaRepository)
        return repository.transactions, self.service_tx

    async def open(self) -> None:
        await self.shop.__aenter__()
        await self.shop.inventory.seed_catalog(DEMO_CATALOG, STOCK)
        await self.shop.payments.open_accounts_up_to(CUSTOMERS, lambda: Decimal(BALANCE))
        self.customers = await self.shop.customers()

    async def close(self) -> None:
        await self.shop.__aexit__(None, None, None)

    async def one(self) -> None:
        lines = [OrderLine(sku, quantity) for sku, quantity in random_lines(self.rng)]
        order = await self.shop.price_order(self.rng.choice(self.customers), lines, ADDRESS)
        result = await self.shop.place(order)
        if result.status is not SagaStatus.COMPLETED:
            raise RuntimeError(f"example: order ended {result.status}: {result.error}")

    async def invariants(self) -> list[str]:
        return await self.shop.check_invariants()


# ---------------------------------------------------------------------------- HTTP


class Server:
    """``python -m order_fulfillment --serve`` on a free port, its output in files."""

    def __init__(self, workdir: Path, profile_to: Path | None = None) -> None:
        self.profile_to = profile_to  # run the server under cProfile, stats to this file
        self.db = workdir / "api.db"
        self.out = workdir / "server.out"
        self.err = workdir / "server.err"
        self.process: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.customers: list[str] = []

    def start(self, timeout: float = 60.0) -> None:
        profiler = ["-m", "cProfile", "-o", str(self.profile_to)] if self.profile_to else []
        command = [
            sys.executable,
            *profiler,
            "-m",
            "order_fulfillment",
            "--serve",
            "--db",
            str(self.db),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--customers",
            str(CUSTOMERS),
            "--stock",
            str(STOCK),
        ]
        with open(self.out, "wb") as out, open(self.err, "wb") as err:
            self.process = subprocess.Popen(command, stdout=out, stderr=err)
        deadline = time.monotonic() + timeout
        while not self.base_url:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start:\n{self.log()}")
            found = re.search(r"API on (http://\S+)", self.out.read_text(errors="replace"))
            if found:
                self.base_url = found.group(1)
            else:
                time.sleep(0.05)
        # Ample balances for the demo customers (one in ten starts nearly broke), so that no
        # order is declined: written as opening balances, the books still balance.
        connection = sqlite3.connect(self.db, timeout=30)
        try:
            with connection:
                connection.execute(
                    "UPDATE accounts SET balance = ?, initial_balance = ?", (BALANCE, BALANCE)
                )
            self.customers = [r[0] for r in connection.execute("SELECT customer_id FROM accounts")]
        finally:
            connection.close()

    def log(self) -> str:
        text = self.out.read_text(errors="replace") + self.err.read_text(errors="replace")
        return text[-3000:]

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            # SIGINT: uvicorn shuts down, then re-raises it as KeyboardInterrupt, which the
            # example's serve() catches, so the process exits normally (and cProfile, when
            # it runs the server, writes its file). SIGTERM it re-raises unhandled.
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Clients:
    """httpx async clients posting orders, one connection each."""

    def __init__(self, server: Server, count: int) -> None:
        self.server = server
        self.rng = random.Random(11)
        self.clients = [
            httpx.AsyncClient(base_url=server.base_url, timeout=120.0) for _ in range(count)
        ]
        self.free = list(self.clients)
        self.statuses: dict[int, int] = {}

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()

    def counters(self) -> tuple[int | None, int | None]:
        return None, None  # in the server process

    async def one(self) -> None:
        client = self.free.pop()
        try:
            body = {
                "customer_id": self.rng.choice(self.server.customers),
                "items": [{"sku": s, "quantity": q} for s, q in random_lines(self.rng)],
                "shipping_address": ADDRESS_JSON,
            }
            response = await client.post(
                "/api/v1/orders", json=body, headers={"Idempotency-Key": f"bench-{uuid4()}"}
            )
        finally:
            self.free.append(client)
        self.statuses[response.status_code] = self.statuses.get(response.status_code, 0) + 1
        if response.status_code != 200 or response.json().get("status") != "completed":
            raise RuntimeError(f"http: {response.status_code} {response.text[:300]}")


# ---------------------------------------------------------------------------- running


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    server_profile = workdir / "server.prof" if (args.profile or "").startswith("http") else None
    engine, example, server = Engine(workdir), Example(workdir), Server(workdir, server_profile)
    scenarios = [
        Scenario(kind, c)
        for c in (1, args.concurrency)
        for kind in ("engine", "example", *(("http",) if args.http else ()))
    ]
    extra: dict[str, Any] = {}
    await engine.open()
    await example.open()
    clients: dict[int, Clients] = {}
    try:
        if args.http:
            await anyio.to_thread.run_sync(server.start)
            clients = {c: Clients(server, c) for c in (1, args.concurrency)}

        def target(scenario: Scenario) -> Engine | Example | Clients:
            if scenario.kind == "engine":
                return engine
            if scenario.kind == "example":
                return example
            return clients[scenario.concurrency]

        def caller(scenario: Scenario) -> Callable[[], Awaitable[None]]:
            return target(scenario).one

        if args.profile:
            return {"profile": await profile(args, scenarios, caller, server)}
        for scenario in scenarios:  # warm-up
            await for_a_while(caller(scenario), scenario.concurrency, args.warmup)
        for repeat in range(args.repeats):
            for scenario in scenarios:
                seconds = args.seq_seconds if scenario.concurrency == 1 else args.seconds
                counters = target(scenario).counters
                before = counters()
                sample = await for_a_while(caller(scenario), scenario.concurrency, seconds)
                after = counters()
                if before[0] is not None and after[0] is not None:
                    sample.saga_tx = after[0] - before[0]
                if before[1] is not None and after[1] is not None:
                    sample.service_tx = after[1] - before[1]
                scenario.samples.append(sample)
            print(f"  repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)
        # Pricing alone: two reads on the shop's connection.
        rng = random.Random(3)
        pricing = []
        for _ in range(200):
            lines = [OrderLine(s, q) for s, q in random_lines(rng)]
            t0 = time.perf_counter()
            await example.shop.price_order(rng.choice(example.customers), lines, ADDRESS)
            pricing.append(time.perf_counter() - t0)
        extra["price_order_p50_ms"] = percentile(pricing, 0.5) * 1e3
        extra["invariants"] = await example.invariants() or ["all hold"]
        if args.http:
            extra["http_statuses"] = {
                str(code): n for c in clients.values() for code, n in c.statuses.items()
            }
    finally:
        for group in clients.values():
            await group.close()
        await anyio.to_thread.run_sync(server.stop)
        await example.close()
        await engine.close()
    extra["scenarios"] = scenarios
    return extra


async def profile(
    args: argparse.Namespace,
    scenarios: list[Scenario],
    caller: Callable[[Scenario], Callable[[], Awaitable[None]]],
    server: Server,
) -> str:
    """cProfile one scenario: this process, or for ``http/*`` the server (whose profile
    also covers its start-up and the warm-up)."""
    scenario = next((s for s in scenarios if s.key == args.profile), None)
    if scenario is None:
        raise SystemExit(f"--profile: one of {', '.join(s.key for s in scenarios)}")
    one = caller(scenario)
    await for_a_while(one, scenario.concurrency, args.warmup)
    stream = io.StringIO()
    if scenario.kind == "http":
        sample = await for_a_while(one, scenario.concurrency, args.seconds)
        await anyio.to_thread.run_sync(server.stop)  # the server writes its profile on exit
        stats = pstats.Stats(str(server.profile_to), stream=stream).strip_dirs()
    else:
        profiler = cProfile.Profile()
        profiler.enable()
        sample = await for_a_while(one, scenario.concurrency, args.seconds)
        profiler.disable()
        stats = pstats.Stats(profiler, stream=stream).strip_dirs()
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(30)
    rate = sample.sagas / sample.wall_s
    return (
        f"{scenario.key}: {sample.sagas} sagas in {sample.wall_s:.2f} s under cProfile "
        f"({rate:,.0f} sagas/s; profiling inflates times)\n{stream.getvalue()}"
    )


def per_saga(counts: list[tuple[int | None, int]]) -> float | None:
    found = [n / sagas for n, sagas in counts if n is not None and sagas]
    return median(found) if found else None


def summarise(scenarios: list[Scenario]) -> list[dict[str, Any]]:
    rate = {s.key: median(x.sagas / x.wall_s for x in s.samples) for s in scenarios}
    rows = []
    for s in scenarios:
        mode = "sequential" if s.concurrency == 1 else f"{s.concurrency} in flight"
        engine_key = f"engine/{'seq' if s.concurrency == 1 else s.concurrency}"
        rows.append(
            {
                "scenario": s.key,
                "kind": s.kind,
                "mode": mode if s.kind != "http" else mode.replace("in flight", "clients"),
                "concurrency": s.concurrency,
                "sagas_per_s": rate[s.key],
                "ratio_to_engine": rate[s.key] / rate[engine_key],
                "p50_ms": median(percentile(x.latencies_s, 0.5) for x in s.samples) * 1e3,
                "p99_ms": median(percentile(x.latencies_s, 0.99) for x in s.samples) * 1e3,
                "saga_tx_per_saga": per_saga([(x.saga_tx, x.sagas) for x in s.samples]),
                "service_tx_per_saga": per_saga([(x.service_tx, x.sagas) for x in s.samples]),
                "sagas": sum(x.sagas for x in s.samples),
                "sagas_per_s_each_repeat": [round(x.sagas / x.wall_s, 1) for x in s.samples],
            }
        )
    return rows


COLUMNS = (
    Column("kind", "scenario", align="<"),
    Column("mode", "mode", align="<"),
    Column("sagas_per_s", "sagas/s", "{:,.0f}"),
    Column("ratio_to_engine", "vs engine", "{:.2f}"),
    Column("p50_ms", "p50 ms", "{:.2f}"),
    Column("p99_ms", "p99 ms", "{:.2f}"),
    Column("saga_tx_per_saga", "saga tx/saga", "{:.2f}"),
    Column("service_tx_per_saga", "service tx/saga", "{:.2f}"),
    Column("sagas", "sagas run", "{:,}"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/example_e2e.py",
        description="The order example on its real SQLite-backed services, in-process and "
        "through its HTTP API, as a ratio to the bare engine on the same repository kind.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run, ~15 s")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight / HTTP clients")
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--seq-seconds", type=float, default=None, help="per sequential sample")
    parser.add_argument("--seconds", type=float, default=None, help="per concurrent sample")
    parser.add_argument("--warmup", type=float, default=None, help="seconds per scenario")
    parser.add_argument("--no-http", dest="http", action="store_false", help="skip the API")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    parser.add_argument(
        "--profile", metavar="SCENARIO", help="cProfile one scenario (e.g. example/64)"
    )
    args = parser.parse_args(argv)
    defaults = {
        "repeats": (1, 3),
        "seq_seconds": (0.5, 3.0),
        "seconds": (1.0, 4.0),
        "warmup": (0.3, 1.0),
    }
    for name, (short, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, short if args.quick else full)
    if args.concurrency < 2 or args.repeats < 1:
        parser.error("--concurrency must be >= 2 and --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = describe_machine()
    print(
        f"example end-to-end benchmark: {args.repeats} repeats of {args.seq_seconds:g} s "
        f"sequential and {args.seconds:g} s with {args.concurrency} in flight",
        file=sys.stderr,
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="saga-bench-example-"))
    started = time.perf_counter()
    try:
        found = anyio.run(run, args, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if "profile" in found:
        print(found["profile"])
        return 0
    elapsed = time.perf_counter() - started
    rows = summarise(found.pop("scenarios"))
    info["load_average_at_end"] = load_average()
    header = machine_line(info)
    settings = (
        f"{args.repeats} repeats (median) of {args.seq_seconds:g} s sequential and "
        f"{args.seconds:g} s with {args.concurrency} in flight per scenario; "
        f"price_order alone p50 {found['price_order_p50_ms']:.2f} ms; "
        f"example invariants: {'; '.join(found['invariants'])}"
    )
    table = render_table(COLUMNS, rows)
    print(f"{header}\n{settings}\n\n{table}")
    print(f"(benchmark took {elapsed:.0f} s)", file=sys.stderr)
    if not args.no_save:
        command = "bench/example_e2e.py" + (" --quick" if args.quick else "")
        markdown = "\n".join(
            [
                "# The order example end to end",
                "",
                f"`.venv/bin/python {command}`: {header}. {settings}; took {elapsed:.0f} s.",
                "",
                render_markdown(COLUMNS, rows),
            ]
        )
        document = {
            "benchmark": "example_e2e",
            "machine": info,
            "settings": {
                "repeats": args.repeats,
                "seq_seconds": args.seq_seconds,
                "seconds": args.seconds,
                "concurrency": args.concurrency,
                "http": args.http,
                "quick": args.quick,
                "duration_s": round(elapsed, 1),
            },
            "results": rows,
            **found,
        }
        paths = write_results("example_e2e", document, markdown, args.results_dir)
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
