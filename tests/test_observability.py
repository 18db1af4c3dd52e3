"""Metrics, traces and logs: what operators see of a saga."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, generate_latest

from saga_orchestrator import SagaOrchestrator, SagaStatus
from saga_orchestrator.observability.otel import SagaTracing
from saga_orchestrator.observability.prometheus import PrometheusMetrics, SagaStatesCollector
from saga_orchestrator.protocols import SagaRepository
from saga_orchestrator.testing import ManualClock
from tests.sagas import NoCars, TripData, TripSaga, always, fail_on

pytestmark = pytest.mark.anyio


async def test_span_tree_of_a_compensated_saga(saga_repo: SagaRepository) -> None:
    """One saga span; under it the forward steps, the failure, then compensations in reverse."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = SagaTracing(provider)
    saga = TripSaga(TripData(), behaviour={"car": always(NoCars("no cars"))})
    orchestrator = SagaOrchestrator(saga_repo, interceptors=[tracing], clock=ManualClock())
    result = await orchestrator.execute(saga)
    assert result.status is SagaStatus.COMPENSATED

    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.name == "saga trip")
    assert root.parent is None
    assert root.attributes is not None
    assert root.attributes["saga.id"] == str(result.saga_id)
    assert root.attributes["saga.status"] == "compensated"
    assert root.status.status_code is StatusCode.ERROR
    children = sorted(
        (s for s in spans if s.parent is not None and s.parent.span_id == root.context.span_id),
        key=lambda s: s.start_time or 0,
    )
    assert [s.name for s in children] == [
        "run step flight",
        "run step hotel",
        "run step car",
        "compensate step hotel",
        "compensate step flight",
    ]
    failed = children[2]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["saga.outcome"] == "error"
    assert any(e.name == "exception" for e in failed.events)
    assert all(c.attributes and c.attributes["saga.id"] == str(result.saga_id) for c in children)
    assert any(e.name == "compensation.started" for e in root.events)


async def test_action_runs_inside_its_step_span(saga_repo: SagaRepository) -> None:
    """The attempt's span is current in the action, so calls it makes can carry the trace."""
    from opentelemetry import trace

    seen: list[str] = []

    async def look(step: str, attempt: int) -> dict[str, Any]:
        span = trace.get_current_span()
        seen.append(getattr(span, "name", "?"))
        return {step: "x"}

    provider = TracerProvider()
    tracing = SagaTracing(provider)
    saga = TripSaga(TripData(), behaviour={"hotel": look})
    await SagaOrchestrator(saga_repo, interceptors=[tracing]).execute(saga)
    assert seen == ["run step hotel"]


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_metrics_count_outcomes_failures_and_durations(saga_repo: SagaRepository) -> None:
    """Terminal statuses, failed attempts, retries and compensations are counted by label."""
    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry)
    orchestrator = SagaOrchestrator(saga_repo, listeners=[metrics], clock=ManualClock())
    await orchestrator.execute(TripSaga(TripData()))
    await orchestrator.execute(
        TripSaga(TripData(), behaviour={"hotel": fail_on({1}, ConnectionError("reset"))})
    )
    await orchestrator.execute(TripSaga(TripData(), behaviour={"car": always(NoCars("x"))}))

    assert _sample(registry, "saga_executions_total", saga_type="trip", status="completed") == 2
    assert _sample(registry, "saga_executions_total", saga_type="trip", status="compensated") == 1
    assert _sample(registry, "saga_step_failures_total", saga_type="trip", step="hotel") == 1
    assert _sample(registry, "saga_step_failures_total", saga_type="trip", step="car") == 1
    assert _sample(registry, "saga_step_retries_total", saga_type="trip", step="hotel") == 1
    assert (
        _sample(
            registry,
            "saga_compensations_total",
            saga_type="trip",
            step="hotel",
            outcome="compensated",
        )
        == 1
    )
    assert (
        _sample(registry, "saga_duration_seconds_count", saga_type="trip", status="completed") == 2
    )
    assert (
        _sample(
            registry,
            "saga_step_duration_seconds_count",
            saga_type="trip",
            step="flight",
            outcome="completed",
        )
        == 3
    )
    text = generate_latest(registry).decode()
    assert "saga_id" not in text  # labels stay bounded


async def test_saga_states_come_from_the_repository(saga_repo: SagaRepository) -> None:
    """The gauge counts what the store holds, so every process reports the same figure."""
    import anyio

    gate = anyio.Event()

    async def blocked(step: str, attempt: int) -> dict[str, Any]:
        await gate.wait()
        return {}

    with anyio.move_on_after(0.2):
        await SagaOrchestrator(saga_repo).execute(TripSaga(TripData(), behaviour={"car": blocked}))
    registry = CollectorRegistry()
    states = SagaStatesCollector(saga_repo, registry)  # type: ignore[arg-type]
    await states.refresh()
    assert _sample(registry, "saga_states", saga_type="trip", status="running") == 1
    assert _sample(registry, "saga_states", saga_type="trip", status="compensating") == 0


async def test_every_log_record_names_its_event_and_saga(
    saga_repo: SagaRepository, caplog: pytest.LogCaptureFixture
) -> None:
    """Lifecycle logs carry a stable dotted event name and the saga id in every record."""
    caplog.set_level(logging.INFO, logger="saga_orchestrator")
    saga = TripSaga(TripData(), behaviour={"car": always(NoCars("no cars"))})
    result = await SagaOrchestrator(saga_repo, clock=ManualClock()).execute(saga)
    records = [r for r in caplog.records if r.name == "saga_orchestrator"]
    events = [getattr(r, "event", None) for r in records]
    assert events[:2] == ["saga.started", "saga.step.started"]
    assert "saga.step.failed" in events
    assert "saga.compensation.started" in events
    assert events[-1] == "saga.compensated"
    assert all(getattr(r, "saga_id", None) == str(result.saga_id) for r in records)
