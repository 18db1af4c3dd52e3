"""IdempotencyStoreContract: the IdempotencyStore protocol, and purge_before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast
from uuid import uuid4

import anyio
import pytest

from ...adapters.memory import InMemorySagaRepository
from ...protocols import IdempotencyPurger, IdempotencyStore
from ...state import SagaStatus
from .._contract_sagas import ContractData, ContractTripSaga
from ._support import _orchestrator, _require, _run_by_anyio


class IdempotencyStoreContract:
    """What every [`IdempotencyStore`][saga_orchestrator.protocols.IdempotencyStore] does.

    Define a fixture ``idempotency_store`` returning (or yielding) a fresh, empty store.
    """

    pytestmark = pytest.mark.anyio
    """Every test is marked ``anyio``: anyio's pytest plugin runs it, on ``anyio_backend``."""
    _run_by_anyio = pytest.fixture(autouse=True)(_run_by_anyio)

    async def test_the_first_value_stands(self, idempotency_store: IdempotencyStore) -> None:
        """``put_if_absent`` keeps the first value and returns it to every later writer."""
        assert await idempotency_store.get("k") is None
        assert await idempotency_store.put_if_absent("k", "first") == "first"
        assert await idempotency_store.put_if_absent("k", "second") == "first"
        assert await idempotency_store.get("k") == "first"

    async def test_keys_are_independent_and_values_exact(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        """Each key keeps its own value, exactly: JSON, non-BMP characters, 96,000
        characters, an empty string; keys differing only in case or a suffix differ."""
        values = {
            f"{uuid4()}:charge": '{"payment_id":"p-1","amount":{"$decimal":"10.00"}}',
            "Key": "naïve 東京 🧳",
            "key": "",
            "key:compensate": "0123456789abcdef" * 6000,
        }
        for key, value in values.items():
            assert await idempotency_store.put_if_absent(key, value) == value
        for key, value in values.items():
            assert await idempotency_store.get(key) == value
        assert await idempotency_store.get("key:") is None

    async def test_concurrent_writers_agree(self, idempotency_store: IdempotencyStore) -> None:
        """Twenty writers racing on one key all get the same, single stored value."""
        seen: list[str] = []

        async def put(value: str) -> None:
            seen.append(await idempotency_store.put_if_absent("race", value))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(put, f"v{n}")
        assert len(seen) == 20
        assert len(set(seen)) == 1
        assert await idempotency_store.get("race") == seen[0]

    async def test_purge_forgets_only_older_entries(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        """Optional (``IdempotencyPurger``): ``purge_before`` removes the entries stored
        before the cutoff, returns how many, and keeps newer ones."""
        _require(idempotency_store, IdempotencyPurger, "purge_before")
        purger = cast(IdempotencyPurger, idempotency_store)
        await idempotency_store.put_if_absent("old", "1")
        await idempotency_store.put_if_absent("older", "2")
        assert await purger.purge_before(datetime.now(UTC) - timedelta(hours=1)) == 0
        assert await idempotency_store.get("old") == "1"
        assert await purger.purge_before(datetime.now(UTC) + timedelta(seconds=1)) == 2
        assert await idempotency_store.get("old") is None
        assert await idempotency_store.put_if_absent("old", "new") == "new"

    async def test_a_recorded_result_is_replayed_not_redone(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        """Through the orchestrator: a saga run again under the same id on a fresh
        repository, with the same store, applies the recorded results and calls no step."""
        data = ContractData()
        first = ContractTripSaga(data)
        orchestrator = _orchestrator(InMemorySagaRepository(), idempotency_store=idempotency_store)
        done = await orchestrator.execute(first)
        assert first.log == ["flight#1", "hotel#1", "car#1"]

        again = ContractTripSaga(ContractData(data.contract_id))
        again.context.saga_id = first.context.saga_id
        fresh = _orchestrator(InMemorySagaRepository(), idempotency_store=idempotency_store)
        replayed = await fresh.execute(again)
        assert again.log == []
        assert replayed.status is SagaStatus.COMPLETED
        assert replayed.data == done.data
