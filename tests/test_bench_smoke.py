"""Smoke tests of the scale, recovery, example and steps benchmarks (bench/): each runs end to end
on a tiny workload and writes its JSON and Markdown. The figures are not checked."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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


def run_steps(tmp_path: Path, *args: str) -> tuple[dict[str, Any], str]:
    """bench/steps.py with warnings as errors; its JSON and its stderr."""
    done = subprocess.run(
        [sys.executable, "-W", "error", str(BENCH / "steps.py"), "--results-dir", str(tmp_path),
         *args],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    # Its saga data class is stored as steps:NoOpData, not __main__:NoOpData: no warning.
    assert "Warning" not in done.stderr, done.stderr[-3000:]
    markdown = (tmp_path / "steps-latest.md").read_text(encoding="utf-8")
    assert markdown.startswith("# ")
    assert "| adapter | steps | sagas |" in markdown
    document: dict[str, Any] = json.loads(
        (tmp_path / "steps-latest.json").read_text(encoding="utf-8")
    )
    assert document["machine"]
    assert document["command"].startswith("bench/steps.py")
    return document, done.stdout


def test_steps_fixed_batches_and_profile(tmp_path: Path) -> None:
    document, stdout = run_steps(
        tmp_path, "--quick", "--steps", "2,4", "--sagas", "memory=5,sqlite=2", "--profile"
    )
    rows = document["results"]
    assert [(r["adapter"], r["steps"], r["sagas"]) for r in rows] == [
        ("memory", 2, 5), ("memory", 4, 5), ("sqlite", 2, 2), ("sqlite", 4, 2),
    ]  # fmt: skip
    for row in rows:
        assert row["wall_s"] > 0
        assert row["us_per_step"] == pytest.approx(
            row["wall_s"] / (row["sagas"] * row["steps"]) * 1e6
        )
        assert 0 < row["execute_us_per_step"] <= row["us_per_step"]
    assert [r["ratio_to_smallest"] for r in rows if r["steps"] == 2] == [1.0, 1.0]
    assert rows[1]["ratio_to_smallest"] == pytest.approx(
        rows[1]["us_per_step"] / rows[0]["us_per_step"]
    )
    assert any("time inside execute" in line for line in document["targets"])
    assert "vs fewest steps" in stdout
    profile = (tmp_path / "steps-profile-memory-4.txt").read_text(encoding="utf-8")
    assert "memory, 4 steps: 5 sagas (20 steps)" in profile
    assert "Ordered by: cumulative time" in profile


def test_steps_sized_batches(tmp_path: Path) -> None:
    document, _ = run_steps(tmp_path, "--quick", "--adapters", "memory", "--steps", "1,3")
    rows = document["results"]
    assert [(r["adapter"], r["steps"]) for r in rows] == [("memory", 1), ("memory", 3)]
    assert all(r["sagas"] >= document["settings"]["min_sagas"] for r in rows)
    assert not (tmp_path / "steps-profile-memory-4.txt").exists()


def test_steps_on_postgres(tmp_path: Path, postgres_url: str) -> None:
    """--adapters postgres: a database of its own (created, then dropped), and the sagas of
    INCREMENTAL_MIN_STEPS steps or more written through update_changes."""
    from urllib.parse import urlsplit, urlunsplit

    admin = urlunsplit(urlsplit(postgres_url)._replace(path="/postgres"))
    document, _ = run_steps(
        tmp_path, "--quick", "--adapters", "postgres", "--steps", "2,20", "--sagas", "2",
        "--pg-url", admin,
    )  # fmt: skip
    rows = document["results"]
    assert [(r["adapter"], r["steps"]) for r in rows] == [("postgres", 2), ("postgres", 20)]
    assert [r["writes_per_saga"] for r in rows] == [3.0, 21.0]


def test_steps_against_a_git_ref(tmp_path: Path) -> None:
    """--against REF: the engine sample runs on REF's src/ (a temporary worktree, removed
    after) and on this tree's, alternately, each run checked to have loaded its own tree."""
    document, _ = run_steps(
        tmp_path, "--quick", "--adapters", "memory", "--steps", "4", "--against", "HEAD"
    )
    found = document["against"]
    assert found["ref"] == "HEAD"
    assert len(found["ref_us_per_step"]) == len(found["tree_us_per_step"]) == 1
    assert found["ratio_of_medians"] > 0
    worktrees = subprocess.run(
        ["git", "-C", str(BENCH.parent), "worktree", "list"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "saga-bench-against-" not in worktrees


def test_wal(tmp_path: Path, postgres_url: str) -> None:
    """bench/wal.py: both configurations measured, the outbox's rows visible in the breakdown."""
    from urllib.parse import urlsplit, urlunsplit

    admin = urlunsplit(urlsplit(postgres_url)._replace(path="/postgres"))
    document = run("wal.py", tmp_path, "--sagas", "5", "--warmup", "1", "--pg-url", admin)
    results = {r["config"]: r for r in document["results"]}  # type: ignore[attr-defined]
    assert set(results) == {"postgres", "postgres-nooutbox"}
    for result in results.values():
        assert result["wal_bytes_per_saga"] > 0
        assert any(k["record_type"] == "Transaction/COMMIT" for k in result["kinds"])

    def inserts(config: str) -> float:
        kinds = results[config]["kinds"]
        return sum(k["records_per_saga"] for k in kinds if k["record_type"].startswith("Heap/INS"))

    # The saga's row, then a journal row per transition: its patch, with its events when the
    # outbox is on; without the outbox the creation's row, events only, is not written.
    assert inserts("postgres-nooutbox") == 5
    assert inserts("postgres") == 6
