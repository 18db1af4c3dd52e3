"""OutboxContract: a repository with an outbox, read by an OutboxRelay."""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import anyio
import anyio.lowlevel
import pytest

from ...errors import SagaAlreadyExistsError, SagaConflictError
from ...events import SagaEvent, SagaEventType
from ...outbox import OutboxRelay
from ...protocols import OutboxSource, SagaRepository
from ...retry import RetryPolicy
from ...serialization import encode_context
from .. import ManualClock
from .._contract_sagas import ContractData, ContractTripSaga, Refused, always, fail_on
from ._support import _context, _event, _EventLog, _next, _orchestrator, _run_by_anyio


@runtime_checkable
class _OutboxRepository(SagaRepository, OutboxSource, Protocol):
    stores_events: bool


class _RecordingPublisher:
    """Keeps every batch it is given, one list per ``publish`` call, and fails the calls
    numbered in ``fail_calls`` (1-based) after taking them, as a broker that went down half
    way would: their events may have reached consumers, so they count as delivered twice."""

    def __init__(self, fail_calls: Collection[int] = ()) -> None:
        self.calls: list[list[SagaEvent]] = []
        self.failed: set[int] = set()
        self.fail_calls = set(fail_calls)
        self._called = anyio.Event()

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        await anyio.lowlevel.checkpoint()
        self.calls.append(list(events))
        self._called.set()
        self._called = anyio.Event()
        if len(self.calls) in self.fail_calls:
            self.failed.add(len(self.calls) - 1)
            raise ConnectionError(f"broker went away (call {len(self.calls)})")

    async def wait_for(self, count: int) -> None:
        """Return once ``count`` distinct events were accepted."""
        while len({e.event_id for e in self.accepted}) < count:
            await self._called.wait()

    @property
    def accepted(self) -> list[SagaEvent]:
        return [e for i, call in enumerate(self.calls) if i not in self.failed for e in call]

    @property
    def delivered(self) -> list[SagaEvent]:
        return [e for call in self.calls for e in call]


class _SpySource:
    """Wraps an outbox source: records each batch read, and says when a read found none."""

    def __init__(self, source: OutboxSource) -> None:
        self.source = source
        self.batches: list[list[tuple[int, SagaEvent]]] = []
        self.marked: list[list[int]] = []
        self.empty = anyio.Event()

    async def fetch_unsent(self, limit: int) -> list[tuple[int, SagaEvent]]:
        batch = await self.source.fetch_unsent(limit)
        self.batches.append(batch)
        if not batch:
            self.empty.set()
        return batch

    async def mark_sent(self, ids: Sequence[int]) -> None:
        await self.source.mark_sent(ids)
        self.marked.append(list(ids))


async def _run_sagas(repository: SagaRepository, count: int = 6) -> list[SagaEvent]:
    """Run ``count`` sagas at once (completing, compensating, retrying a step); return the
    events the orchestrator emitted."""
    log = _EventLog()
    orchestrator = _orchestrator(repository, listeners=[log])
    behaviours: list[dict[str, Any]] = [
        {},
        {"car": always(Refused("no car"))},
        {"hotel": fail_on({1}, ConnectionError("flaky"))},
    ]
    async with anyio.create_task_group() as tg:
        for index in range(count):
            saga = ContractTripSaga(ContractData(), behaviour=behaviours[index % len(behaviours)])
            tg.start_soon(orchestrator.execute, saga)
    return log.events


def _by_saga(events: Sequence[SagaEvent]) -> dict[UUID, list[SagaEvent]]:
    grouped: dict[UUID, list[SagaEvent]] = defaultdict(list)
    for event in events:
        grouped[event.saga_id].append(event)
    return dict(grouped)


def _assert_in_saga_order(events: Sequence[SagaEvent]) -> None:
    for saga_id, own in _by_saga(events).items():
        assert [e.sequence for e in own] == list(range(1, len(own) + 1)), saga_id


async def _drain(relay: OutboxRelay) -> int:
    total = 0
    while count := await relay.run_once():
        assert count <= relay.batch_size
        total += count
    return total


async def _unsent(source: OutboxSource) -> list[SagaEvent]:
    return [e for _, e in await source.fetch_unsent(10_000)]


