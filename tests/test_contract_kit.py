"""The public contract kit (``saga_orchestrator.testing.contract``) on the built-in adapters.

Each class subclasses a contract class as a user's test module would, with the fixtures the
kit asks for. Memory and SQLite run on asyncio and trio (conftest's ``anyio_backend``);
PostgreSQL on asyncio only, on a schema of its own per test (conftest's ``postgres_schema``,
which skips, or fails under ``SAGA_REQUIRE_SERVICES=1``, when the server is unreachable).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from saga_orchestrator import (
    InMemoryIdempotencyStore,
    InMemorySagaRepository,
    SQLiteIdempotencyStore,
    SQLiteSagaRepository,
)
from saga_orchestrator.protocols import (
    IdempotencyPurger,
    IdempotencyStore,
    SagaIdLister,
    SagaInbox,
    SagaRepository,
    SagaStatusCounter,
    StrandingRecorder,
)
from saga_orchestrator.testing.contract import (
    IdempotencyStoreContract,
    OutboxContract,
    SagaInboxContract,
    SagaRepositoryContract,
)
from tests.conftest import PostgresSchema

# ---------------------------------------------------------------------------- memory


class TestMemoryRepository(SagaRepositoryContract):
    @pytest.fixture
    def saga_repository(self) -> SagaRepository:
        return InMemorySagaRepository()


class TestMemoryInbox(SagaInboxContract):
    @pytest.fixture
    def saga_repository(self) -> SagaRepository:
        return InMemorySagaRepository()


class TestMemoryIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    def idempotency_store(self) -> IdempotencyStore:
        return InMemoryIdempotencyStore()


# ---------------------------------------------------------------------------- SQLite


class TestSQLiteRepository(SagaRepositoryContract):
    @pytest.fixture
    async def saga_repository(self, tmp_path: Path) -> AsyncIterator[SagaRepository]:
        async with SQLiteSagaRepository(tmp_path / "sagas.db") as repository:
            yield repository

    @pytest.fixture
    async def second_saga_repository(self, tmp_path: Path) -> AsyncIterator[SagaRepository]:
        async with SQLiteSagaRepository(tmp_path / "sagas.db") as repository:
            yield repository


class TestSQLiteInbox(SagaInboxContract):
    @pytest.fixture
    async def saga_repository(self, tmp_path: Path) -> AsyncIterator[SagaRepository]:
        async with SQLiteSagaRepository(tmp_path / "sagas.db") as repository:
            yield repository

    @pytest.fixture
    async def second_saga_repository(self, tmp_path: Path) -> AsyncIterator[SagaRepository]:
        async with SQLiteSagaRepository(tmp_path / "sagas.db") as repository:
            yield repository


class TestSQLiteIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    async def idempotency_store(self, tmp_path: Path) -> AsyncIterator[IdempotencyStore]:
        async with SQLiteIdempotencyStore(tmp_path / "sagas.db") as store:
            yield store


class TestSQLiteOutbox(OutboxContract):
    @pytest.fixture
    async def outbox_repository(self, tmp_path: Path) -> AsyncIterator[SQLiteSagaRepository]:
        async with SQLiteSagaRepository(tmp_path / "outbox.db", outbox=True) as repository:
            yield repository


# ---------------------------------------------------------------------------- PostgreSQL


class _OnAsyncio:
    @pytest.fixture
    def anyio_backend(self) -> str:
        """asyncio only (conftest's ASYNCIO_ONLY), as test_outbox's PostgreSQL tests."""
        return "asyncio"


class TestPostgresRepository(_OnAsyncio, SagaRepositoryContract):
    @pytest.fixture
    async def saga_repository(
        self, postgres_schema: PostgresSchema
    ) -> AsyncIterator[SagaRepository]:
        async with postgres_schema.repository() as repository:
            yield repository

    @pytest.fixture
    async def second_saga_repository(
        self, postgres_schema: PostgresSchema
    ) -> AsyncIterator[SagaRepository]:
        async with postgres_schema.repository() as repository:
            yield repository


class TestPostgresInbox(_OnAsyncio, SagaInboxContract):
    @pytest.fixture
    async def saga_repository(
        self, postgres_schema: PostgresSchema
    ) -> AsyncIterator[SagaRepository]:
        async with postgres_schema.repository() as repository:
            yield repository

    @pytest.fixture
    async def second_saga_repository(
        self, postgres_schema: PostgresSchema
    ) -> AsyncIterator[SagaRepository]:
        async with postgres_schema.repository() as repository:
            yield repository


class TestPostgresIdempotencyStore(_OnAsyncio, IdempotencyStoreContract):
    @pytest.fixture
    async def idempotency_store(
        self, postgres_schema: PostgresSchema
    ) -> AsyncIterator[IdempotencyStore]:
        async with postgres_schema.idempotency_store() as store:
            yield store


class TestPostgresOutbox(_OnAsyncio, OutboxContract):
    @pytest.fixture
    async def outbox_repository(self, postgres_schema: PostgresSchema) -> AsyncIterator[object]:
        async with postgres_schema.repository() as repository:
            yield repository


# ---------------------------------------------------------------------------- capabilities


def _postgres_classes() -> tuple[type, type]:
    postgres = pytest.importorskip("saga_orchestrator.adapters.postgres")
    return postgres.PostgresSagaRepository, postgres.PostgresIdempotencyStore


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_the_built_in_adapters_have_every_optional_capability(kind: str) -> None:
    """So that none of the kit's optional tests skips for them (the in-memory repository's
    store alone cannot be shared with a second instance)."""
    repository, store = {
        "memory": lambda: (InMemorySagaRepository, InMemoryIdempotencyStore),
        "sqlite": lambda: (SQLiteSagaRepository, SQLiteIdempotencyStore),
        "postgres": _postgres_classes,
    }[kind]()
    for capability in (SagaIdLister, SagaStatusCounter, StrandingRecorder, SagaInbox):
        assert issubclass(repository, capability), capability
    assert issubclass(store, IdempotencyPurger)


# ---------------------------------------------------------------------------- packaging

KIT = [
    "saga_orchestrator/testing/__init__.py",
    "saga_orchestrator/testing/_contract_sagas.py",
    "saga_orchestrator/testing/contract/__init__.py",
    "saga_orchestrator/testing/contract/_idempotency.py",
    "saga_orchestrator/testing/contract/_orchestration.py",
    "saga_orchestrator/testing/contract/_outbox.py",
    "saga_orchestrator/testing/contract/_repository.py",
    "saga_orchestrator/testing/contract/_support.py",
    "saga_orchestrator/testing/contract/_waits.py",
]

WITHOUT_PYTEST = """
import sys
sys.modules["pytest"] = None  # as if pytest were not installed: importing it fails
import saga_orchestrator.testing
print(sorted(saga_orchestrator.testing.__all__))
try:
    import saga_orchestrator.testing.contract
except ImportError as exc:
    print(exc)
"""


def test_the_testing_module_needs_no_pytest_and_the_kit_says_it_does() -> None:
    """``saga_orchestrator.testing`` imports without pytest (a core dependency it is not);
    the contract module, a pytest plugin, names what to install."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PYTEST], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['CRASH_EXIT_CODE', 'FaultInjector', 'ManualClock', 'crash']",
        "saga_orchestrator.testing.contract is a pytest plugin: pip install pytest",
    ]


@pytest.mark.slow
def test_the_wheel_contains_the_kit(wheel: Path) -> None:
    """The wheel ships the testing package, the contract kit included."""
    names = zipfile.ZipFile(wheel).namelist()
    assert [name for name in KIT if name not in names] == []
    assert "saga_orchestrator/testing.py" not in names
