"""Typed lifecycle events, emitted after each recorded transition."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from uuid import UUID, uuid4

__all__ = ["SagaEvent", "SagaEventType"]


class SagaEventType(StrEnum):
    """What happened. Values are stable dotted names, usable as log event names."""

    SAGA_STARTED = "saga.started"  # stored for the first time, first step about to run
    SAGA_COMPLETED = "saga.completed"  # every step succeeded
    SAGA_COMPENSATED = "saga.compensated"  # a step failed and everything was undone
    SAGA_FAILED = "saga.failed"  # a compensation kept failing: needs an operator
    STEP_STARTED = "step.started"  # an attempt of a forward step begins
    STEP_COMPLETED = "step.completed"  # a forward step succeeded
    STEP_FAILED = "step.failed"  # an attempt failed (see will_retry)
    COMPENSATION_STARTED = "compensation.started"  # the saga turns to undoing its steps
    STEP_COMPENSATED = "step.compensated"  # a step's compensation succeeded
    STEP_COMPENSATION_FAILED = "step.compensation_failed"  # an attempt of a compensation failed


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaEvent:
    """One lifecycle event. ``sequence`` is per saga, gap-free and strictly increasing."""

    type: SagaEventType
    saga_id: UUID
    saga_type: str
    sequence: int
    occurred_at: datetime
    step: str | None = None
    attempt: int | None = None
    error: str | None = None
    will_retry: bool = False
    """For failure events: whether another attempt is scheduled."""
    duration_seconds: float | None = None
    """Step events: how long the attempt ran. Terminal saga events: seconds since the saga
    was first stored. ``None`` where it does not apply."""
    correlation_id: str | None = None
    event_id: UUID = field(default_factory=uuid4)
    """Stable identity for consumers to deduplicate redeliveries."""
