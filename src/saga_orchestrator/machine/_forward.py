"""The state machine, forward: a saga starting, its steps' attempts and waits, and how a failed
one turns the saga to compensating; and the specification's test helper."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from ..definitions import SagaStep, Wait
from ..events import SagaEventType
from ..retry import RetryPolicy
from ..state import SagaContext, SagaStatus, StepState, StepStatus
from ._backward import _enter_compensation
from ._rules import NEVER, Failure, Transition, _age, _attempts, _saga_to, _step_to


def _waits(wait: Wait[Any] | None) -> str | None:
    """The ``wait`` field of a wait step's events: its event's name, or ``"timer"``."""
    if wait is None:
        return None
    return wait.event if wait.event is not None else "timer"


# ---------------------------------------------------------------------------- start


def start(
    context: SagaContext[Any],
    now: datetime,
    *,
    timeout_minutes: float | None,
    begin: bool,
    steps: Sequence[SagaStep[Any]] | None = None,
) -> Transition:
    """The first write: the saga is ``running``; with ``begin``, its first step begun (an
    attempt started or, for a wait step in ``steps``, the wait)."""
    t = Transition(now=now)
    _saga_to(context, SagaStatus.RUNNING)
    context.created_at = now
    context.updated_at = now
    if timeout_minutes is not None:
        context.deadline = now + timedelta(minutes=timeout_minutes)
    context.current_step_index = 0
    t.emit(SagaEventType.SAGA_STARTED)
    if begin:
        _begin(context, steps, 0, now, t)
    return t


def undo_start(context: SagaContext[Any], built: tuple[Any, Any, StepState]) -> None:
    """The first write failed (its data cannot be stored): back to the saga as built."""
    _saga_to(context, SagaStatus.PENDING)
    context.created_at, context.updated_at, context.steps[0] = built
    context.deadline = None


def reconcile_interrupted(context: SagaContext[Any], now: datetime) -> None:
    """Mark the attempt a dead process left in flight: it may have acted, and it counts."""
    state = context.steps[context.current_step_index]
    if context.status is SagaStatus.RUNNING and state.status is StepStatus.RUNNING:
        state.effect_possible = True
        state.error = f"interrupted: attempt {state.attempts} did not finish"
        _step_to(state, StepStatus.PENDING)  # an attempt is due; counted in state.attempts
        state.next_attempt_at = None
    elif (
        context.status is SagaStatus.COMPENSATING
        and state.status is StepStatus.COMPENSATING
        and state.next_attempt_at is None
    ):
        state.compensation_error = (
            f"interrupted: compensation attempt {state.compensation_attempts} did not finish"
        )
        state.next_attempt_at = now  # due at once, as the next attempt


def wake_at(context: SagaContext[Any], steps: Sequence[SagaStep[Any]] | None) -> datetime | None:
    """When the saga next needs attention (``None``: now, or never once terminal).

    The current step's next attempt (a backoff), except that a deadline before it wakes the
    saga at the deadline, which fails the step instead; a step after the pivot
    (``retriable``) is retried past the deadline, so its next attempt stays the time.
    ``steps`` may be unknown (``None``): the step then counts as not retriable.
    """
    if context.is_terminal or not 0 <= context.current_step_index < len(context.steps):
        return None
    index = context.current_step_index
    state = context.steps[index]
    if state.status is StepStatus.WAITING and context.status is SagaStatus.RUNNING:
        # A wait: its timer, or its event's timeout (NEVER: none), the deadline first.
        when = state.wait_until
        if context.deadline is not None and not (steps is not None and steps[index].retriable):
            when = context.deadline if when is None else min(when, context.deadline)
        return NEVER if when is None else when
    when = state.next_attempt_at
    if (
        when is not None
        and context.status is SagaStatus.RUNNING
        and context.deadline is not None
        and context.deadline < when
        and not (steps is not None and steps[index].retriable)
    ):
        return context.deadline
    return when


def parked_until(context: SagaContext[Any]) -> datetime | None:
    """For a saga at a wait step, the ``wake_at`` a store keeps to find it when due (``NEVER``:
    only an event wakes it); ``None`` for any other saga. The saga's definition is read from
    the context (``context._saga``), when attached."""
    if context.status is not SagaStatus.RUNNING or not 0 <= context.current_step_index < len(
        context.steps
    ):
        return None
    if context.steps[context.current_step_index].status is not StepStatus.WAITING:
        return None
    saga = context._saga
    return wake_at(context, saga.steps if saga is not None else None)


def parked_for(context: SagaContext[Any]) -> str | None:
    """For a saga at a wait step for an event, the event's name (a store keeps it, so that
    storing that event, and only that one, makes the saga due); ``None`` otherwise."""
    if context.status is not SagaStatus.RUNNING or not 0 <= context.current_step_index < len(
        context.steps
    ):
        return None
    state = context.steps[context.current_step_index]
    return state.waiting_for if state.status is StepStatus.WAITING else None


# ---------------------------------------------------------------------------- forward


def why_no_attempt(
    context: SagaContext[Any],
    step: SagaStep[Any],
    state: StepState,
    policy: RetryPolicy,
    now: datetime,
) -> Failure | None:
    """Why another attempt must not start (attempts used up, deadline passed), if so: the
    step's last error followed by that reason."""
    if step.retriable:
        return None  # after the pivot: forward recovery only
    if state.attempts >= policy.max_attempts:
        reason = f"gave up after {_attempts(state.attempts)}"
    elif context.deadline is not None and now >= context.deadline:
        reason = f"saga deadline {context.deadline.isoformat()} exceeded"
    else:
        return None
    text = f"{state.error} ({reason})" if state.error else reason
    return Failure(text=text, retryable=False, effect_possible=state.effect_possible)


