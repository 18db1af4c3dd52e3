"""The engine: runs steps, records every transition, compensates, retries, recovers."""

# SagaOrchestrator's public methods are here; its parts are in _driving (the forward and
# backward loop, waits and parking under a DriveControl), _calls (calling user code) and
# _recording (the write of each transition and its events).

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, TypeVar
from uuid import UUID

import anyio

from . import machine
from ._calls import _describe
from ._driving import _control, _Driving, _Parked, _saga_of
from .definitions import BaseSaga, SagaStep
from .errors import (
    InvalidEventError,
    SagaAlreadyExistsError,
    SagaConflictError,
    SagaNotFoundError,
    UnknownSagaTypeError,
)
from .inbox import Delivery, DeliveryStatus, InboxEvent, StoreOutcome, check_event
from .protocols import (
    Clock,
    EventPublisher,
    IdempotencyStore,
    IncrementalSagaRepository,
    LeasedSagaRepository,
    SagaIdLister,
    SagaInbox,
    SagaListener,
    SagaRepository,
    StepInterceptor,
    StrandingRecorder,
    TerminalWaiter,
)
from .registry import SagaFactory, SagaRegistry
from .retry import DEFAULT_COMPENSATION_RETRY, DEFAULT_RETRY, RetryPolicy
from .runtime import SystemClock
from .state import (
    ACTIVE_STATUSES,
    RecoveryReport,
    SagaContext,
    SagaResult,
    SagaStatus,
    SkippedSaga,
    StepState,
    StepStatus,
)

__all__ = ["DriveControl", "SagaOrchestrator"]

T = TypeVar("T")
logger = logging.getLogger("saga_orchestrator")


@dataclass(slots=True, frozen=True)
class DriveControl:
    """How a worker drives a claimed saga (``SagaOrchestrator.drive_claimed``): waits longer
    than ``park_after_seconds`` (and any wait once ``stopping()``) hand the saga back instead
    of sleeping with its lease. Once stopping, a wait under way ends as soon as ``stopped()``
    returns, and no new step starts: the saga is handed back."""

    park_after_seconds: float
    """Waits longer than this hand the saga back, its wake-up time stored."""
    stopping: Callable[[], bool]
    """Whether the worker is stopping."""
    stopped: Callable[[], Awaitable[None]] | None = None
    """Returns once the worker stops (ends a wait under way)."""


