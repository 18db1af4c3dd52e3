"""`saga-orchestrator worker`: runs submitted sagas until SIGTERM, then stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from saga_orchestrator import SagaStatus
from saga_orchestrator.cli import main
from tests import cli_app
from tests.conftest import PostgresSchema
from tests.sagas import TripData

ROOT = Path(__file__).resolve().parents[1]


def test_worker_without_app_is_bad_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --app there is no saga code to run: exit 2, saying what to pass."""
    db = tmp_path / "sagas.db"
    assert main(["--app", "tests.cli_app:orchestrator", "--db", str(db), "list"]) == 0
    capsys.readouterr()
    assert main(["--db", str(db), "worker"]) == 2
    assert "worker needs --app" in capsys.readouterr().err


def test_worker_on_sqlite_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SQLite has no leases: the worker refuses to start instead of double-running sagas."""
    db = tmp_path / "sagas.db"
    assert main(["--app", "tests.cli_app:orchestrator", "--db", str(db), "worker"]) == 2
    err = capsys.readouterr().err
    assert "needs a repository with leases" in err
    assert "SQLiteSagaRepository" in err


def _spawn(argv: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_worker_runs_submitted_sagas_and_stops_on_sigterm(
    postgres_schema: PostgresSchema, anyio_backend: str
) -> None:
    """A worker process runs what is submitted elsewhere; SIGTERM stops it with exit 0, every
    saga completed and no lease left behind."""
    process = _spawn(
        [
            sys.executable,
            "-m",
            "saga_orchestrator.cli",
            "--app",
            "tests.cli_app:postgres_orchestrator",
            "--db",
            f"{postgres_schema.url}#{postgres_schema.name}",
            "worker",
            "--concurrency",
            "4",
            "--poll-interval",
            "0.2",
        ]
    )
    try:
        async with postgres_schema.repository() as repository:
            orchestrator = cli_app.build(repository)
            ids = [await orchestrator.submit(cli_app.trip(TripData())) for _ in range(20)]
            with anyio.fail_after(30):
                results = [await orchestrator.wait(saga_id, poll_seconds=0.2) for saga_id in ids]
            assert {result.status for result in results} == {SagaStatus.COMPLETED}
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "running payment, trip with 4 at once" in err
    assert "worker stopped: 20 claimed, 20 finished" in err
    leased = postgres_schema.query(
        "SELECT count(*) FROM sagas WHERE lease_owner IS NOT NULL"
        " AND status IN ('pending', 'running', 'compensating')"
    )
    assert leased == [(0,)]


def test_worker_options_must_be_positive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A zero or negative interval would spin or never wait: exit 2 naming the option."""
    db = tmp_path / "sagas.db"
    argv = ["--app", "tests.cli_app:orchestrator", "--db", str(db), "worker"]
    for option in ("--poll-interval", "--park-after", "--grace"):
        assert main([*argv, option, "0"]) == 2
        err = capsys.readouterr().err
        assert f"argument {option}: expected a number of seconds > 0, got '0'" in err
    assert not db.exists()  # nothing was opened
