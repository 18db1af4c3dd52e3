"""Prometheus metrics for sagas: a listener for the counters and histograms, a collector for
the `saga_states` gauge. Needs `pip install saga-orchestrator[prometheus]`."""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID, uuid4

import anyio
from prometheus_client import CollectorRegistry, generate_latest

from saga_orchestrator import BaseSaga, InMemorySagaRepository, SagaOrchestrator, SagaStep
from saga_orchestrator.observability.prometheus import PrometheusMetrics, SagaStatesCollector
from saga_orchestrator.testing import FaultInjector, ManualClock


@dataclass
class TransferData:
    transfer_id: UUID


class Rejected(Exception):
    """A business answer: not retried."""


class TransferSaga(BaseSaga[TransferData]):
    saga_type = "transfer"

    def __init__(self, data: TransferData, gate: anyio.Event | None = None) -> None:
        self.gate = gate
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[TransferData]]:
        return [
            SagaStep("debit", self.act, compensation=self.undo),
            SagaStep("credit", self.credit),
        ]

    async def act(self, data: TransferData) -> None:
        return None

    async def undo(self, data: TransferData) -> None:
        return None

    async def credit(self, data: TransferData) -> None:
        if self.gate is not None:
            await self.gate.wait()


async def main() -> None:
    registry = CollectorRegistry()  # or leave it out: prometheus_client's default REGISTRY
    repository = InMemorySagaRepository()
    metrics = PrometheusMetrics(registry)
    states = SagaStatesCollector(repository, registry, saga_types=["transfer"])
    faults = FaultInjector()
    orchestrator = SagaOrchestrator(
        repository, listeners=[metrics], interceptors=[faults], clock=ManualClock()
    )

    await orchestrator.execute(TransferSaga(TransferData(uuid4())))  # completes
    faults.fail("credit", ConnectionError("bank timeout"), attempts={1})
    await orchestrator.execute(TransferSaga(TransferData(uuid4())))  # retried, completes
    faults.rules.clear()
    faults.fail("credit", Rejected("account closed"))
    await orchestrator.execute(TransferSaga(TransferData(uuid4())))  # compensated
    faults.rules.clear()

    gate = anyio.Event()
    async with anyio.create_task_group() as tg:  # one saga still running during the scrape
        tg.start_soon(orchestrator.execute, TransferSaga(TransferData(uuid4()), gate))
        await anyio.wait_all_tasks_blocked()
        await states.refresh()  # in a service: tg.start_soon(states.run, 15)
        exposition = generate_latest(registry).decode()
        gate.set()

    wanted = (
        "saga_executions_total",
        "saga_step_failures_total",
        "saga_step_retries_total",
        "saga_compensations_total",
        "saga_states",
    )
    for line in exposition.splitlines():
        if line.startswith(wanted):
            print(line)


if __name__ == "__main__":
    anyio.run(main)
