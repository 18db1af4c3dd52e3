"""The example service's Prometheus metrics (logging set-up is in `logs.py`).

The library only emits; the service decides where metrics go: here, one registry per process
with the saga metrics and the `saga_states` gauge read from the database.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from saga_orchestrator.observability.prometheus import PrometheusMetrics, SagaStatesCollector
from saga_orchestrator.protocols import SagaStatusCounter

from .async_saga import AsyncPaymentOrderSaga
from .saga import OrderFulfillmentSaga


class SagaMetrics:
    """A registry holding the saga metrics; `listener` goes to the orchestrator."""

    def __init__(self, repository: SagaStatusCounter) -> None:
        self.registry = CollectorRegistry()
        self.listener = PrometheusMetrics(self.registry)
        self.states = SagaStatesCollector(
            repository,
            self.registry,
            saga_types=[OrderFulfillmentSaga.saga_type, AsyncPaymentOrderSaga.saga_type],
        )

    async def exposition(self) -> bytes:
        """The text format Prometheus scrapes, with `saga_states` read just now."""
        await self.states.refresh()
        return generate_latest(self.registry)
