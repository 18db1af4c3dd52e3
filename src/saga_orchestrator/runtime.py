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
    COMPENSATION = "compensation"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRun:
    """One attempt of one step's action or compensation."""

    saga_id: UUID
    saga_type: str
    step: str
    phase: Phase
    attempt: int
    idempotency_key: str
    """Stable across attempts, restarts and processes: pass it to the services you call."""


_current: ContextVar[StepRun | None] = ContextVar("saga_orchestrator_step", default=None)


def current_step() -> StepRun:
    """The step attempt running in this task. Raises LookupError outside an action."""
    run = _current.get()
    if run is None:
        raise LookupError("current_step() called outside a saga step's action or compensation")
    return run


class SystemClock:
    """The real clock: ``datetime.now(UTC)`` and ``anyio.sleep``."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)
