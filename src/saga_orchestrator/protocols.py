"""The pluggable parts: storage, idempotency, events, listeners, clock, step interceptors.

Adapters implement these structurally (no inheritance needed). The in-memory and SQLite
adapters in ``saga_orchestrator.adapters`` are the reference implementations. Optional
capabilities (``SagaIdLister``, ``SagaStatusCounter``, ``StrandingRecorder``,
``LeasedSagaRepository``, ``TerminalWaiter``, ``OutboxSource``) are typed protocols too; the
orchestrator resolves them once, when it is built. ``saga_orchestrator.testing.contract`` is
the contract suite every built-in adapter passes, for yours to run as well.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

from .events import SagaEvent
from .inbox import InboxEvent, StoreOutcome
from .runtime import StepRun
from .serialization import StateChanges
from .state import SagaContext, SagaStatus, SkippedSaga

__all__ = [
    "Clock",
    "EventPublisher",
    "IdempotencyPurger",
    "IdempotencyStore",
    "IncrementalSagaRepository",
    "LeasedSagaRepository",
    "OutboxSource",
    "SagaIdLister",
    "SagaInbox",
    "SagaListener",
    "SagaRepository",
    "SagaStatusCounter",
    "StepInterceptor",
    "StrandingRecorder",
    "TerminalWaiter",
]


@runtime_checkable
class SagaRepository(Protocol):
    """Durable saga state, one record per saga, written with optimistic concurrency.

    ``state`` arguments are the JSON documents of
    [`encode_context`][saga_orchestrator.serialization.encode_context]; the orchestrator
    serializes (and so validates) before calling, so a value that cannot be stored never
    reaches the repository. ``events`` are the lifecycle events of the transition: a
    repository with an outbox stores them in the same transaction and sets a class attribute
    ``stores_events = True`` (without it, with no listener or publisher and INFO logging off,
    the orchestrator does not build event objects at all). A repository may batch concurrent
    writes into one transaction (group commit) as long as each call returns only once its
    write is durable.
    """

    async def create(
        self, context: SagaContext[Any], state: str, events: Sequence[SagaEvent] = ()
    ) -> None:
        """Store a new saga at ``context.version`` (1).

        Raises [`SagaAlreadyExistsError`][saga_orchestrator.errors.SagaAlreadyExistsError] if
        one with its id is stored already.
        """
        ...

    async def update(
        self,
        context: SagaContext[Any],
        state: str,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        """Replace the saga's record if its stored version is ``expected_version``.

        Raises [`SagaConflictError`][saga_orchestrator.errors.SagaConflictError] (and writes
        nothing) otherwise.
        """
        ...

    async def get(self, saga_id: UUID) -> SagaContext[Any] | None:
        """The stored saga, or ``None``."""
        ...

    async def get_by_correlation_id(self, correlation_id: str) -> SagaContext[Any] | None:
        """The most recently created saga with this correlation id, or ``None``."""
        ...

    async def list_sagas(
        self,
        *,
        statuses: Collection[SagaStatus] | None = None,
        saga_type: str | None = None,
        limit: int = 1000,
    ) -> list[SagaContext[Any]]:
        """Stored sagas, oldest first, filtered by status and type."""
        ...


@runtime_checkable
class SagaStatusCounter(Protocol):
    """Optional repository capability: counts of stored sagas.

    For gauges that every process agrees on (``saga_states``). The built-in repositories
    have it.
    """

    async def count_by_status(
        self, statuses: Collection[SagaStatus]
    ) -> dict[tuple[str, SagaStatus], int]:
        """``{(saga_type, status): count}`` for the given statuses (absent means 0)."""
        ...


@runtime_checkable
class SagaIdLister(Protocol):
    """Optional repository capability: ids without decoding state. With it, ``recover()``
    reads each saga on its own, so one unreadable row (a data class renamed since) cannot
    stop the others from resuming. The built-in repositories have it."""

    async def list_saga_ids(
        self, *, statuses: Collection[SagaStatus] | None = None, limit: int = 1000
    ) -> list[UUID]:
        """Ids of stored sagas with one of ``statuses`` (all if ``None``), oldest first."""
        ...


@runtime_checkable
class StrandingRecorder(Protocol):
    """Optional repository capability: remembering *stranded* sagas, unfinished sagas that
    ``recover()`` or a worker could not resume (no factory for their type or definition
    version, unreadable, their factory raised), so that ``saga-orchestrator list`` and the
    ``saga_states`` metric show them. The built-in repositories have it.

    A mark holds while the saga stays at the stored version it was marked at: as soon as any
    process advances the saga, the mark no longer counts (nothing on the hot path clears it).
    """

    async def mark_stranded(
        self, saga_id: UUID, reason: str, *, saga_version: int | None = None
    ) -> None:
        """Record that ``saga_id`` could not be resumed, and why (replacing an older mark).
        Does nothing if no such saga is stored."""
        ...

    async def list_stranded(self, *, limit: int = 1000) -> list[SkippedSaga]:
        """The unfinished sagas whose mark still holds, oldest mark first."""
        ...


@runtime_checkable
class IncrementalSagaRepository(SagaRepository, Protocol):
    """Optional repository capability: a transition writes only what it changed, as a patch
    appended to the saga's journal, so that its cost does not grow with the saga (the
    PostgreSQL repository has it). ``create`` and ``update`` still write whole documents, and
    ``get`` and the queries return whole contexts either way: the last whole document with the
    patches written after it applied
    ([`decode_context`][saga_orchestrator.serialization.decode_context]``(document,
    patches=...)``).
    """

    async def update_changes(
        self,
        context: SagaContext[Any],
        changes: StateChanges,
        *,
        expected_version: int,
        events: Sequence[SagaEvent] = (),
    ) -> None:
        """Like ``update``, with the write given as
        [`StateChanges`][saga_orchestrator.serialization.StateChanges]: store
        ``changes.document`` whole when it is set (the patches before it no longer count), else
        append ``changes.patch`` after the stored version's. Raises ``SagaConflictError`` and
        writes nothing if the stored version is not ``expected_version``."""
        ...


@runtime_checkable
class LeasedSagaRepository(SagaRepository, Protocol):
    """Optional repository capability: leases, for
    [`SagaWorker`][saga_orchestrator.worker.SagaWorker]s in many processes sharing one
    database (the PostgreSQL repository has it).

    A saga in flight is leased to one repository object (one process) at a time; every write
    of a lease holder names its lease, so a process whose lease was taken over can no longer
    write the saga (it gets [`SagaLeaseError`][saga_orchestrator.errors.SagaLeaseError]).
    """

    async def create(
        self,
        context: SagaContext[Any],
        state: str,
        events: Sequence[SagaEvent] = (),
        *,
        lease: bool = True,
    ) -> None:
        """Store a new saga, leased to this object (``lease=True``, it runs it now) or not
        (``submit()``: any worker claims it)."""
        ...

    async def claim(
        self, limit: int, *, saga_types: Collection[str] | None = None
    ) -> list[SagaContext[Any]]:
        """Lease up to ``limit`` runnable sagas (in flight, not leased, due) and return them."""
        ...

    async def release(self, saga_id: UUID, *, delay_seconds: float = 0.0) -> bool:
        """Give up this object's lease (any worker may take the saga after ``delay_seconds``);
        whether it was still held."""
        ...

    async def release_all(self) -> int:
        """Release every lease this object holds; how many."""
        ...

    def lease_guard(self, saga_id: UUID) -> AbstractContextManager[None]:
        """Around a call of user code: cancels it before the lease can run out, raising
        ``SagaLeaseError`` (and refuses to start it if the lease has run out already)."""
        ...

    async def wait_for_work(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for a notification that work is due; whether one came."""
        ...


