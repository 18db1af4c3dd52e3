"""Prometheus metrics for sagas: ``pip install saga-orchestrator[prometheus]``.

```python
metrics = PrometheusMetrics(registry)               # a listener
states = SagaStatesCollector(repository, registry)  # saga_states, from the database
orchestrator = SagaOrchestrator(repository, listeners=[metrics])
...
await states.refresh()  # or run `states.run(interval_seconds=15)` in a task
```

Metric names and labels are the ones the specification's Grafana dashboard queries:

- ``saga_executions_total{saga_type, status}``: sagas that reached a terminal status;
- ``saga_duration_seconds{saga_type, status}`` (histogram): start to terminal status;
- ``saga_step_failures_total{saga_type, step}``: failed step attempts;
- ``saga_states{saga_type, status}`` (gauge): sagas currently in each non-terminal status, and
  failed ones, counted in the repository, so the figure is right with many processes; plus
  ``status="stranded"``: unfinished sagas that ``recover()`` or a worker could not resume
  (also counted under their own status, so do not sum over ``status``);

plus ``saga_step_duration_seconds{saga_type, step, outcome}``,
``saga_step_retries_total{saga_type, step}`` and
``saga_compensations_total{saga_type, step, outcome}``; and for wait steps
(``wait_for_event``, ``sleep_for``, ``sleep_until``), ``saga_waits_total{saga_type, step}``,
``saga_wait_outcomes_total{saga_type, step, outcome}`` and
``saga_wait_duration_seconds{saga_type, step, outcome}``. Labels stay bounded: a saga id is
never a label.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

import anyio
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..events import SagaEvent, SagaEventType
from ..state import SagaStatus
from ._waits import WaitSteps, wait_outcome

if TYPE_CHECKING:
    from ..protocols import SagaStatusCounter

__all__ = ["PrometheusMetrics", "SagaStatesCollector"]

SAGA_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 1800, 3600)
STEP_DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
WAIT_DURATION_BUCKETS = (
    1,
    10,
    60,
    300,
    900,
    3600,
    4 * 3600,
    12 * 3600,
    86400,
    3 * 86400,
    7 * 86400,
)
"""Seconds: a wait lasts from a second (an event already delivered) to days (a timer)."""
GAUGE_STATUSES = (
    SagaStatus.PENDING,
    SagaStatus.RUNNING,
    SagaStatus.COMPENSATING,
    SagaStatus.FAILED,
)
"""Statuses ``saga_states`` reports: the ones that change or need attention. Completed and
compensated sagas only accumulate; ``saga_executions_total`` counts them."""

STRANDED_COUNT_LIMIT = 100_000
"""At most this many stranded sagas are counted per refresh."""

_TERMINAL = {
    SagaEventType.SAGA_COMPLETED: "completed",
    SagaEventType.SAGA_COMPENSATED: "compensated",
    SagaEventType.SAGA_FAILED: "failed",
}


class PrometheusMetrics:
    """A [`SagaListener`][saga_orchestrator.protocols.SagaListener] that keeps the saga metrics.

    Args:
        registry: where to register the metrics (``None``: nowhere, as in tests).
        saga_duration_buckets: histogram buckets of ``saga_duration_seconds``.
        step_duration_buckets: histogram buckets of ``saga_step_duration_seconds``.
        wait_duration_buckets: histogram buckets of ``saga_wait_duration_seconds``.

    Wait steps: each ``step.waiting`` event counts in ``saga_waits_total``. The
    ``step.completed`` and ``step.failed`` that end a wait (their ``wait`` is set) count in
    ``saga_wait_outcomes_total`` and
    ``saga_wait_duration_seconds`` (how long the saga waited; not for a cancelled wait, whose
    event has no duration), instead of ``saga_step_duration_seconds``; a ``step.failed``
    also counts in ``saga_step_failures_total``, as any failed step does. The outcome is
    ``completed`` (its event was consumed, or its timer elapsed), ``timed_out`` (no event
    within its timeout, or the saga's deadline came first), ``rejected`` (the event's
    payload was refused), ``cancelled`` (an operator cancelled the saga) or ``failed``
    (``sleep_until``'s ``until`` raised), in whichever process the wait ends.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        saga_duration_buckets: Sequence[float] = SAGA_DURATION_BUCKETS,
        step_duration_buckets: Sequence[float] = STEP_DURATION_BUCKETS,
        wait_duration_buckets: Sequence[float] = WAIT_DURATION_BUCKETS,
    ) -> None:
        self.executions = Counter(
            "saga_executions",
            "Sagas that reached a terminal status.",
            ["saga_type", "status"],
            registry=registry,
        )
        """``saga_executions_total{saga_type, status}``."""
        self.duration = Histogram(
            "saga_duration_seconds",
            "Seconds from a saga's start to its terminal status.",
            ["saga_type", "status"],
            buckets=saga_duration_buckets,
            registry=registry,
        )
        """``saga_duration_seconds{saga_type, status}``."""
        self.step_failures = Counter(
            "saga_step_failures",
            "Failed attempts of forward steps (retried or not).",
            ["saga_type", "step"],
            registry=registry,
        )
        """``saga_step_failures_total{saga_type, step}``."""
        self.step_duration = Histogram(
            "saga_step_duration_seconds",
            "Seconds one attempt of a forward step took.",
            ["saga_type", "step", "outcome"],
            buckets=step_duration_buckets,
            registry=registry,
        )
        """``saga_step_duration_seconds{saga_type, step, outcome}``."""
        self.step_retries = Counter(
            "saga_step_retries",
            "Forward step attempts that failed and were scheduled again.",
            ["saga_type", "step"],
            registry=registry,
        )
        """``saga_step_retries_total{saga_type, step}``."""
        self.compensations = Counter(
            "saga_compensations",
            "Compensation attempts, by outcome (compensated or failed).",
            ["saga_type", "step", "outcome"],
            registry=registry,
        )
        """``saga_compensations_total{saga_type, step, outcome}``."""
        self.waits = Counter(
            "saga_waits",
            "Wait steps begun (step.waiting): the saga parks until its event or its time.",
            ["saga_type", "step"],
            registry=registry,
        )
        """``saga_waits_total{saga_type, step}``."""
        self.wait_outcomes = Counter(
            "saga_wait_outcomes",
            "Waits ended, by outcome (completed, timed_out, rejected, cancelled or failed).",
            ["saga_type", "step", "outcome"],
            registry=registry,
        )
        """``saga_wait_outcomes_total{saga_type, step, outcome}``."""
        self.wait_duration = Histogram(
            "saga_wait_duration_seconds",
            "Seconds from a wait's start to its outcome.",
            ["saga_type", "step", "outcome"],
            buckets=wait_duration_buckets,
            registry=registry,
        )
        """``saga_wait_duration_seconds{saga_type, step, outcome}``."""
        self._wait_steps = WaitSteps()

    def on_event(self, event: SagaEvent) -> None:
        """The listener: update the metrics the event concerns."""
        kind = event.type
        saga_type = event.saga_type
        if kind in _TERMINAL:
            status = _TERMINAL[kind]
            self.executions.labels(saga_type, status).inc()
            if event.duration_seconds is not None:
                self.duration.labels(saga_type, status).observe(event.duration_seconds)
        elif kind is SagaEventType.STEP_WAITING:
            self.waits.labels(saga_type, event.step).inc()
            self._wait_steps.saw_waiting(event)
        elif self._wait_steps.ends_wait(event):
            outcome = wait_outcome(event)
            self.wait_outcomes.labels(saga_type, event.step, outcome).inc()
            if event.duration_seconds is not None:
                self.wait_duration.labels(saga_type, event.step, outcome).observe(
                    event.duration_seconds
                )
            if kind is SagaEventType.STEP_FAILED:
                self.step_failures.labels(saga_type, event.step).inc()
        elif kind is SagaEventType.STEP_COMPLETED:
            if event.duration_seconds is not None:
                self.step_duration.labels(saga_type, event.step, "completed").observe(
                    event.duration_seconds
                )
        elif kind is SagaEventType.STEP_FAILED:
            self.step_failures.labels(saga_type, event.step).inc()
            if event.will_retry:
                self.step_retries.labels(saga_type, event.step).inc()
            if event.duration_seconds is not None:
                self.step_duration.labels(saga_type, event.step, "failed").observe(
                    event.duration_seconds
                )
        elif kind is SagaEventType.STEP_COMPENSATED:
            self.compensations.labels(saga_type, event.step, "compensated").inc()
        elif kind is SagaEventType.STEP_COMPENSATION_FAILED:
            self.compensations.labels(saga_type, event.step, "failed").inc()


