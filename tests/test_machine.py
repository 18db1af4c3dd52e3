"""The state machine on its own: transitions without storage, I/O or an event loop, and the
docs' diagrams checked against its tables."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from saga_orchestrator import (
    BaseSaga,
    RetryPolicy,
    SagaStatus,
    SagaStep,
    StepState,
    StepStatus,
    machine,
)
from saga_orchestrator.events import SagaEventType as E
from saga_orchestrator.machine import Failure

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=3, initial_backoff_seconds=1.0, jitter_ratio=0.0)
BUG = Failure("KeyError: 'x'", retryable=False, effect_possible=True)
REFUSAL = Failure("CardDeclined: no", retryable=False, effect_possible=False)
BLIP = Failure("ConnectionError: reset", retryable=True, effect_possible=True)


@dataclass
class Data:
    n: int = 0


async def noop(data: Data) -> None:
    return None


class Trip(BaseSaga[Data]):
    saga_type = "trip"
    timeout_minutes = 10

    def define_steps(self) -> list[SagaStep[Data]]:
        return [
            SagaStep("flight", noop, noop),
            SagaStep("hotel", noop),  # nothing to undo
            SagaStep("card", noop, noop),
            SagaStep("mail", noop, retriable=True),
        ]


def started() -> tuple[Trip, list[dict[str, object]]]:
    saga = Trip(Data())
    t = machine.start(saga.context, NOW, timeout_minutes=10, begin=True)
    return saga, t.events


def types(events: list[dict[str, object]]) -> list[object]:
    return [e["type"] for e in events]


def test_start_records_running_with_a_deadline_and_the_first_attempt() -> None:
    saga, events = started()
    c = saga.context
    assert c.status is SagaStatus.RUNNING
    assert c.deadline == NOW + timedelta(minutes=10)
    assert c.steps[0].status is StepStatus.RUNNING
    assert c.steps[0].attempts == 1
    assert types(events) == [E.SAGA_STARTED, E.STEP_STARTED]
    machine.undo_start(c, (None, None, StepState(name="flight")))
    assert c.status is SagaStatus.PENDING
    assert c.deadline is None


def test_happy_path_each_completion_starts_the_next_step_and_the_last_completes() -> None:
    saga, _ = started()
    c, steps = saga.context, saga.steps
    for index in range(4):
        t = machine.complete_step(c, steps, index, NOW, 0.1)
        if index < 3:
            assert types(t.events) == [E.STEP_COMPLETED, E.STEP_STARTED]
            assert c.current_step_index == index + 1
    assert c.status is SagaStatus.COMPLETED
    assert types(t.events) == [E.STEP_COMPLETED, E.SAGA_COMPLETED]
    assert all(s.status is StepStatus.COMPLETED for s in c.steps)


def test_a_stopping_worker_records_the_completion_without_starting_the_next() -> None:
    saga, _ = started()
    t = machine.complete_step(saga.context, saga.steps, 0, NOW, 0.1, stopping=True)
    assert types(t.events) == [E.STEP_COMPLETED]
    assert saga.context.current_step_index == 1
    assert saga.context.steps[1].status is StepStatus.PENDING


def test_a_transient_failure_schedules_a_retry_until_attempts_run_out() -> None:
    saga, _ = started()
    c, steps = saga.context, saga.steps
    t = machine.attempt_failed(c, steps, 0, BLIP, POLICY, NOW, 0.1)
    assert c.steps[0].status is StepStatus.PENDING
    assert c.steps[0].next_attempt_at == NOW + timedelta(seconds=1)
    assert t.events[0]["will_retry"] is True
    assert machine.wake_at(c, steps) == NOW + timedelta(seconds=1)
    for attempt in (2, 3):
        machine.begin_attempt(c, 0, NOW)
        assert c.steps[0].attempts == attempt
        t = machine.attempt_failed(c, steps, 0, BLIP, POLICY, NOW, 0.1)
    assert c.steps[0].error == "ConnectionError: reset (gave up after 3 attempts)"
    # It may have acted: its own compensation runs first.
    assert c.status is SagaStatus.COMPENSATING
    assert c.steps[0].status is StepStatus.COMPENSATING
    assert types(t.events) == [E.STEP_FAILED, E.COMPENSATION_STARTED]


def test_a_refusal_is_not_compensated_but_earlier_completed_steps_are_in_reverse_order() -> None:
    saga, _ = started()
    c, steps = saga.context, saga.steps
    machine.complete_step(c, steps, 0, NOW, 0.1)
    machine.complete_step(c, steps, 1, NOW, 0.1)
    t = machine.attempt_failed(c, steps, 2, REFUSAL, POLICY, NOW, 0.1)
    assert c.steps[2].status is StepStatus.FAILED
    assert c.status is SagaStatus.COMPENSATING
    assert c.current_step_index == 0  # "hotel" has no compensation: skipped
    assert c.steps[0].status is StepStatus.COMPENSATING
    assert c.steps[1].status is StepStatus.COMPLETED
    assert c.error == "card: CardDeclined: no"
    assert types(t.events) == [E.STEP_FAILED, E.COMPENSATION_STARTED]
    t = machine.compensation_succeeded(c, steps, 0, NOW, 0.1)
    assert c.status is SagaStatus.COMPENSATED
    assert types(t.events) == [E.STEP_COMPENSATED, E.SAGA_COMPENSATED]


def test_a_bug_in_a_step_compensates_the_step_itself_first() -> None:
    saga, _ = started()
    c, steps = saga.context, saga.steps
    machine.complete_step(c, steps, 0, NOW, 0.1)
    machine.complete_step(c, steps, 1, NOW, 0.1)
    machine.attempt_failed(c, steps, 2, BUG, POLICY, NOW, 0.1)
    assert c.current_step_index == 2
    assert c.steps[2].status is StepStatus.COMPENSATING
    machine.compensation_succeeded(c, steps, 2, NOW, 0.1)
    assert c.current_step_index == 0
    assert c.status is SagaStatus.COMPENSATING


def test_the_deadline_before_the_next_attempt_is_the_wake_up_and_fails_the_step() -> None:
    saga, _ = started()
    c, steps = saga.context, saga.steps
    slow = RetryPolicy(
        max_attempts=5, initial_backoff_seconds=3600.0, max_backoff_seconds=3600.0, jitter_ratio=0.0
    )
    machine.attempt_failed(c, steps, 0, BLIP, slow, NOW, 0.1)
    assert machine.wake_at(c, steps) == c.deadline
    late = c.deadline + timedelta(seconds=1)  # type: ignore[operator]
    failure = machine.why_no_attempt(c, steps[0], c.steps[0], slow, late)
    assert failure is not None
    assert failure.text.endswith("exceeded)")
    machine.fail_step(c, steps, 0, failure, late)
    assert c.status is SagaStatus.COMPENSATING


def test_a_retriable_step_ignores_the_deadline_and_is_never_compensated() -> None:
    saga, _ = started()
    c, steps = saga.context, saga.steps
    for index in range(3):
        machine.complete_step(c, steps, index, NOW, 0.1)
    late = NOW + timedelta(hours=1)
    slow = RetryPolicy(
        max_attempts=1, initial_backoff_seconds=3600.0, max_backoff_seconds=3600.0, jitter_ratio=0.0
    )
    machine.attempt_failed(c, steps, 3, BUG, slow, late, 0.1)
    assert c.steps[3].status is StepStatus.PENDING  # retried: forward recovery only
    assert machine.wake_at(c, steps) == c.steps[3].next_attempt_at  # not the deadline
    assert machine.wake_at(c, None) == c.deadline  # steps unknown: not retriable


def test_compensation_gives_up_then_retry_starts_it_again_and_keeps_the_history() -> None:
    saga, _ = started()
    c, steps = saga.context, saga.steps
    machine.attempt_failed(c, steps, 0, BUG, POLICY, NOW, 0.1)
    for _ in range(2):
        machine.compensation_failed(c, 0, "RuntimeError: down", POLICY, NOW, 0.1)
        machine.resume_compensation(c, POLICY, NOW)
    t = machine.compensation_failed(c, 0, "RuntimeError: down", POLICY, NOW, 0.1)
    assert c.status is SagaStatus.FAILED
    assert c.steps[0].status is StepStatus.COMPENSATION_FAILED
    assert c.error == (
        "flight: KeyError: 'x'; compensating flight failed after 3 attempts: RuntimeError: down"
    )
    assert types(t.events) == [E.STEP_COMPENSATION_FAILED, E.SAGA_FAILED]
    t = machine.retry_failed(c, steps, NOW)
    assert c.status is SagaStatus.COMPENSATING
    assert c.error == "flight: KeyError: 'x'"
    assert c.steps[0].compensation_attempts == 1
    assert [r.kind.value for r in c.error_history] == [
        "compensating",
        "compensation_failed",
        "retried",
    ]


def test_cancel_counts_the_attempt_in_flight_as_possibly_done() -> None:
    saga, _ = started()
    c, steps = saga.context, saga.steps
    machine.cancel(c, steps, "customer asked", NOW)
    assert c.steps[0].status is StepStatus.COMPENSATING
    assert c.steps[0].effect_possible
    assert c.error == "cancelled: customer asked"


def test_an_interrupted_attempt_is_reconciled_as_possibly_done_and_due() -> None:
    saga, _ = started()
    c = saga.context
    machine.reconcile_interrupted(c, NOW)
    assert c.steps[0].status is StepStatus.PENDING
    assert c.steps[0].effect_possible
    assert c.steps[0].error == "interrupted: attempt 1 did not finish"


def test_an_illegal_change_is_refused() -> None:
    saga = Trip(Data())
    with pytest.raises(machine.IllegalTransitionError, match="pending -> completed"):
        machine.complete_step(saga.context, saga.steps, 3, NOW, 0.1)


def _arrows(markdown: str) -> list[set[tuple[str, str]]]:
    blocks = re.findall(r"```mermaid\n(.*?)```", markdown, flags=re.S)
    found = []
    for block in blocks:
        arrows = set(re.findall(r"^\s*(\w+) --> (\w+)", block, flags=re.M))
        found.append({(a, b) for a, b in arrows if a != b})  # self-loops: no status change
    return found


def test_the_docs_diagrams_are_exactly_the_machines_tables() -> None:
    page = (ROOT / "docs" / "concepts" / "state-machine.md").read_text(encoding="utf-8")
    saga, step = _arrows(page)
    assert saga == {(a.value, b.value) for a, b in machine.SAGA_TRANSITIONS}
    assert step == {(a.value, b.value) for a, b in machine.STEP_TRANSITIONS}


def test_statuses_are_assigned_in_the_machine_only() -> None:
    """The state machine's rules module is the single place where statuses change."""
    run = subprocess.run(
        ["grep", "-rnE", r"\.status = |\.status=", str(ROOT / "src" / "saga_orchestrator")],
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in run.stdout.splitlines() if "/machine/_rules.py:" not in line]
    assert lines == []