@runtime_checkable
class TerminalWaiter(Protocol):
    """Optional repository capability: being woken when a saga reaches a terminal status
    (``SagaOrchestrator.wait`` polls without it)."""

    async def wait_for_terminal(self, saga_id: UUID, seconds: float) -> bool:
        """Return when ``saga_id`` may have reached a terminal status (True), or after
        ``seconds`` (False)."""
        ...


@runtime_checkable
class SagaInbox(Protocol):
    """Optional repository capability: events addressed to sagas, kept until a wait step
    consumes them, and the sagas parked at a wait step (``wait_for_event``, ``sleep_for``).
    Every built-in repository has it; wait steps for events need it.

    The consumed event's id is recorded in the saga's own step record
    (``StepState.event_id``), in the write of the transition that consumes it: that is what
    makes an event consumed once. The inbox keeps events; it need not mark them.
    """

    async def store_event(self, event: InboxEvent) -> StoreOutcome:
        """Keep ``event`` for its saga, in one atomic step: only if the saga is stored and
        ``running``, and no event with its id is kept already. A stored event also makes the
        saga due (``due_waits``, and the timer workers claim by) if it is parked at a wait for
        an event of this name (and only then: an event for a later wait waits with it)."""
        ...

    async def saga_events(self, saga_id: UUID) -> list[InboxEvent]:
        """Every event kept for the saga, in the order they were stored."""
        ...

    async def due_waits(self, now: datetime, limit: int = 1000) -> list[UUID]:
        """Sagas parked at a wait step (and held by no process) that are due at ``now``: their
        timer or timeout has come, or an event was stored for them since they parked. Soonest
        first, at most ``limit``."""
        ...


