"""Events addressed to sagas: what is kept for a wait step to consume, and what delivering one
answers (``SagaOrchestrator.deliver_event``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID

from .errors import InvalidEventError, SerializationError
from .serialization import dumps, loads
from .state import SagaStatus

__all__ = ["Delivery", "DeliveryStatus", "InboxEvent", "StoreOutcome"]

NAME_LIMIT = 200
"""The longest event name and event id, in characters."""


@dataclass(frozen=True, slots=True)
class InboxEvent:
    """An event kept for a saga (its *inbox*), until a wait step consumes it."""

    event_id: str
    """Unique across the store: a second delivery with this id is a duplicate."""
    saga_id: UUID
    """The saga it is addressed to."""
    name: str
    """What happened (``"payment.captured"``): the ``event`` a wait step waits for."""
    payload: str
    """Its payload, as the JSON text of [`dumps`][saga_orchestrator.serialization.dumps]."""
    received_at: datetime
    """When it was delivered (the orchestrator's clock): it counts for a wait only if
    received before the wait timed out."""

    def data(self) -> dict[str, Any]:
        """The payload, decoded (``Decimal``, ``UUID``, ``datetime`` as they were given)."""
        value = loads(self.payload)
        assert isinstance(value, dict)
        return value


class StoreOutcome(StrEnum):
    """What a [`SagaInbox`][saga_orchestrator.protocols.SagaInbox] did with an event."""

    STORED = "stored"
    """Kept for the saga."""
    DUPLICATE = "duplicate"
    """An event with its id is kept already: nothing changed."""
    NOT_RUNNING = "not_running"
    """The saga is not running (finished, or compensating): nothing kept."""
    NO_SAGA = "no_saga"
    """No such saga: nothing kept."""


class DeliveryStatus(StrEnum):
    """What ``deliver_event`` did with an event."""

    CONSUMED = "consumed"
    """The saga was waiting for it, and consumed it in this call (its wait step completed or,
    if the event was rejected, failed)."""
    STORED = "stored"
    """Kept: the saga consumes it when it reaches its wait step (an early event), or when a
    worker, ``wake_due`` or ``recover`` resumes it (``drive=False``, a saga type this process
    does not know, or a saga another process or task is driving). Exception: an event the
    saga cannot use in time (stored just as its wait timed out, raced by the timeout) stays
    unconsumed."""
    DUPLICATE = "duplicate"
    """An event with this id was delivered before (and is kept, or was consumed), whatever
    the saga's status: nothing changed."""
    IGNORED = "ignored"
    """The saga will never consume it: it is finished or compensating, it is past every wait
    step for this event, or it waits for it but the wait's time is up (the timeout wins).
    Nothing was stored."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """The answer of ``deliver_event``."""

    status: DeliveryStatus
    """What was done with the event."""
    saga_id: UUID
    """The saga it was addressed to (found by correlation id, if it was addressed so)."""
    saga_status: SagaStatus
    """The saga's status after the delivery (and after driving it, if this call did)."""
    event_id: str
    """The event's id, as stored."""


def check_event(
    event: object,
    payload: object,
    event_id: object,
    saga_id: object,
    correlation_id: object,
) -> tuple[str, str, str]:
    """The event's name, id and payload JSON, checked; ``InvalidEventError`` naming what is
    wrong otherwise."""
    if not isinstance(event, str) or not event.strip() or len(event) > NAME_LIMIT:
        raise InvalidEventError(
            f"event must be a non-empty name of at most {NAME_LIMIT} characters, got {event!r:.80}"
        )
    if isinstance(event_id, UUID):
        event_id = str(event_id)
    if not isinstance(event_id, str) or not event_id.strip() or len(event_id) > NAME_LIMIT:
        raise InvalidEventError(
            f"event_id must be a UUID or a non-empty string of at most {NAME_LIMIT} characters,"
            f" got {event_id!r:.80}"
        )
    if (saga_id is None) == (correlation_id is None):
        raise InvalidEventError(
            "address the event to one saga: give saga_id or correlation_id (exactly one)"
        )
    if saga_id is not None and not isinstance(saga_id, UUID):
        raise InvalidEventError(f"saga_id must be a UUID, got {type(saga_id).__name__}")
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise InvalidEventError(
            f"correlation_id must be a string, got {type(correlation_id).__name__}"
        )
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        raise InvalidEventError(
            f"event {event!r}: the payload must be a mapping of field names to values, got "
            f"{type(payload).__name__}"
        )
    for key in payload:
        if not isinstance(key, str):
            raise InvalidEventError(
                f"event {event!r}: payload keys must be strings (data field names), got {key!r}"
            )
    try:
        text = dumps(dict(payload), f"event {event!r} payload")
    except SerializationError as exc:
        raise InvalidEventError(str(exc)) from None
    return event, event_id, text
