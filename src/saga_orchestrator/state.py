"""The saga's recorded state: statuses, per-step records, the context and the result.

``SagaContext`` is what the repository stores and what ``saga.context`` exposes. It is
deliberately mutable: the orchestrator advances it in place and the spec's tests assign
``saga.context.saga_id`` before executing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Generic, TypeVar
from uuid import UUID

if TYPE_CHECKING:
    from .definitions import BaseSaga

__all__ = [
    "ErrorKind",
    "ErrorRecord",
    "RecoveryReport",
    "SagaContext",
    "SagaResult",
    "SagaStatus",
    "SkippedSaga",
    "StepState",
    "StepStatus",
]

T = TypeVar("T")


class SagaStatus(StrEnum):
    """Where a saga is in its life.

    The last three are terminal, except that an operator may ``retry`` a ``FAILED`` saga.
    """

    PENDING = "pending"
    """Built, not yet stored or started."""
    RUNNING = "running"
    """Forward steps in progress."""
    COMPENSATING = "compensating"
    """A step failed; the steps that may have acted are being undone, in reverse."""
    COMPLETED = "completed"
    """Every step succeeded."""
    COMPENSATED = "compensated"
    """A step failed and every step that may have acted was undone."""
    FAILED = "failed"
    """A compensation kept failing: needs an operator (see ``SagaOrchestrator.retry``)."""

    @property
    def is_terminal(self) -> bool:
        """Whether the saga is done: completed, compensated or failed."""
        return self in _TERMINAL


_TERMINAL = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})
ACTIVE_STATUSES = frozenset({SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING})


class StepStatus(StrEnum):
    """Where one step is."""

    PENDING = "pending"
    """Not started, or waiting for its next attempt."""
    RUNNING = "running"
    """An attempt is in flight (or was, when its process died)."""
    COMPLETED = "completed"
    """The action succeeded and its result was applied (a wait step: its event was consumed,
    or its timer elapsed)."""
    FAILED = "failed"
    """The action failed for good (see ``StepState.effect_possible``); a wait step: it timed
    out, the saga's deadline passed, its event was rejected, or the saga was cancelled."""
    COMPENSATING = "compensating"
    """Its compensation is in flight."""
    COMPENSATED = "compensated"
    """Its compensation succeeded."""
    COMPENSATION_FAILED = "compensation_failed"
    """Its compensation kept failing."""
    WAITING = "waiting"
    """A wait step: the saga is parked until its event arrives or its time comes
    (``StepState.waiting_for``, ``StepState.wait_until``). No task and no lease hold it."""


class ErrorKind(StrEnum):
    """What an [`ErrorRecord`][saga_orchestrator.state.ErrorRecord] records."""

    COMPENSATING = "compensating"
    """The saga turned to compensating, and why (a step failed, the deadline, a cancel)."""
    COMPENSATION_FAILED = "compensation_failed"
    """A compensation used up its attempts: the saga stopped, ``failed``."""
    RETRIED = "retried"
    """An operator retried the failed compensation (``SagaOrchestrator.retry``)."""


@dataclass(frozen=True, slots=True)
class ErrorRecord:
    """One entry of a saga's error history: what went wrong, or what was done about it."""

    kind: ErrorKind
    """What happened."""
    message: str
    """For people: the error, as ``"step: ExceptionType: message"`` or a sentence."""
    at: datetime | None = None
    """When it was recorded."""
    step: str | None = None
    """The step concerned, if any."""


