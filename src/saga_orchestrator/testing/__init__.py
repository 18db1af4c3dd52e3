"""Helpers for testing your own sagas: a controllable clock, fault injection, crash points.

Public and stable, like the rest of the API:

```python
clock = ManualClock()
faults = FaultInjector()
faults.fail("process_payment", ConnectionError("PSP down"), attempts={1})
faults.hang("create_shipment")  # the step times out
orchestrator = SagaOrchestrator(repo, clock=clock, interceptors=[faults])
```

The contract tests for your own storage adapters are in
[`saga_orchestrator.testing.contract`][saga_orchestrator.testing.contract], which needs pytest;
this module does not.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import anyio
import anyio.lowlevel

from ..runtime import Phase, StepRun

__all__ = ["CRASH_EXIT_CODE", "FaultInjector", "ManualClock", "crash"]

CRASH_EXIT_CODE = 137
"""The exit status of a process stopped by [`crash`][saga_orchestrator.testing.crash] (as if
SIGKILLed)."""


class ManualClock:
    """A clock that moves only when told, or when the orchestrator sleeps (backoff).

    ``sleep`` advances the clock instead of waiting, so retries with backoff and deadlines run
    instantly and deterministically. Step timeouts still use real time (anyio's).

    Args:
        start: the initial time, timezone-aware (default: 2026-01-01 00:00 UTC).
    """

    def __init__(self, start: datetime | None = None) -> None:
        start = start or datetime(2026, 1, 1, tzinfo=UTC)
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start time")
        self._now = start
        self.sleeps: list[float] = []
        """Every delay slept, in order."""

    def now(self) -> datetime:
        """The clock's current time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``."""
        self._now += timedelta(seconds=seconds)

    async def sleep(self, seconds: float) -> None:
        """Record the delay in ``sleeps`` and advance the clock by it, without waiting."""
        self.sleeps.append(seconds)
        self.advance(seconds)
        await anyio.lowlevel.checkpoint()


def crash() -> None:
    """End this process at once, as SIGKILL would: no cleanup, no flushing, exit status 137."""
    os._exit(CRASH_EXIT_CODE)


FaultKind = Literal["raise", "hang", "crash_before", "crash_after", "raise_after"]


@dataclass(slots=True)
class _Rule:
    step: str
    phase: Phase
    kind: FaultKind
    attempts: Collection[int] | None
    error: BaseException | None
    fired: int = 0


@dataclass(slots=True)
class FaultInjector:
    """A step interceptor that makes chosen attempts of chosen steps fail.

    Rules match by step name, phase (action or compensation) and attempt number (``None``:
    every attempt). The first matching rule applies. ``log`` records every call seen, as
    ``(step, phase, attempt)``, whether a fault fired or not.
    """

    rules: list[_Rule] = field(default_factory=list)
    """The rules, in the order they were added (the builder methods append to it)."""
    log: list[tuple[str, Phase, int]] = field(default_factory=list)
    """Every call seen, as ``(step, phase, attempt)``."""

    def fail(
        self,
        step: str,
        error: BaseException,
        *,
        attempts: Collection[int] | None = None,
        phase: Phase = Phase.ACTION,
        after_call: bool = False,
    ) -> FaultInjector:
        """Raise ``error`` instead of calling the step.

        With ``after_call``, raise it after the call returned instead: the effect happened but
        the reply was lost. Returns the injector, so that calls chain.
        """
        kind: FaultKind = "raise_after" if after_call else "raise"
        self.rules.append(_Rule(step, phase, kind, attempts, error))
        return self

    def hang(
        self, step: str, *, attempts: Collection[int] | None = None, phase: Phase = Phase.ACTION
    ) -> FaultInjector:
        """Never return (until the step's timeout cancels the call)."""
        self.rules.append(_Rule(step, phase, "hang", attempts, None))
        return self

    def crash(
        self,
        step: str,
        *,
        when: Literal["before", "after"] = "before",
        attempts: Collection[int] | None = None,
        phase: Phase = Phase.ACTION,
    ) -> FaultInjector:
        """End the process (exit 137) at the step, as ``kill -9`` would.

        ``when="before"`` ends it before the call; ``when="after"`` after the call returned,
        but before the orchestrator records its result.
        """
        kind: FaultKind = "crash_before" if when == "before" else "crash_after"
        self.rules.append(_Rule(step, phase, kind, attempts, None))
        return self

    async def __call__(self, run: StepRun, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """The interceptor: log the call, then apply the first matching rule, if any."""
        self.log.append((run.step, run.phase, run.attempt))
        rule = self._match(run)
        if rule is None:
            return await proceed()
        rule.fired += 1
        match rule.kind:
            case "raise":
                assert rule.error is not None
                raise rule.error
            case "hang":
                await anyio.sleep_forever()
            case "crash_before":
                crash()
            case "crash_after":
                result = await proceed()
                crash()
                return result
            case "raise_after":
                await proceed()
                assert rule.error is not None
                raise rule.error
        raise AssertionError(f"unknown fault kind {rule.kind!r}")  # pragma: no cover

    def _match(self, run: StepRun) -> _Rule | None:
        for rule in self.rules:
            if rule.step != run.step or rule.phase is not run.phase:
                continue
            if rule.attempts is None or run.attempt in rule.attempts:
                return rule
        return None
