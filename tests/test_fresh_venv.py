"""A user's first hour, from the built wheel alone: the README's first saga, the whole
tutorial, and a saga recovered by a second process after the first was killed.

One fresh venv serves the module: the wheel (``wheel`` fixture, see conftest) is its only
install of the library, every command runs with that venv's ``python`` or its
``saga-orchestrator`` console script, in a temporary directory, without PYTHONPATH, so only
the wheel (and the user's own files) can be imported. Each user-facing command must print
what the docs show, with nothing on stderr.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
import venv
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from tests.test_docs_tutorial import (
    _TUTORIAL,
    WAIT_SECONDS,
    argv,
    assert_printed_what_the_page_shows,
    assert_recovered_without_redoing_the_flight,
    normalized,
    reader_env,
    run,
    walk_tutorial,
)
from tests.test_readme import FIRST_SAGA_OUTPUT, first_saga_files

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding the wheel and its dependencies, nothing else."""
    env_dir = tmp_path_factory.mktemp("fresh") / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
        capture_output=True,
        text=True,
        check=False,
    )
    assert install.returncode == 0, install.stderr
    # The library is imported from the venv, never from this checkout.
    where = subprocess.run(
        [str(python), "-c", "import saga_orchestrator; print(saga_orchestrator.__file__)"],
        cwd=tmp_path_factory.mktemp("where"),
        env=reader_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout
    assert (env_dir / "bin" / "saga-orchestrator").exists()
    return python


def run_ok(line: str, cwd: Path, python: Path) -> list[str]:
    """Run ``line`` as the user types it; it must succeed silently on stderr. Its stdout lines."""
    outcome = run(line, cwd, python=python)
    assert outcome.returncode == 0, f"`{line}` failed:\n{outcome.stderr}"
    assert outcome.stderr == "", f"`{line}` wrote to stderr:\n{outcome.stderr}"
    return list(outcome.stdout.splitlines())


# ---------------------------------------------------------------------- 1. the README


def test_readme_first_saga_runs_from_the_wheel(python: Path, tmp_path: Path) -> None:
    """The README's 'A first saga' files, saved as it names them and run as it says
    (``python run.py``), print what it says, with nothing on stderr."""
    files = first_saga_files()
    assert "run.py" in files, f"the README's files: {sorted(files)}"
    for name, code in files.items():
        (tmp_path / name).write_text(code, encoding="utf-8")
    assert run_ok("python run.py", tmp_path, python) == FIRST_SAGA_OUTPUT


# ---------------------------------------------------------------------- 2. the tutorial


def test_tutorial_runs_from_the_wheel(python: Path, tmp_path: Path) -> None:
    """Every step of docs/tutorial.md in page order, with the wheel's venv: its files saved
    under the names it gives, each command printing what the page shows, the waiting command
    killed with SIGKILL, then the CLI and the recovery script as the page runs them.

    Stand-ins: step 1's ``pip install`` is the fixture's install of the wheel, and the
    page's ``pkill -9 -f "book_trip.py Porto"`` is a SIGKILL to that process's pid (a pattern
    could hit another run of the same test).
    """
    folder = tmp_path / "trips"
    folder.mkdir()
    walkthrough = walk_tutorial(folder, python)
    for command in _TUTORIAL.commands:
        assert_printed_what_the_page_shows(command, walkthrough)
    assert_recovered_without_redoing_the_flight(walkthrough)


# ---------------------------------------------------------------------- 3. recovery elsewhere

PAYOUTS = '''\
"""Payouts: hold the amount on the ledger, send it through the bank, settle the hold."""

from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

import anyio

from saga_orchestrator import BaseSaga, SagaStep, current_step


@dataclass
class PayoutData:
    payout_id: UUID
    amount: Decimal
    hold_ref: str | None = None
    transfer_ref: str | None = None


class Bank:
    def __init__(self, *, hang: bool = False) -> None:
        self.hang = hang

    async def send(self, amount: Decimal, *, key: str) -> str:
        if self.hang:
            print(f"bank: sending {amount} EUR, key {key}...")
            await anyio.sleep_forever()
        print(f"bank: sent {amount} EUR, key {key}")
        return f"TX-{key}"


class PayoutSaga(BaseSaga[PayoutData]):
    saga_type = "payout"

    def __init__(self, data: PayoutData, bank: Bank) -> None:
        self.bank = bank
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[PayoutData]]:
        return [
            SagaStep("hold", self.hold, compensation=self.release, timeout_seconds=10),
            SagaStep("transfer", self.transfer),
            SagaStep("settle", self.settle, timeout_seconds=10),
        ]

    async def hold(self, data: PayoutData) -> dict[str, object]:
        ref = f"HOLD-{data.payout_id.hex[:8]}"
        print(f"ledger: held {data.amount} EUR, {ref}")
        return {"hold_ref": ref}

    async def release(self, data: PayoutData) -> None:
        print(f"ledger: released {data.hold_ref}")

    async def transfer(self, data: PayoutData) -> dict[str, object]:
        ref = await self.bank.send(data.amount, key=current_step().idempotency_key)
        return {"transfer_ref": ref}

    async def settle(self, data: PayoutData) -> None:
        print(f"ledger: settled {data.hold_ref}")
'''

START_PAYOUT = '''\
"""Start one payout whose bank never answers: python start_payout.py AMOUNT"""

import sys
from decimal import Decimal
from uuid import uuid4

import anyio

from saga_orchestrator import SagaOrchestrator, SQLiteSagaRepository
from payouts import Bank, PayoutData, PayoutSaga


async def main(amount: Decimal) -> None:
    async with SQLiteSagaRepository("payouts.db") as repository:
        saga = PayoutSaga(PayoutData(uuid4(), amount), Bank(hang=True))
        result = await SagaOrchestrator(repository).execute(saga)
    print(f"payout: {result.status.value}")


if __name__ == "__main__":
    anyio.run(main, Decimal(sys.argv[1]))
'''

RECOVER_PAYOUTS = '''\
"""Finish the payouts a crash left half-done: python recover_payouts.py"""

import anyio

from saga_orchestrator import SagaOrchestrator, SQLiteSagaRepository
from payouts import Bank, PayoutSaga


async def main() -> None:
    async with SQLiteSagaRepository("payouts.db") as repository:
        orchestrator = SagaOrchestrator(repository)
        bank = Bank()
        orchestrator.register("payout", lambda data: PayoutSaga(data, bank))
        report = await orchestrator.recover()
    for result in report:
        kind = type(result.data)
        print(f"recovered {result.saga_id}: {result.status.value}")
        print(f"  data: {kind.__module__}.{kind.__qualname__}, {result.data.transfer_ref}")
    print(f"skipped: {report.skipped}")


if __name__ == "__main__":
    anyio.run(main)
'''


def read_until(process: subprocess.Popen[bytes], marker: bytes) -> bytes:
    """What ``process`` wrote to stdout, up to and including a line holding ``marker``;
    blocks on the pipe (no polling), fails at the deadline or when the pipe closes."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + WAIT_SECONDS
    seen = b""
    while marker not in seen or not seen.endswith(b"\n"):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            pytest.fail(f"no {marker!r} from the process within {WAIT_SECONDS:g}s: {seen!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            pytest.fail(f"the process closed stdout before {marker!r}: {seen!r}")
        seen += chunk
    return seen


def cli_json(line: str, cwd: Path, python: Path) -> Any:
    """The JSON document a CLI command printed."""
    return json.loads("\n".join(run_ok(line, cwd, python)))


def test_saga_killed_in_one_process_is_recovered_by_another(python: Path, tmp_path: Path) -> None:
    """Process A stores a payout and is SIGKILLed while its bank call hangs; process B, a
    different script importing the user's module, recovers it to completed, without redoing
    the hold; the installed CLI then shows it completed, the transfer with two attempts."""
    (tmp_path / "payouts.py").write_text(PAYOUTS, encoding="utf-8")
    (tmp_path / "start_payout.py").write_text(START_PAYOUT, encoding="utf-8")
    (tmp_path / "recover_payouts.py").write_text(RECOVER_PAYOUTS, encoding="utf-8")

    process_a = subprocess.Popen(
        argv("python start_payout.py 120.00", python),
        cwd=tmp_path,
        env=reader_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        # The action prints just before it blocks: its attempt is already stored as running.
        before_kill = read_until(process_a, b"bank: sending").decode()
        process_a.send_signal(signal.SIGKILL)
        rest, stderr_a = process_a.communicate(timeout=WAIT_SECONDS)
    finally:
        if process_a.poll() is None:
            process_a.kill()
            process_a.wait()
    assert process_a.returncode == -signal.SIGKILL
    assert stderr_a == b""
    printed_a = (before_kill + rest.decode()).splitlines()
    assert len(printed_a) == 2, printed_a
    hold_ref = printed_a[0].removeprefix("ledger: held 120.00 EUR, ")
    assert printed_a[0] == f"ledger: held 120.00 EUR, {hold_ref}"
    assert hold_ref.startswith("HOLD-")
    key = printed_a[1].removeprefix("bank: sending 120.00 EUR, key ").removesuffix("...")
    saga_id, _, step = key.partition(":")
    assert printed_a[1] == f"bank: sending 120.00 EUR, key {saga_id}:transfer..."
    assert step == "transfer"

    (stored,) = cli_json("saga-orchestrator list --db payouts.db --json", tmp_path, python)
    assert (stored["saga_id"], stored["status"], stored["current_step"]) == (
        saga_id,
        "running",
        "transfer",
    )

    assert run_ok("python recover_payouts.py", tmp_path, python) == [
        f"bank: sent 120.00 EUR, key {saga_id}:transfer",  # the same key as A's attempt
        f"ledger: settled {hold_ref}",  # A's hold, read back; the hold did not run again
        f"recovered {saga_id}: completed",
        f"  data: payouts.PayoutData, TX-{saga_id}:transfer",
        "skipped: []",
    ]

    header, *rows = run_ok("saga-orchestrator list --db payouts.db", tmp_path, python)
    (row,) = rows
    listed = dict(zip(header.split(), row.split(), strict=False))
    assert (listed["SAGA_ID"], listed["TYPE"], listed["STATUS"], listed["STEP"]) == (
        saga_id,
        "payout",
        "completed",
        "-",
    )
    shown = run_ok(f"saga-orchestrator show {saga_id} --db payouts.db", tmp_path, python)
    assert shown[0].split() == ["saga", saga_id]
    shown = normalized(shown)
    assert "status completed" in shown
    steps = shown[shown.index("steps") + 1 : shown.index("data")]
    assert steps == [
        "1. hold completed 1 attempt, took <duration>",
        "2. transfer completed 2 attempts, took <duration>",
        "error: interrupted: attempt 1 did not finish",
        "3. settle completed 1 attempt, took <duration>",
        "",
    ]
    document = cli_json(
        f"saga-orchestrator show {saga_id} --db payouts.db --json", tmp_path, python
    )
    assert document["data"] == {
        "payout_id": document["data"]["payout_id"],
        "amount": "120.00",
        "hold_ref": hold_ref,
        "transfer_ref": f"TX-{saga_id}:transfer",
    }
    assert hold_ref == f"HOLD-{UUID(document['data']['payout_id']).hex[:8]}"
