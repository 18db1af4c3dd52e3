"""Driving a saga, a part of SagaOrchestrator: forward step by step, then backward through the
compensations, sleeping out backoffs, or parking the saga (a worker hands it back) as a
DriveControl (in orchestrator) says."""

from __future__ import annotations

import logging
import math
from contextvars import ContextVar
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import UUID

import anyio

from . import machine
from ._calls import _apply, _Calls, _describe
from .definitions import BaseSaga, SagaStep, Wait
from .errors import SagaConflictError, SagaNotFoundError, SagaStateError, SerializationError
from .inbox import InboxEvent
from .protocols import SagaInbox, StrandingRecorder
from .registry import SagaRegistry
from .retry import RetryPolicy
from .runtime import Phase
from .state import SagaContext, SagaResult, SagaStatus, SkippedSaga, StepStatus

if TYPE_CHECKING:
    from .orchestrator import DriveControl

T = TypeVar("T")
logger = logging.getLogger("saga_orchestrator")


def _stopping() -> bool:
    control = _control.get()
    return control is not None and control.stopping()


class _Parked(Exception):
    """The saga waits for a stored time; a worker releases it for any worker to resume."""


_control: ContextVar[DriveControl | None] = ContextVar("saga_orchestrator_drive", default=None)


class _Driving(_Calls):
    """Drives sagas; the attributes are set by ``SagaOrchestrator.__init__``."""

    registry: SagaRegistry
    default_compensation_retry: RetryPolicy
    _strandings: StrandingRecorder | None
    _inbox: SagaInbox | None
    _in_flight: set[UUID]
    """Sagas this orchestrator is driving now (in this process)."""
    _poked: set[UUID]
    """Sagas in flight here for which an event was stored meanwhile: their driver looks again
    before it parks them."""

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
        if self._inbox is None:
            waits = [s.name for s in saga.steps if s.wait is not None and not s.wait.is_timer]
            if waits:
                raise TypeError(
                    f"{saga.saga_type}: step {waits[0]!r} waits for an event, but "
                    f"{type(self.repository).__name__} keeps no events (it is no SagaInbox); "
                    "use a repository that does (all the built-in ones)"
                )
        built = (context.created_at, context.updated_at, context.steps[0].copy())
        pending = machine.start(
            context,
            self.clock.now(),
            timeout_minutes=saga.timeout_minutes,
            begin=lease,
            steps=saga.steps,
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

    async def _drive(self, context: SagaContext[Any]) -> SagaResult[Any]:
        """Drive the saga until it is terminal, or parked at a wait step (its result is then
        ``running``, its current step ``waiting``)."""
        saga_id = context.saga_id
        self._in_flight.add(saga_id)
        try:
            while context.status is SagaStatus.RUNNING:
                if await self._advance_forward(context):
                    continue
                if saga_id in self._poked:  # an event came while it was being parked
                    self._poked.discard(saga_id)
                    continue
                # Parked at a wait: nothing holds it now (the event or recover() resumes it).
                self._in_flight.discard(saga_id)
                await self._release(saga_id)
                return SagaResult.from_context(context)
            while context.status is SagaStatus.COMPENSATING:
                await self._advance_compensation(context)
        except BaseException:
            # Stopped before the end (cancelled, parked, an error): a lease this process
            # holds is handed back now, not left to heartbeats that would keep it forever.
            await self._release(saga_id)
            raise
        finally:
            self._in_flight.discard(saga_id)
            self._poked.discard(saga_id)
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

    async def _advance_forward(self, context: SagaContext[Any]) -> bool:
        """Run the current step until it completes or fails for good (both recorded); False:
        the saga is parked at a wait step instead."""
        index = context.current_step_index
        state = context.steps[index]
        steps = _saga_of(context).steps
        step = steps[index]
        if step.wait is not None:
            return await self._advance_wait(context, steps, index, step.wait)
        policy = step.retry or self.default_retry
        if state.status is StepStatus.PENDING:
            # Resumed: either a backoff was in progress or an attempt was interrupted. A
            # deadline before the next attempt ends the wait (and the step) early.
            await self._sleep_until(machine.wake_at(context, steps))
            now = self.clock.now()
            failure = machine.why_no_attempt(context, step, state, policy, now)
            if failure is not None:
                await self._commit(context, machine.fail_step(context, steps, index, failure, now))
                return True
            if _stopping():
                raise _Parked  # a stopping worker starts no step: any worker resumes it
            await self._commit(context, machine.begin_attempt(context, index, now))
        if state.status is StepStatus.COMPLETED:  # pragma: no cover - defensive
            context.current_step_index = min(index + 1, len(context.steps) - 1)
            return True

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
        return True

    # ------------------------------------------------------------------ waits

    async def _advance_wait(
        self,
        context: SagaContext[Any],
        steps: tuple[SagaStep[Any], ...],
        index: int,
        wait: Wait[Any],
    ) -> bool:
        """A wait step: begin it, consume its event, end it at its time, or park the saga
        (False; a worker's drive raises _Parked instead)."""
        state = context.steps[index]
        if state.status is StepStatus.PENDING:
            if _stopping():
                raise _Parked
            await self._commit(context, machine.begin_step(context, steps, index, self.clock.now()))
            return True
        if state.status is not StepStatus.WAITING:  # pragma: no cover - defensive
            raise SagaStateError(
                f"saga {context.saga_id}: wait step {state.name} is {state.status.value}",
                saga_id=context.saga_id,
            )
        # The wait is recorded: an event stored before this read is seen here, and one stored
        # after it makes the saga due (or pokes this driver), so none is missed.
        wake = machine.wake_at(context, steps)
        if wait.event is not None:
            event = await self._next_event(context, wait.event, wake)
            if event is not None:
                await self._consume(context, steps, index, wait, event)
                return True
        now = self.clock.now()
        if wake is not None and now >= wake:
            await self._commit(context, machine.wait_expired(context, steps, index, now))
            return True
        if _control.get() is not None:
            if wait.event is None:
                await self._sleep_until(wake)  # a short timer is slept; a long one parks
                return True
            raise _Parked  # the event's notification, or its timeout, wakes a worker
        return False

    async def _next_event(
        self, context: SagaContext[Any], name: str, wake: datetime | None
    ) -> InboxEvent | None:
        """The first event ``name`` kept for the saga that no step consumed yet and that
        came before the wait's time was up (a later one loses to the timeout)."""
        if self._inbox is None:
            raise SagaStateError(
                f"saga {context.saga_id} waits for event {name!r}, but "
                f"{type(self.repository).__name__} keeps no events (it is no SagaInbox)",
                saga_id=context.saga_id,
            )
        consumed = {state.event_id for state in context.steps if state.event_id is not None}
        for event in await self._inbox.saga_events(context.saga_id):
            if event.name != name or event.event_id in consumed:
                continue
            if wake is not None and event.received_at >= wake:
                continue  # too late: the timeout (or the deadline) wins
            return event
        return None

    async def _consume(
        self,
        context: SagaContext[Any],
        steps: tuple[SagaStep[Any], ...],
        index: int,
        wait: Wait[Any],
        event: InboxEvent,
    ) -> None:
        """Consume ``event``: its fields set on the data and the step completed, in one
        write; or, rejected (``accept`` raised, a field the data has not), the step failed."""
        state = context.steps[index]
        try:
            payload = event.data()
            fields = wait.accept(context.data, payload) if wait.accept is not None else payload
            checked = self._check_result(context, state.name, fields, source="event")
        except Exception as exc:
            now = self.clock.now()
            state.event_id = event.event_id  # consumed: a redelivery is a duplicate
            failure = machine.Failure(
                text=f"event {event.event_id!r} rejected: {_describe(exc)}",
                retryable=False,
                effect_possible=False,
            )
            seconds = (now - (state.started_at or now)).total_seconds()
            await self._commit(
                context, machine.fail_step(context, steps, index, failure, now, seconds)
            )
            return
        _apply(context, checked)
        pending = machine.end_wait(
            context, steps, index, self.clock.now(), event_id=event.event_id, stopping=_stopping()
        )
        await self._commit(context, pending)

    async def _wake(self, saga_id: UUID) -> SagaResult[Any] | None:
        """Drive a saga parked at a wait step here, now (an event came, or its time): its
        result; None if another driver has it (in this process: poked to look again)."""
        if saga_id in self._in_flight:
            self._poked.add(saga_id)
            return None
        context = await self.repository.get(saga_id)
        if context is None or context.status is not SagaStatus.RUNNING:
            return None
        state = context.steps[context.current_step_index]
        if state.status is not StepStatus.WAITING or saga_id in self._in_flight:
            return None  # not parked: whoever drives it sees the event at its wait
        self.registry.rebuild(context)
        try:
            return await self._drive(context)
        except SagaConflictError as exc:  # another process took it on first
            logger.info("saga.wake.conflict: %s", exc)
            return None

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


def _saga_of(context: SagaContext[T]) -> BaseSaga[T]:
    saga = context._saga
    if saga is None:
        raise SagaStateError(
            f"saga {context.saga_id} ({context.saga_type}) has no saga object attached; "
            "rebuild it through the registry",
            saga_id=context.saga_id,
        )
    return saga
