"""The state machine's rules: the tables of legal status changes, the only two functions that
change a status, and what a recorded change emits."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..events import SagaEventType
from ..state import SagaContext, SagaStatus, StepState, StepStatus

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