@dataclass(slots=True)
class StepState:
    """The record of one step of one saga."""

    name: str
    """The step's name, as in its [`SagaStep`][saga_orchestrator.definitions.SagaStep]."""
    status: StepStatus = StepStatus.PENDING
    """Where the step is."""
    attempts: int = 0
    """Forward attempts started so far, the one in flight included."""
    error: str | None = None
    """The last forward error, as ``"ExceptionType: message"``."""
    effect_possible: bool = False
    """For a failed step: whether it may have acted anyway (it timed out, hit a transient
    error or its process died), so that its compensation must run too."""
    started_at: datetime | None = None
    """When the first forward attempt started."""
    completed_at: datetime | None = None
    """When the action succeeded."""
    next_attempt_at: datetime | None = None
    """When the next attempt is due, while the step waits out a retry backoff."""
    compensation_attempts: int = 0
    """Compensation attempts started so far, the one in flight included."""
    compensation_error: str | None = None
    """The last compensation error, as ``"ExceptionType: message"``."""
    compensation_started_at: datetime | None = None
    """When the compensation's first attempt started."""
    compensated_at: datetime | None = None
    """When the compensation succeeded."""
    waiting_for: str | None = None
    """A wait step for an event: the event's name (``None`` for a timer, and for other
    steps)."""
    wait_until: datetime | None = None
    """A wait step: when its timer elapses, or when waiting for its event times out (``None``:
    no timeout). Set when the wait begins; the saga's deadline may end the wait earlier."""
    event_id: str | None = None
    """A wait step for an event: the id of the event it consumed."""

    @property
    def needs_compensation(self) -> bool:
        """Whether this step may have acted and has not been undone yet."""
        if self.status in (
            StepStatus.COMPLETED,
            StepStatus.COMPENSATING,
            StepStatus.COMPENSATION_FAILED,
        ):
            return True
        return self.status in (StepStatus.FAILED, StepStatus.RUNNING) and self.effect_possible

    def copy(self) -> StepState:
        """A shallow copy of this record."""
        return StepState(
            self.name,
            self.status,
            self.attempts,
            self.error,
            self.effect_possible,
            self.started_at,
            self.completed_at,
            self.next_attempt_at,
            self.compensation_attempts,
            self.compensation_error,
            self.compensation_started_at,
            self.compensated_at,
            self.waiting_for,
            self.wait_until,
            self.event_id,
        )


@dataclass(slots=True, eq=False)
class SagaContext(Generic[T]):
    """A saga's complete recorded state, as stored after every transition."""

    saga_id: UUID
    """The saga's identity (a random UUID unless you assign one before executing)."""
    saga_type: str
    """The saga class's ``saga_type``."""
    data: T
    """The saga's data (a dataclass instance), with every step result applied so far."""
    steps: list[StepState]
    """One record per step, in definition order."""
    correlation_id: str | None = None
    """The business key to find the saga by (see ``BaseSaga.correlation_id``)."""
    status: SagaStatus = SagaStatus.PENDING
    """Where the saga is."""
    current_step_index: int = 0
    """Index of the step being run, or compensated; stays on the last step once done."""
    error: str | None = None
    """Why the saga did not complete, as ``"step: ExceptionType: message"``."""
    created_at: datetime | None = None
    """When the saga was first stored."""
    updated_at: datetime | None = None
    """When the saga was last stored."""
    deadline: datetime | None = None
    """Absolute time after which no forward step starts (from ``timeout_minutes``)."""
    version: int = 0
    """Stored version, for optimistic concurrency. 0 until first stored."""
    event_sequence: int = 0
    """Sequence number of the last lifecycle event this saga emitted."""
    error_history: list[ErrorRecord] = field(default_factory=list)
    """Everything that went wrong, and every operator retry, in order. ``error`` says why the
    saga did not complete *now*; this keeps the whole story, also after a successful
    ``retry()`` (empty for sagas stored before 0.2, and for sagas that never failed)."""
    saga_version: int = 1
    """The definition version that started the saga (the class's ``saga_version``); resuming
    uses the factory registered for this version. 1 for sagas stored before versions existed."""
    _saga: BaseSaga[T] | None = field(default=None, repr=False)
    # The JSON of each step record as last written, and the step the saga was at then: a
    # transition re-encodes only the steps it can have touched (see serialization).
    # Not init fields: a copy (``dataclasses.replace``) starts without them.
    _step_json: list[str] | None = field(default=None, init=False, repr=False, compare=False)
    _step_json_at: int = field(default=0, init=False, repr=False, compare=False)
    _id_text: tuple[UUID, str] | None = field(default=None, init=False, repr=False, compare=False)
    # The stored version this object last wrote (IncrementalSagaRepository), and what it
    # wrote (serialization._patches._Written): while the stored version is still that, a
    # write may send only what changed since (a patch).
    _rows_version: int | None = field(default=None, init=False, repr=False, compare=False)
    _written: Any = field(default=None, init=False, repr=False, compare=False)

    @property
    def saga_id_text(self) -> str:
        """``str(saga_id)``, computed once per id (it is written at every transition)."""
        cached = self._id_text
        if cached is None or cached[0] is not self.saga_id:
            cached = self._id_text = (self.saga_id, str(self.saga_id))
        return cached[1]

    @property
    def is_terminal(self) -> bool:
        """Whether the saga is done: completed, compensated or failed."""
        return self.status.is_terminal

    def step(self, name: str) -> StepState:
        """The record of the step called ``name``."""
        for state in self.steps:
            if state.name == name:
                return state
        raise KeyError(f"saga {self.saga_type!r} has no step {name!r}")

    def idempotency_key(self, step: str, *, compensation: bool = False) -> str:
        """A key, stable across attempts, restarts and processes, for ``step``'s side effect.

        Pass it to the services a step calls so that they can deduplicate retried calls.
        """
        self.step(step)
        suffix = ":compensate" if compensation else ""
        return f"{self.saga_id}:{step}{suffix}"


