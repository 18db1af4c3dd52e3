"""The saga state machine: every status change of a saga and of its steps, in one place.

Each function takes a saga's context, its definition (the steps), the time and what the
orchestrator learned (an attempt's outcome), changes the context in place and returns the
[`Transition`][saga_orchestrator.machine.Transition]: the lifecycle events to emit once the
new state is recorded. [`wake_at`][saga_orchestrator.machine.wake_at] says when the saga next
needs attention. Nothing here does I/O, sleeps or calls user code; the orchestrator does,
around these functions: call user code, commit, emit, sleep.

Statuses change only through ``_saga_to`` and ``_step_to`` below, which refuse any change
that is not in [`SAGA_TRANSITIONS`][saga_orchestrator.machine.SAGA_TRANSITIONS] or
[`STEP_TRANSITIONS`][saga_orchestrator.machine.STEP_TRANSITIONS]; the diagrams of "The saga
state machine" in the docs are checked against those two tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .definitions import SagaStep
from .events import SagaEventType
from .retry import RetryPolicy
from .state import ErrorKind, ErrorRecord, SagaContext, SagaStatus, StepState, StepStatus

__all__ = [
    "NEVER",
    "SAGA_TRANSITIONS",
    "STEP_TRANSITIONS",
    "Failure",
    "Transition",
    "attempt_failed",
    "begin_attempt",
    "begin_step",
    "cancel",
    "compensation_failed",
    "compensation_succeeded",
    "complete_step",
    "end_wait",
    "fail_step",
    "parked_until",
    "reconcile_interrupted",
    "resume_compensation",
    "retry_failed",
    "start",
    "undo_start",
    "unrecorded_attempt_end",
    "unrecorded_attempt_start",
    "wait_expired",
    "wake_at",
    "why_no_attempt",
]

_S = SagaStatus
_T = StepStatus

SAGA_TRANSITIONS: frozenset[tuple[SagaStatus, SagaStatus]] = frozenset(
    {
        (_S.PENDING, _S.RUNNING),  # the first write
        (_S.RUNNING, _S.PENDING),  # that write failed (bad input): nothing was stored
        (_S.RUNNING, _S.COMPLETED),  # the last step completed
        (_S.RUNNING, _S.COMPENSATING),  # a step failed for good, the deadline, cancel()
        (_S.COMPENSATING, _S.COMPENSATED),  # nothing (more) to undo
        (_S.COMPENSATING, _S.FAILED),  # a compensation failed on every attempt
        (_S.FAILED, _S.COMPENSATING),  # retry()
    }
)
"""Every change of a saga's status (``running → compensated`` is two of them, in one write)."""

STEP_TRANSITIONS: frozenset[tuple[StepStatus, StepStatus]] = frozenset(
    {
        (_T.PENDING, _T.RUNNING),  # an attempt starts
        (_T.RUNNING, _T.COMPLETED),  # the action succeeded
        (_T.RUNNING, _T.PENDING),  # retry scheduled, or an interrupted attempt found
        (_T.RUNNING, _T.FAILED),  # failed for good, or cancelled while running
        (_T.PENDING, _T.FAILED),  # no attempt left, the deadline, cancel()
        (_T.COMPLETED, _T.COMPENSATING),  # the saga compensates
        (_T.RUNNING, _T.COMPENSATING),  # an attempt in flight may have acted (defensive)
        (_T.FAILED, _T.COMPENSATING),  # it may have acted
        (_T.COMPENSATING, _T.COMPENSATED),  # the compensation succeeded
        (_T.COMPENSATING, _T.COMPENSATION_FAILED),  # ... failed on every attempt
        (_T.COMPENSATION_FAILED, _T.COMPENSATING),  # retry()
        (_T.PENDING, _T.WAITING),  # a wait step begins: the saga parks
        (_T.WAITING, _T.COMPLETED),  # its event was consumed, or its timer elapsed
        (_T.WAITING, _T.FAILED),  # timed out, the deadline, the event rejected, cancel()
    }
)
"""Every change of a step's status."""

NEVER = datetime(9999, 12, 31, tzinfo=UTC)
"""``wake_at`` of a saga waiting for an event with no timeout and no deadline: only the event
wakes it (stored as is, so that a store's timer column orders and compares as usual)."""

COMPENSATION_FAILED_SEPARATOR = "; compensating "
"""Between why a saga compensated and why a compensation gave up, in ``SagaContext.error``."""


class IllegalTransitionError(AssertionError):
    """A status change that is not in the tables: a bug in the engine, never user input."""


@dataclass(slots=True)
class Transition:
    """What one recorded change emits: lifecycle events (type and fields), in order; their
    sequence numbers are assigned when the change is committed."""

    events: list[dict[str, Any]] = field(default_factory=list)
    now: datetime | None = None
    """When the change was decided: the write records it as ``updated_at`` (``None``: the
    clock is read when writing)."""

    def emit(self, type_: SagaEventType, **fields: Any) -> None:
        """Append an event of ``type_`` with ``fields``."""
        self.events.append({"type": type_, **fields})


@dataclass(slots=True, frozen=True)
class Failure:
    """How an attempt of user code failed, as far as the saga is concerned."""

    text: str
    """``"ExceptionType: message"`` (or why no attempt follows)."""
    retryable: bool
    """Whether the step's retry policy allows another attempt for this error."""
    effect_possible: bool
    """Whether the call may have acted (everything but a declared refusal)."""


def _saga_to(context: SagaContext[Any], status: SagaStatus) -> None:
    if (context.status, status) not in SAGA_TRANSITIONS:
        raise IllegalTransitionError(f"saga {context.status.value} -> {status.value}")
    context.status = status


def _step_to(state: StepState, status: StepStatus) -> None:
    if state.status is not status and (state.status, status) not in STEP_TRANSITIONS:
        raise IllegalTransitionError(f"step {state.name} {state.status.value} -> {status.value}")
    state.status = status


def _attempts(count: int) -> str:
    return f"{count} attempt" if count == 1 else f"{count} attempts"


def _age(context: SagaContext[Any], now: datetime) -> float | None:
    return (now - context.created_at).total_seconds() if context.created_at else None


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
    t.emit(SagaEventType.STEP_WAITING, step=state.name, attempt=state.attempts)
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
            SagaEventType.STEP_FAILED, step=state.name, attempt=state.attempts, error=state.error
        )
    _enter_compensation(context, steps, index, f"cancelled: {reason}", now, t)
    return t


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
