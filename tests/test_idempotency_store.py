"""The idempotency-store contract, on every store: first value wins, old entries purge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import anyio
import pytest

from saga_orchestrator.protocols import IdempotencyPurger, IdempotencyStore

pytestmark = pytest.mark.anyio


async def test_first_value_stands(idempotency_store: IdempotencyStore) -> None:
    """put_if_absent keeps the first value and returns it to every later writer."""
    assert await idempotency_store.get("k") is None
    assert await idempotency_store.put_if_absent("k", "first") == "first"
    assert await idempotency_store.put_if_absent("k", "second") == "first"
    assert await idempotency_store.get("k") == "first"


async def test_concurrent_writers_agree(idempotency_store: IdempotencyStore) -> None:
    """Many writers racing on one key all see the same, single stored value."""
    seen: list[str] = []

    async def put(value: str) -> None:
        seen.append(await idempotency_store.put_if_absent("race", value))

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(put, f"v{n}")
    assert len(set(seen)) == 1
    assert await idempotency_store.get("race") == seen[0]


async def test_purge_forgets_only_older_entries(idempotency_store: IdempotencyStore) -> None:
    """purge_before removes entries stored before the cutoff and keeps newer ones."""
    assert isinstance(idempotency_store, IdempotencyPurger)
    await idempotency_store.put_if_absent("old", "1")
    assert await idempotency_store.purge_before(datetime.now(UTC) - timedelta(hours=1)) == 0
    assert await idempotency_store.purge_before(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await idempotency_store.get("old") is None
