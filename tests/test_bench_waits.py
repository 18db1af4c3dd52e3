"""Smoke tests of the durable waits benchmark (bench/waits.py): each part runs end to end on a
tiny workload and writes its JSON and Markdown. The figures are not checked; the script itself
checks every saga's outcome and exits 1 on a problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(tmp_path: Path, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(BENCH / "waits.py"), "--results-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    assert (tmp_path / "waits-latest.md").read_text(encoding="utf-8").startswith("# ")
    document: dict[str, Any] = json.loads(
        (tmp_path / "waits-latest.json").read_text(encoding="utf-8")
    )
    assert document["machine"]["git_commit"]
    assert document["command"].startswith("bench/waits.py")
    assert document["problems"] == []
    return document


def test_memory_on_sqlite(tmp_path: Path) -> None:
    """Each size parked in processes of its own; every saga stored, none held in memory."""
    document = run(
        tmp_path, "--parts", "memory", "--sizes", "3,20", "--memory-warmup", "2",
        "--note", "smoke test",
    )  # fmt: skip
    rows = document["memory"]
    assert [row["size"] for row in rows] == [3, 20]
    assert [row["runs"]["plain"]["stored"] for row in rows] == [{"running": 5}, {"running": 22}]
    assert [(row["in_flight"], row["live_sagas"], row["tasks"]) for row in rows] == [(0, 0, 1)] * 2
    assert [item["large"] for item in document["memory_summary"]] == [20]
    assert document["latency"] == []
    assert document["machine"]["note"] == "smoke test"


def test_latency_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    """Both deliverers (a task and another process) against a SagaWorker, in schemas of
    their own; every measured saga ran its next step."""
    document = run(
        tmp_path, "--parts", "latency", "--sagas", "4", "--warmup", "1", "--rate", "50",
        "--postgres-url", postgres_url,
    )  # fmt: skip
    rows = document["latency"]
    assert [row["mode"] for row in rows] == ["same-process", "other-process"]
    for row in rows:
        assert len(row["latencies_ms"]) == 4
        assert row["stored"] == {"completed": 5}
        assert row["poll_interval_s"] == 5.0
    assert document["memory"] == []
