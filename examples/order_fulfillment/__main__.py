"""The order-fulfilment demo: place orders with faults injected, then check the books.

python -m order_fulfillment                 # a few hundred orders on a temporary SQLite file
                                            # (a tenth of them paid asynchronously, by webhook)
python -m order_fulfillment --db orders.db  # keep the file; on a rerun, unfinished orders recover
python -m order_fulfillment --serve         # the HTTP API instead

Without --db the database lives in a new temporary folder that is deleted when the run ends
(unless the process is killed). With --db the file stays, for
`saga-orchestrator --db orders.db list` to inspect.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from functools import partial
from pathlib import Path
from uuid import UUID

import anyio

from saga_orchestrator import RetryPolicy, SagaResult, SagaStatus, StepStatus

from .async_demo import Outcome, finish_waiting, report_async, run_async_payments
from .domain import OrderData, ShippingAddress
from .faults import FaultConfig
from .shop import DEMO_CATALOG, OrderLine, Shop
from .webhooks import DEFAULT_WEBHOOK_SECRET

ADDRESS = ShippingAddress("123 Main St", "Anytown", "CA", "12345", "US")
FAULT_OPTIONS = [
    ("--transient-rate", 0.03, "P(a service call fails transiently)"),
    ("--reply-lost-rate", 0.02, "P(a call acts, then its reply is lost)"),
    ("--permanent-rate", 0.01, "P(a forward call is refused for good)"),
    ("--latency-ms", 2.0, "max random latency per service call"),
]
UNDO = {
    "reserve_inventory": "release",
    "process_payment": "refund",
    "create_shipment": "cancel shipment",
    "send_confirmation": "cancellation email",
    "authorize_payment": "void or refund",
}
CAPTURE_TIMEOUTS = (2.0, 600.0)
"""How long an order paid asynchronously waits for its capture: in the demo, with --serve."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m order_fulfillment",
        description="Run the order-fulfilment saga on SQLite: place orders with faults "
        "injected, then check that stock, money and emails add up. Exit status 0 when every "
        "invariant holds, 1 when one is broken, 2 for bad arguments.",
        epilog="Without --db, the SQLite file is temporary: it is deleted when the run ends. "
        "With --db PATH it is kept; `saga-orchestrator --db PATH list` lists its sagas.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--orders", type=int, default=300, help="orders to place")
    parser.add_argument(
        "--async-share",
        type=float,
        default=0.1,
        help="the share of --orders paid asynchronously (authorised, then captured by "
        "webhook), placed after the others",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="orders in flight at once")
    parser.add_argument(
        "--db",
        type=Path,
        default=argparse.SUPPRESS,
        help="SQLite file to use, kept after the run (default: a temporary file, deleted at "
        "the end; orders.db with --serve)",
    )
    parser.add_argument("--customers", type=int, default=100, help="demo customers to create")
    parser.add_argument("--stock", type=int, default=1000, help="initial stock per SKU")
    for flag, demo_default, meaning in FAULT_OPTIONS:
        parser.add_argument(
            flag,
            type=float,
            default=argparse.SUPPRESS,
            help=f"{meaning} (default: {demo_default} for the demo, 0 with --serve)",
        )
    parser.add_argument(
        "--dispatch-delay",
        type=float,
        default=0.05,
        help="seconds before a shipment leaves the warehouse (then it can only be returned)",
    )
    parser.add_argument(
        "--capture-timeout",
        type=float,
        default=argparse.SUPPRESS,
        help="seconds an order paid asynchronously waits for its capture's webhook before it "
        f"is compensated (default: {CAPTURE_TIMEOUTS[0]:g} for the demo, "
        f"{CAPTURE_TIMEOUTS[1]:g} with --serve)",
    )
    parser.add_argument(
        "--webhook-secret",
        default=argparse.SUPPRESS,
        help="the secret the payment provider signs its webhooks with (default: the "
        "ORDER_WEBHOOK_SECRET environment variable, else a demo secret)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed for orders and faults")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument(
        "--metrics-out",
        type=Path,
        default=argparse.SUPPRESS,
        help="after the run, write the saga metrics (Prometheus text format) to this file",
    )
    parser.add_argument(
        "--log-format", choices=["text", "json"], default="text", help="how logs look on stderr"
    )
    parser.add_argument(
        "--log-level",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        default="ERROR",
        help="INFO shows every saga transition",
    )
    parser.add_argument("--serve", action="store_true", help="serve the HTTP API instead")
    parser.add_argument("--host", default="127.0.0.1", help="--serve: address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="--serve: port to listen on")
    args = parser.parse_args(argv)
    args.db = getattr(args, "db", None)
    args.metrics_out = getattr(args, "metrics_out", None)
    if getattr(args, "capture_timeout", None) is None:
        args.capture_timeout = CAPTURE_TIMEOUTS[1] if args.serve else CAPTURE_TIMEOUTS[0]
    if getattr(args, "webhook_secret", None) is None:
        args.webhook_secret = os.environ.get("ORDER_WEBHOOK_SECRET") or DEFAULT_WEBHOOK_SECRET
    if not args.webhook_secret:
        parser.error("--webhook-secret must not be empty")
    if not (math.isfinite(args.capture_timeout) and args.capture_timeout > 0):
        parser.error("--capture-timeout must be a finite number > 0")
    for flag, demo_default, _ in FAULT_OPTIONS:
        name = flag[2:].replace("-", "_")
        if getattr(args, name, None) is None:
            setattr(args, name, 0.0 if args.serve else demo_default)
        if not math.isfinite(getattr(args, name)):
            parser.error(f"{flag} must be a finite number")
    if not math.isfinite(args.dispatch_delay):
        parser.error("--dispatch-delay must be a finite number")
    if args.orders < 0 or args.concurrency < 1 or args.stock < 0 or args.customers < 1:
        parser.error("--orders and --stock must be >= 0, --concurrency and --customers >= 1")
    if not 0 <= args.async_share <= 1:  # NaN is not within either
        parser.error("--async-share must be within [0, 1]")
    for name in ("transient_rate", "reply_lost_rate", "permanent_rate"):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f"--{name.replace('_', '-')} must be within [0, 1]")
    if args.latency_ms < 0 or args.dispatch_delay < 0:
        parser.error("--latency-ms and --dispatch-delay must be >= 0")
    return args


