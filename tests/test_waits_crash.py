"""Crash tests of wait steps on real processes (SIGKILL), on a SQLite file.

1. A process parks a saga at its wait for ``payment.captured`` and is SIGKILLed while it
   waits; the event is then delivered by a new process: the saga continues exactly once.
2. A process delivers the event and is SIGKILLed after the event was stored but before the
   saga consumed it (inside the step's acceptor); a new process's ``recover()`` consumes it,
   once; a redelivery is a duplicate.

The child (``tests.waits_child``) reports each point on its stdout; the test waits for that
line (with a deadline), then kills. Every action and compensation writes an fsynced ledger
line with its pid.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals"),
]

ROOT = Path(__file__).resolve().parent.parent


class Child:
    def __init__(self, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.waits_child", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def line(self, within: float = 20.0) -> str:
        """The next line the child prints (fails after ``within`` seconds)."""
        assert self.process.stdout is not None
        readable, _, _ = select.select([self.process.stdout], [], [], within)
        if not readable:
            self.process.kill()
            self.process.communicate()
            pytest.fail(f"the child printed nothing within {within}s")
        text = self.process.stdout.readline().decode().strip()
        if not text:
            _, err = self.process.communicate()
            pytest.fail(f"the child ended without a line:\n{err.decode()}")
        return text

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.communicate(timeout=10)  # reaps it and closes the pipes
        assert self.process.returncode == -signal.SIGKILL

    def result(self) -> dict[str, object]:
        line = self.line()
        _, err = self.process.communicate(timeout=20)
        assert self.process.returncode == 0, err.decode()
        parsed: dict[str, object] = json.loads(line)
        return parsed


def _ledger(path: Path) -> list[str]:
    """The ledger's calls, without pids."""
    if not path.exists():
        return []
    return [" ".join(line.split()[:-1]) for line in path.read_text().splitlines()]


def _stored(db: Path) -> tuple[str, str, int]:
    """The saga's status, its wait step's status, and how many events its inbox keeps."""
    with sqlite3.connect(db) as connection:
        state = connection.execute("SELECT state FROM sagas").fetchone()[0]
        kept = connection.execute("SELECT count(*) FROM saga_inbox").fetchone()[0]
    document = json.loads(state)
    return document["status"], document["steps"][1].get("status", "pending"), kept


def test_killed_while_waiting_then_delivered_to_a_new_process(tmp_path: Path) -> None:
    db, ledger = tmp_path / "waits.db", tmp_path / "ledger.txt"
    common = ("--db", str(db), "--ledger", str(ledger), "--order", "7")
    parker = Child("park", *common)
    assert parker.line().endswith(" running")
    parker.kill()
    assert _stored(db) == ("running", "waiting", 0)
    assert _ledger(ledger) == ["authorize 7"]

    delivered = Child("deliver", *common, "--event-id", "evt-7").result()
    assert delivered == {"status": "consumed", "saga": "completed"}
    assert _ledger(ledger) == ["authorize 7", "ship 7 cap-7"]
    assert _stored(db) == ("completed", "completed", 1)

    again = Child("deliver", *common, "--event-id", "evt-7").result()
    assert again == {"status": "duplicate", "saga": "completed"}
    assert Child("recover", *common).result() == {"resumed": [], "waiting": 0, "woken": []}
    assert _ledger(ledger) == ["authorize 7", "ship 7 cap-7"]


def test_killed_after_the_event_was_stored_before_it_was_consumed(tmp_path: Path) -> None:
    db, ledger = tmp_path / "waits.db", tmp_path / "ledger.txt"
    common = ("--db", str(db), "--ledger", str(ledger), "--order", "8")
    parker = Child("park", *common)
    assert parker.line().endswith(" running")
    parker.kill()

    deliverer = Child("deliver", *common, "--event-id", "evt-8", "--hang-in-accept")
    assert deliverer.line() == "accepting"
    deliverer.kill()
    assert _stored(db) == ("running", "waiting", 1)  # stored, not consumed
    assert _ledger(ledger) == ["authorize 8"]

    recovered = Child("recover", *common).result()
    assert recovered == {"resumed": ["completed"], "waiting": 0, "woken": []}
    assert _ledger(ledger) == ["authorize 8", "ship 8 cap-8"]
    assert _stored(db) == ("completed", "completed", 1)

    again = Child("deliver", *common, "--event-id", "evt-8").result()
    assert again == {"status": "duplicate", "saga": "completed"}
    assert _ledger(ledger) == ["authorize 8", "ship 8 cap-8"]
