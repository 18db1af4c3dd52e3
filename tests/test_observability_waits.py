"""Wait steps in metrics, traces and logs: a wait is counted when it begins, its outcome and
how long it lasted when it ends, it gets a span of its own, and a parked saga holds no span.

The sagas run on an in-memory repository with a manual clock: a wait lasts exactly as long
as the test advances the clock.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, ClassVar

import anyio
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, generate_latest

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    SagaEvent,
    SagaOrchestrator,
    SagaStep,
)
from saga_orchestrator.definitions import sleep_for, sleep_until, wait_for_event
from saga_orchestrator.observability.otel import SagaTracing
from saga_orchestrator.observability.prometheus import PrometheusMetrics
from saga_orchestrator.testing import ManualClock

pytestmark = pytest.mark.anyio


@dataclass
class PayData:
    amount: Decimal | None = None
    reference: str | None = None


async def _charge(data: PayData) -> dict[str, Any]:
    return {"reference": "ch-1"}


async def _refund(data: PayData) -> None:
    return None


async def _ship(data: PayData) -> None:
    return None


class PaySaga(BaseSaga[PayData]):
    """Charge, wait up to a minute for the capture, cool off 30 s, ship."""

    saga_type = "pay"

    def define_steps(self) -> list[SagaStep[PayData]]:
        return [
            SagaStep("charge", _charge, _refund),
            wait_for_event("captured", "payment.captured", timeout_seconds=60),
            sleep_for("cool_off", 30),
            SagaStep("ship", _ship),
        ]


class DeadlineSaga(BaseSaga[PayData]):
    """A timer of an hour in a saga with a one-minute deadline."""

    saga_type = "deadline"
    timeout_minutes: ClassVar[float | None] = 1

    def define_steps(self) -> list[SagaStep[PayData]]:
        return [sleep_for("nap", 3600)]


def _broken_until(data: PayData) -> datetime:
    raise LookupError("no date")


class BrokenTimerSaga(BaseSaga[PayData]):
    """A timer whose instant cannot be computed: the wait fails as it begins."""

    saga_type = "broken_timer"

    def define_steps(self) -> list[SagaStep[PayData]]:
        return [sleep_until("nap", _broken_until)]


def _orchestrator(
    clock: ManualClock,
    repository: InMemorySagaRepository | None = None,
    *,
    listeners: list[Any] | None = None,
    interceptors: list[Any] | None = None,
) -> SagaOrchestrator:
    orchestrator = SagaOrchestrator(
        repository or InMemorySagaRepository(),
        listeners=listeners or [],
        interceptors=interceptors or [],
        clock=clock,
    )
    for saga in (PaySaga, DeadlineSaga, BrokenTimerSaga):
        orchestrator.register(saga.saga_type, saga)
    return orchestrator


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


# ---------------------------------------------------------------------- Prometheus


async def test_waits_are_counted_with_their_outcome_and_duration() -> None:
    """Each wait counts when it begins; its end counts by outcome (completed) with how long
    the saga waited, and stays out of the step latency histogram."""
    registry = CollectorRegistry()
    clock = ManualClock()
    orchestrator = _orchestrator(clock, listeners=[PrometheusMetrics(registry)])
    parked = await orchestrator.execute(PaySaga(PayData()))
    assert parked.status.value == "running"
    assert _sample(registry, "saga_waits_total", saga_type="pay", step="captured") == 1
    assert _sample(registry, "saga_waits_total", saga_type="pay", step="cool_off") is None

    clock.advance(5)
    delivery = await orchestrator.deliver_event(
        "payment.captured", {"amount": Decimal("12.50")}, event_id="e1", saga_id=parked.saga_id
    )
    assert delivery.status.value == "consumed"
    outcome = {"saga_type": "pay", "step": "captured", "outcome": "completed"}
    assert _sample(registry, "saga_wait_outcomes_total", **outcome) == 1
    assert _sample(registry, "saga_wait_duration_seconds_sum", **outcome) == 5.0
    assert _sample(registry, "saga_wait_duration_seconds_count", **outcome) == 1
    assert _sample(registry, "saga_waits_total", saga_type="pay", step="cool_off") == 1

    clock.advance(40)
    [done] = await orchestrator.wake_due()
    assert done.status.value == "completed"
    timer = {"saga_type": "pay", "step": "cool_off", "outcome": "completed"}
    assert _sample(registry, "saga_wait_outcomes_total", **timer) == 1
    assert _sample(registry, "saga_wait_duration_seconds_sum", **timer) == 40.0

    for step in ("captured", "cool_off"):  # a wait is no step latency
        labels = {"saga_type": "pay", "step": step, "outcome": "completed"}
        assert _sample(registry, "saga_step_duration_seconds_count", **labels) is None
    ship = {"saga_type": "pay", "step": "ship", "outcome": "completed"}
    assert _sample(registry, "saga_step_duration_seconds_count", **ship) == 1
    assert _sample(registry, "saga_executions_total", saga_type="pay", status="completed") == 1
    assert "saga_id" not in generate_latest(registry).decode()


async def test_a_timed_out_wait_is_a_step_failure_with_outcome_timed_out() -> None:
    """No event within the timeout: outcome timed_out after 61 s, and a step failure."""
    registry = CollectorRegistry()
    clock = ManualClock()
    orchestrator = _orchestrator(clock, listeners=[PrometheusMetrics(registry)])
    await orchestrator.execute(PaySaga(PayData()))
    clock.advance(61)
    [result] = await orchestrator.wake_due()
    assert result.status.value == "compensated"
    timed_out = {"saga_type": "pay", "step": "captured", "outcome": "timed_out"}
    assert _sample(registry, "saga_wait_outcomes_total", **timed_out) == 1
    assert _sample(registry, "saga_wait_duration_seconds_sum", **timed_out) == 61.0
    assert _sample(registry, "saga_step_failures_total", saga_type="pay", step="captured") == 1
    assert _sample(registry, "saga_step_retries_total", saga_type="pay", step="captured") is None
    labels = {"saga_type": "pay", "step": "captured", "outcome": "failed"}
    assert _sample(registry, "saga_step_duration_seconds_count", **labels) is None


async def test_every_kind_of_wait_failure_has_its_outcome() -> None:
    """Rejected payload, an operator's cancel, the saga's deadline, an `until` that raises."""
    registry = CollectorRegistry()
    clock = ManualClock()
    orchestrator = _orchestrator(clock, listeners=[PrometheusMetrics(registry)])

    rejected = await orchestrator.execute(PaySaga(PayData()))
    await orchestrator.deliver_event(
        "payment.captured", {"colour": "red"}, event_id="bad", saga_id=rejected.saga_id
    )
    cancelled = await orchestrator.execute(PaySaga(PayData()))
    await orchestrator.cancel(cancelled.saga_id, "customer called")
    await orchestrator.execute(DeadlineSaga(PayData()))
    broken = await orchestrator.execute(BrokenTimerSaga(PayData()))
    assert broken.status.value == "compensated"
    clock.advance(61)
    await orchestrator.wake_due()

    def outcomes(saga_type: str, step: str) -> dict[str, float]:
        found = {}
        for outcome in ("completed", "timed_out", "rejected", "cancelled", "failed"):
            value = _sample(
                registry,
                "saga_wait_outcomes_total",
                saga_type=saga_type,
                step=step,
                outcome=outcome,
            )
            if value is not None:
                found[outcome] = value
        return found

    assert outcomes("pay", "captured") == {"rejected": 1, "cancelled": 1}
    assert outcomes("deadline", "nap") == {"timed_out": 1}
    assert outcomes("broken_timer", "nap") == {"failed": 1}
    assert _sample(registry, "saga_waits_total", saga_type="broken_timer", step="nap") == 1


async def test_a_process_that_never_saw_the_wait_begin_counts_its_end_as_a_wait() -> None:
    """A wait's events say so (``SagaEvent.wait``): a fresh process that only resumes a wait
    begun elsewhere counts its end as a wait's, not as a step's latency."""
    clock = ManualClock()
    repository = InMemorySagaRepository()
    first = _orchestrator(clock, repository)
    parked = await first.execute(PaySaga(PayData()))
    registry = CollectorRegistry()
    other = _orchestrator(clock, repository, listeners=[PrometheusMetrics(registry)])
    clock.advance(5)
    await other.deliver_event("payment.captured", {}, event_id="e1", saga_id=parked.saga_id)
    captured = {"saga_type": "pay", "step": "captured", "outcome": "completed"}
    assert _sample(registry, "saga_wait_outcomes_total", **captured) == 1
    assert _sample(registry, "saga_wait_duration_seconds_sum", **captured) == 5.0
    assert _sample(registry, "saga_step_duration_seconds_count", **captured) is None


def test_wait_events_say_what_they_wait_for() -> None:
    """``step.waiting`` and the end of a wait carry ``wait`` (the event's name, or
    "timer"); it survives the JSON wire format and PostgreSQL's compact journal."""
    from saga_orchestrator.adapters.postgres._outbox import decode_events, encode_events
    from saga_orchestrator.events import decode_event, encode_event

    events = []

    class Listen:
        def on_event(self, event: SagaEvent) -> None:
            events.append(event)

    async def run() -> None:
        clock = ManualClock()
        orchestrator = _orchestrator(clock, InMemorySagaRepository(), listeners=[Listen()])
        parked = await orchestrator.execute(PaySaga(PayData()))
        await orchestrator.deliver_event(
            "payment.captured", {}, event_id="e", saga_id=parked.saga_id
        )
        clock.advance(31)
        await orchestrator.wake_due()

    anyio.run(run)
    waits = [(e.type.value, e.step, e.wait) for e in events if e.wait is not None]
    assert waits == [
        ("step.waiting", "captured", "payment.captured"),
        ("step.completed", "captured", "payment.captured"),
        ("step.waiting", "cool_off", "timer"),
        ("step.completed", "cool_off", "timer"),
    ]
    assert all(e.wait is None for e in events if e.step not in ("captured", "cool_off"))
    for event in events:
        assert decode_event(encode_event(event)) == event
    first = events[0]
    text = encode_events(events[1:3], first.saga_id, first.saga_type, first.correlation_id)
    assert (
        decode_events(
            text, first.saga_id, first.saga_type, first.correlation_id, events[1].occurred_at
        )
        == events[1:3]
    )


