"""The built wheel installs into a fresh venv and runs a saga there, example included."""

from __future__ import annotations

import os
import subprocess
import textwrap
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

USER_CODE = textwrap.dedent(
    """
    from dataclasses import dataclass
    from decimal import Decimal

    import anyio

    from saga_orchestrator import BaseSaga, SagaOrchestrator, SagaStatus, SagaStep
    from saga_orchestrator import SQLiteSagaRepository


    @dataclass
    class Data:
        amount: Decimal
        charged: bool = False


    class Charge(BaseSaga[Data]):
        saga_type = "charge"

        def define_steps(self):
            async def charge(data):
                return {"charged": True}

            async def boom(data):
                raise ValueError("declined")

            async def refund(data):
                print("refunded")

            return [SagaStep("charge", charge, refund), SagaStep("boom", boom)]


    async def main(path):
        async with SQLiteSagaRepository(path) as repo:
            result = await SagaOrchestrator(repo).execute(Charge(Data(Decimal("9.99"))))
        assert result.status is SagaStatus.COMPENSATED, result
        print("status", result.status.value)
    """
)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_wheel_installs_into_a_fresh_venv_and_runs_a_saga(tmp_path: Path, wheel: Path) -> None:
    """pip install the wheel alone; a user's saga and the bundled example both run."""
    names = zipfile.ZipFile(wheel).namelist()
    assert "saga_orchestrator/py.typed" in names
    assert "saga_orchestrator/adapters/migrations/sqlite/0001_initial.sql" in names
    assert "saga_orchestrator/adapters/migrations/postgres/0001_initial.sql" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", wheel],
        check=True,
        capture_output=True,
    )
    # A module of the user's, as in a service: its data class is stored by module name.
    (tmp_path / "user_saga.py").write_text(USER_CODE)
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    user = subprocess.run(
        [
            str(python),
            "-c",
            "import anyio, sys, user_saga; anyio.run(user_saga.main, sys.argv[1])",
            str(tmp_path / "user.db"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env,
        check=False,
    )
    assert user.returncode == 0, user.stderr
    assert user.stdout.split() == ["refunded", "status", "compensated"]

    # Without the postgres extra the core works (above); its adapter module says what to install.
    no_extra = subprocess.run(
        [str(python), "-c", "import saga_orchestrator.adapters.postgres"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env,
        check=False,
    )
    assert no_extra.returncode == 1
    assert "pip install 'saga-orchestrator[postgres]'" in no_extra.stderr

    cli = subprocess.run(
        [str(env_dir / "bin" / "saga-orchestrator"), "--db", str(tmp_path / "user.db"), "list"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env,
        check=False,
    )
    assert cli.returncode == 0, cli.stderr
    assert "compensated" in cli.stdout  # the console script reads the user's store

    example = subprocess.run(
        [str(python), "-m", "order_fulfillment", "--orders", "40", "--db", str(tmp_path / "o.db")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**clean_env, "PYTHONPATH": str(ROOT / "examples")},
        check=False,
    )
    assert example.returncode == 0, example.stderr
    assert "verdict: OK" in example.stdout