class SagaOrchestrator(_Driving):
    """Runs sagas durably on a [`SagaRepository`][saga_orchestrator.protocols.SagaRepository].

    Every transition is recorded before the orchestrator acts on it: a step's attempt is
    stored as running before its action is called, and the write that records a step's end
    also records the next step's start. A process killed at any instant therefore leaves a
    record from which [`recover`][saga_orchestrator.orchestrator.SagaOrchestrator.recover]
    continues, forward or backward. Actions run at least once; pass
    ``current_step().idempotency_key`` to the services they call.

    Args:
        repository: where sagas are stored.
        event_publisher: receives the lifecycle events after each recorded transition.
        idempotency_store: records each step's result under its idempotency key; a step
            whose result is already recorded there is replayed instead of run again.
        registry: how to rebuild each ``saga_type`` for ``recover``, ``resume``, ``retry``
            and ``cancel`` (a new, empty one by default; see ``register``).
        retry: the retry policy of steps that set none.
        compensation_retry: the retry policy of compensations that set none.
        clock: the time source and sleeper (a [`ManualClock`][saga_orchestrator.testing.ManualClock]
            in tests).
        listeners: called synchronously with every lifecycle event (metrics, logs).
        interceptors: wrap every action and compensation call (tracing, fault injection); an
            interceptor that is also a listener is registered as one too.
        recovery_concurrency: how many sagas ``recover`` resumes at once.
    """

    def __init__(
        self,
        repository: SagaRepository,
        event_publisher: EventPublisher | None = None,
        idempotency_store: IdempotencyStore | None = None,
        *,
        registry: SagaRegistry | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
        compensation_retry: RetryPolicy = DEFAULT_COMPENSATION_RETRY,
        clock: Clock | None = None,
        listeners: Iterable[SagaListener] = (),
        interceptors: Iterable[StepInterceptor] = (),
        recovery_concurrency: int = 16,
    ) -> None:
        self.repository = repository
        """Where sagas are stored."""
        self.event_publisher = event_publisher
        """Receives the lifecycle events, if set."""
        self.idempotency_store = idempotency_store
        """Step results by idempotency key, if set."""
        self.registry = registry if registry is not None else SagaRegistry()
        """How to rebuild stored sagas, by ``saga_type``."""
        self.default_retry = retry
        """The retry policy of steps that set none."""
        self.default_compensation_retry = compensation_retry
        """The retry policy of compensations that set none."""
        self.clock: Clock = clock if clock is not None else SystemClock()
        """The time source and sleeper."""
        self.listeners = list(listeners)
        """The listeners, interceptors that listen included."""
        self.interceptors = list(interceptors)
        """The step interceptors, outermost first."""
        # An interceptor that also listens (tracing) needs registering only once.
        for interceptor in self.interceptors:
            if isinstance(interceptor, SagaListener) and interceptor not in self.listeners:
                self.listeners.append(interceptor)
        if recovery_concurrency < 1:
            raise ValueError("recovery_concurrency must be >= 1")
        self.recovery_concurrency = recovery_concurrency
        """How many sagas ``recover`` resumes at once."""
        # The repository's optional capabilities, resolved once (see protocols.py).
        # Declared attributes (see SagaRepository): an outbox, a store no other process reads.
        self._repository_stores_events = getattr(repository, "stores_events", False) is True
        self._process_local = getattr(repository, "process_local", False) is True
        self._incremental: IncrementalSagaRepository | None = (
            repository if isinstance(repository, IncrementalSagaRepository) else None
        )
        self._leases: LeasedSagaRepository | None = (
            repository if isinstance(repository, LeasedSagaRepository) else None
        )
        self._terminal_waiter: TerminalWaiter | None = (
            repository if isinstance(repository, TerminalWaiter) else None
        )
        self._id_lister: SagaIdLister | None = (
            repository if isinstance(repository, SagaIdLister) else None
        )
        self._strandings: StrandingRecorder | None = (
            repository if isinstance(repository, StrandingRecorder) else None
        )
        self._inbox: SagaInbox | None = repository if isinstance(repository, SagaInbox) else None
        self._in_flight: set[UUID] = set()
        self._poked: set[UUID] = set()

    # ------------------------------------------------------------------ public API

    def register(self, saga_type: str, factory: SagaFactory, *, version: int | None = None) -> None:
        """Shortcut for ``orchestrator.registry.register``: how to rebuild ``saga_type`` (the
        sagas of definition version ``version``, or of the version ``factory``'s sagas
        declare)."""
        self.registry.register(saga_type, factory, version=version)

    async def execute(self, saga: BaseSaga[T], *, on_workers: bool = False) -> SagaResult[T]:
        """Run ``saga`` to a terminal status and return its result.

        A saga that reaches a wait step (``wait_for_event``, ``sleep_for``) is *parked*
        there: the call returns its result with status ``running`` (its current step
        ``waiting``), and ``deliver_event``, ``wake_due``, ``recover`` or a worker carries it
        on. If a saga with the same ``saga_id`` is already stored, it is resumed from its stored
        state (or its stored result returned), never started twice. With
        ``on_workers=True`` the saga is submitted (``submit``) and run by a
        [`SagaWorker`][saga_orchestrator.worker.SagaWorker], and this call waits for its
        result (``wait``); ``saga.context`` is then the stored final state.
        """
        context = saga.context
        context._saga = saga
        if on_workers:
            saga_id = await self.submit(saga)
            result: SagaResult[T] = await self.wait(saga_id)
            stored = await self.repository.get(saga_id)
            if stored is not None:
                saga.attach(stored)
            return result
        if context.version == 0:
            try:
                await self._start(context)
            except SagaAlreadyExistsError:
                stored = await self.repository.get(context.saga_id)
                if stored is None:  # pragma: no cover - deleted in between
                    raise
                saga.attach(stored)
                context = stored
                self._reconcile_interrupted(context)
        return await self._drive(context)

    async def submit(self, saga: BaseSaga[Any]) -> UUID:
        """Store ``saga`` for [`SagaWorker`][saga_orchestrator.worker.SagaWorker]s to run,
        and return its id without running it.

        Needs a repository that workers claim from
        ([`PostgresSagaRepository`][saga_orchestrator.adapters.postgres.PostgresSagaRepository]);
        waiting workers are notified at once. Submitting a saga whose id is stored already
        stores nothing and returns the id. Bad input raises here, and nothing is stored.
        """
        if self._leases is None:
            raise TypeError(
                f"{type(self.repository).__name__} has no workers to submit to; use execute(),"
                " or a repository that workers claim from (PostgresSagaRepository)"
            )
        context = saga.context
        context._saga = saga
        if context.version == 0:
            try:
                await self._start(context, lease=False)
            except SagaAlreadyExistsError:
                pass
        return context.saga_id

    async def wait(
        self, saga_id: UUID, *, timeout_seconds: float | None = None, poll_seconds: float = 1.0
    ) -> SagaResult[Any]:
        """Wait until the stored saga is terminal (run by any process) and return its result.

        Woken by the repository's notifications where it has them (PostgreSQL LISTEN/NOTIFY),
        and polls every ``poll_seconds`` in any case. Raises ``TimeoutError`` after
        ``timeout_seconds``, ``SagaNotFoundError`` if no such saga is stored.
        """
        notified = (
            self._terminal_waiter.wait_for_terminal if self._terminal_waiter is not None else None
        )
        with anyio.fail_after(timeout_seconds) if timeout_seconds is not None else nullcontext():
            while True:
                context = await self._load(saga_id)
                if context.is_terminal:
                    return SagaResult.from_context(context)
                if notified is not None:
                    await notified(saga_id, poll_seconds)
                else:
                    await anyio.sleep(poll_seconds)

    async def recover(self) -> RecoveryReport:
        """Resume every stored saga that is not terminal, from exactly where it stopped.

        Returns a [`RecoveryReport`][saga_orchestrator.state.RecoveryReport]: a list of the
        results of the sagas it resumed (as before), whose ``skipped`` names every saga it
        left as it was, and why: its ``saga_type`` has no registered factory (another process
        may know it), it cannot be read, or it cannot be resumed (its definition changed, its
        factory raised). Each skipped saga is also logged (``saga.recovery.skipped`` /
        ``saga.recovery.failed``); the others are still resumed. Meant for start-up: it
        assumes that no other live process is driving the same sagas (a saga advanced
        elsewhere in the meantime is detected by its version, left to that process and not
        reported as skipped). A saga parked at a wait step is resumed too: it consumes an
        event kept for it, or ends its wait if its time has come, or else stays parked and is
        listed in ``report.waiting``.
        """
        report = RecoveryReport()
        limiter = anyio.CapacityLimiter(self.recovery_concurrency)
        if self._id_lister is not None:
            # Each saga is read on its own, so one unreadable row cannot stop the others.
            pending: list[UUID | SagaContext[Any]] = list(
                await self._id_lister.list_saga_ids(statuses=ACTIVE_STATUSES, limit=1_000_000)
            )
        else:
            pending = list(
                await self.repository.list_sagas(statuses=ACTIVE_STATUSES, limit=1_000_000)
            )

        async def resume(item: UUID | SagaContext[Any]) -> None:
            saga_id = item if isinstance(item, UUID) else item.saga_id
            context: SagaContext[Any] | None = None
            async with limiter:
                try:
                    context = await self.repository.get(item) if isinstance(item, UUID) else item
                    if context is None or context.is_terminal:
                        return  # finished meanwhile
                    self.registry.rebuild(context)
                except Exception as exc:
                    # Unreadable, no factory for its type or version, its factory raised.
                    skipped = SkippedSaga(
                        saga_id,
                        context.saga_type if context is not None else None,
                        _describe(exc),
                        context.saga_version if context is not None else None,
                    )
                    report.skipped.append(skipped)
                    if isinstance(exc, UnknownSagaTypeError):  # no factory for type or version
                        logger.warning(
                            "saga.recovery.skipped: saga %s: %s",
                            saga_id,
                            skipped.reason,
                            extra={"event": "saga.recovery.skipped", "saga_id": str(saga_id)},
                        )
                    else:
                        logger.exception(
                            "saga.recovery.failed: saga %s",
                            saga_id,
                            extra={"event": "saga.recovery.failed", "saga_id": str(saga_id)},
                        )
                    await self._strand(skipped)
                    return
                try:
                    self._reconcile_interrupted(context)
                    result = await self._drive(context)
                    if result.status is SagaStatus.RUNNING:
                        report.waiting.append(result)  # parked at a wait step
                    else:
                        report.append(result)
                except SagaConflictError as exc:
                    logger.warning("saga.recovery.conflict: %s", exc)
                except Exception as exc:
                    # One saga that cannot be resumed must not stop the others.
                    report.skipped.append(
                        SkippedSaga(
                            saga_id, context.saga_type, _describe(exc), context.saga_version
                        )
                    )
                    logger.exception(
                        "saga.recovery.failed: saga %s",
                        saga_id,
                        extra={"event": "saga.recovery.failed", "saga_id": str(saga_id)},
                    )

        async with anyio.create_task_group() as tg:
            for item in pending:
                tg.start_soon(resume, item)
        return report

    async def resume(self, saga_id: UUID) -> SagaResult[Any]:
        """Drive one stored saga to a terminal status, or until it parks at a wait step
        (rebuilt through the registry)."""
        context = await self._load(saga_id)
        if context.is_terminal:
            return SagaResult.from_context(context)
        self.registry.rebuild(context)
        self._reconcile_interrupted(context)
        return await self._drive(context)

    async def retry(self, saga_id: UUID) -> SagaResult[Any]:
        """Retry the failed compensation of a ``FAILED`` saga, then carry on compensating.

        Use it once the cause is fixed (the refund API is back). The step's compensation
        attempts start again from 1.
        """
        context = await self._load_rebuilt(saga_id, SagaStatus.FAILED, "retried")
        pending = machine.retry_failed(context, _saga_of(context).steps, self.clock.now())
        await self._commit(context, pending)
        return await self._drive(context)

    async def cancel(
        self, saga_id: UUID, reason: str = "cancelled by an operator"
    ) -> SagaResult[Any]:
        """Stop a running saga and compensate what it did, then return its result.

        The step in flight, if any, counts as possibly done and is compensated too. If
        another orchestrator is driving the saga, this write moves the stored version on:
        that orchestrator stops at its next transition (SagaConflictError) and this one
        compensates.
        """
        context = await self._load_rebuilt(saga_id, SagaStatus.RUNNING, "cancelled")
        pending = machine.cancel(context, _saga_of(context).steps, reason, self.clock.now())
        await self._commit(context, pending)
        return await self._drive(context)

    async def deliver_event(
        self,
        event: str,
        payload: Mapping[str, Any] | None = None,
        *,
        event_id: str | UUID,
        saga_id: UUID | None = None,
        correlation_id: str | None = None,
        drive: bool | None = None,
    ) -> Delivery:
        """Deliver the event ``event`` to one saga, addressed by ``saga_id`` or by
        ``correlation_id`` (the most recent saga with it), for its wait step
        ([`wait_for_event`][saga_orchestrator.definitions.wait_for_event]) to consume.

        The event is stored in the saga's inbox first, durably, in the saga's repository. A
        saga parked at that wait consumes it: ``payload``'s fields are set on its data (through
        the step's ``accept``) and it goes on. An event that comes before the saga reaches its
        wait is kept, and consumed when it does. Delivery is idempotent: an ``event_id``
        delivered before changes nothing (``DUPLICATE``).

        ``drive``: carry the saga on in this call, up to its end or its next wait (``None``,
        the default: unless the repository has workers, whom the delivery wakes instead, by
        LISTEN/NOTIFY on PostgreSQL). It needs the saga's type registered here; otherwise the
        event is stored for ``wake_due``, ``recover`` or a worker.

        Returns a [`Delivery`][saga_orchestrator.inbox.Delivery]: ``CONSUMED``, ``STORED``,
        ``DUPLICATE``, or ``IGNORED`` (nothing stored: the saga is finished or compensating,
        it is past every wait for this event, or it is waiting for it and the wait's time is
        up, so that the timeout wins; the call then carries the saga on to it, as ``drive``
        says). Raises
        [`SagaNotFoundError`][saga_orchestrator.errors.SagaNotFoundError] for an unknown
        saga, and [`InvalidEventError`][saga_orchestrator.errors.InvalidEventError] for a bad
        name, id, address or payload (nothing stored either way). The payload's fields are
        checked against the saga's data when consumed: one the data has not fails the wait.
        """
        name, key, text = check_event(event, payload, event_id, saga_id, correlation_id)
        if self._inbox is None:
            raise TypeError(
                f"{type(self.repository).__name__} keeps no events (it is no SagaInbox); use "
                "a repository that does (all the built-in ones)"
            )
        if saga_id is not None:
            context = await self.repository.get(saga_id)
            if context is None:
                raise SagaNotFoundError(saga_id)
        else:
            assert correlation_id is not None
            context = await self.repository.get_by_correlation_id(correlation_id)
            if context is None:
                raise SagaNotFoundError(correlation_id=correlation_id)
        target = context.saga_id

        def answer(status: DeliveryStatus, saga_status: SagaStatus) -> Delivery:
            return Delivery(status, target, saga_status, key)

        if any(state.event_id == key for state in context.steps):
            return answer(DeliveryStatus.DUPLICATE, context.status)
        if context.status is not SagaStatus.RUNNING:
            kept = await self._inbox.saga_events(target)
            duplicate = any(e.event_id == key for e in kept)
            return answer(
                DeliveryStatus.DUPLICATE if duplicate else DeliveryStatus.IGNORED, context.status
            )
        saga = self.registry.find(context)
        now = self.clock.now()
        current = context.steps[context.current_step_index]
        if current.status is StepStatus.WAITING and current.waiting_for == name:
            wake = machine.wake_at(context, saga.steps if saga is not None else None)
            if wake is not None and now >= wake:
                # Too late: the wait's time is up, so the timeout wins. Nothing is stored;
                # the saga is carried on to its timeout now, if it can be here.
                if drive is not False and saga is not None:
                    result = await self._wake(target)
                    if result is not None:
                        return answer(DeliveryStatus.IGNORED, result.status)
                return answer(DeliveryStatus.IGNORED, context.status)
        if saga is not None:
            waits = [s for s in saga.steps if s.wait is not None and s.wait.event == name]
            if not waits:
                raise InvalidEventError(
                    f"saga {target} ({context.saga_type}) has no step waiting for event "
                    f"{name!r}; its waits: "
                    f"{sorted({s.wait.event for s in saga.steps if s.wait and s.wait.event})}",
                    saga_id=target,
                )
            if not any(
                index >= context.current_step_index
                and context.steps[index].status in (StepStatus.PENDING, StepStatus.WAITING)
                for index, step in enumerate(saga.steps)
                if step.wait is not None and step.wait.event == name
            ):
                return answer(DeliveryStatus.IGNORED, context.status)
        stored = await self._inbox.store_event(InboxEvent(key, target, name, text, now))
        if stored is StoreOutcome.NO_SAGA:  # deleted meanwhile
            raise SagaNotFoundError(target)
        if stored is not StoreOutcome.STORED:
            latest = await self.repository.get(target)
            status = latest.status if latest is not None else context.status
            if stored is StoreOutcome.DUPLICATE:
                return answer(DeliveryStatus.DUPLICATE, status)
            return answer(DeliveryStatus.IGNORED, status)
        if drive is None:
            drive = self._leases is None
        if not drive or saga is None:
            return answer(DeliveryStatus.STORED, SagaStatus.RUNNING)
        result = await self._wake(target)
        if result is None:  # driven elsewhere: what is stored now says
            latest = await self.repository.get(target)
            if latest is None:  # pragma: no cover - deleted meanwhile
                return answer(DeliveryStatus.STORED, SagaStatus.RUNNING)
            result = SagaResult.from_context(latest)
        if any(state.event_id == key for state in result.steps):
            return answer(DeliveryStatus.CONSUMED, result.status)
        return answer(DeliveryStatus.STORED, result.status)

    async def wake_due(self, *, limit: int = 1000) -> list[SagaResult[Any]]:
        """Carry on every saga parked at a wait step that is due now: an event was delivered
        for it (and not consumed), or its timer or timeout came. Returns their results
        (``running`` if one parked again at its next wait).

        This is the timer of a process without workers (SQLite, memory): call it every second
        or so, or after ``deliver_event(..., drive=False)``. A saga this orchestrator is
        driving, or whose type it has no factory for, is left alone. Workers do this
        themselves (PostgreSQL).
        """
        if self._inbox is None:
            raise TypeError(
                f"{type(self.repository).__name__} keeps no parked sagas (it is no SagaInbox)"
            )
        results: list[SagaResult[Any]] = []
        limiter = anyio.CapacityLimiter(self.recovery_concurrency)

        async def wake(saga_id: UUID) -> None:
            async with limiter:
                try:
                    result = await self._wake(saga_id)
                except UnknownSagaTypeError as exc:
                    logger.warning("saga.wake.skipped: saga %s: %s", saga_id, exc)
                    return
                if result is not None:
                    results.append(result)

        due = await self._inbox.due_waits(self.clock.now(), limit)
        async with anyio.create_task_group() as tg:
            for saga_id in due:
                if saga_id not in self._in_flight:
                    tg.start_soon(wake, saga_id)
        return results

    async def get(self, saga_id: UUID) -> SagaContext[Any] | None:
        """The stored state of a saga, or ``None``."""
        return await self.repository.get(saga_id)

    async def list_sagas(
        self,
        *,
        statuses: Collection[SagaStatus] | None = None,
        saga_type: str | None = None,
        limit: int = 1000,
    ) -> list[SagaContext[Any]]:
        """Stored sagas, oldest first (see ``SagaRepository.list_sagas``)."""
        return await self.repository.list_sagas(statuses=statuses, saga_type=saga_type, limit=limit)

    async def drive_claimed(
        self, context: SagaContext[Any], control: DriveControl
    ) -> SagaResult[Any] | SkippedSaga | None:
        """Drive a saga a worker claimed (leased to this orchestrator's repository).

        Returns its result once terminal; ``None`` if it was parked, handed back with its
        wake-up time stored (a long wait, or the worker stopping); or a
        [`SkippedSaga`][saga_orchestrator.state.SkippedSaga] if it cannot be rebuilt here (no
        factory for its type or definition version, its factory raised): it is then marked
        stranded, and the caller releases it for a process that can. Raises
        ``SagaConflictError`` (``SagaLeaseError``) if another process took it over.
        """
        try:
            self.registry.rebuild(context)
        except Exception as exc:
            skipped = SkippedSaga(
                context.saga_id, context.saga_type, _describe(exc), context.saga_version
            )
            await self._strand(skipped)
            return skipped
        self._reconcile_interrupted(context)
        token = _control.set(control)
        try:
            return await self._drive(context)
        except _Parked:
            return None
        finally:
            _control.reset(token)

    # ------------------------------------------------------------------ spec helper

    async def _execute_step(
        self, context: SagaContext[Any], step: StepState | SagaStep[Any] | str
    ) -> bool:
        """Run one step's action with retries, outside of any recorded saga run.

        Records the result in the idempotency store (so a later ``execute`` with the same
        ``saga_id`` replays it instead of calling the action) and applies it to the data.
        Returns whether the step succeeded. Used by tests to simulate partial execution.
        """
        saga = _saga_of(context)
        name = step if isinstance(step, str) else step.name
        index = next(i for i, s in enumerate(saga.steps) if s.name == name)
        context._step_json = None  # a record changes outside a transition: encode all next time
        return await self._attempt_unrecorded(context, saga.steps[index], context.steps[index])