def begin_attempt(context: SagaContext[Any], index: int, now: datetime) -> Transition:
    """The step's next attempt starts (recorded before its action is called)."""
    t = Transition(now=now)
    _begin_attempt(context, index, now, t)
    return t


def begin_step(
    context: SagaContext[Any], steps: Sequence[SagaStep[Any]], index: int, now: datetime
) -> Transition:
    """The step begins: an attempt of its action, or, for a wait step, the wait."""
    t = Transition(now=now)
    _begin(context, steps, index, now, t)
    return t


def _begin(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]] | None,
    index: int,
    now: datetime,
    t: Transition,
) -> None:
    wait = steps[index].wait if steps is not None else None
    if wait is None:
        _begin_attempt(context, index, now, t)
        return
    assert steps is not None
    state = context.steps[index]
    _step_to(state, StepStatus.WAITING)
    state.attempts += 1
    state.next_attempt_at = None
    state.started_at = state.started_at or now
    state.waiting_for = wait.event
    context.current_step_index = index
    error: str | None = None
    if wait.until is not None:
        try:
            until = wait.until(context.data)
        except Exception as exc:
            until, error = now, f"until raised {type(exc).__name__}: {exc}"
        if not isinstance(until, datetime) or until.tzinfo is None:
            until, error = now, error or f"until gave {until!r}, not a timezone-aware datetime"
        state.wait_until = until
    elif wait.timeout_seconds is not None:
        state.wait_until = now + timedelta(seconds=wait.timeout_seconds)
    else:
        state.wait_until = None
    t.emit(SagaEventType.STEP_WAITING, step=state.name, attempt=state.attempts, wait=_waits(wait))
    if error is not None:  # the timer cannot be set: the step fails now
        failure = Failure(text=error, retryable=False, effect_possible=False)
        _fail(context, steps, index, failure, now, None, t)


def end_wait(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]],
    index: int,
    now: datetime,
    *,
    event_id: str | None = None,
    stopping: bool = False,
) -> Transition:
    """A wait step completes: its event ``event_id`` was consumed (its fields applied to the
    data already), or its timer elapsed; the saga goes on as after ``complete_step``."""
    state = context.steps[index]
    if event_id is not None:
        state.event_id = event_id
    started = state.started_at or now
    return complete_step(
        context, steps, index, now, (now - started).total_seconds(), stopping=stopping
    )


def wait_expired(
    context: SagaContext[Any], steps: Sequence[SagaStep[Any]], index: int, now: datetime
) -> Transition:
    """A wait step's time has come (``now >= wake_at``) with no event consumed: a timer
    completes, unless the saga's deadline came first; a wait for an event fails (timed
    out, or the deadline), and the saga compensates."""
    state = context.steps[index]
    step = steps[index]
    deadline = context.deadline
    past_deadline = (
        deadline is not None
        and now >= deadline
        and not step.retriable
        and (state.wait_until is None or deadline < state.wait_until)
    )
    if state.waiting_for is None and not past_deadline:
        return end_wait(context, steps, index, now)
    assert step.wait is not None
    if past_deadline:
        assert deadline is not None
        what = step.wait.describe()
        text = f"saga deadline {deadline.isoformat()} exceeded while waiting for {what}"
    else:
        waited = step.wait.timeout_seconds
        text = f"TimeoutError: no event {state.waiting_for!r} within {waited:g}s"
    seconds = (now - (state.started_at or now)).total_seconds()
    return fail_step(
        context,
        steps,
        index,
        Failure(text=text, retryable=False, effect_possible=False),
        now,
        seconds,
    )


def _begin_attempt(context: SagaContext[Any], index: int, now: datetime, t: Transition) -> None:
    state = context.steps[index]
    _step_to(state, StepStatus.RUNNING)
    state.attempts += 1
    state.next_attempt_at = None
    if state.started_at is None:
        state.started_at = now
    context.current_step_index = index
    t.emit(SagaEventType.STEP_STARTED, step=state.name, attempt=state.attempts)


