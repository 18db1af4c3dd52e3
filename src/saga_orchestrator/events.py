"""Typed lifecycle events, emitted after each recorded transition."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from hashlib import sha1
from json.encoder import encode_basestring_ascii
from typing import Any
from uuid import UUID, uuid4

from ._texts import identity_texts

__all__ = ["SagaEvent", "SagaEventType", "decode_event", "encode_event", "event_id_for"]


class SagaEventType(StrEnum):
    """What happened. Values are stable dotted names, usable as log event names."""

    SAGA_STARTED = "saga.started"
    """Stored for the first time, first step about to run."""
    SAGA_COMPLETED = "saga.completed"
    """Every step succeeded."""
    SAGA_COMPENSATED = "saga.compensated"
    """A step failed and everything that may have acted was undone."""
    SAGA_FAILED = "saga.failed"
    """A compensation kept failing: needs an operator."""
    STEP_STARTED = "step.started"
    """An attempt of a forward step begins."""
    STEP_COMPLETED = "step.completed"
    """A forward step succeeded."""
    STEP_FAILED = "step.failed"
    """An attempt failed (see ``will_retry``)."""
    COMPENSATION_STARTED = "compensation.started"
    """The saga turns to undoing its steps."""
    STEP_COMPENSATED = "step.compensated"
    """A step's compensation succeeded."""
    STEP_COMPENSATION_FAILED = "step.compensation_failed"
    """An attempt of a compensation failed (see ``will_retry``)."""
    STEP_WAITING = "step.waiting"
    """A wait step begins: the saga parks until its event arrives or its time comes. Its
    outcome is ``step.completed`` (the event was consumed, the timer elapsed) or
    ``step.failed`` (timed out, the saga's deadline, the event rejected, cancelled)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SagaEvent:
    """One lifecycle event. ``sequence`` is per saga, gap-free and strictly increasing."""

    type: SagaEventType
    """What happened."""
    saga_id: UUID
    """The saga it happened to."""
    saga_type: str
    """The saga's ``saga_type``."""
    sequence: int
    """Position among the saga's events: 1, 2, 3, ... without gaps, across restarts."""
    occurred_at: datetime
    """When the transition was recorded (aware UTC, from the orchestrator's clock)."""
    step: str | None = None
    """The step concerned, for step and compensation events."""
    attempt: int | None = None
    """The attempt number, for step and compensation events."""
    error: str | None = None
    """``step.failed`` and ``step.compensation_failed``: the attempt's error, as
    ``"ExceptionType: message"``. ``compensation.started``, ``saga.compensated`` and
    ``saga.failed``: why the saga did not complete. ``None`` otherwise."""
    will_retry: bool = False
    """For failure events: whether another attempt is scheduled."""
    duration_seconds: float | None = None
    """Step events: how long the attempt ran. Terminal saga events: seconds since the saga
    was first stored. ``None`` where it does not apply."""
    correlation_id: str | None = None
    """The saga's business key, if any."""
    wait: str | None = None
    """The events of a wait step (``step.waiting``, and the ``step.completed`` or
    ``step.failed`` that ends the wait): what it waits for, the event's name or ``"timer"``.
    ``None`` for every other event."""
    event_id: UUID = field(default_factory=uuid4)
    """Stable identity for consumers to deduplicate redeliveries. The orchestrator's events
    carry [`event_id_for`][saga_orchestrator.events.event_id_for]``(saga_id, sequence)``
    (an event built without one gets a random UUID)."""


@lru_cache(maxsize=4096)  # a transition's events are built, then written, with their ids
def event_id_for(saga_id: UUID, sequence: int) -> UUID:
    """The id of the saga's event at ``sequence``: a name-based UUID (version 5 layout) of the
    SHA-1 of the saga id's 16 bytes and the sequence as 8 big-endian bytes. The same event
    always has the same id, and no two events share one (a saga's sequences never repeat)."""
    digest = sha1(saga_id.bytes + sequence.to_bytes(8, "big"), usedforsecurity=False).digest()
    return UUID(bytes=digest[:16], version=5)


def encode_event(event: SagaEvent) -> str:
    """The event as a JSON object (the wire format of the outbox and the broker publishers).

    Field names are the attribute names; ids are strings, ``occurred_at`` is ISO 8601 UTC;
    ``wait`` is written only when set.
    ``decode_event`` gives back an equal event.
    """
    # Written directly (every event of an outbox is encoded in the hot path): the same text
    # as ``json.dumps(_event_dict(event), separators=(",", ":"), allow_nan=False)``, which
    # tests/test_outbox.py checks.
    duration = event.duration_seconds
    return "".join(
        (
            '{"event_id":"',
            str(event.event_id),
            '","type":"',
            event.type.value,
            '","saga_id":"',
            str(event.saga_id),
            '","saga_type":',
            _quote(event.saga_type),
            ',"sequence":',
            int.__repr__(event.sequence),
            ',"occurred_at":"',
            _utc_text(event.occurred_at),
            '","correlation_id":',
            _nullable(event.correlation_id),
            ',"step":',
            _nullable(event.step),
            ',"attempt":',
            "null" if event.attempt is None else int.__repr__(event.attempt),
            ',"error":',
            _nullable(event.error),
            ',"will_retry":',
            "true" if event.will_retry else "false",
            ',"duration_seconds":',
            "null" if duration is None else _float(duration),
            "" if event.wait is None else f',"wait":{_quote(event.wait)}',
            "}",
        )
    )


def _event_dict(event: SagaEvent) -> dict[str, Any]:
    """The event as the dict ``encode_event`` writes as JSON (the reference for tests)."""
    return {
        "event_id": str(event.event_id),
        "type": event.type.value,
        "saga_id": str(event.saga_id),
        "saga_type": event.saga_type,
        "sequence": event.sequence,
        "occurred_at": event.occurred_at.astimezone(UTC).isoformat(),
        "correlation_id": event.correlation_id,
        "step": event.step,
        "attempt": event.attempt,
        "error": event.error,
        "will_retry": event.will_retry,
        "duration_seconds": event.duration_seconds,
        **({} if event.wait is None else {"wait": event.wait}),
    }


_quote = encode_basestring_ascii


def _nullable(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _float(value: float) -> str:
    if value != value or value in (math.inf, -math.inf):
        raise ValueError(f"Out of range float values are not JSON compliant: {value!r}")
    return float.__repr__(value)


_utc_text: Callable[[datetime], str] = identity_texts(
    lambda value: value.astimezone(UTC).isoformat(), 1024
)
"""``value.astimezone(UTC).isoformat()``; a transition's events share one instant, whose text
is kept."""


def decode_event(text: str | bytes) -> SagaEvent:
    """The event that ``encode_event`` wrote. Raises ``ValueError`` naming what is wrong."""
    try:
        raw = json.loads(text)
        occurred_at = datetime.fromisoformat(raw["occurred_at"])
        if occurred_at.tzinfo is None:
            raise ValueError("occurred_at has no time zone")
        return SagaEvent(
            event_id=UUID(raw["event_id"]),
            type=SagaEventType(raw["type"]),
            saga_id=UUID(raw["saga_id"]),
            saga_type=str(raw["saga_type"]),
            sequence=int(raw["sequence"]),
            occurred_at=occurred_at.astimezone(UTC),
            correlation_id=raw.get("correlation_id"),
            step=raw.get("step"),
            attempt=raw.get("attempt"),
            error=raw.get("error"),
            will_retry=bool(raw.get("will_retry", False)),
            duration_seconds=raw.get("duration_seconds"),
            wait=raw.get("wait"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"not a saga event document: {exc!r}") from exc