class SagaStatesCollector(Collector):
    """The ``saga_states{saga_type, status}`` gauge, counted in the repository.

    The repository is the truth shared by every process, so the figures are right however
    many processes run sagas.

    Prometheus scrapes synchronously, so the counts are refreshed by ``refresh`` (or ``run``)
    and served from the last refresh.

    Args:
        repository: a repository with ``count_by_status`` (the built-in ones have it; see
            [`SagaStatusCounter`][saga_orchestrator.protocols.SagaStatusCounter]).
        registry: where to register the collector (``None``: nowhere).
        saga_types: types to report (with zeros) before any saga of theirs is counted.
        statuses: the statuses to report.

    Where the repository records stranded sagas
    ([`StrandingRecorder`][saga_orchestrator.protocols.StrandingRecorder], as the built-in
    ones do), every type also reports ``status="stranded"``: its unfinished sagas that
    ``recover()`` or a worker could not resume (no factory for their type or definition
    version, unreadable). They are also counted under their own status.
    """

    def __init__(
        self,
        repository: SagaStatusCounter,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        saga_types: Iterable[str] = (),
        statuses: Collection[SagaStatus] = GAUGE_STATUSES,
    ) -> None:
        self.repository = repository
        """Where the counts come from."""
        self.statuses = tuple(statuses)
        """The statuses reported."""
        self._saga_types = set(saga_types)
        self._counts: dict[tuple[str, SagaStatus], int] = {}
        self._stranded: dict[str, int] | None = None
        if registry is not None:
            registry.register(self)

    async def refresh(self) -> None:
        """Read the current counts from the repository."""
        counts = await self.repository.count_by_status(self.statuses)
        self._saga_types.update(saga_type for saga_type, _ in counts)
        self._counts = counts
        list_stranded = getattr(self.repository, "list_stranded", None)
        if list_stranded is not None:
            stranded: dict[str, int] = {}
            for saga in await list_stranded(limit=STRANDED_COUNT_LIMIT):
                saga_type = saga.saga_type or "unknown"
                stranded[saga_type] = stranded.get(saga_type, 0) + 1
            self._saga_types.update(stranded)
            self._stranded = stranded

    async def run(self, interval_seconds: float = 15.0) -> None:
        """Refresh forever, every ``interval_seconds`` (run it in a task group)."""
        while True:
            await self.refresh()
            await anyio.sleep(interval_seconds)

    def collect(self) -> Iterator[Metric]:
        """The ``saga_states`` gauge from the last refresh (called by the Prometheus client)."""
        family = GaugeMetricFamily(
            "saga_states",
            "Sagas currently in each status (non-terminal ones, and failed), from the store.",
            labels=["saga_type", "status"],
        )
        # Every known type reports every status, 0 included, so series do not vanish.
        for saga_type in sorted(self._saga_types):
            for status in self.statuses:
                family.add_metric(
                    [saga_type, status.value], self._counts.get((saga_type, status), 0)
                )
            if self._stranded is not None:
                family.add_metric([saga_type, "stranded"], self._stranded.get(saga_type, 0))
        yield family
