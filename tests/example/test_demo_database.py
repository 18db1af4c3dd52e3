"""Where the demo keeps its SQLite file: a temporary one is gone after the run, --db's stays.

Without --db, `python -m order_fulfillment` works in a new folder of the temporary directory
and removes it when the run ends, whether the run succeeds or fails; it says so. With
--db PATH the file stays, and the run names the admin command that lists its sagas, which
works as printed.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DEMO = [sys.executable, "-m", "order_fulfillment"]


def demo(*args: str, cwd: Path, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    """Run the demo in `cwd`, with `tmpdir` as its temporary directory (TMPDIR)."""
    return subprocess.run(
        [*DEMO, *args],
        cwd=cwd,
        env={**os.environ, "TMPDIR": str(tmpdir)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An empty working directory and an empty temporary directory."""
    cwd, tmpdir = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmpdir.mkdir()
    return cwd, tmpdir


def test_without_db_the_temporary_database_is_deleted(dirs: tuple[Path, Path]) -> None:
    """The run works in TMPDIR, says the file is temporary, and leaves nothing behind."""
    cwd, tmpdir = dirs
    run = demo("--orders", "8", "--quiet", cwd=cwd, tmpdir=tmpdir)

    assert run.returncode == 0, run.stderr
    assert "verdict: OK" in run.stdout
    used = re.search(r"SQLite file (\S+) \(temporary: deleted at the end", run.stdout)
    assert used is not None, run.stdout
    assert Path(used[1]).parent.parent == tmpdir
    assert "database: temporary, deleted as this run ends (--db PATH keeps the file" in run.stdout
    assert list(tmpdir.iterdir()) == []
    assert list(cwd.iterdir()) == []


def test_a_failing_run_deletes_its_temporary_database_too(dirs: tuple[Path, Path]) -> None:
    """A run that stops with an error (a metrics file it cannot write) still cleans up."""
    cwd, tmpdir = dirs
    unwritable = cwd / "no-such-folder" / "metrics.txt"
    run = demo("--orders", "2", "--quiet", "--metrics-out", str(unwritable), cwd=cwd, tmpdir=tmpdir)

    assert run.returncode == 1
    assert "FileNotFoundError" in run.stderr
    assert "SQLite file" in run.stdout  # it did start, on a temporary file
    assert list(tmpdir.iterdir()) == []


def test_with_db_the_file_stays_and_the_printed_command_lists_it(
    dirs: tuple[Path, Path],
) -> None:
    """--db keeps the file; the `database:` line's command runs as printed and lists the
    sagas."""
    cwd, tmpdir = dirs
    run = demo("--orders", "6", "--quiet", "--db", "orders.db", cwd=cwd, tmpdir=tmpdir)

    assert run.returncode == 0, run.stderr
    assert (cwd / "orders.db").is_file()
    assert list(tmpdir.iterdir()) == []
    line = re.search(r"^database: kept in orders\.db; list its sagas with (.+)$", run.stdout, re.M)
    assert line is not None, run.stdout
    command = shlex.split(line[1])
    assert command[-3:] == ["--db", "orders.db", "list"]

    listed = subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    assert listed.returncode == 0, listed.stderr
    rows = [row for row in listed.stdout.splitlines() if "order_fulfillment" in row]
    assert len(rows) == 6


def test_help_says_where_the_database_is_kept() -> None:
    """--help: temporary and deleted by default, kept with --db, and how to inspect it."""
    run = subprocess.run([*DEMO, "--help"], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    assert "--db DB SQLite file to use, kept after the run (default: a temporary file" in text
    assert "Without --db, the SQLite file is temporary: it is deleted when the run ends." in text
    assert "`saga-orchestrator --db PATH list` lists its sagas" in text
