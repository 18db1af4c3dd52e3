"""What the metrics and tracing listeners tell of wait steps: which events end a wait, and
how the wait ended.

A wait step's events carry ``SagaEvent.wait`` (what it waits for): its ``step.completed`` or
``step.failed`` ends a wait, in whichever process it happens. Events without it (relayed from
an outbox written before it existed) are recognised by their step, if this process saw that
step begin a wait (``step.waiting``).
"""

from __future__ import annotations

from ..events import SagaEvent, SagaEventType

__all__ = ["WAIT_OUTCOMES", "WaitSteps", "wait_outcome"]

WAIT_OUTCOMES = ("completed", "timed_out", "rejected", "cancelled", "failed")
"""How a wait ends: ``completed`` (its event was consumed, or its timer elapsed),
``timed_out`` (no event within its timeout, or the saga's deadline came first),
``rejected`` (its event's payload was refused: ``accept`` raised, or a field the data has
not), ``cancelled`` (an operator cancelled the saga), ``failed`` (anything else:
``sleep_until``'s ``until`` raised)."""

KNOWN_WAIT_STEPS_LIMIT = 10_000
"""At most this many ``(saga_type, step)`` pairs are remembered as wait steps (the same pairs
label the metrics, so there are few)."""


class WaitSteps:
    """The ``(saga_type, step)`` pairs seen beginning a wait in this process."""

    __slots__ = ("_known",)

    def __init__(self) -> None:
        self._known: set[tuple[str, str]] = set()

    def saw_waiting(self, event: SagaEvent) -> None:
        """Remember the step of a ``step.waiting`` event as a wait step."""
        if event.step is not None and len(self._known) < KNOWN_WAIT_STEPS_LIMIT:
            self._known.add((event.saga_type, event.step))

    def ends_wait(self, event: SagaEvent) -> bool:
        """Whether ``event`` is a ``step.completed`` or ``step.failed`` of a wait step."""
        return event.type in (SagaEventType.STEP_COMPLETED, SagaEventType.STEP_FAILED) and (
            event.wait is not None
            or (event.step is not None and (event.saga_type, event.step) in self._known)
        )


def wait_outcome(event: SagaEvent) -> str:
    """How the wait ended (one of [`WAIT_OUTCOMES`][]), from its ``step.completed`` or
    ``step.failed`` event (the step's error says why it failed)."""
    if event.type is SagaEventType.STEP_COMPLETED:
        return "completed"
    error = event.error or ""
    if error.startswith("TimeoutError: no event ") or (
        error.startswith("saga deadline ") and " exceeded while waiting for " in error
    ):
        return "timed_out"
    if error.startswith("event ") and " rejected: " in error:
        return "rejected"
    if error.startswith("cancelled while waiting for "):
        return "cancelled"
    return "failed"
