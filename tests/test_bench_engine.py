"""Smoke tests of the engine benchmark (bench/engine.py): a tiny matrix end to end, its JSON and
Markdown written, every saga (and DBOS workflow) checked by the script itself. The timings are
not checked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

BENCH = Path(__file__).resolve().parent.parent / "bench"

TINY = ("--sagas", "6", "--warmup", "2", "--repeats", "1", "--no-reference", "--idle-cycles", "1")


def run(tmp_path: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH / "engine.py"), "--results-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert (tmp_path / "engine-latest.md").read_text(encoding="utf-8").startswith("# ")
    document: dict[str, Any] = json.loads(
        (tmp_path / "engine-latest.json").read_text(encoding="utf-8")
    )
    assert document["machine"]["cpu_count"]
    assert not any(row.get("problems") for row in document["results"])
    return document


def admin_url(postgres_url: str) -> str:
    """The test server's URL (the benchmark creates its own databases beside the one named)."""
    return urlunsplit(urlsplit(postgres_url)._replace(path="/postgres"))


def test_engine_memory_sqlite(tmp_path: Path) -> None:
    document = run(tmp_path, *TINY, "--adapters", "memory,sqlite-full", "--concurrency", "1,4")
    keys = {row["scenario"] for row in document["results"]}
    assert "sqlite-full/4/fail@3" in keys
    assert "memory/seq/happy" in keys


def test_engine_postgres_and_dbos(tmp_path: Path, postgres_url: str) -> None:
    adapters = "postgres,dbos"
    try:
        import dbos  # noqa: F401
    except ImportError:
        adapters = "postgres"  # DBOS Transact comes with the bench extra only
    suffix = f"_{os.getpid()}"
    document = run(
        tmp_path, *TINY, "--adapters", adapters, "--concurrency", "1",
        "--pg-url", admin_url(postgres_url),
        "--saga-db", f"test_bench_saga{suffix}", "--dbos-db", f"test_bench_dbos{suffix}",
    )  # fmt: skip
    rows = {row["scenario"]: row for row in document["results"]}
    db = rows["postgres/seq/happy"]["db"]
    assert db["repo_transactions_per_saga"] == 5.0  # sequentially, one per write
    if adapters == "postgres,dbos":
        assert rows["dbos/seq/fail@3"]["db"]["commits_per_saga"] > 5


def test_engine_postgres_in_two_processes(tmp_path: Path, postgres_url: str) -> None:
    """``postgres-x2``: a peer process runs half the sagas on the same schema; the totals
    (service calls, stored sagas, write transactions) are the two processes' together."""
    suffix = f"_{os.getpid()}_x2"
    document = run(
        tmp_path, *TINY, "--adapters", "postgres-x2", "--concurrency", "1,4",
        "--pg-url", admin_url(postgres_url),
        "--saga-db", f"test_bench_saga{suffix}", "--dbos-db", f"test_bench_dbos{suffix}",
    )  # fmt: skip
    rows = {row["scenario"]: row for row in document["results"]}
    assert set(rows) >= {"postgres-x2/4/happy", "postgres-x2/4/fail@3"}
    assert "postgres-x2/seq/happy" not in rows  # two processes need two in flight
    db = rows["postgres-x2/4/happy"]["db"]
    assert db["statements_per_saga"] == 5.0  # both processes' statements, per saga
    assert 0 < db["repo_transactions_per_saga"] <= 5.0