def make_shop(args: argparse.Namespace, db: Path) -> Shop:
    return Shop(
        db,
        faults=FaultConfig(
            transient_rate=args.transient_rate,
            reply_lost_rate=args.reply_lost_rate,
            permanent_rate=args.permanent_rate,
            latency_seconds=args.latency_ms / 1000,
            seed=args.seed,
        ),
        dispatch_delay_seconds=args.dispatch_delay,
        # Quick retries keep the demo brisk; the defaults suit real services.
        retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=0.01),
        compensation_retry=RetryPolicy(max_attempts=20, initial_backoff_seconds=0.01),
        capture_timeout_seconds=args.capture_timeout,
        webhook_secret=args.webhook_secret,
    )


def admin_command() -> str:
    """How to call the admin CLI of the running interpreter's environment."""
    beside = Path(sys.executable).parent / "saga-orchestrator"
    if not beside.is_file():
        return f"{shlex.quote(sys.executable)} -m saga_orchestrator.cli"
    on_path = shutil.which("saga-orchestrator")
    if on_path is not None and Path(on_path).resolve() == beside.resolve():
        return "saga-orchestrator"
    relative = os.path.relpath(beside)
    return shlex.quote(str(beside) if relative.startswith("..") else relative)


async def run(args: argparse.Namespace, db: Path, *, temporary: bool) -> int:
    where = " (temporary: deleted at the end; --db PATH keeps it)" if temporary else ""
    print(f"order-fulfilment demo: SQLite file {db}{where}")
    rng = random.Random(args.seed)
    async with make_shop(args, db) as shop:
        metrics = None
        if args.metrics_out:
            from .observability import SagaMetrics  # needs prometheus-client

            metrics = SagaMetrics(shop.repository)
            shop.orchestrator.listeners.append(metrics.listener)
        recovered = await shop.recover()
        waiting = recovered.waiting  # paid asynchronously, still waiting for their capture
        if recovered or waiting:
            print(
                f"recovered {len(recovered) + len(waiting)} unfinished orders from an earlier run"
            )
        customers = await shop.seed_demo(customers=args.customers, stock=args.stock, rng=rng)
        orders = [await make_order(shop, rng, customers) for _ in range(args.orders)]
        paid_later = orders[len(orders) - async_count(args) :]  # the last ones, if any
        orders = orders[: len(orders) - len(paid_later)]
        results: list[SagaResult[OrderData]] = []
        limiter = anyio.CapacityLimiter(args.concurrency)
        started = time.perf_counter()

        async def place(order: OrderData) -> None:
            async with limiter:
                results.append(await shop.place(order))
            if not args.quiet:
                progress(len(results), len(orders))

        async with anyio.create_task_group() as tg:
            for order in orders:
                tg.start_soon(place, order)
        elapsed = time.perf_counter() - started
        if not args.quiet and orders:
            sys.stderr.write("\n")
        outcomes: list[Outcome] = []
        if paid_later:
            outcomes = await run_async_payments(shop, paid_later, concurrency=args.concurrency)
        if waiting:
            recovered += await finish_waiting(shop, waiting)
        returned = await shop.db.read(
            lambda c: {
                UUID(r[0])
                for r in c.execute("SELECT order_id FROM shipments WHERE status = 'returned'")
            }
        )
        paid_later_results = [o.result for o in outcomes]
        report(results + paid_later_results + recovered, returned, shop.faults.injected)
        if results:
            rate = len(results) / elapsed if elapsed else float("inf")
            print(
                f"{len(results)} new orders paid at once in {elapsed:.1f} s ({rate:,.0f}/s) "
                f"with {args.concurrency} in flight"
            )
        surprises = report_async(outcomes, args.capture_timeout) if outcomes else []
        problems = surprises + await shop.check_invariants()
        if metrics is not None:
            args.metrics_out.write_bytes(await metrics.exposition())
            print(f"metrics written to {args.metrics_out}")
    if temporary:
        print(
            "database: temporary, deleted as this run ends (--db PATH keeps the file, "
            f"for {admin_command()} --db PATH list)"
        )
    else:
        print(
            f"database: kept in {db}; list its sagas with "
            f"{admin_command()} --db {shlex.quote(str(db))} list"
        )
    print("\ninvariants (whole database): stock conserved, money balances, no double charge,")
    print("net charged = total for completed orders and 0 otherwise, every saga terminal,")
    print("no payment left authorised, every webhook answered as its scenario expects")
    for line in problems or ["all hold"]:
        print(f"  {line}")
    print("verdict:", "OK" if not problems else "BROKEN")
    return 0 if not problems else 1