@runtime_checkable
class IdempotencyStore(Protocol):
    """Results recorded under stable keys, so that work done once is replayed, not redone."""

    async def get(self, key: str) -> str | None:
        """The value stored under ``key``, or ``None``."""
        ...

    async def put_if_absent(self, key: str, value: str) -> str:
        """Store ``value`` unless ``key`` has one already; return the value that is stored."""
        ...


@runtime_checkable
class IdempotencyPurger(Protocol):
    """Optional idempotency-store capability: forgetting old entries. Entries are kept until
    purged; purge those of finished sagas (say, older than the longest saga plus a margin).
    A step whose entry is gone and which is not recorded as completed runs again, as it
    would without a store. All built-in stores have it."""

    async def purge_before(self, cutoff: datetime) -> int:
        """Forget entries stored before ``cutoff``; return how many."""
        ...


@runtime_checkable
class EventPublisher(Protocol):
    """Receives lifecycle events after the transition that produced them is recorded."""

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        """Deliver the events of one transition, in order.

        An error is logged and the event is lost (without an outbox): the transition itself is
        already recorded.
        """
        ...


@runtime_checkable
class OutboxSource(Protocol):
    """A transactional outbox: lifecycle events stored in the transaction of their transition.

    A repository with ``stores_events = True`` writes each transition's events to its outbox;
    an [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay] reads them back with
    ``fetch_unsent`` and marks them with ``mark_sent`` once a publisher confirmed them.
    """

    async def fetch_unsent(self, limit: int) -> list[tuple[int, SagaEvent]]:
        """Up to ``limit`` events not yet marked sent, as ``(outbox id, event)``, in outbox id
        order (which is each saga's event order). An event is returned again until it is
        marked sent, whatever the order its transaction committed in. A source that lets only
        one relay at a time read (PostgreSQL: an advisory lock) returns ``[]`` to the others.
        """
        ...

    async def mark_sent(self, ids: Sequence[int]) -> None:
        """Record that these outbox entries were published."""
        ...


@runtime_checkable
class SagaListener(Protocol):
    """Observes every lifecycle event, synchronously (metrics, logs). Must not raise."""

    def on_event(self, event: SagaEvent) -> None:
        """Called once per event, in sequence order, right after its transition is recorded."""
        ...


@runtime_checkable
class Clock(Protocol):
    """Wall-clock time (aware UTC) and sleeping; injectable so that tests control backoff."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (retry backoff, waiting for a due attempt)."""
        ...


class StepInterceptor(Protocol):
    """Wraps every action and compensation call: tracing, fault injection, timing.

    Call ``proceed()`` to run the wrapped call and return (or raise) what it does.
    """

    def __call__(self, run: StepRun, proceed: Callable[[], Awaitable[Any]]) -> Awaitable[Any]:
        """Wrap one call of an action or compensation.

        ``run`` says which attempt of which step; await ``proceed()`` to make the call.
        Interceptors nest in the order given, the first one outermost.
        """
        ...
