"""The library's contract tests, run against the dict adapters of howto_custom_adapters.py.
Run it: python -m pytest -rs howto_custom_adapters_test.py"""

import pytest
from howto_custom_adapters import DictIdempotencyStore, DictSagaRepository

from saga_orchestrator.testing.contract import IdempotencyStoreContract, SagaRepositoryContract


@pytest.fixture(params=["asyncio", "trio"])  # trio: pip install trio
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """The event loops to run every contract test on; an asyncio-only driver: "asyncio"."""
    return str(request.param)


class TestDictSagaRepository(SagaRepositoryContract):
    @pytest.fixture
    def saga_repository(self) -> DictSagaRepository:
        return DictSagaRepository()  # a fresh, empty store for each test


class TestDictIdempotencyStore(IdempotencyStoreContract):
    @pytest.fixture
    def idempotency_store(self) -> DictIdempotencyStore:
        return DictIdempotencyStore()
