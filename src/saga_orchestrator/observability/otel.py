"""OpenTelemetry tracing for sagas: ``pip install saga-orchestrator[otel]`` (the API only; your
service installs and configures the SDK and exporter).

```python
tracing = SagaTracing()
orchestrator = SagaOrchestrator(repository, interceptors=[tracing])
```

Each saga gets a span ``saga <saga_type>``; under it, each attempt of a step gets
``run step <name>`` and each compensation attempt ``compensate step <name>``. Span names stay
low-cardinality; ids go to attributes (``saga.id``, ``saga.type``, ``saga.step``,
``saga.attempt``, ``saga.phase``, ``saga.outcome``). Failures are recorded as exceptions with
an error status. The attempt's span is current while your action runs, so the clients it calls
propagate the trace (``opentelemetry.propagate.inject(headers)``).

A saga resumed by another process (recovery) gets a new saga span there, marked
``saga.resumed = true``.

Wait steps (``wait_for_event``, ``sleep_for``, ``sleep_until``) call no action, so they have no
attempt span. When a saga begins a wait (``step.waiting``), its span gets the event
``step.waiting`` and ends, its ``saga.status`` attribute ``"waiting"``: a parked saga holds no
open span in any process, however long it waits. When the wait ends (its event consumed, its
timer elapsed, timed out, rejected, cancelled), a new saga span (``saga.resumed = true``)
starts at the instant the wait began, with a child ``wait step <name>`` covering the wait, and
the saga's next steps under it. The wait's end is known by its event's ``wait`` field, in
whichever process it happens.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from ..events import SagaEvent, SagaEventType
from ..runtime import Phase, StepRun
from ._waits import WaitSteps, wait_outcome

__all__ = ["SagaTracing"]

_TERMINAL = {
    SagaEventType.SAGA_COMPLETED: "completed",
    SagaEventType.SAGA_COMPENSATED: "compensated",
    SagaEventType.SAGA_FAILED: "failed",
}


class SagaTracing:
    """A step interceptor and a listener at once: pass it in ``interceptors``.

    Args:
        tracer_provider: where to get the tracer (default: the global provider).
        tracer: a tracer to use as it is, instead.
    """

    def __init__(
        self,
        tracer_provider: trace.TracerProvider | None = None,
        *,
        tracer: trace.Tracer | None = None,
    ) -> None:
        self.tracer = tracer or trace.get_tracer(
            "saga_orchestrator", tracer_provider=tracer_provider
        )
        """The tracer the spans come from (instrumentation scope ``saga_orchestrator``)."""
        self._sagas: dict[UUID, Span] = {}
        self._wait_steps = WaitSteps()

    # ------------------------------------------------------------------ listener

    def on_event(self, event: SagaEvent) -> None:
        """The listener: open the saga's span when it starts, end it at its terminal event or
        when it parks at a wait step; span a wait when it ends."""
        if event.type is SagaEventType.SAGA_STARTED:
            self._saga_span(event.saga_id, event.saga_type, event.correlation_id, resumed=False)
            return
        if event.type is SagaEventType.STEP_WAITING:
            self._wait_steps.saw_waiting(event)
        elif self._wait_steps.ends_wait(event):
            self._wait_span(event)
            return
        span = self._sagas.get(event.saga_id)
        if span is None:
            return
        if event.type is SagaEventType.STEP_WAITING:
            span.add_event(
                "step.waiting", {"saga.step": event.step or "", "saga.attempt": event.attempt or 0}
            )
            span.set_attribute("saga.status", "waiting")
            span.end()
            del self._sagas[event.saga_id]
        elif event.type is SagaEventType.COMPENSATION_STARTED:
            span.add_event("compensation.started", {"saga.error": event.error or ""})
        elif event.type in _TERMINAL:
            status = _TERMINAL[event.type]
            span.set_attribute("saga.status", status)
            if event.type is not SagaEventType.SAGA_COMPLETED:
                span.set_status(Status(StatusCode.ERROR, event.error or status))
            span.end()
            del self._sagas[event.saga_id]

    # ------------------------------------------------------------------ interceptor

    async def __call__(self, run: StepRun, proceed: Callable[[], Awaitable[Any]]) -> Any:
        """The interceptor: run the call inside its attempt's span, current while it runs."""
        parent = self._sagas.get(run.saga_id) or self._saga_span(
            run.saga_id, run.saga_type, None, resumed=True
        )
        verb = "run" if run.phase is Phase.ACTION else "compensate"
        with self.tracer.start_as_current_span(
            f"{verb} step {run.step}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            attributes={
                "saga.id": str(run.saga_id),
                "saga.type": run.saga_type,
                "saga.step": run.step,
                "saga.phase": run.phase.value,
                "saga.attempt": run.attempt,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await proceed()
            except Exception as exc:
                span.record_exception(exc)
                span.set_attribute("saga.outcome", "error")
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
            except BaseException:
                # Cancelled: the step timed out or the saga's task was cancelled.
                span.set_attribute("saga.outcome", "cancelled")
                span.set_status(Status(StatusCode.ERROR, "cancelled (timed out)"))
                raise
            span.set_attribute("saga.outcome", "ok")
            return result

    def _wait_span(self, event: SagaEvent) -> None:
        """The span of a wait that just ended, from its start (``duration_seconds`` ago) to
        now, under the saga's span (a resumed one from the wait's start, if none is open)."""
        end = time.time_ns()
        start = end - int((event.duration_seconds or 0.0) * 1e9)
        parent = self._sagas.get(event.saga_id) or self._saga_span(
            event.saga_id, event.saga_type, event.correlation_id, resumed=True, start_time=start
        )
        outcome = wait_outcome(event)
        span = self.tracer.start_span(
            f"wait step {event.step}",
            context=trace.set_span_in_context(parent),
            kind=SpanKind.INTERNAL,
            attributes={
                "saga.id": str(event.saga_id),
                "saga.type": event.saga_type,
                "saga.step": event.step or "",
                "saga.phase": "wait",
                "saga.attempt": event.attempt or 0,
                "saga.outcome": "ok" if outcome == "completed" else "error",
                "saga.wait.outcome": outcome,
            },
            start_time=start,
        )
        if event.type is SagaEventType.STEP_FAILED:
            span.set_status(Status(StatusCode.ERROR, event.error or outcome))
        span.end(end_time=end)

    def _saga_span(
        self,
        saga_id: UUID,
        saga_type: str,
        correlation_id: str | None,
        *,
        resumed: bool,
        start_time: int | None = None,
    ) -> Span:
        span = self.tracer.start_span(
            f"saga {saga_type}",
            context=trace.set_span_in_context(trace.INVALID_SPAN),  # a root of its own
            kind=SpanKind.INTERNAL,
            attributes={
                "saga.id": str(saga_id),
                "saga.type": saga_type,
                "saga.correlation_id": correlation_id or "",
                "saga.resumed": resumed,
            },
            start_time=start_time,
        )
        self._sagas[saga_id] = span
        return span
