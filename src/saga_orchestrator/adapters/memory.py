"""In-memory adapters: for tests and single-process use where losing state on exit is fine.

They keep the serialized form, exactly as the durable adapters do, so a saga that runs here
cannot fail later on storage for a value that does not serialize.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import anyio.lowlevel

from ..errors import SagaAlreadyExistsError, SagaConflictError
from ..events import SagaEvent
from ..inbox import InboxEvent, StoreOutcome
from ..machine import parked_for, parked_until
from ..serialization import decode_context
from ..state import SagaContext, SagaStatus, SkippedSaga

__all__ = ["InMemoryEventPublisher", "InMemoryIdempotencyStore", "InMemorySagaRepository"]


async def _checkpoint() -> None:
    """Let other tasks run (and a cancellation land), as a real store's I/O would: anyio's
    checkpoint, which on asyncio is ``asyncio.sleep(0)``, called directly there so as not to
    look up the running event-loop library at every write."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # another backend (trio)
        await anyio.lowlevel.checkpoint()
        return
    await asyncio.sleep(0)


@dataclass(slots=True)
class _Row:
    order: int
    saga_type: str
    correlation_id: str | None
    status: SagaStatus
    version: int
    state: str
    wake_at: datetime | None = None  # parked at a wait step: when due
    waiting_for: str | None = None  # ... for this event


