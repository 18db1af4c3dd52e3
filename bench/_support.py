"""What the scale, recovery and example benchmarks share: the workload (engine.py's saga and
no-op services), the machine description (engine.py's fields, plus the CPU model and the
PostgreSQL server), the PostgreSQL URL, percentiles, tables and result files."""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import saga_orchestrator

try:  # the workload's own module, once engine.py's saga moved there
    from workload import Services, make_order, make_saga
except ImportError:  # pragma: no cover - older layout
    from engine import Services, make_order, make_saga  # type: ignore[no-redef]

__all__ = ["Services", "make_order", "make_saga"]

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
CACHE_DIR = BENCH_DIR / ".cache"

DEFAULT_POSTGRES_URL = os.environ.get(
    "SAGA_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
"""As engine.py and scripts/bench: ``SAGA_BENCH_POSTGRES_URL``, else the local ``postgres``
database."""


def postgres_problem(url: str) -> str | None:
    """Why PostgreSQL cannot be used at ``url`` (None if it can)."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'saga-orchestrator[postgres]')"
    try:
        with psycopg.connect(url, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"cannot connect to {url}: {exc}".strip()
    return None


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """The fields engine.py records: time, CPUs, Python, SQLite, anyio, version, commit."""

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


def describe_machine(postgres_url: str | None = None) -> dict[str, Any]:
    """engine.py's machine description (its ``machine_info``, where it has one; the same
    basic fields otherwise), with the PostgreSQL settings these benchmarks depend on."""
    try:
        from engine import machine_info as engine_machine_info

        info = engine_machine_info(postgres_url)
    except (ImportError, TypeError):  # pragma: no cover - an engine.py without it
        info = machine_info()
        info["cpu_model"] = _cpu_model()
        info["load_average_at_start"] = load_average()
    if postgres_url is not None:
        try:
            import psycopg

            with psycopg.connect(postgres_url, connect_timeout=5) as connection:
                row = connection.execute(
                    "SELECT current_setting('server_version'), current_setting('shared_buffers'),"
                    " current_setting('synchronous_commit'), current_setting('max_wal_size')"
                ).fetchone()
            assert row is not None
            info["postgres"] = {
                "server_version": row[0],
                "shared_buffers": row[1],
                "synchronous_commit": row[2],
                "max_wal_size": row[3],
                "psycopg": psycopg.__version__,
            }
        except Exception as exc:
            info["postgres"] = {"error": str(exc)}
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (other processes share the cores)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_line(info: dict[str, Any]) -> str:
    """One line: version, commit, time, CPUs, Python, SQLite, PostgreSQL."""
    commit = (info.get("git_commit") or "?")[:12] + ("+dirty" if info.get("git_dirty") else "")
    parts = [
        f"saga-orchestrator {info['saga_orchestrator']} @ {commit}",
        info["timestamp_utc"],
        f"{info['cpu_count']} CPUs ({info.get('cpu_model') or '?'})",
        f"Python {info['python']}",
        f"SQLite {info['sqlite']}",
    ]
    postgres = info.get("postgres")
    if postgres and "server_version" in postgres:
        parts.append(f"PostgreSQL {postgres['server_version']}")
    loads = [info.get("load_average_at_start"), info.get("load_average_at_end")]
    if all(loads):
        parts.append(f"load average {loads[0][0]:g} at the start, {loads[1][0]:g} at the end")
    return "; ".join(parts)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (as engine.py)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float]) -> float:
    found = list(values)
    return statistics.median(found) if found else float("nan")


@dataclass(frozen=True)
class Column:
    key: str
    title: str
    fmt: str = "{}"
    align: str = ">"


def _cell(row: dict[str, Any], column: Column) -> str:
    value = row.get(column.key)
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    return column.fmt.format(value)


def render_table(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table with a rule under the header."""
    cells = [[c.title for c in columns]] + [[_cell(r, c) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for n, line in enumerate(cells):
        parts = [f"{text:{c.align}{w}}" for text, w, c in zip(line, widths, columns, strict=True)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render_markdown(columns: Sequence[Column], rows: Sequence[dict[str, Any]]) -> str:
    """The same table in Markdown."""
    head = "| " + " | ".join(c.title for c in columns) + " |"
    rule = "|" + "|".join("---:" if c.align == ">" else "---" for c in columns) + "|"
    body = ["| " + " | ".join(_cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join([head, rule, *body])


def write_results(
    name: str, document: dict[str, Any], markdown: str, results_dir: Path = RESULTS_DIR
) -> list[Path]:
    """``<name>-latest.json`` and ``<name>-latest.md`` in ``results_dir``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    paths = [results_dir / f"{name}-latest.json", results_dir / f"{name}-latest.md"]
    paths[0].write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    paths[1].write_text(markdown.rstrip("\n") + "\n", encoding="utf-8")
    return paths
