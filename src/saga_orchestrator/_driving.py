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
from ._calls import _Calls
from .definitions import BaseSaga
from .errors import SagaNotFoundError, SagaStateError, SerializationError
from .protocols import StrandingRecorder
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