@dataclass(frozen=True, slots=True)
class SagaResult(Generic[T]):
    """What ``SagaOrchestrator.execute`` (and ``resume``, ``recover``, ``wake_due``) returns:
    the saga once terminal, or once parked at a wait step (``running``)."""

    saga_id: UUID
    """The saga's identity."""
    saga_type: str
    """The saga class's ``saga_type``."""
    status: SagaStatus
    """``COMPLETED``, ``COMPENSATED`` or ``FAILED``; ``RUNNING`` for a saga parked at a wait
    step (its current step ``WAITING``)."""
    data: T
    """The saga's data with every step result applied."""
    error: str | None
    """Why the saga did not complete, as ``"step: ExceptionType: message"``; ``None`` if it
    did."""
    correlation_id: str | None
    """The saga's business key, if any."""
    steps: tuple[StepState, ...]
    """A copy of every step's record, in definition order."""
    error_history: tuple[ErrorRecord, ...] = ()
    """Everything that went wrong, and every operator retry, in order (see
    ``SagaContext.error_history``)."""
    saga_version: int = 1
    """The definition version that ran the saga (see ``SagaContext.saga_version``)."""

    @property
    def succeeded(self) -> bool:
        """Whether the saga completed."""
        return self.status is SagaStatus.COMPLETED

    @classmethod
    def from_context(cls, context: SagaContext[T]) -> SagaResult[T]:
        """A snapshot of ``context`` (step records copied)."""
        return cls(
            saga_id=context.saga_id,
            saga_type=context.saga_type,
            status=context.status,
            data=context.data,
            error=context.error,
            correlation_id=context.correlation_id,
            steps=tuple(s.copy() for s in context.steps),
            error_history=tuple(context.error_history),
            saga_version=context.saga_version,
        )


@dataclass(frozen=True, slots=True)
class SkippedSaga:
    """A saga that ``recover()`` (or a worker) left as it was, and why: a *stranded* saga.

    Repositories that record strandings (all the bundled ones) return these from
    ``list_stranded()``, which ``saga-orchestrator list`` and the ``saga_states`` metric read.
    """

    saga_id: UUID
    """The saga."""
    saga_type: str | None
    """Its type, if its row could be read."""
    reason: str
    """Why it was not resumed: no factory registered for its type (or for its definition
    version), unreadable, or the error that resuming it raised."""
    saga_version: int | None = None
    """Its definition version, if its row could be read."""


class RecoveryReport(list[SagaResult[Any]]):
    """What ``SagaOrchestrator.recover()`` did: the results of the sagas it resumed (the list
    itself, as before) and, in ``skipped``, every unfinished saga it could not resume.

    A saga in ``skipped`` stays unfinished until a process that can resume it does: check it
    after every recovery (``if report.skipped: ...``); the CLI exits 1 then.
    """

    def __init__(self, resumed: Iterable[SagaResult[Any]] = ()) -> None:
        super().__init__(resumed)
        self.skipped: list[SkippedSaga] = []
        """The sagas left unfinished, and why."""
        self.waiting: list[SagaResult[Any]] = []
        """The sagas left parked at a wait step (``running``, their step ``waiting``): their
        event has not come, and their time not either."""

    @property
    def resumed(self) -> list[SagaResult[Any]]:
        """The results of the sagas resumed (the same as the list itself)."""
        return list(self)
