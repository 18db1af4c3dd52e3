"""Smoke tests of the scale, recovery and example benchmarks (bench/): each runs end to end
on a tiny workload and writes its JSON and Markdown. The figures are not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, tmp_path: Path, *args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--results-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    name = script.removesuffix(".py")
    assert (tmp_path / f"{name}-latest.md").read_text(encoding="utf-8").startswith("# ")
    document: dict[str, object] = json.loads(
        (tmp_path / f"{name}-latest.json").read_text(encoding="utf-8")
    )
    assert document["machine"]
    return document


QUICK = ("--quick", "--seq-seconds", "0.1", "--seconds", "0.2", "--warmup", "0.1")


def test_scale_sqlite(tmp_path: Path) -> None:
    document = run(
        "scale.py", tmp_path, *QUICK, "--backends", "sqlite", "--sizes", "0,300",
        "--probe-budget", "0.1",
    )  # fmt: skip
    assert [row["stored"] for row in document["results"]] == [0, 300]  # type: ignore[index]


def test_scale_postgres(tmp_path: Path, postgres_url: str) -> None:
    document = run(
        "scale.py", tmp_path, *QUICK, "--backends", "postgres", "--sizes", "0,300",
        "--probe-budget", "0.1", "--postgres-url", postgres_url,
    )  # fmt: skip
    assert [row["stored"] for row in document["results"]] == [0, 300]  # type: ignore[index]


def test_recovery_sqlite(tmp_path: Path) -> None:
    document = run(
        "recovery.py", tmp_path, "--sagas", "40", "--scenarios", "sqlite-recover",
        "--reference-seconds", "0.2",
    )  # fmt: skip
    assert document["results"][0]["sagas_per_s"] > 0  # type: ignore[index]


def test_recovery_postgres(tmp_path: Path, postgres_url: str) -> None:
    document = run(
        "recovery.py", tmp_path, "--sagas", "40", "--lease", "1", "--postgres-url", postgres_url,
        "--scenarios", "postgres-workers-1", "--reference-seconds", "0.2",
    )  # fmt: skip
    assert document["results"][0]["claimed"] >= 40  # type: ignore[index]


def test_example_e2e(tmp_path: Path) -> None:
    document = run("example_e2e.py", tmp_path, *QUICK, "--concurrency", "4")
    kinds = {row["kind"] for row in document["results"]}  # type: ignore[attr-defined]
    assert kinds == {"engine", "example", "http"}
