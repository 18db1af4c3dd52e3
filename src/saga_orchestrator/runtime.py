"""What a running action or compensation can learn about itself, and the system clock."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from uuid import UUID

import anyio

__all__ = ["Phase", "StepRun", "SystemClock", "current_step"]


class Phase(StrEnum):
    """Which of a step's two calls is running."""

    ACTION = "action"
    """The step's forward action."""
    COMPENSATION = "compensation"
    """The step's compensation."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRun:
    """One attempt of one step's action or compensation."""

    saga_id: UUID
    """The saga being run."""
    saga_type: str
    """Its ``saga_type``."""
    step: str
    """The step's name."""
    phase: Phase
    """Whether this is the action or the compensation."""
    attempt: int
    """The attempt number, from 1 (actions and compensations count separately)."""
    idempotency_key: str
    """Stable across attempts, restarts and processes: pass it to the services you call.

    ``"{saga_id}:{step}"`` for the action, ``"{saga_id}:{step}:compensate"`` for the
    compensation."""
    fencing_token: int = 0
    """Grows with every recorded transition of the saga: the saga's stored version when this
    attempt was recorded as started. Pass it to the services you call, and let them refuse a
    call whose token is *lower* than one they have already seen for the same saga (or order):
    that call comes from a process that was frozen or cut off while another took the saga
    over. Two calls of one attempt, or of a retry in the same process, never go down. ``0``
    outside a recorded run (the spec's ``_execute_step`` helper)."""


class _PendingRun:
    """The ``StepRun`` of an attempt, built only if asked for (``current_step()``): most
    actions never ask, and the engine sets one at every attempt."""

    __slots__ = ("attempt", "fencing_token", "phase", "run", "saga_id", "saga_type", "step")

    def __init__(
        self,
        saga_id: UUID,
        saga_type: str,
        step: str,
        phase: Phase,
        attempt: int,
        fencing_token: int,
    ) -> None:
        self.saga_id = saga_id
        self.saga_type = saga_type
        self.step = step
        self.phase = phase
        self.attempt = attempt
        self.fencing_token = fencing_token
        self.run: StepRun | None = None

    def build(self) -> StepRun:
        run = self.run
        if run is None:
            suffix = ":compensate" if self.phase is Phase.COMPENSATION else ""
            run = self.run = StepRun(
                saga_id=self.saga_id,
                saga_type=self.saga_type,
                step=self.step,
                phase=self.phase,
                attempt=self.attempt,
                idempotency_key=f"{self.saga_id}:{self.step}{suffix}",
                fencing_token=self.fencing_token,
            )
        return run


_current: ContextVar[_PendingRun | None] = ContextVar("saga_orchestrator_step", default=None)


def current_step() -> StepRun:
    """The step attempt running in this task.

    Call it from inside an action or compensation (it reads a context variable), typically for
    ``current_step().idempotency_key``. Raises ``LookupError`` anywhere else.
    """
    pending = _current.get()
    if pending is None:
        raise LookupError("current_step() called outside a saga step's action or compensation")
    return pending.build()


class SystemClock:
    """The real clock: ``datetime.now(UTC)`` and ``anyio.sleep``."""

    def now(self) -> datetime:
        """The current time, timezone-aware UTC."""
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on the running event loop (asyncio or trio)."""
        await anyio.sleep(seconds)
