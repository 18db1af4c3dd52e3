"""Shared fixtures. Storage fixtures are parametrized: each test runs on every adapter."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import uuid4

import anyio
import pytest
import pytest_asyncio

from saga_orchestrator import (
    InMemoryEventPublisher,
    InMemoryIdempotencyStore,
    InMemorySagaRepository,
    SQLiteIdempotencyStore,
    SQLiteSagaRepository,
)
from saga_orchestrator.protocols import IdempotencyStore, SagaRepository

if TYPE_CHECKING:
    from saga_orchestrator.adapters.postgres import (
        PostgresIdempotencyStore,
        PostgresSagaRepository,
    )

REQUIRE_SERVICES = os.environ.get("SAGA_REQUIRE_SERVICES") == "1"

POSTGRES_URL = os.environ.get("SAGA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
"""The test database; every test that uses it gets a schema of its own."""

ASYNCIO_ONLY = "psycopg's async connections run on asyncio only: PostgreSQL is not tested on trio"


_NOT_RUN = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """PostgreSQL on trio is no combination the adapters offer: leave those out, and say so."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if params.get("backend") == "postgres" and params.get("anyio_backend") == "trio":
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
    config.stash[_NOT_RUN] = len(dropped)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Name the deselected PostgreSQL-on-trio combinations and why."""
    if config.stash.get(_NOT_RUN, 0):
        terminalreporter.write_line(
            f"{config.stash[_NOT_RUN]} deselected: postgres x trio ({ASYNCIO_ONLY})"
        )


def service_unavailable(reason: str) -> None:
    """Skip with a visible reason, or fail when CI requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable (SAGA_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which storage adapter the test runs on."""
    if (
        request.param == "postgres"
        and "anyio_backend" in request.fixturenames
        and request.getfixturevalue("anyio_backend") == "trio"
    ):
        pytest.skip(ASYNCIO_ONLY)
    return str(request.param)


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test database's URL, once it answered; otherwise `service_unavailable`."""
    try:
        import psycopg
    except ImportError:
        service_unavailable("psycopg is not installed (the postgres extra)")
    try:
        with psycopg.connect(POSTGRES_URL, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        service_unavailable(f"PostgreSQL unreachable at {POSTGRES_URL}: {exc}")
    return POSTGRES_URL


@dataclass(frozen=True)
class PostgresSchema:
    """A schema of the test database that one test owns, and adapters on it."""

    url: str
    name: str

    def repository(self, **options: Any) -> PostgresSagaRepository:
        """A new (unopened) repository on this schema."""
        from saga_orchestrator.adapters.postgres import PostgresSagaRepository

        return PostgresSagaRepository(self.url, schema=self.name, **options)

    def idempotency_store(self, **options: Any) -> PostgresIdempotencyStore:
        """A new (unopened) idempotency store on this schema."""
        from saga_orchestrator.adapters.postgres import PostgresIdempotencyStore

        return PostgresIdempotencyStore(self.url, schema=self.name, **options)

    def query(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement on the schema, outside the adapters; its rows (if any)."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url, autocommit=True) as connection:
            connection.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.name)))
            cursor = connection.execute(query, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []


@pytest.fixture
def postgres_schema(postgres_url: str) -> Iterator[PostgresSchema]:
    """A fresh schema name (the adapters create it), dropped with its tables afterwards."""
    import psycopg
    from psycopg import sql

    schema = PostgresSchema(postgres_url, f"saga_test_{uuid4().hex}")
    yield schema
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema.name))
        )


@dataclass(frozen=True)
class PostgresStores:
    """The repository and idempotency store of one test, on its own schema."""

    repository: PostgresSagaRepository
    idempotency_store: PostgresIdempotencyStore


# The PostgreSQL adapters hold a pool bound to the event loop, so they are opened and closed
# by an async fixture running on the test's own loop: anyio's for anyio tests, pytest-asyncio's
# for the spec's tests. `saga_repo` picks the one that matches the test.


@pytest.fixture
async def _postgres_stores_anyio(postgres_schema: PostgresSchema) -> AsyncIterator[PostgresStores]:
    async with (
        postgres_schema.repository() as repository,
        postgres_schema.idempotency_store() as store,
    ):
        yield PostgresStores(repository, store)


@pytest_asyncio.fixture
async def _postgres_stores_asyncio(
    postgres_schema: PostgresSchema,
) -> AsyncIterator[PostgresStores]:
    async with (
        postgres_schema.repository() as repository,
        postgres_schema.idempotency_store() as store,
    ):
        yield PostgresStores(repository, store)


def _postgres_stores(request: pytest.FixtureRequest) -> PostgresStores:
    if "anyio_backend" in request.fixturenames:
        stores: PostgresStores = request.getfixturevalue("_postgres_stores_anyio")
    else:
        stores = request.getfixturevalue("_postgres_stores_asyncio")
    return stores


# Sync fixtures (the SQLite adapters open lazily), so that they serve asyncio tests
# (pytest-asyncio, as in the spec) and anyio tests on asyncio and trio alike.


_SQLiteStore = TypeVar("_SQLiteStore", SQLiteSagaRepository, SQLiteIdempotencyStore)


def _closed_at_teardown(store: _SQLiteStore, request: pytest.FixtureRequest) -> _SQLiteStore:
    """``store``, whose connection is closed when the test ends; in a thread of its own, as
    the test's event loop (or trio's guest run) may still be around in this one."""

    def close() -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(anyio.run, store.close).result()

    request.addfinalizer(close)
    return store


@pytest.fixture
def saga_repo(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> SagaRepository:
    """The spec's `saga_repo`: a fresh repository of the parametrized kind."""
    if backend == "memory":
        return InMemorySagaRepository()
    if backend == "postgres":
        return _postgres_stores(request).repository
    return _closed_at_teardown(SQLiteSagaRepository(tmp_path / "sagas.db"), request)


@pytest.fixture
def idempotency_store(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> IdempotencyStore:
    """The spec's `idempotency_store`, on the same kind of storage (and file) as saga_repo."""
    if backend == "memory":
        return InMemoryIdempotencyStore()
    if backend == "postgres":
        return _postgres_stores(request).idempotency_store
    return _closed_at_teardown(SQLiteIdempotencyStore(tmp_path / "sagas.db"), request)


@pytest.fixture
def event_publisher() -> InMemoryEventPublisher:
    """The spec's `event_publisher`: keeps every event in `.events`."""
    return InMemoryEventPublisher()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """anyio tests run on both event loops: the core promises asyncio and trio alike."""
    return str(request.param)


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library's wheel: the one scripts/test built (SAGA_TEST_WHEEL), else built once."""
    given = os.environ.get("SAGA_TEST_WHEEL")
    if given:
        return Path(given)
    out = tmp_path_factory.mktemp("dist")
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(root)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*.whl"))
