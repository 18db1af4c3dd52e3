"""The state machine, backward: a saga compensating its steps, last first."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ..definitions import SagaStep
from ..events import SagaEventType
from ..retry import RetryPolicy
from ..state import ErrorKind, ErrorRecord, SagaContext, SagaStatus, StepState, StepStatus
from ._rules import COMPENSATION_FAILED_SEPARATOR, Transition, _age, _attempts, _saga_to, _step_to

# ---------------------------------------------------------------------------- backward


def _enter_compensation(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]],
    index: int,
    error: str,
    now: datetime,
    t: Transition,
) -> None:
    _saga_to(context, SagaStatus.COMPENSATING)
    context.error = error
    context.error_history.append(
        ErrorRecord(
            kind=ErrorKind.COMPENSATING, message=error, at=now, step=context.steps[index].name
        )
    )
    t.emit(SagaEventType.COMPENSATION_STARTED, error=error)
    if not _begin_next_compensation(context, steps, index, now):
        _finish_compensation(context, now, t)


def _begin_next_compensation(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]],
    start: int,
    now: datetime,
    *,
    reset: bool = False,
) -> bool:
    """Mark the next step at or before ``start`` that needs undoing; False if none. The
    order: last step first; a step that may not have acted, has no compensation or is after
    the pivot is skipped."""
    for index in range(start, -1, -1):
        state = context.steps[index]
        if not state.needs_compensation:
            continue
        if steps[index].compensation is None or steps[index].retriable:
            continue  # nothing to undo, by declaration
        if reset:
            state.compensation_attempts = 0
            state.compensation_started_at = None
        _step_to(state, StepStatus.COMPENSATING)
        state.compensation_attempts += 1
        state.next_attempt_at = None
        if state.compensation_started_at is None:
            state.compensation_started_at = now
        context.current_step_index = index
        return True
    return False


def _finish_compensation(context: SagaContext[Any], now: datetime, t: Transition) -> None:
    _saga_to(context, SagaStatus.COMPENSATED)
    t.emit(SagaEventType.SAGA_COMPENSATED, error=context.error, duration_seconds=_age(context, now))


def resume_compensation(
    context: SagaContext[Any], policy: RetryPolicy, now: datetime
) -> Transition:
    """A compensation's backoff (or an interrupted attempt) is over: its next attempt
    starts, or, with no attempt left, the saga fails."""
    t = Transition(now=now)
    state = context.steps[context.current_step_index]
    state.next_attempt_at = None
    if state.compensation_attempts >= policy.max_attempts:
        _give_up_compensation(context, state, state.compensation_error, now, t)
    else:
        state.compensation_attempts += 1
    return t


def compensation_succeeded(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]],
    index: int,
    now: datetime,
    seconds: float,
) -> Transition:
    """The step's compensation succeeded: the next one (backwards) is due, or the saga is
    compensated."""
    t = Transition(now=now)
    state = context.steps[index]
    _step_to(state, StepStatus.COMPENSATED)
    state.compensated_at = now
    state.compensation_error = None
    t.emit(
        SagaEventType.STEP_COMPENSATED,
        step=state.name,
        attempt=state.compensation_attempts,
        duration_seconds=seconds,
    )
    if not _begin_next_compensation(context, steps, index - 1, now):
        _finish_compensation(context, now, t)
    return t


def compensation_failed(
    context: SagaContext[Any],
    index: int,
    error: str,
    policy: RetryPolicy,
    now: datetime,
    seconds: float,
) -> Transition:
    """The step's compensation failed: retried after the policy's backoff, or, with no
    attempt left, the saga stops ``failed`` with the compensations still owed."""
    t = Transition(now=now)
    state = context.steps[index]
    state.compensation_error = error
    will_retry = state.compensation_attempts < policy.max_attempts
    t.emit(
        SagaEventType.STEP_COMPENSATION_FAILED,
        step=state.name,
        attempt=state.compensation_attempts,
        error=error,
        will_retry=will_retry,
        duration_seconds=seconds,
    )
    if will_retry:
        delay = policy.backoff_seconds(state.compensation_attempts)
        state.next_attempt_at = now + timedelta(seconds=delay)
    else:
        _give_up_compensation(context, state, error, now, t)
    return t


def _give_up_compensation(
    context: SagaContext[Any], state: StepState, error: str | None, now: datetime, t: Transition
) -> None:
    _step_to(state, StepStatus.COMPENSATION_FAILED)
    _saga_to(context, SagaStatus.FAILED)
    failure = f"{state.name} failed after {_attempts(state.compensation_attempts)}: {error}"
    context.error = f"{context.error}{COMPENSATION_FAILED_SEPARATOR}{failure}"
    context.error_history.append(
        ErrorRecord(
            kind=ErrorKind.COMPENSATION_FAILED,
            message=f"compensating {failure}",
            at=now,
            step=state.name,
        )
    )
    t.emit(
        SagaEventType.SAGA_FAILED,
        step=state.name,
        error=context.error,
        duration_seconds=_age(context, now),
    )


def retry_failed(
    context: SagaContext[Any], steps: Sequence[SagaStep[Any]], now: datetime
) -> Transition:
    """An operator retries a ``failed`` saga: its failed compensation starts again from
    attempt 1, and the saga carries on compensating."""
    t = Transition(now=now)
    index = next(
        (
            i
            for i in range(len(context.steps) - 1, -1, -1)
            if context.steps[i].status is StepStatus.COMPENSATION_FAILED
        ),
        None,
    )
    _saga_to(context, SagaStatus.COMPENSATING)
    # Back to why the saga compensates (the step keeps its own error); the history keeps
    # the compensation's failure and records this retry.
    cause = next(
        (r for r in reversed(context.error_history) if r.kind is ErrorKind.COMPENSATING), None
    )
    if cause is not None:
        context.error = cause.message
    elif context.error:  # stored before the history existed
        context.error = context.error.split(COMPENSATION_FAILED_SEPARATOR, 1)[0]
    failed_step = context.steps[index].name if index is not None else None
    context.error_history.append(
        ErrorRecord(
            kind=ErrorKind.RETRIED,
            message=f"retried: compensating {failed_step} again" if failed_step else "retried",
            at=now,
            step=failed_step,
        )
    )
    t.emit(SagaEventType.COMPENSATION_STARTED, error=context.error)
    if index is None or not _begin_next_compensation(context, steps, index, now, reset=True):
        _finish_compensation(context, now, t)
    return t