class OutboxContract:
    """What a repository with a transactional outbox, and the relay over it, guarantee.

    Define a fixture ``outbox_repository`` returning (or yielding) a fresh, empty repository
    that has ``stores_events = True`` and the
    [`OutboxSource`][saga_orchestrator.protocols.OutboxSource] methods.
    """

    pytestmark = pytest.mark.anyio
    """Every test is marked ``anyio``: anyio's pytest plugin runs it, on ``anyio_backend``."""
    _run_by_anyio = pytest.fixture(autouse=True)(_run_by_anyio)

    async def test_the_repository_has_an_outbox(self, outbox_repository: Any) -> None:
        """``stores_events`` is true and the ``OutboxSource`` methods are there."""
        assert outbox_repository.stores_events is True
        assert isinstance(outbox_repository, _OutboxRepository)

    async def test_relay_publishes_every_event_of_real_sagas(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """Every event the sagas emitted is published once, equal (event_id included) and in
        each saga's order, one publish call per batch in outbox order; then all are sent."""
        emitted = await _run_sagas(outbox_repository)
        spy = _SpySource(outbox_repository)
        publisher = _RecordingPublisher()
        relay = OutboxRelay(spy, publisher, batch_size=7)

        assert await _drain(relay) == len(emitted)

        published = publisher.accepted
        assert len(published) == len(emitted)
        assert _by_saga(published) == _by_saga(emitted)
        _assert_in_saga_order(published)
        for saga_id, own in _by_saga(published).items():
            stored = await outbox_repository.get(saga_id)
            assert stored is not None
            assert stored.event_sequence == own[-1].sequence
        read = [batch for batch in spy.batches if batch]
        assert publisher.calls == [[e for _, e in batch] for batch in read]
        ids = [outbox_id for batch in read for outbox_id, _ in batch]
        assert ids == sorted(set(ids))
        assert spy.marked == [[outbox_id for outbox_id, _ in batch] for batch in read]
        assert relay.published == len(emitted)
        assert relay.last_error is None

        assert await relay.run_once() == 0  # everything is marked sent
        assert len(publisher.calls) == len(read)
        assert await _unsent(outbox_repository) == []

    async def test_failing_publisher_loses_nothing_and_skips_nothing(
        self, outbox_repository: _OutboxRepository, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A publisher failing 3 times, then once more later: ``run()`` retries the same
        batch after a growing backoff, keeps each saga's order, and repeats only failed
        batches."""
        emitted = await _run_sagas(outbox_repository)
        spy = _SpySource(outbox_repository)
        publisher = _RecordingPublisher(fail_calls={1, 2, 3, 6})
        clock = ManualClock()
        backoff = RetryPolicy(initial_backoff_seconds=0.05, max_backoff_seconds=5, jitter_ratio=0)
        relay = OutboxRelay(
            spy, publisher, batch_size=5, poll_interval_seconds=0, retry=backoff, clock=clock
        )
        assert len(emitted) > 3 * relay.batch_size  # the late failure hits a third batch

        with caplog.at_level(logging.WARNING, logger="saga_orchestrator"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(relay.run)
                with anyio.fail_after(10):
                    await publisher.wait_for(len(emitted))
                    await spy.empty.wait()  # read after the last mark: all are sent
                tg.cancel_scope.cancel()

        # The same events, again and again, until they went through.
        assert publisher.calls[0] == publisher.calls[1] == publisher.calls[2] == publisher.calls[3]
        assert publisher.calls[5] == publisher.calls[6]
        assert clock.sleeps == [0.05, 0.1, 0.2, 0.05]  # grows while failing, resets after
        # Each event accepted exactly once, in each saga's order; nothing lost.
        assert sorted(e.event_id for e in publisher.accepted) == sorted(e.event_id for e in emitted)
        _assert_in_saga_order(publisher.accepted)
        assert _by_saga(publisher.accepted) == _by_saga(emitted)
        # At least once: the extra deliveries are exactly the failed calls' events.
        extra = Counter(e.event_id for e in publisher.delivered)
        extra.subtract(Counter(e.event_id for e in publisher.accepted))
        failed = Counter(e.event_id for i in publisher.failed for e in publisher.calls[i])
        assert +extra == failed
        # First deliveries already respect each saga's order.
        first: dict[UUID, SagaEvent] = {}
        for e in publisher.delivered:
            first.setdefault(e.event_id, e)
        _assert_in_saga_order(list(first.values()))

        warnings = [r for r in caplog.records if r.getMessage().startswith("saga.outbox.")]
        assert [r.getMessage().split(":")[0] for r in warnings] == [
            "saga.outbox.publish_failed"
        ] * 4
        assert relay.last_error is None
        assert relay.published == len(emitted)
        assert await _unsent(outbox_repository) == []

    async def test_run_once_propagates_a_publish_error_and_marks_nothing(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """``run_once`` re-raises the publisher's error; the batch stays unsent, first in
        line."""
        emitted = await _run_sagas(outbox_repository, count=1)
        relay = OutboxRelay(outbox_repository, _RecordingPublisher(fail_calls={1}), batch_size=3)
        with pytest.raises(ConnectionError, match="broker went away"):
            await relay.run_once()
        last_errors = [relay.last_error]
        assert relay.published == 0
        assert await _unsent(outbox_repository) == emitted

        assert await relay.run_once() == 3
        last_errors.append(relay.last_error)
        assert last_errors == ["ConnectionError: broker went away (call 1)", None]
        assert await _unsent(outbox_repository) == emitted[3:]

    async def test_cancelled_mid_publish_publishes_the_batch_again(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """A relay cancelled while publishing marked nothing: the next one sends the batch."""
        emitted = await _run_sagas(outbox_repository, count=1)
        entered = anyio.Event()

        class Stuck:
            async def publish(self, events: Sequence[SagaEvent]) -> None:
                entered.set()
                await anyio.sleep_forever()

        relay = OutboxRelay(outbox_repository, Stuck(), batch_size=4)
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run)
            with anyio.fail_after(10):
                await entered.wait()
            tg.cancel_scope.cancel()

        publisher = _RecordingPublisher()
        relay = OutboxRelay(outbox_repository, publisher, batch_size=4)
        assert await _drain(relay) == len(emitted)
        assert publisher.accepted == emitted

    async def test_relay_as_a_listener_publishes_right_after_each_transition(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """Among the orchestrator's listeners, the relay is woken by every transition (an
        hour's poll interval would otherwise keep it waiting)."""
        spy = _SpySource(outbox_repository)
        publisher = _RecordingPublisher()
        relay = OutboxRelay(spy, publisher, poll_interval_seconds=3600)
        orchestrator = _orchestrator(outbox_repository, listeners=[relay])
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run)
            with anyio.fail_after(10):
                await spy.empty.wait()
                result = await orchestrator.execute(ContractTripSaga(ContractData()))
                stored = await outbox_repository.get(result.saga_id)
                assert stored is not None
                await publisher.wait_for(stored.event_sequence)
            tg.cancel_scope.cancel()
        _assert_in_saga_order(publisher.accepted)
        assert publisher.accepted[-1].type is SagaEventType.SAGA_COMPLETED

    async def test_a_failed_compare_and_set_writes_no_events(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """``update`` with a stale ``expected_version``, and ``create`` of a stored saga,
        store no events; of two racing updates, only the winner's events are stored."""
        repo = outbox_repository
        context = _context()
        created = [_event(context, 1)]
        await repo.create(context, encode_context(context), created)

        stale = _next(context)
        with pytest.raises(SagaConflictError):
            await repo.update(
                stale, encode_context(stale), expected_version=7, events=[_event(context, 2)]
            )
        with pytest.raises(SagaAlreadyExistsError):
            await repo.create(context, encode_context(context), [_event(context, 2)])
        assert await _unsent(repo) == created

        racers = [[_event(context, 2), _event(context, 3)] for _ in range(2)]
        outcomes: list[str] = []

        async def update(events: list[SagaEvent]) -> None:
            try:
                await repo.update(stale, encode_context(stale), expected_version=1, events=events)
                outcomes.append("won")
            except SagaConflictError:
                outcomes.append("lost")

        async with anyio.create_task_group() as tg:
            for events in racers:
                tg.start_soon(update, events)
        assert sorted(outcomes) == ["lost", "won"]
        assert await _unsent(repo) in ([*created, *racers[0]], [*created, *racers[1]])

    async def test_events_that_cannot_be_stored_fail_the_transition(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """An event that does not encode (a NaN duration) fails the write with
        ``ValueError``: no saga, no event."""
        context = _context()
        with pytest.raises(ValueError):
            await outbox_repository.create(
                context,
                encode_context(context),
                [_event(context, 1), _event(context, 2, duration_seconds=float("nan"))],
            )
        assert await outbox_repository.get(context.saga_id) is None
        assert await _unsent(outbox_repository) == []

    async def test_purge_deletes_only_events_sent_before_the_cutoff(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """Optional (``purge_sent_before``): sent events older than the cutoff are deleted,
        unsent ones never, however old. (Each event here is its own transition's: a store may
        keep a transition's events together, and purge them once all of them were sent.)"""
        purge = getattr(outbox_repository, "purge_sent_before", None)
        if purge is None:
            pytest.skip(f"optional: {type(outbox_repository).__name__} has no purge_sent_before")
        repo = outbox_repository
        context = _context()
        events = [_event(context, sequence) for sequence in (1, 2, 3)]
        await repo.create(context, encode_context(context), events[:1])
        for version in (2, 3):
            context.version = version
            await repo.update(
                context,
                encode_context(context),
                expected_version=version - 1,
                events=events[version - 1 : version],
            )
        before_marking = datetime.now(UTC) - timedelta(seconds=1)
        ids = [outbox_id for outbox_id, _ in await repo.fetch_unsent(10)]
        await repo.mark_sent(ids[:2])

        assert await purge(before_marking) == 0
        later = datetime.now(UTC) + timedelta(hours=1)
        assert await purge(later) == 2
        assert await purge(later) == 0
        assert await _unsent(repo) == events[2:]

        await repo.mark_sent(ids[2:])
        assert await purge(later) == 1
        assert await _unsent(repo) == []
