"""OpenTelemetry spans for sagas: pass SagaTracing in `interceptors`. Needs
`pip install saga-orchestrator[otel]` and, to export anything, the SDK (opentelemetry-sdk)."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

import anyio
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from saga_orchestrator import BaseSaga, InMemorySagaRepository, SagaOrchestrator, SagaStep
from saga_orchestrator.observability.otel import SagaTracing


@dataclass
class TripData:
    trip_id: UUID


class NoRooms(Exception):
    """A business answer: not retried."""

    refused = True  # a declared refusal: the step did nothing, so it is not undone


class TripSaga(BaseSaga[TripData]):
    saga_type = "trip"

    def define_steps(self) -> list[SagaStep[TripData]]:
        return [
            SagaStep("book_flight", self.book_flight, compensation=self.cancel),
            SagaStep("book_hotel", self.book_hotel, compensation=self.cancel),
        ]

    async def book_flight(self, data: TripData) -> None:
        # The attempt's span is current here: an instrumented HTTP client would join it.
        print("inside:", trace.get_current_span().name)  # type: ignore[attr-defined]

    async def book_hotel(self, data: TripData) -> None:
        raise NoRooms("fully booked")

    async def cancel(self, data: TripData) -> None:
        return None


async def main() -> None:
    exporter = InMemorySpanExporter()  # in a service: BatchSpanProcessor(OTLPSpanExporter())
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    orchestrator = SagaOrchestrator(
        InMemorySagaRepository(), interceptors=[SagaTracing(provider)]
    )  # SagaTracing() without arguments uses the global tracer provider
    await orchestrator.execute(TripSaga(TripData(uuid4())))

    spans = sorted(exporter.get_finished_spans(), key=lambda s: s.start_time or 0)

    def describe(span: ReadableSpan) -> str:
        attributes = dict(span.attributes or {})
        outcome = attributes.get("saga.outcome") or attributes.get("saga.status")
        return f"{span.name}  [{outcome}, status {span.status.status_code.name}]"

    for span in spans:
        indent = "  " if span.parent is not None else ""
        print(indent + describe(span))
    root = spans[0]
    print("root attributes:", sorted((root.attributes or {}).keys()))
    print("root events:", [event.name for event in root.events])


if __name__ == "__main__":
    anyio.run(main)
