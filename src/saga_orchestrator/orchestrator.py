"""The engine: runs steps, records every transition, compensates, retries, recovers."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from contextlib import nullcontext
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import anyio

from . import machine
from .definitions import BaseSaga, SagaStep
from .errors import (
    InvalidStepResultError,
    MainModuleDataWarning,
    SagaAlreadyExistsError,
    SagaConflictError,
    SagaLeaseError,
    SagaNotFoundError,
    SagaStateError,
    SerializationError,
    UnknownSagaTypeError,
)
from .events import SagaEvent, SagaEventType
from .protocols import (
    Clock,
    EventPublisher,
    IdempotencyStore,
    LeasedSagaRepository,
    SagaIdLister,
    SagaListener,
    SagaRepository,
    StepInterceptor,
    StrandingRecorder,
    TerminalWaiter,
)
from .registry import SagaFactory, SagaRegistry
from .retry import DEFAULT_COMPENSATION_RETRY, DEFAULT_RETRY, RetryPolicy, is_refusal
from .runtime import Phase, StepRun, SystemClock, _current
from .serialization import (
    _MAIN_MODULE_TYPES,
    dumps,
    encode_transition,
    encode_value,
    loads,
    main_module_warning,
    take_main_module_types,
)
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


@dataclass(slots=True)
class _Outcome:
    """How a call of user code went, and how long it took (for events and metrics)."""

    failure: machine.Failure | None
    seconds: float


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


def _stopping() -> bool:
    control = _control.get()
    return control is not None and control.stopping()


class _Parked(Exception):
    """The saga waits for a stored time; a worker releases it for any worker to resume."""


_control: ContextVar[DriveControl | None] = ContextVar("saga_orchestrator_drive", default=None)


def _describe(error: BaseException) -> str:
    message = str(error)
    if isinstance(error, UnknownSagaTypeError):  # its message says it all
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


class SagaOrchestrator:
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

    # ------------------------------------------------------------------ public API

    def register(self, saga_type: str, factory: SagaFactory, *, version: int | None = None) -> None:
        """Shortcut for ``orchestrator.registry.register``: how to rebuild ``saga_type`` (the
        sagas of definition version ``version``, or of the version ``factory``'s sagas
        declare)."""
        self.registry.register(saga_type, factory, version=version)

    async def execute(self, saga: BaseSaga[T], *, on_workers: bool = False) -> SagaResult[T]:
        """Run ``saga`` to a terminal status and return its result.

        If a saga with the same ``saga_id`` is already stored, it is resumed from its stored
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
        reported as skipped).
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
                    report.append(await self._drive(context))
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
        """Drive one stored saga to a terminal status (rebuilt through the registry)."""
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

    # ------------------------------------------------------------------ driving

    async def _load(self, saga_id: UUID) -> SagaContext[Any]:
        context = await self.repository.get(saga_id)
        if context is None:
            raise SagaNotFoundError(saga_id)
        return context

    async def _load_rebuilt(
        self, saga_id: UUID, status: SagaStatus, done_to_it: str
    ) -> SagaContext[Any]:
        """The stored saga, rebuilt for driving, if it is in `status`; else SagaStateError."""
        context = await self._load(saga_id)
        if context.status is not status:
            raise SagaStateError(
                f"saga {saga_id} is {context.status.value}; "
                f"only a {status.value} saga can be {done_to_it}",
                saga_id=saga_id,
            )
        self.registry.rebuild(context)
        return context

    async def _start(self, context: SagaContext[Any], *, lease: bool = True) -> None:
        saga = _saga_of(context)
        built = (context.created_at, context.updated_at, context.steps[0].copy())
        pending = machine.start(
            context, self.clock.now(), timeout_minutes=saga.timeout_minutes, begin=lease
        )
        try:
            await self._commit(context, pending, lease=lease)
        except SerializationError:
            # Bad input: nothing was written, and the saga is left as it was built.
            machine.undo_start(context, built)
            raise

    def _reconcile_interrupted(self, context: SagaContext[Any]) -> None:
        """Mark the attempt a dead process left in flight: it may have acted, and it counts."""
        machine.reconcile_interrupted(context, self.clock.now())

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

    async def _drive(self, context: SagaContext[Any]) -> SagaResult[Any]:
        try:
            while context.status is SagaStatus.RUNNING:
                await self._advance_forward(context)
            while context.status is SagaStatus.COMPENSATING:
                await self._advance_compensation(context)
        except BaseException:
            # Stopped before the end (cancelled, parked, an error): a lease this process
            # holds is handed back now, not left to heartbeats that would keep it forever.
            await self._release(context.saga_id)
            raise
        return SagaResult.from_context(context)

    async def _strand(self, skipped: SkippedSaga) -> None:
        """Mark a saga that could not be resumed as stranded, where the repository can."""
        if self._strandings is None:
            return
        try:
            await self._strandings.mark_stranded(
                skipped.saga_id, skipped.reason, saga_version=skipped.saga_version
            )
        except Exception as exc:  # the report and the log still say it
            logger.warning("saga.stranded.mark_failed: saga %s: %s", skipped.saga_id, exc)

    async def _release(self, saga_id: UUID) -> None:
        if self._leases is None:
            return
        with anyio.move_on_after(5, shield=True):
            try:
                await self._leases.release(saga_id)
            except Exception as exc:  # the lease expires on its own
                logger.warning("saga.lease.release_failed: saga %s: %s", saga_id, exc)

    # ------------------------------------------------------------------ forward

    async def _advance_forward(self, context: SagaContext[Any]) -> None:
        """Run the current step until it completes or fails for good (both recorded)."""
        index = context.current_step_index
        state = context.steps[index]
        steps = _saga_of(context).steps
        step = steps[index]
        policy = step.retry or self.default_retry
        if state.status is StepStatus.PENDING:
            # Resumed: either a backoff was in progress or an attempt was interrupted. A
            # deadline before the next attempt ends the wait (and the step) early.
            await self._sleep_until(machine.wake_at(context, steps))
            now = self.clock.now()
            failure = machine.why_no_attempt(context, step, state, policy, now)
            if failure is not None:
                await self._commit(context, machine.fail_step(context, steps, index, failure, now))
                return
            if _stopping():
                raise _Parked  # a stopping worker starts no step: any worker resumes it
            await self._commit(context, machine.begin_attempt(context, index, now))
        if state.status is StepStatus.COMPLETED:  # pragma: no cover - defensive
            context.current_step_index = min(index + 1, len(context.steps) - 1)
            return

        result = await self._attempt(context, step, state)
        now = self.clock.now()
        if result.failure is None:
            pending = machine.complete_step(
                context, steps, index, now, result.seconds, stopping=_stopping()
            )
        else:
            pending = machine.attempt_failed(
                context, steps, index, result.failure, policy, now, result.seconds
            )
        await self._commit(context, pending)

    # ------------------------------------------------------------------ backward

    async def _advance_compensation(self, context: SagaContext[Any]) -> None:
        index = context.current_step_index
        state = context.steps[index]
        steps = _saga_of(context).steps
        step = steps[index]
        policy = step.compensation_retry or self.default_compensation_retry
        if state.next_attempt_at is not None:
            # Waiting out a backoff, or resuming after an interrupted attempt.
            await self._sleep_until(state.next_attempt_at)
            await self._commit(
                context, machine.resume_compensation(context, policy, self.clock.now())
            )
            if context.status is not SagaStatus.COMPENSATING:
                return  # no attempt was left: the saga failed
        # A compensation and the write recording it are not abandoned half-way, except by a
        # worker's shutdown after its grace period: the attempt then counts as interrupted
        # and another worker runs it again, as after a crash.
        with anyio.CancelScope(shield=_control.get() is None):
            assert step.compensation is not None
            called = await self._call_guarded(
                context, step, Phase.COMPENSATION, state.compensation_attempts, step.compensation
            )
            now = self.clock.now()
            if called.failure is None:
                pending = machine.compensation_succeeded(context, steps, index, now, called.seconds)
            else:
                pending = machine.compensation_failed(
                    context, index, called.failure.text, policy, now, called.seconds
                )
            await self._commit(context, pending)

    # ------------------------------------------------------------------ calling user code

    async def _attempt(
        self, context: SagaContext[Any], step: SagaStep[Any], state: StepState
    ) -> _Outcome:
        """One attempt of a forward step, idempotency replay included; result applied."""
        store = self.idempotency_store
        key = f"{context.saga_id}:{step.name}"  # context.idempotency_key, without the lookup
        if store is not None:
            cached = await store.get(key)
            if cached is not None:
                _apply(context, self._check_result(context, step.name, loads(cached)))
                return _Outcome(None, 0.0)
        result_box: list[Any] = []

        async def action(data: Any) -> None:
            result_box.append(await step.action(data))

        called = await self._call_guarded(context, step, Phase.ACTION, state.attempts, action)
        if called.failure is not None:
            return called
        result = result_box[0]
        try:
            checked = self._check_result(context, step.name, result)
            if store is not None:
                encoded = dumps(checked, f"{step.name} result")
                stored = await store.put_if_absent(key, encoded)
                if stored != encoded:  # another run recorded this step first: theirs stands
                    checked = self._check_result(context, step.name, loads(stored))
            _apply(context, checked)
        except (InvalidStepResultError, SerializationError) as exc:
            # The action ran, so its effect may exist: compensate it, do not retry it.
            failure = machine.Failure(text=_describe(exc), retryable=False, effect_possible=True)
            return _Outcome(failure, called.seconds)
        return called

    async def _call_guarded(
        self,
        context: SagaContext[Any],
        step: SagaStep[Any],
        phase: Phase,
        attempt: int,
        fn: Callable[[Any], Awaitable[Any]],
    ) -> _Outcome:
        run = StepRun(
            saga_id=context.saga_id,
            saga_type=context.saga_type,
            step=step.name,
            phase=phase,
            attempt=attempt,
            idempotency_key=(
                f"{context.saga_id}:{step.name}:compensate"
                if phase is Phase.COMPENSATION
                else f"{context.saga_id}:{step.name}"
            ),
            fencing_token=context.version,
        )
        timeout = step.timeout_seconds
        if phase is Phase.COMPENSATION and step.compensation_timeout_seconds is not None:
            timeout = step.compensation_timeout_seconds
        if phase is Phase.ACTION and context.deadline is not None and not step.retriable:
            remaining = (context.deadline - self.clock.now()).total_seconds()
            timeout = remaining if timeout is None else min(timeout, remaining)
        call: Callable[[], Awaitable[Any]] = lambda: fn(context.data)  # noqa: E731
        for interceptor in reversed(self.interceptors):
            call = _wrap(interceptor, run, call)
        policy = (step.retry or self.default_retry) if phase is Phase.ACTION else None
        token = _current.set(run)
        # A repository with leases cancels a step before its lease can expire.
        guard = (
            self._leases.lease_guard(context.saga_id) if self._leases is not None else nullcontext()
        )
        started = time.perf_counter()
        try:
            with guard:  # raises SagaLeaseError if the lease runs out first
                if timeout is None:
                    await call()
                else:
                    with anyio.fail_after(max(timeout, 0.0)):
                        await call()
        except SagaLeaseError:
            raise
        except Exception as exc:
            seconds = time.perf_counter() - started
            retryable = policy.should_retry(exc) if policy is not None else True
            timed_out = isinstance(exc, TimeoutError) and timeout is not None
            text = f"TimeoutError: no result within {timeout:g}s" if timed_out else _describe(exc)
            event = "saga.step.failed" if phase is Phase.ACTION else "saga.compensation.failed"
            logger.warning(
                "%s: %s %s attempt %d: %s",
                event,
                context.saga_type,
                step.name,
                attempt,
                text,
                extra={
                    "event": event,
                    "saga_id": str(context.saga_id),
                    "saga_type": context.saga_type,
                    "step": step.name,
                    "attempt": attempt,
                },
            )
            # Only a declared refusal proves that the step did not act. After anything else (a
            # timeout, a lost connection, a bug after the charge) nobody knows, so the step
            # counts as possibly done and is compensated.
            effect_possible = (
                phase is Phase.COMPENSATION or timed_out or not is_refusal(exc, step.refusals)
            )
            failure = machine.Failure(
                text=text, retryable=retryable, effect_possible=effect_possible
            )
            return _Outcome(failure, seconds)
        finally:
            _current.reset(token)
        return _Outcome(None, time.perf_counter() - started)

    def _check_result(self, context: SagaContext[Any], step: str, result: Any) -> dict[str, Any]:
        if result is None:
            return {}
        if not isinstance(result, Mapping):
            raise InvalidStepResultError(
                f"step {step!r} returned {type(result).__name__}; "
                "an action returns a dict of data fields to set, or None",
                saga_id=context.saga_id,
                step=step,
            )
        fields = getattr(type(context.data), "__dataclass_fields__", {})
        checked: dict[str, Any] = {}
        for key, value in result.items():
            if key not in fields:
                raise InvalidStepResultError(
                    f"step {step!r} returned unknown field {key!r}; "
                    f"{type(context.data).__name__} has {sorted(fields)}",
                    saga_id=context.saga_id,
                    step=step,
                )
            encode_value(value, f"{step} result[{key!r}]")
            checked[key] = value
        return checked

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
        definition = saga.steps[index]
        state = context.steps[index]
        policy = definition.retry or self.default_retry
        while True:
            machine.unrecorded_attempt_start(state)
            failure = (await self._attempt(context, definition, state)).failure
            final = (
                failure is None or not failure.retryable or state.attempts >= policy.max_attempts
            )
            machine.unrecorded_attempt_end(state, failure, final=final)
            if failure is None or final:
                return failure is None
            await self.clock.sleep(policy.backoff_seconds(state.attempts))

    # ------------------------------------------------------------------ recording

    async def _commit(
        self, context: SagaContext[Any], pending: machine.Transition, *, lease: bool = True
    ) -> None:
        now = self.clock.now()
        context.updated_at = now
        expected = context.version
        first_sequence = context.event_sequence
        # Sequence numbers always advance; the event objects are built only when someone
        # consumes them (a listener, a publisher, or a repository with an outbox).
        events: list[SagaEvent] = []
        if (
            self.listeners
            or self.event_publisher is not None
            or self._repository_stores_events
            or logger.isEnabledFor(logging.INFO)
        ):
            events = [
                SagaEvent(
                    saga_id=context.saga_id,
                    saga_type=context.saga_type,
                    correlation_id=context.correlation_id,
                    sequence=first_sequence + offset + 1,
                    occurred_at=now,
                    **item,
                )
                for offset, item in enumerate(pending.events)
            ]
        context.version = expected + 1
        context.event_sequence = first_sequence + len(pending.events)
        try:
            state = encode_transition(context)
            if _MAIN_MODULE_TYPES and not self._process_local:
                for cls in take_main_module_types():
                    warnings.warn(main_module_warning(cls), MainModuleDataWarning, stacklevel=2)
            if expected == 0 and not lease:
                assert self._leases is not None  # submit() checked
                await self._leases.create(context, state, events, lease=False)
            elif expected == 0:
                await self.repository.create(context, state, events)
            else:
                await self.repository.update(
                    context, state, expected_version=expected, events=events
                )
        except BaseException:
            context.version = expected
            context.event_sequence = first_sequence
            context._step_json = None  # what is stored is unknown now: encode it all next time
            raise
        await self._emit(events)

    async def _emit(self, events: Sequence[SagaEvent]) -> None:
        if not events:
            return
        if logger.isEnabledFor(logging.INFO):
            for event in events:
                _log_event(event)
        for listener in self.listeners:
            for event in events:
                try:
                    listener.on_event(event)
                except Exception:  # a broken listener must not break sagas
                    logger.exception("saga.listener.failed: %r", listener)
        if self.event_publisher is not None:
            try:
                await self.event_publisher.publish(events)
            except Exception:
                # The transition is recorded; without an outbox the event is lost, loudly.
                logger.exception(
                    "saga.event.publish_failed: %d events of saga %s",
                    len(events),
                    events[0].saga_id,
                )

    async def _sleep_until(self, when: datetime | None) -> None:
        if when is None:
            return
        delay = (when - self.clock.now()).total_seconds()
        if delay > 0 and math.isfinite(delay):
            control = _control.get()
            if control is not None and (delay > control.park_after_seconds or control.stopping()):
                raise _Parked  # the wait is stored (run_after): any worker resumes it
            if control is None or control.stopped is None:
                await self.clock.sleep(delay)
                return
            stopped = control.stopped
            parked = False
            async with anyio.create_task_group() as tg:

                async def park_on_stop() -> None:
                    nonlocal parked
                    await stopped()
                    parked = True
                    tg.cancel_scope.cancel()

                tg.start_soon(park_on_stop)
                await self.clock.sleep(delay)
                tg.cancel_scope.cancel()
            if parked:
                raise _Parked  # the worker is stopping: the stored wait is handed back