class InMemorySagaRepository:
    """A [`SagaRepository`][saga_orchestrator.protocols.SagaRepository] in a dict.

    It also implements [`SagaStatusCounter`][saga_orchestrator.protocols.SagaStatusCounter],
    [`StrandingRecorder`][saga_orchestrator.protocols.StrandingRecorder] and
    [`SagaInbox`][saga_orchestrator.protocols.SagaInbox].
    """

    process_local = True
    """Its sagas live and die with this process: no other process can resume them, so data
    classes defined in ``__main__`` are fine here (no ``MainModuleDataWarning``)."""

    def __init__(self) -> None:
        self._rows: dict[UUID, _Row] = {}
        self._stranded: dict[UUID, tuple[int, int | None, str]] = {}
        self._event_ids: set[str] = set()
        self._events: dict[UUID, list[InboxEvent]] = {}  # by saga, in the order stored
        self._counter = 0
        self.writes = 0
        """Committed writes, for tests that count transactions."""

    async def create(
        self, context: SagaContext[Any], state: str, events: Sequence[SagaEvent] = ()
    ) -> None:
        """Store a new saga; raises ``SagaAlreadyExistsError`` if its id is taken."""
        await _checkpoint()  # like any real store, let other tasks run
        if context.saga_id in self._rows:
            raise SagaAlreadyExistsError(context.saga_id)
        self._counter += 1
        self._rows[context.saga_id] = _Row(
            order=self._counter,
            saga_type=context.saga_type,
            correlation_id=context.correlation_id,
            status=context.status,
            version=context.version,
            state=state,
            wake_at=parked_until(context),
            waiting_for=parked_for(context),
        )
        self.writes += 1

    async def update(
        self,
        context: SagaContext[Any],
        state: str,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        """Replace the saga's record if its stored version is ``expected_version``.

        Raises ``SagaConflictError`` otherwise.
        """
        await _checkpoint()  # like any real store, let other tasks run
        row = self._rows.get(context.saga_id)
        if row is None or row.version != expected_version:
            raise SagaConflictError(context.saga_id, expected_version)
        # The row mirrors the context's status (decided by the state machine) for queries.
        row.status, row.version, row.state = context.status, context.version, state
        row.wake_at, row.waiting_for = parked_until(context), parked_for(context)
        self.writes += 1

    async def get(self, saga_id: UUID) -> SagaContext[Any] | None:
        """The stored saga (a fresh copy, decoded from its JSON), or ``None``."""
        await _checkpoint()  # like any real store, let other tasks run
        row = self._rows.get(saga_id)
        return decode_context(row.state) if row is not None else None

    async def get_by_correlation_id(self, correlation_id: str) -> SagaContext[Any] | None:
        """The most recently created saga with this correlation id, or ``None``."""
        await _checkpoint()  # like any real store, let other tasks run
        latest: _Row | None = None
        for row in self._rows.values():
            if row.correlation_id == correlation_id and (
                latest is None or row.order > latest.order
            ):
                latest = row
        return decode_context(latest.state) if latest is not None else None

    async def list_sagas(
        self,
        *,
        statuses: Collection[SagaStatus] | None = None,
        saga_type: str | None = None,
        limit: int = 1000,
    ) -> list[SagaContext[Any]]:
        """Stored sagas, oldest first, filtered by status and type, at most ``limit``."""
        await _checkpoint()  # like any real store, let other tasks run
        rows = sorted(self._rows.values(), key=lambda row: row.order)
        selected = [
            row
            for row in rows
            if (statuses is None or row.status in statuses)
            and (saga_type is None or row.saga_type == saga_type)
        ]
        return [decode_context(row.state) for row in selected[:limit]]

    async def list_saga_ids(
        self,
        *,
        statuses: Collection[SagaStatus] | None = None,
        saga_type: str | None = None,
        limit: int = 1000,
    ) -> list[UUID]:
        """Ids of stored sagas, oldest first, without reading their state (the same
        selection as ``list_sagas``)."""
        await _checkpoint()
        rows = sorted(self._rows.items(), key=lambda item: item[1].order)
        return [
            saga_id
            for saga_id, row in rows
            if (statuses is None or row.status in statuses)
            and (saga_type is None or row.saga_type == saga_type)
        ][:limit]

    async def mark_stranded(
        self, saga_id: UUID, reason: str, *, saga_version: int | None = None
    ) -> None:
        """Record that ``saga_id`` could not be resumed, and why (see
        [`StrandingRecorder`][saga_orchestrator.protocols.StrandingRecorder])."""
        await _checkpoint()
        row = self._rows.get(saga_id)
        if row is not None:
            self._stranded.pop(saga_id, None)  # a new mark goes last
            self._stranded[saga_id] = (row.version, saga_version, reason)

    async def list_stranded(self, *, limit: int = 1000) -> list[SkippedSaga]:
        """The unfinished sagas whose mark still holds, oldest mark first."""
        await _checkpoint()
        found = []
        for saga_id, (version, saga_version, reason) in self._stranded.items():
            row = self._rows.get(saga_id)
            if row is not None and row.version == version and not row.status.is_terminal:
                found.append(SkippedSaga(saga_id, row.saga_type, reason, saga_version))
        return found[:limit]

    async def store_event(self, event: InboxEvent) -> StoreOutcome:
        """Keep ``event`` for its running saga, unless its id is kept already (see
        [`SagaInbox`][saga_orchestrator.protocols.SagaInbox])."""
        await _checkpoint()
        row = self._rows.get(event.saga_id)
        if row is None:
            return StoreOutcome.NO_SAGA
        if event.event_id in self._event_ids:
            return StoreOutcome.DUPLICATE
        if row.status is not SagaStatus.RUNNING:
            return StoreOutcome.NOT_RUNNING
        self._event_ids.add(event.event_id)
        self._events.setdefault(event.saga_id, []).append(event)
        if row.wake_at is not None and row.waiting_for == event.name:
            row.wake_at = min(row.wake_at, event.received_at)  # due now
        return StoreOutcome.STORED

    async def saga_events(self, saga_id: UUID) -> list[InboxEvent]:
        """Every event kept for the saga, in the order stored."""
        await _checkpoint()
        return list(self._events.get(saga_id, ()))

    async def purge_events_before(self, cutoff: datetime) -> int:
        """Forget the events received before ``cutoff`` by sagas that are finished (or no
        longer stored); return how many. A running saga's events are kept."""
        await _checkpoint()
        count = 0
        for saga_id in list(self._events):
            row = self._rows.get(saga_id)
            if row is not None and not row.status.is_terminal:
                continue
            events = self._events[saga_id]
            old = [e for e in events if e.received_at < cutoff]
            kept = [e for e in events if e.received_at >= cutoff]
            for event in old:
                self._event_ids.discard(event.event_id)
            count += len(old)
            if kept:
                self._events[saga_id] = kept
            else:
                del self._events[saga_id]
        return count

    async def due_waits(self, now: datetime, limit: int = 1000) -> list[UUID]:
        """Sagas parked at a wait step that are due at ``now``, soonest first."""
        await _checkpoint()
        due = [
            (row.wake_at, row.order, saga_id)
            for saga_id, row in self._rows.items()
            if row.wake_at is not None and row.wake_at <= now
        ]
        return [saga_id for _, _, saga_id in sorted(due)[:limit]]

    async def count_by_status(
        self, statuses: Collection[SagaStatus]
    ) -> dict[tuple[str, SagaStatus], int]:
        """``{(saga_type, status): count}`` for the given statuses (absent means 0)."""
        await _checkpoint()
        counts: dict[tuple[str, SagaStatus], int] = {}
        for row in self._rows.values():
            if row.status in statuses:
                key = (row.saga_type, row.status)
                counts[key] = counts.get(key, 0) + 1
        return counts


class InMemoryIdempotencyStore:
    """An [`IdempotencyStore`][saga_orchestrator.protocols.IdempotencyStore] in a dict."""

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._created: dict[str, datetime] = {}

    async def get(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        await _checkpoint()  # like any real store, let other tasks run
        return self._values.get(key)

    async def put_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless ``key`` has one already; return the value that is stored."""
        await _checkpoint()  # like any real store, let other tasks run
        if key not in self._values:
            self._values[key] = value
            self._created[key] = datetime.now(UTC)
        return self._values[key]

    async def purge_before(self, cutoff: datetime) -> int:
        """Forget entries stored before ``cutoff``; return how many."""
        await _checkpoint()
        old = [key for key, created in self._created.items() if created < cutoff]
        for key in old:
            del self._values[key], self._created[key]
        return len(old)


class InMemoryEventPublisher:
    """An [`EventPublisher`][saga_orchestrator.protocols.EventPublisher] that keeps events.

    Every published event goes to ``events``, in publication order.
    """

    def __init__(self) -> None:
        self.events: list[SagaEvent] = []
        """Every event published so far, in order."""

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        """Append ``events`` to ``events``."""
        await _checkpoint()  # like any real store, let other tasks run
        self.events.extend(events)

    def for_saga(self, saga_id: UUID) -> list[SagaEvent]:
        """The events of one saga, in order."""
        return [event for event in self.events if event.saga_id == saga_id]
