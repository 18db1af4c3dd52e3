"""Where PostgreSQL's WAL goes, per saga: the engine benchmark's saga (the spec's 4 steps,
``bench/workload.py``), run one at a time on ``PostgresSagaRepository``, with its outbox
(the default) and without, and the WAL of the run broken down by record type
(``pg_walinspect``'s ``pg_get_wal_stats``).

For each configuration, in a schema of its own in the database ``saga_bench_wal`` (created and
dropped by the run): a warm-up (``--warmup`` sagas), a ``CHECKPOINT``, then ``--sagas`` sagas,
sequentially, between two reads of the WAL insert position. Reported per saga: records and
bytes of each record type (``Heap/HOT_UPDATE``, ``Btree/INSERT_LEAF``, ...), full-page images
apart, and the total, set against the engine-core target (at most 6,500 bytes, half of the
~13 KB 0.1.0 wrote). The WAL is the whole cluster's: run it on a server nothing else writes to.

    .venv/bin/python bench/wal.py              # about 15 s
    .venv/bin/python bench/wal.py --quick      # 30 sagas each, a few seconds
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from importlib import import_module
from pathlib import Path
from typing import Any

import anyio
import psycopg
from psycopg import sql

from _support import RESULTS_DIR, describe_machine, machine_line, write_results
from pgstats import drop_database, recreate_database, with_database
from saga_orchestrator import SagaOrchestrator, SagaStatus
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from workload import Services, make_order, make_saga

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DATABASE = "saga_bench_wal"
TARGET_BYTES = 6500  # the engine-core issue: half of the ~13 KB per saga 0.1.0 wrote
CONFIGS = {"postgres": True, "postgres-nooutbox": False}  # name: outbox


async def measure(url: str, name: str, outbox: bool, sagas: int, warmup: int) -> dict[str, Any]:
    """One configuration: its WAL per saga, by record type."""
    repo = PostgresSagaRepository(url, schema=name.replace("-", "_"), outbox=outbox)
    await repo.open()
    orchestrator = SagaOrchestrator(repo)
    services = Services()

    async def run(count: int) -> None:
        for _ in range(count):
            result = await orchestrator.execute(make_saga(make_order(), services))
            if result.status is not SagaStatus.COMPLETED:
                raise RuntimeError(f"{name}: a saga ended {result.status}: {result.error}")

    try:
        await run(warmup)
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("CHECKPOINT")  # full-page images then come from this run only
            start = _lsn(connection)
        await run(sagas)
    finally:
        await repo.close()
    with psycopg.connect(url, autocommit=True) as connection:
        end = _lsn(connection)
        total = connection.execute("SELECT pg_wal_lsn_diff(%s, %s)", (end, start)).fetchone()
        rows = connection.execute(
            'SELECT "resource_manager/record_type", count, record_size, fpi_size'
            " FROM pg_get_wal_stats(%s, %s, true) WHERE count > 0"
            " ORDER BY record_size + fpi_size DESC",
            (start, end),
        ).fetchall()
    assert total is not None
    kinds = [
        {
            "record_type": kind,
            "records_per_saga": count / sagas,
            "bytes_per_saga": record / sagas,
            "fpi_bytes_per_saga": fpi / sagas,
        }
        for kind, count, record, fpi in rows
    ]
    return {
        "config": name,
        "outbox": outbox,
        "sagas": sagas,
        "wal_bytes_per_saga": float(total[0]) / sagas,
        "records_per_saga": sum(k["records_per_saga"] for k in kinds),
        "kinds": kinds,
    }


def _lsn(connection: psycopg.Connection[Any]) -> str:
    row = connection.execute("SELECT pg_current_wal_insert_lsn()::text").fetchone()
    assert row is not None
    return str(row[0])


def render(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        total = result["wal_bytes_per_saga"]
        verdict = "met" if total <= TARGET_BYTES else "MISSED"
        lines += [
            "",
            f"### {result['config']} ({result['sagas']} sagas, one at a time)",
            "",
            f"{total:,.0f} WAL bytes and {result['records_per_saga']:.1f} records per saga; "
            f"target <= {TARGET_BYTES:,}: **{verdict}**.",
            "",
            "| record type | records/saga | bytes/saga | full-page images, bytes/saga | share |",
            "|---|---:|---:|---:|---:|",
        ]
        for kind in result["kinds"]:
            size = kind["bytes_per_saga"] + kind["fpi_bytes_per_saga"]
            if size < 1:
                continue
            lines.append(
                f"| {kind['record_type']} | {kind['records_per_saga']:.2f} | "
                f"{kind['bytes_per_saga']:,.0f} | {kind['fpi_bytes_per_saga']:,.0f} | "
                f"{size / total:.0%} |"
            )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/wal.py",
        description="PostgreSQL WAL per saga by record type (pg_walinspect), outbox on and off.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="30 sagas, warm-up 10")
    parser.add_argument("--sagas", type=int, default=None, help="measured sagas per config (300)")
    parser.add_argument("--warmup", type=int, default=None, help="sagas before the checkpoint (50)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("SAGA_BENCH_POSTGRES_URL", DEFAULT_PG_URL),
        help="a superuser connection (creates the database and the pg_walinspect extension)"
        " (env SAGA_BENCH_POSTGRES_URL)",
    )
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-save", action="store_true", help="print only, write no files")
    args = parser.parse_args(argv)
    if args.sagas is None:
        args.sagas = 30 if args.quick else 300
    if args.warmup is None:
        args.warmup = 10 if args.quick else 50
    if args.sagas < 1 or args.warmup < 0:
        parser.error("--sagas must be >= 1 and --warmup >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(["bench/wal.py", *(sys.argv[1:] if argv is None else argv)])
    url = with_database(args.pg_url, DATABASE)
    recreate_database(args.pg_url, DATABASE)
    started = time.perf_counter()
    try:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS pg_walinspect"))
        info = describe_machine(url)
        results = [
            anyio.run(measure, url, name, outbox, args.sagas, args.warmup)
            for name, outbox in CONFIGS.items()
        ]
    finally:
        drop_database(args.pg_url, DATABASE)
    elapsed = time.perf_counter() - started
    header = machine_line(info)
    body = render(results)
    print(f"{header}\n{body}")
    if not args.no_save:
        markdown = (
            f"# PostgreSQL WAL per saga, by record type\n\n`.venv/bin/python {command}`: "
            f"{header}. Took {elapsed:.0f} s.\n{body}\n"
        )
        document = {
            "benchmark": "wal",
            "command": command,
            "machine": info,
            "settings": {"sagas": args.sagas, "warmup": args.warmup},
            "target_bytes_per_saga": TARGET_BYTES,
            "results": results,
        }
        paths = write_results("wal", document, markdown, args.results_dir)
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    # Imported under its own name, like steps.py: nothing stored comes from ``__main__``.
    sys.exit(import_module(Path(__file__).stem).main())
