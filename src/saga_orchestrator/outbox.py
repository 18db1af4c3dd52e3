"""The outbox relay: publishes the lifecycle events a repository stored with its transitions.

A repository with an outbox (``stores_events = True``, such as
[`SQLiteSagaRepository`][saga_orchestrator.adapters.sqlite.SQLiteSagaRepository]) writes each
transition's events in the transaction that records the transition, so an event exists if and
only if its transition does, crash or not. An [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay]
reads those events back, hands them to an
[`EventPublisher`][saga_orchestrator.protocols.EventPublisher] and marks them sent once it
accepted them:

```python
relay = OutboxRelay(repository, broker_publisher)
async with anyio.create_task_group() as tg:
    tg.start_soon(relay.run)
    ...  # serve; cancelling the task group stops the relay
```

Delivery is at least once: an event whose publication failed, or whose marking failed after
it was published, is published again. Consumers deduplicate on ``event_id``. Each saga's
events are published in ``sequence`` order: the relay never skips past an event it could not
publish.
"""

from __future__ import annotations

import logging
from typing import Literal

import anyio

from .events import SagaEvent
from .protocols import Clock, EventPublisher, OutboxSource
from .retry import RetryPolicy
from .runtime import SystemClock

__all__ = ["DEFAULT_OUTBOX_BACKOFF", "OutboxRelay"]

logger = logging.getLogger("saga_orchestrator")

DEFAULT_OUTBOX_BACKOFF = RetryPolicy(
    initial_backoff_seconds=0.05,
    backoff_coefficient=2.0,
    max_backoff_seconds=5.0,
    jitter_ratio=0.2,
)
"""The relay's wait after failures: 50 ms doubling to at most 5 s (minus up to 20% jitter)."""

_Operation = Literal["fetch_unsent", "publish", "mark_sent"]


class OutboxRelay:
    """Publishes the events an [`OutboxSource`][saga_orchestrator.protocols.OutboxSource]
    stored, in order, at least once.

    Use ``run`` as a background task for as long as the service runs, or call ``run_once``
    yourself (a cron job, a test). Each batch is one ``publisher.publish(events)`` call with
    the events in outbox order (each saga's events in ``sequence`` order); the events are
    marked sent only after it returned. When it raises, ``run`` logs
    ``saga.outbox.publish_failed``, waits (growing, capped backoff) and tries the same events
    again: it never skips ahead, so a saga's later events are never published before its
    earlier ones.

    Args:
        source: where the events are stored (a repository with an outbox).
        publisher: where they go (a broker publisher).
        batch_size: the most events read, published and marked per round.
        poll_interval_seconds: how long ``run`` waits for new events when it found fewer than
            a full batch, unless ``wake`` is called first.
        retry: the backoff after a failure: only its backoff fields count (the relay tries
            for as long as it runs; ``max_attempts`` and the error filters do not apply).
            Default [`DEFAULT_OUTBOX_BACKOFF`][saga_orchestrator.outbox.DEFAULT_OUTBOX_BACKOFF].
        clock: sleeps the backoff (a [`ManualClock`][saga_orchestrator.testing.ManualClock]
            in tests); waiting for new events uses real time.
    """

    def __init__(
        self,
        source: OutboxSource,
        publisher: EventPublisher,
        *,
        batch_size: int = 100,
        poll_interval_seconds: float = 0.5,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Set up the relay; nothing runs until ``run`` or ``run_once`` is called."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not poll_interval_seconds >= 0:
            raise ValueError(f"poll_interval_seconds must be >= 0, got {poll_interval_seconds}")
        self.source = source
        """Where the events are read from and marked sent."""
        self.publisher = publisher
        """Where the events are published."""
        self.batch_size = batch_size
        """The most events per round."""
        self.poll_interval_seconds = poll_interval_seconds
        """How long ``run`` waits for new events between rounds that found fewer than a
        batch."""
        self.retry = retry if retry is not None else DEFAULT_OUTBOX_BACKOFF
        """The backoff after a failure."""
        self.clock: Clock = clock if clock is not None else SystemClock()
        """Sleeps the backoff."""
        self.published = 0
        """Events the publisher accepted so far, redeliveries included (for health checks
        and metrics)."""
        self.last_error: str | None = None
        """The last failure of ``run`` or ``run_once``, as ``"ExceptionType: message"``;
        ``None`` once a round succeeds (for health checks)."""
        self._wake: anyio.Event | None = None
        self._operation: _Operation = "fetch_unsent"

    def wake(self) -> None:
        """Make a waiting ``run`` look for events now instead of at the end of its poll
        interval. Call it from the event loop's thread; it never blocks and never raises."""
        if self._wake is not None:
            self._wake.set()

    def on_event(self, event: SagaEvent) -> None:
        """Wake the relay: with the relay among a
        [`SagaOrchestrator`][saga_orchestrator.orchestrator.SagaOrchestrator]'s
        ``listeners``, the events of each transition are published right after it is
        recorded rather than at the next poll."""
        self.wake()

    async def run_once(self) -> int:
        """Publish one batch of unsent events and mark them sent; return how many.

        ``0`` when there is nothing to send. If the publisher (or the source) raises, nothing
        is marked sent and the error propagates: the same events come first next time.
        """
        try:
            self._operation = "fetch_unsent"
            batch = await self.source.fetch_unsent(self.batch_size)
            if batch:
                self._operation = "publish"
                await self.publisher.publish([event for _, event in batch])
                self.published += len(batch)
                self._operation = "mark_sent"
                await self.source.mark_sent([outbox_id for outbox_id, _ in batch])
        except Exception as exc:
            self.last_error = _describe(exc)
            raise
        self.last_error = None
        return len(batch)

    async def run(self) -> None:
        """Relay events until cancelled.

        After a full batch the next one is fetched at once; after a partial one, at the end
        of the poll interval or when ``wake`` is called. A failure is logged (WARNING,
        ``saga.outbox.publish_failed``, or ``saga.outbox.source_failed`` when reading or
        marking failed), recorded in ``last_error``, and the same events are tried again
        after a backoff that grows with each consecutive failure. Only cancellation stops it
        (anyio's, on asyncio or trio); events being published when it is cancelled are
        published again by the next run.
        """
        failures = 0
        while True:
            # Made before fetching, so that a wake() during the round is not lost.
            wake = self._wake = anyio.Event()
            try:
                count = await self.run_once()
            except Exception as exc:
                failures += 1
                delay = self.retry.backoff_seconds(failures)
                self._log_failure(exc, failures, delay)
                await self.clock.sleep(delay)
                continue
            failures = 0
            if count >= self.batch_size:
                continue
            with anyio.move_on_after(self.poll_interval_seconds):
                await wake.wait()

    def _log_failure(self, error: Exception, failures: int, delay: float) -> None:
        operation = self._operation
        name = (
            "saga.outbox.publish_failed" if operation == "publish" else "saga.outbox.source_failed"
        )
        logger.warning(
            "%s: %s failed (%d in a row), retrying in %.3f s: %s",
            name,
            operation,
            failures,
            delay,
            _describe(error),
            exc_info=error,
            extra={
                "event": name,
                "operation": operation,
                "failures": failures,
                "delay_seconds": delay,
            },
        )


def _describe(error: BaseException) -> str:
    message = str(error)
    return f"{type(error).__name__}: {message}" if message else type(error).__name__