def _log_event(event: SagaEvent) -> None:
    """One INFO record per lifecycle event, named `saga.<event type>`, ids in `extra`."""
    name = event.type.value if event.type.value.startswith("saga.") else f"saga.{event.type}"
    level = logging.WARNING if event.type is SagaEventType.SAGA_FAILED else logging.INFO
    logger.log(
        level,
        "%s: %s %s%s%s",
        name,
        event.saga_type,
        event.saga_id,
        f" {event.step}" if event.step else "",
        f" ({event.error})" if event.error else "",
        extra={
            "event": name,
            "saga_id": str(event.saga_id),
            "saga_type": event.saga_type,
            "step": event.step,
            "attempt": event.attempt,
            "sequence": event.sequence,
            "correlation_id": event.correlation_id,
        },
    )


def _apply(context: SagaContext[Any], checked: Mapping[str, Any]) -> None:
    for key, value in checked.items():
        setattr(context.data, key, value)


def _wrap(
    interceptor: StepInterceptor, run: StepRun, inner: Callable[[], Awaitable[Any]]
) -> Callable[[], Awaitable[Any]]:
    return lambda: interceptor(run, inner)


def _saga_of(context: SagaContext[T]) -> BaseSaga[T]:
    saga = context._saga
    if saga is None:
        raise SagaStateError(
            f"saga {context.saga_id} ({context.saga_type}) has no saga object attached; "
            "rebuild it through the registry",
            saga_id=context.saga_id,
        )
    return saga
