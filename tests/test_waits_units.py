"""Wait steps in isolation: their definition's checks, and the state machine's rules for them
(wake-up time, the deadline, timers from the data, cancel)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    RetryPolicy,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    StepStatus,
    machine,
    sleep_for,
    sleep_until,
    wait_for_event,
)
from saga_orchestrator.testing import ManualClock

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class NapData:
    order_id: str = "n"
    until: Any = None


async def noop(data: Any) -> None:
    return None


def test_wait_steps_are_checked_when_built() -> None:
    with pytest.raises(SagaDefinitionError, match="event name must be a non-empty string"):
        wait_for_event("w", "")
    with pytest.raises(SagaDefinitionError, match="timeout_seconds must be a finite number"):
        wait_for_event("w", "e", timeout_seconds=0)
    with pytest.raises(SagaDefinitionError, match="timeout_seconds must be a number"):
        sleep_for("s", "5")  # type: ignore[arg-type]

    async def accept(data: Any, payload: Any) -> None:
        return None

    with pytest.raises(SagaDefinitionError, match="accept must be a plain function"):
        wait_for_event("w", "e", accept=accept)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="a wait step has no action"):
        SagaStep("w", noop, retry=RetryPolicy(), wait=wait_for_event("w", "e").wait)
    with pytest.raises(SagaDefinitionError, match="cannot be retriable"):
        SagaStep("w", noop, retriable=True, wait=wait_for_event("w", "e").wait)
    assert sleep_for("s", 1, retriable=True).retriable


def test_a_wait_steps_action_is_never_meant_to_run() -> None:
    step = wait_for_event("w", "e")
    with pytest.raises(RuntimeError, match="never called"):
        anyio.run(step.action, None)


class NapSaga(BaseSaga[NapData]):
    saga_type = "unit_nap"
    timeout_minutes = 1.0

    def __init__(self, data: NapData, log: list[str], step: SagaStep[NapData]) -> None:
        self.log = log
        self.wait_step = step
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[NapData]]:
        async def book(data: NapData) -> None:
            self.log.append("book")

        async def undo(data: NapData) -> None:
            self.log.append("undo")

        async def after(data: NapData) -> None:
            self.log.append("after")

        last = SagaStep("after", after, retriable=self.wait_step.retriable)
        return [SagaStep("book", book, undo), self.wait_step, last]


def _run(step: SagaStep[NapData], data: NapData | None = None) -> tuple[Any, list[str], Any]:
    log: list[str] = []
    clock = ManualClock(T0)

    async def main() -> tuple[Any, Any]:
        orchestrator = SagaOrchestrator(InMemorySagaRepository(), clock=clock)
        orchestrator.register(NapSaga.saga_type, lambda d: NapSaga(d, log, step))
        saga = NapSaga(data or NapData(), log, step)
        return await orchestrator.execute(saga), orchestrator

    result, orchestrator = anyio.run(main)
    return result, log, (orchestrator, clock)


def test_sleep_until_an_instant_from_the_data() -> None:
    when = T0 + timedelta(seconds=20)
    result, log, (orchestrator, clock) = _run(
        sleep_until("nap", lambda data: data.until), NapData(until=when)
    )
    assert result.status is SagaStatus.RUNNING
    assert result.steps[1].wait_until == when
    clock.advance(20)
    [done] = anyio.run(orchestrator.wake_due)
    assert done.status is SagaStatus.COMPLETED
    assert log == ["book", "after"]


@pytest.mark.parametrize(
    ("until", "error"),
    [
        (
            lambda data: datetime(2026, 1, 1),  # noqa: DTZ001 - naive, on purpose
            "until gave datetime.datetime(2026, 1, 1, 0, 0)",
        ),
        (lambda data: 1 / 0, "until raised ZeroDivisionError: division by zero"),
    ],
)
def test_a_timer_that_cannot_be_set_fails_its_step(until: Any, error: str) -> None:
    result, log, _ = _run(sleep_until("nap", until))
    assert result.status is SagaStatus.COMPENSATED
    assert result.steps[1].status is StepStatus.FAILED
    assert result.steps[1].error is not None
    assert result.steps[1].error.startswith(error)
    assert log == ["book", "undo"]


def test_a_past_instant_completes_the_timer_at_once() -> None:
    result, log, _ = _run(sleep_until("nap", lambda data: T0 - timedelta(days=1)))
    assert result.status is SagaStatus.COMPLETED
    assert result.steps[1].wait_until == T0 - timedelta(days=1)
    assert log == ["book", "after"]


def test_a_timer_past_the_deadline_fails_unless_retriable() -> None:
    result, _, (orchestrator, clock) = _run(sleep_for("nap", 120))
    assert machine.wake_at(_ctx(orchestrator, result), None) == T0 + timedelta(minutes=1)
    clock.advance(60)
    [done] = anyio.run(orchestrator.wake_due)
    assert done.status is SagaStatus.COMPENSATED
    assert "exceeded while waiting for a timer" in (done.error or "")
    _, _, (other, other_clock) = _run(sleep_for("nap", 120, retriable=True))
    other_clock.advance(60)
    assert anyio.run(other.wake_due) == []  # the deadline does not end a retriable timer
    other_clock.advance(60)
    [finished] = anyio.run(other.wake_due)
    assert finished.status is SagaStatus.COMPLETED


def _ctx(orchestrator: SagaOrchestrator, result: Any) -> Any:
    return anyio.run(orchestrator.get, result.saga_id)


def test_wake_at_of_a_waiting_saga() -> None:
    result, _, (orchestrator, _) = _run(wait_for_event("w", "e"))
    context = _ctx(orchestrator, result)
    # No timeout: the deadline (one minute) is the wake-up; without one, only the event.
    assert machine.wake_at(context, None) == T0 + timedelta(minutes=1)
    context.deadline = None
    assert machine.wake_at(context, None) == machine.NEVER
    assert machine.parked_until(context) == machine.NEVER
    context.steps[1].wait_until = T0 + timedelta(seconds=5)
    assert machine.wake_at(context, None) == T0 + timedelta(seconds=5)
