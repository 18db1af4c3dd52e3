"""The demo CLI, run the way a user runs it: `python -m order_fulfillment`.

It places orders with faults injected, prints an outcome table and a verdict on the books,
and exits 0 when every invariant holds. The acceptance crash test SIGKILLs it mid-run and
reruns it on the same file: the rerun recovers every unfinished order first, and the books
still balance.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]
DEMO = [sys.executable, "-m", "order_fulfillment"]
ACTIVE = ("pending", "running", "compensating")
TERMINAL = ("completed", "compensated", "failed")


def demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*DEMO, *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def saga_statuses(path: Path, *, readonly: bool = False) -> dict[str, int]:
    """How many sagas the file holds in each status ({} before the table exists)."""
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as connection:
            rows = connection.execute("SELECT status, count(*) FROM sagas GROUP BY status")
            return dict(rows.fetchall())
    except sqlite3.OperationalError:  # no file or no table yet
        if not readonly:
            raise
        return {}


def outcome_table(stdout: str) -> dict[str, int]:
    """The `outcome / orders` table the demo prints."""
    return {
        m[1]: int(m[2])
        for m in re.finditer(r"^(completed|compensated|failed) +(\d+)$", stdout, re.M)
    }


def test_demo_run_balances_the_books(tmp_path: Path) -> None:
    """A quiet run of 60 orders exits 0, prints the outcome table and "verdict: OK"."""
    db = tmp_path / "orders.db"
    run = demo("--orders", "60", "--quiet", "--db", str(db))

    assert run.returncode == 0, run.stderr
    assert f"SQLite file {db}" in run.stdout
    assert re.search(r"^outcome +orders$", run.stdout, re.M)
    table = outcome_table(run.stdout)
    assert set(table) == {"completed", "compensated", "failed"}
    assert sum(table.values()) == 60
    assert table["completed"] > 0
    assert "compensation paths" in run.stdout
    assert "all hold" in run.stdout
    assert run.stdout.rstrip().endswith("verdict: OK")
    assert "[####" not in run.stderr  # --quiet: no progress bar
    statuses = saga_statuses(db)
    assert sum(statuses.values()) == 60
    assert set(statuses) <= set(TERMINAL)


def test_rerun_on_the_same_file_adds_orders(tmp_path: Path) -> None:
    """A second run on the same file keeps its catalog and customers and still balances."""
    db = tmp_path / "orders.db"
    assert demo("--orders", "20", "--quiet", "--db", str(db)).returncode == 0
    again = demo("--orders", "20", "--quiet", "--db", str(db), "--seed", "8")

    assert again.returncode == 0, again.stderr
    assert "recovered" not in again.stdout
    assert "verdict: OK" in again.stdout
    assert sum(saga_statuses(db).values()) == 40
    with closing(sqlite3.connect(db)) as connection:
        assert connection.execute("SELECT count(*) FROM products").fetchone() == (4,)
        assert connection.execute("SELECT count(*) FROM accounts").fetchone() == (100,)


def test_help_shows_options_and_defaults() -> None:
    """--help exits 0 and documents every option with its default."""
    run = demo("--help")
    assert run.returncode == 0
    text = " ".join(run.stdout.split())  # argparse wraps lines to the terminal's width
    for option, default in [
        ("--orders ORDERS", "300"),
        ("--transient-rate", "0.03 for the demo, 0 with --serve"),
        ("--seed", "7"),
    ]:
        assert re.search(rf"{option} .*?\(default: {re.escape(default)}\)", text), option
    assert "Exit status 0 when every invariant holds, 1 when one is broken, 2 for bad" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--orders", "-1"], "--orders and --stock must be >= 0"),
        (["--stock", "-5"], "--orders and --stock must be >= 0"),
        (["--concurrency", "0"], "--concurrency and --customers >= 1"),
        (["--transient-rate", "2"], "--transient-rate must be within [0, 1]"),
        (["--reply-lost-rate", "-0.5"], "--reply-lost-rate must be within [0, 1]"),
        (["--permanent-rate", "nan"], "--permanent-rate must be a finite number"),
        (["--latency-ms", "-1"], "--latency-ms and --dispatch-delay must be >= 0"),
        (["--orders", "many"], "invalid int value"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(args: list[str], message: str) -> None:
    """Invalid arguments are refused before anything runs: exit status 2 and a usage line."""
    run = demo(*args)
    assert run.returncode == 2
    assert message in run.stderr
    assert run.stderr.startswith("usage: python -m order_fulfillment")
    assert run.stdout == ""


@pytest.mark.parametrize(
    "args",
    [["--latency-ms", "nan"], ["--dispatch-delay", "nan"], ["--dispatch-delay", "inf"]],
)
def test_non_finite_numbers_exit_2(tmp_path: Path, args: list[str]) -> None:
    """NaN or infinite delays are bad arguments too."""
    run = demo(*args, "--orders", "3", "--quiet", "--db", str(tmp_path / "orders.db"))
    assert run.returncode == 2


def test_help_names_each_default_once() -> None:
    """No option's help says its default twice."""
    assert "(default: None)" not in " ".join(demo("--help").stdout.split())


# ---------------------------------------------------------------------------- crash and recover


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stored", [1, 120, 250], ids=["early", "midway", "late"])
def test_killed_demo_recovers_on_rerun(tmp_path: Path, stored: int) -> None:
    """SIGKILL the demo once `stored` sagas are on file; a rerun finishes every order."""
    db = tmp_path / "orders.db"
    child = subprocess.Popen(
        [*DEMO, "--db", str(db), "--quiet", "--orders", "400", "--latency-ms", "20"],
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for a real condition: enough sagas stored, some still in flight
            statuses = saga_statuses(db, readonly=True)
            in_flight = sum(statuses.get(s, 0) for s in ACTIVE)
            if sum(statuses.values()) >= stored and in_flight:
                break
            assert child.poll() is None, "the demo finished before it could be killed"
            assert time.monotonic() < deadline, f"no kill point reached: {statuses}"
            time.sleep(0.005)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    killed = saga_statuses(db)
    unfinished = sum(killed.get(s, 0) for s in ACTIVE)
    assert unfinished > 0, killed

    rerun = demo("--db", str(db), "--orders", "0", "--quiet")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"recovered {unfinished} unfinished orders" in rerun.stdout
    assert "verdict: OK" in rerun.stdout

    after = saga_statuses(db)
    assert sum(after.values()) == sum(killed.values())  # no order lost, none invented
    assert set(after) <= {"completed", "compensated"}, after