def complete_step(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]],
    index: int,
    now: datetime,
    seconds: float,
    *,
    stopping: bool = False,
) -> Transition:
    """The step's action succeeded: the next step starts (unless ``stopping``: it is left
    for later), the saga completes, or, past the deadline, compensates."""
    t = Transition(now=now)
    state = context.steps[index]
    _step_to(state, StepStatus.COMPLETED)
    state.completed_at = now
    state.next_attempt_at = None
    state.effect_possible = False  # it acted, for sure: "possibly" no longer applies
    t.emit(
        SagaEventType.STEP_COMPLETED,
        step=state.name,
        attempt=state.attempts,
        duration_seconds=seconds,
        wait=_waits(steps[index].wait),
    )
    nxt = index + 1
    if nxt == len(context.steps):
        _saga_to(context, SagaStatus.COMPLETED)
        context.error = None
        t.emit(SagaEventType.SAGA_COMPLETED, duration_seconds=_age(context, now))
        return t
    step = steps[nxt]
    if context.deadline is not None and now >= context.deadline and not step.retriable:
        context.current_step_index = nxt
        reason = f"{step.name}: saga deadline {context.deadline.isoformat()} exceeded"
        _enter_compensation(context, steps, nxt, reason, now, t)
    elif stopping:
        context.current_step_index = nxt  # not begun: handed back to start it later
    else:
        _begin(context, steps, nxt, now, t)
    return t


def attempt_failed(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]],
    index: int,
    failure: Failure,
    policy: RetryPolicy,
    now: datetime,
    seconds: float | None,
) -> Transition:
    """An attempt failed: another is scheduled (after the policy's backoff) if the error is
    retryable and attempts and the deadline allow it; otherwise the step fails for good."""
    state = context.steps[index]
    step = steps[index]
    state.error = failure.text
    state.effect_possible = state.effect_possible or failure.effect_possible
    if step.retriable or failure.retryable:
        why_not = why_no_attempt(context, step, state, policy, now)
        if why_not is None:
            t = Transition(now=now)
            _step_to(state, StepStatus.PENDING)
            state.next_attempt_at = now + timedelta(seconds=policy.backoff_seconds(state.attempts))
            t.emit(
                SagaEventType.STEP_FAILED,
                step=state.name,
                attempt=state.attempts,
                error=failure.text,
                will_retry=True,
                duration_seconds=seconds,
            )
            return t
        failure = why_not  # the last error, and why no attempt follows
    return fail_step(context, steps, index, failure, now, seconds)


def fail_step(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]],
    index: int,
    failure: Failure,
    now: datetime,
    seconds: float | None = None,
) -> Transition:
    """The step fails for good: the saga turns to compensating, from this step backwards."""
    t = Transition(now=now)
    _fail(context, steps, index, failure, now, seconds, t)
    return t


def _fail(
    context: SagaContext[Any],
    steps: Sequence[SagaStep[Any]],
    index: int,
    failure: Failure,
    now: datetime,
    seconds: float | None,
    t: Transition,
) -> None:
    state = context.steps[index]
    _step_to(state, StepStatus.FAILED)
    state.error = failure.text
    state.effect_possible = state.effect_possible or failure.effect_possible
    state.next_attempt_at = None
    t.emit(
        SagaEventType.STEP_FAILED,
        step=state.name,
        attempt=state.attempts,
        error=failure.text,
        duration_seconds=seconds,
        wait=_waits(steps[index].wait),
    )
    _enter_compensation(context, steps, index, f"{state.name}: {failure.text}", now, t)


def cancel(
    context: SagaContext[Any], steps: Sequence[SagaStep[Any]], reason: str, now: datetime
) -> Transition:
    """An operator stops a running saga: the step in flight counts as possibly done, and the
    saga compensates."""
    t = Transition(now=now)
    index = context.current_step_index
    state = context.steps[index]
    if state.status in (StepStatus.RUNNING, StepStatus.WAITING) or state.attempts:
        if state.status is StepStatus.RUNNING:
            state.effect_possible = True
            state.error = f"cancelled while attempt {state.attempts} was running"
        elif state.status is StepStatus.WAITING:
            what = f"event {state.waiting_for!r}" if state.waiting_for else "a timer"
            state.error = f"cancelled while waiting for {what}"
        _step_to(state, StepStatus.FAILED)
        state.next_attempt_at = None
        t.emit(
            SagaEventType.STEP_FAILED,
            step=state.name,
            attempt=state.attempts,
            error=state.error,
            wait=_waits(steps[index].wait),
        )
    _enter_compensation(context, steps, index, f"cancelled: {reason}", now, t)
    return t


# ---------------------------------------------------------------------------- spec helper


def unrecorded_attempt_start(state: StepState) -> None:
    """For ``SagaOrchestrator._execute_step`` (the specification's test helper), which runs a
    step outside any recorded run: an attempt starts."""
    state.attempts += 1
    _step_to(state, StepStatus.RUNNING)


def unrecorded_attempt_end(state: StepState, failure: Failure | None, *, final: bool) -> None:
    """... and ends: succeeded (``failure`` None), failed and retried (not ``final``), or
    failed for good."""
    if failure is None:
        _step_to(state, StepStatus.COMPLETED)
        return
    state.error = failure.text
    if final:
        _step_to(state, StepStatus.FAILED)
        state.effect_possible = failure.effect_possible
