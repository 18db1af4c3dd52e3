"""The test suite on every Python version the package claims.

The versions are those of pyproject.toml's classifiers (``Programming Language :: Python ::
3.X``): one session each, ``tests-3.11``, ``tests-3.12``, ``tests-3.13``. `scripts/test` runs
the whole suite, with every quality gate, on `.venv`'s Python, then the sessions of the other
claimed versions whose interpreter it finds. By hand:

    .venv/bin/nox -s tests-3.12 tests-3.13
    .venv/bin/nox -s tests-3.13 -- -x    # arguments after -- go to pytest

Each session has a virtualenv of its own under `.nox/`, kept between runs: the package (with
its `test` extra) and the worked example (with its `api` extra) are installed again only when
`pyproject.toml` or `examples/pyproject.toml` changed. A session runs the core, SQLite,
contract-kit, upgrade, CLI and example tests (``CORE_TESTS``), without PostgreSQL and without
those marked slow (spawned processes, wheels, fresh venvs, docs builds): the main run covers
everything, on `.venv`'s Python. An interpreter that is not installed skips its session; nox
never downloads one.
"""

from __future__ import annotations

import hashlib
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent


def claimed_pythons() -> list[str]:
    """The ``3.X`` versions of pyproject.toml's classifiers."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        classifiers: list[str] = tomllib.load(file)["project"]["classifiers"]
    prefix = "Programming Language :: Python :: 3."
    return [c.rpartition(" :: ")[2] for c in classifiers if c.startswith(prefix)]


nox.options.default_venv_backend = "venv"
nox.options.reuse_venv = "yes"
nox.options.download_python = "never"
nox.options.error_on_missing_interpreters = False

CORE_TESTS = [
    "tests/test_orchestrator.py",
    "tests/test_machine.py",
    "tests/test_serialization.py",
    "tests/test_sqlite.py",
    "tests/test_sqlite_connections.py",
    "tests/test_contract_kit.py",
    "tests/test_upgrade_from_0_1_0.py",
    "tests/test_versions.py",
    "tests/test_cli.py",
    "tests/spec",
    "tests/example",
]
"""What every claimed version runs: the engine, storage on SQLite, the CLI, the example."""

PYTEST = ["-p", "no:cacheprovider", "-q", "-k", "not postgres", "-m", "not slow", *CORE_TESTS]


def _requirements_hash() -> str:
    digest = hashlib.sha256()
    for name in ("pyproject.toml", "examples/pyproject.toml"):
        digest.update((ROOT / name).read_bytes())
    return digest.hexdigest()


@nox.session(python=claimed_pythons())
def tests(session: nox.Session) -> None:
    """Core, SQLite, CLI and example tests: no PostgreSQL, nothing marked slow."""
    stamp = Path(session.virtualenv.location) / ".saga-install-stamp"
    wanted = _requirements_hash()
    if stamp.is_file() and stamp.read_text() == wanted:
        session.log("pyproject files unchanged since this virtualenv's install: not reinstalling")
    else:
        session.install("-e", f"{ROOT}[test]", "-e", f"{ROOT / 'examples'}[api]")
        stamp.write_text(wanted)
    session.run("python", "-m", "pytest", *PYTEST, *session.posargs)
