"""Shared fixtures. Storage fixtures are parametrized: each test runs on every adapter."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from saga_orchestrator import (
    InMemoryEventPublisher,
    InMemoryIdempotencyStore,
    InMemorySagaRepository,
    SQLiteIdempotencyStore,
    SQLiteSagaRepository,
)
from saga_orchestrator.protocols import IdempotencyStore, SagaRepository

REQUIRE_SERVICES = os.environ.get("SAGA_REQUIRE_SERVICES") == "1"


def service_unavailable(reason: str) -> None:
    """Skip with a visible reason, or fail when CI requires every service."""
    if REQUIRE_SERVICES:
        pytest.fail(f"required service unavailable (SAGA_REQUIRE_SERVICES=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which storage adapter the test runs on."""
    return str(request.param)


# Sync fixtures (the SQLite adapters open lazily), so that they serve asyncio tests
# (pytest-asyncio, as in the spec) and anyio tests on asyncio and trio alike.


@pytest.fixture
def saga_repo(backend: str, tmp_path: Path) -> SagaRepository:
    """The spec's `saga_repo`: a fresh repository of the parametrized kind."""
    if backend == "memory":
        return InMemorySagaRepository()
    return SQLiteSagaRepository(tmp_path / "sagas.db")


@pytest.fixture
def idempotency_store(backend: str, tmp_path: Path) -> IdempotencyStore:
    """The spec's `idempotency_store`, on the same kind of storage (and file) as saga_repo."""
    if backend == "memory":
        return InMemoryIdempotencyStore()
    return SQLiteIdempotencyStore(tmp_path / "sagas.db")


@pytest.fixture
def event_publisher() -> InMemoryEventPublisher:
    """The spec's `event_publisher`: keeps every event in `.events`."""
    return InMemoryEventPublisher()


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """anyio tests run on both event loops: the core promises asyncio and trio alike."""
    return str(request.param)
