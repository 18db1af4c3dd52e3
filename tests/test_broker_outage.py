"""A broker outage, end to end: sagas keep completing, and every event arrives afterwards.

Sagas run continuously on an SQLite repository (whose outbox stores each transition's events
with it) while an [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] publishes them through
a TCP proxy to the real broker. The proxy goes down for as long as 50 more sagas take to
complete (measured in sagas, not seconds), then comes back. The consumer must end up with
every stored event; each saga's events in ``sequence`` order among first deliveries; and any
duplicate an exact redelivery of an event already received.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from saga_orchestrator import RetryPolicy, SagaOrchestrator, SQLiteSagaRepository
from saga_orchestrator.events import SagaEvent
from saga_orchestrator.outbox import OutboxRelay
from tests.brokers import BROKERS, Broker, open_broker
from tests.sagas import TripData, TripSaga

pytestmark = pytest.mark.anyio

WORKERS = 4
"""Sagas in flight at once."""
OUTAGE_SAGAS = 50
"""The outage lasts until this many more sagas completed."""
WAIT = 60.0
"""Bound on each wait for a condition (never reached when things work)."""


@pytest.fixture
def anyio_backend() -> str:
    """The broker client libraries run on asyncio only."""
    return "asyncio"


@pytest.fixture(params=BROKERS)
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """A real broker, under names of this test's own, cleaned up afterwards."""
    async with open_broker(request.param) as found:
        yield found


class _Progress:
    """Counters that a test can wait on, woken whenever one changes."""

    def __init__(self) -> None:
        self.completed = 0
        """Sagas completed."""
        self.failed_publishes = 0
        """``publish`` calls that raised."""
        self.events: list[SagaEvent] = []
        """Every event of every recorded transition (what the outbox stored)."""
        self._changed = asyncio.Event()

    def changed(self) -> None:
        self._changed.set()

    def on_event(self, event: SagaEvent) -> None:
        """A listener: the orchestrator calls it with each event it recorded."""
        self.events.append(event)

    async def wait_until(self, condition: Any, what: str) -> None:
        try:
            async with asyncio.timeout(WAIT):
                while not condition():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"not reached within {WAIT} s: {what}") from None


class _Watched:
    """A publisher that counts its failures."""

    def __init__(self, inner: Any, progress: _Progress) -> None:
        self.inner = inner
        self.progress = progress

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        try:
            await self.inner.publish(events)
        except Exception:
            self.progress.failed_publishes += 1
            self.progress.changed()
            raise


async def test_events_published_during_an_outage_all_arrive(broker: Broker, tmp_path: Path) -> None:
    """Proxy down while 50 sagas complete, then up: every stored event is delivered, each
    saga's in order, duplicates only as exact redeliveries."""
    progress = _Progress()
    repository = SQLiteSagaRepository(tmp_path / "sagas.db", outbox=True)
    async with (
        repository,
        broker.proxy() as proxy,
        broker.consume() as received,
        broker.publisher_at(proxy.port, connect_timeout_seconds=1, timeout_seconds=5) as publisher,
    ):
        relay = OutboxRelay(
            repository,
            _Watched(publisher, progress),
            batch_size=50,
            poll_interval_seconds=0.05,
            retry=RetryPolicy(initial_backoff_seconds=0.01, max_backoff_seconds=0.1),
        )
        # The relay listens too, so that each transition wakes it.
        orchestrator = SagaOrchestrator(repository, listeners=[progress, relay])
        running = True

        async def worker() -> None:
            while running:
                result = await orchestrator.execute(TripSaga(TripData()))
                assert result.succeeded
                progress.completed += 1
                progress.changed()

        tasks = [asyncio.ensure_future(relay.run())]
        tasks += [asyncio.ensure_future(worker()) for _ in range(WORKERS)]
        try:
            # Flowing: sagas complete and events arrive.
            await progress.wait_until(lambda: progress.completed >= 20, "20 sagas completed")
            await received.wait_for_count(1)

            await proxy.stop()
            down_at = progress.completed
            await progress.wait_until(
                lambda: progress.completed >= down_at + OUTAGE_SAGAS and progress.failed_publishes,
                f"{OUTAGE_SAGAS} sagas completed and a publish failed, broker down",
            )
            completed_during_outage = progress.completed - down_at
            failures_during_outage = progress.failed_publishes
            await proxy.start()

            up_at = progress.completed
            await progress.wait_until(
                lambda: progress.completed >= up_at + 20, "20 more sagas after the outage"
            )
            running = False
            await asyncio.gather(*tasks[1:])
            stored = list(progress.events)
            await received.wait_for_ids({event.event_id for event in stored}, within=WAIT)
        finally:
            running = False
            for task in tasks:
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)

    assert completed_during_outage >= OUTAGE_SAGAS  # sagas went on while the broker was away
    assert failures_during_outage >= 1

    # Every stored event arrived, and nothing else.
    stored_by_id = {event.event_id: event for event in stored}
    assert len(stored_by_id) == len(stored) == progress.completed * 8
    first: dict[UUID, SagaEvent] = {}
    duplicates = 0
    for event in received.events:
        if event.event_id in first:
            duplicates += 1
            assert event == first[event.event_id]  # an exact redelivery
        else:
            first[event.event_id] = event
    assert first == stored_by_id

    # Each saga's events, in order of first delivery, are its sequence 1, 2, 3, ...
    sequences: dict[UUID, list[int]] = {}
    for event in first.values():  # dicts keep insertion (arrival) order
        sequences.setdefault(event.saga_id, []).append(event.sequence)
    assert len(sequences) == progress.completed
    for saga_sequences in sequences.values():
        assert saga_sequences == list(range(1, len(saga_sequences) + 1))

    print(
        f"\n{broker.name}: {completed_during_outage} sagas completed during the outage"
        f" ({failures_during_outage} failed publishes); {len(first)} events delivered,"
        f" {duplicates} duplicates, {progress.completed} sagas in all"
    )