def async_count(args: argparse.Namespace) -> int:
    """How many of the --orders are paid asynchronously: --async-share of them, rounded."""
    orders: int = args.orders
    share: float = args.async_share
    return math.floor(orders * share + 0.5)


async def make_order(shop: Shop, rng: random.Random, customers: list[UUID]) -> OrderData:
    skus = rng.sample([sku for sku, _, _ in DEMO_CATALOG], k=rng.randint(1, 3))
    lines = [OrderLine(sku, rng.randint(1, 3)) for sku in skus]
    return await shop.price_order(rng.choice(customers), lines, ADDRESS)


def path_of(result: SagaResult[OrderData], returned: set[UUID]) -> str:
    """`failing step → compensations run, in order` for one saga."""
    failed = next(
        (s.name for s in result.steps if s.status is StepStatus.FAILED or s.effect_possible),
        (result.error or "?").split(":", 1)[0],
    )
    undone = sorted(
        (s for s in result.steps if s.status is StepStatus.COMPENSATED),
        key=lambda s: s.compensated_at or s.started_at,  # type: ignore[return-value, arg-type]
    )
    names = []
    for step in undone:
        name = UNDO.get(step.name, step.name)
        if step.name == "create_shipment" and result.data.order_id in returned:
            name = "return shipment"
        names.append(name)
    return f"{failed} → {' + '.join(names) or 'nothing to undo (order rejected)'}"


def why(error: str) -> str:
    """The exception type in a saga's error (``step: Type: message``, or ``step: event 'x'
    rejected: Type: message`` for a rejected webhook)."""
    named = re.search(r"\b([A-Z]\w*(?:Error|Exception))\b", error)
    return named[1] if named else error.split(": ", 2)[1 if ": " in error else 0]


def report(
    results: list[SagaResult[OrderData]],
    returned: set[UUID],
    injected: dict[str, int],
) -> None:
    outcomes = Counter(r.status.value for r in results)
    print(f"\n{'outcome':<14}{'orders':>8}")
    for status in ("completed", "compensated", "failed"):
        print(f"{status:<14}{outcomes.get(status, 0):>8}")
    paths = Counter(path_of(r, returned) for r in results if r.status is not SagaStatus.COMPLETED)
    if paths:
        print("\ncompensation paths (failed step → compensations, in the order they ran):")
        for path, count in paths.most_common():
            print(f"  {count:>5}  {path}")
    reasons = Counter(why(r.error or "") for r in results if r.status is not SagaStatus.COMPLETED)
    if reasons:
        print("\nwhy: " + ", ".join(f"{name} x{n}" for name, n in reasons.most_common()))
    if injected:
        faults = ", ".join(f"{kind} x{n}" for kind, n in sorted(injected.items()))
        print(f"faults injected: {faults}")


def progress(done: int, total: int) -> None:
    if not sys.stderr.isatty() and done != total:
        return
    width = 40
    filled = width * done // max(total, 1)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from .logs import configure_logging

    configure_logging(args.log_level, args.log_format)
    if args.serve:
        from .api import serve

        return serve(args, make_shop(args, args.db or Path("orders.db")))
    if args.db is not None:
        return anyio.run(partial(run, args, args.db, temporary=False))
    with tempfile.TemporaryDirectory(prefix="order-saga-") as folder:  # removed however it ends
        return anyio.run(partial(run, args, Path(folder) / "orders.db", temporary=True))


if __name__ == "__main__":
    sys.exit(main())
