"""The saga state machine: every status change of a saga and of its steps, in one place.

Each function takes a saga's context, its definition (the steps), the time and what the
orchestrator learned (an attempt's outcome), changes the context in place and returns the
[`Transition`][saga_orchestrator.machine.Transition]: the lifecycle events to emit once the
new state is recorded. [`wake_at`][saga_orchestrator.machine.wake_at] says when the saga next
needs attention. Nothing here does I/O, sleeps or calls user code; the orchestrator does,
around these functions: call user code, commit, emit, sleep.

Statuses change only through ``_saga_to`` and ``_step_to`` (in ``_rules``), which refuse any
change that is not in [`SAGA_TRANSITIONS`][saga_orchestrator.machine.SAGA_TRANSITIONS] or
[`STEP_TRANSITIONS`][saga_orchestrator.machine.STEP_TRANSITIONS]; the diagrams of "The saga
state machine" in the docs are checked against those two tables.
"""

# One package, three modules: _rules (the tables, and the only code that changes a status),
# _forward (starting, attempts, waits, failing), _backward (compensating). Everything public is
# re-exported here: ``saga_orchestrator.machine.X`` is the name to use.

from ._backward import (
    compensation_failed,
    compensation_succeeded,
    resume_compensation,
    retry_failed,
)
from ._forward import (
    attempt_failed,
    begin_attempt,
    begin_step,
    cancel,
    complete_step,
    end_wait,
    fail_step,
    parked_for,
    parked_until,
    reconcile_interrupted,
    start,
    undo_start,
    unrecorded_attempt_end,
    unrecorded_attempt_start,
    wait_expired,
    wake_at,
    why_no_attempt,
)
from ._rules import (
    COMPENSATION_FAILED_SEPARATOR as COMPENSATION_FAILED_SEPARATOR,
)
from ._rules import (
    NEVER,
    SAGA_TRANSITIONS,
    STEP_TRANSITIONS,
    Failure,
    Transition,
)
from ._rules import (
    IllegalTransitionError as IllegalTransitionError,
)

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
    "parked_for",
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