# ---------------------------------------------------------------------- OpenTelemetry


def _tracing() -> tuple[SagaTracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return SagaTracing(provider), exporter


def _children(spans: tuple[ReadableSpan, ...], parent: ReadableSpan) -> list[str]:
    return [
        s.name
        for s in sorted(spans, key=lambda s: s.start_time or 0)
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]


async def test_a_parked_saga_ends_its_span_and_each_wait_gets_one() -> None:
    """The saga's span ends when it parks (saga.status waiting); the wait's end opens a
    resumed saga span from the wait's start, with a `wait step` child as long as the wait."""
    tracing, exporter = _tracing()
    clock = ManualClock()
    orchestrator = _orchestrator(clock, interceptors=[tracing])
    parked = await orchestrator.execute(PaySaga(PayData()))

    spans = exporter.get_finished_spans()  # exported while the saga is parked
    [first] = [s for s in spans if s.name == "saga pay"]
    assert _children(spans, first) == ["run step charge"]
    assert first.attributes is not None
    assert first.attributes["saga.status"] == "waiting"
    assert first.attributes["saga.resumed"] is False
    assert first.status.status_code is StatusCode.UNSET
    [waiting] = [e for e in first.events if e.name == "step.waiting"]
    assert waiting.attributes is not None
    assert dict(waiting.attributes) == {"saga.step": "captured", "saga.attempt": 1}

    exporter.clear()
    clock.advance(5)
    await orchestrator.deliver_event("payment.captured", {}, event_id="e1", saga_id=parked.saga_id)
    spans = exporter.get_finished_spans()
    [wait] = [s for s in spans if s.name == "wait step captured"]
    [resumed] = [s for s in spans if s.name == "saga pay"]
    assert resumed.attributes is not None
    assert resumed.attributes["saga.resumed"] is True
    assert resumed.attributes["saga.status"] == "waiting"  # parked again, at the timer
    assert resumed.start_time == wait.start_time
    assert wait.end_time is not None
    assert wait.start_time is not None
    assert wait.end_time - wait.start_time == 5_000_000_000
    assert wait.parent is not None
    assert wait.parent.span_id == resumed.context.span_id
    assert wait.attributes is not None
    assert dict(wait.attributes) == {
        "saga.id": str(parked.saga_id),
        "saga.type": "pay",
        "saga.step": "captured",
        "saga.phase": "wait",
        "saga.attempt": 1,
        "saga.outcome": "ok",
        "saga.wait.outcome": "completed",
    }
    assert wait.status.status_code is StatusCode.UNSET

    exporter.clear()
    clock.advance(30)
    await orchestrator.wake_due()
    spans = exporter.get_finished_spans()
    [last] = [s for s in spans if s.name == "saga pay"]
    assert last.attributes is not None
    assert last.attributes["saga.status"] == "completed"
    assert _children(spans, last) == ["wait step cool_off", "run step ship"]


async def test_a_timed_out_wait_span_is_an_error_and_compensation_follows() -> None:
    """A wait that timed out: its span has status ERROR and the timeout's error; the
    compensations run under the same resumed saga span."""
    tracing, exporter = _tracing()
    clock = ManualClock()
    orchestrator = _orchestrator(clock, interceptors=[tracing])
    await orchestrator.execute(PaySaga(PayData()))
    exporter.clear()
    clock.advance(61)
    await orchestrator.wake_due()
    spans = exporter.get_finished_spans()
    [saga] = [s for s in spans if s.name == "saga pay"]
    assert saga.attributes is not None
    assert saga.attributes["saga.resumed"] is True
    assert saga.attributes["saga.status"] == "compensated"
    assert _children(spans, saga) == ["wait step captured", "compensate step charge"]
    [wait] = [s for s in spans if s.name == "wait step captured"]
    assert wait.attributes is not None
    assert wait.attributes["saga.outcome"] == "error"
    assert wait.attributes["saga.wait.outcome"] == "timed_out"
    assert wait.status.status_code is StatusCode.ERROR
    assert wait.status.description == "TimeoutError: no event 'payment.captured' within 60s"
    assert any(e.name == "compensation.started" for e in saga.events)


# ---------------------------------------------------------------------- logging


async def test_a_wait_is_logged_as_saga_step_waiting(caplog: pytest.LogCaptureFixture) -> None:
    """`step.waiting` gives an INFO record named saga.step.waiting, with its step."""
    caplog.set_level(logging.INFO, logger="saga_orchestrator")
    parked = await _orchestrator(ManualClock()).execute(PaySaga(PayData()))
    records = [r for r in caplog.records if getattr(r, "event", None) == "saga.step.waiting"]
    [record] = records
    assert record.levelno == logging.INFO
    assert record.getMessage() == f"saga.step.waiting: pay {parked.saga_id} captured"
    assert getattr(record, "step", None) == "captured"
    assert getattr(record, "attempt", None) == 1
    assert getattr(record, "saga_id", None) == str(parked.saga_id)
