"""Property-based tests of wait steps: an event delivered before, during or after the saga
reaches its wait, or never; redelivered; and the timeout racing it.

Hypothesis draws a saga of one or two compensatable steps, then a wait for ``confirmed``
(timeout ``T``), then ``ticket``; and a plan: whether the event is delivered while the saga
runs its first step (before it reaches the wait), at what times after it parked (in
seconds from its start, some before ``T``, some after, possibly never), whether its payload
is accepted, how many times it is redelivered, and when the orchestrator's timer
(``wake_due``) runs. A second orchestrator on the same repository delivers some of the
events, as another process would. The clock is a ManualClock, so ``received before T`` is
exact.

Properties, checked on the stored saga and the calls the services saw:

* exactly one of the event and the timeout wins: the saga completes (``ticket`` ran once,
  the event's fields are set, nothing undone) or compensates (every step before the wait
  undone once, last first, and ``ticket`` never ran);
* it completes if and only if an accepted delivery was received before ``T``; an event
  received at or after ``T`` changes nothing;
* the first delivery of an id is answered ``consumed`` or ``stored`` (``ignored`` once the
  saga is past its wait), every later one ``duplicate`` or ``ignored``, never consumed twice;
* events are numbered without gaps, and the wait emits ``step.waiting`` then one outcome.

They run on the in-memory repository, and with fewer examples on SQLite.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    SagaEventType,
    SagaOrchestrator,
    SagaRepository,
    SagaStatus,
    SagaStep,
    SQLiteSagaRepository,
)
from saga_orchestrator.definitions import wait_for_event
from saga_orchestrator.inbox import DeliveryStatus
from saga_orchestrator.testing import ManualClock

TIMEOUT = 60.0


@dataclass
class WaitData:
    """The saga's data: ``code`` is set by the consumed event."""

    order_id: str = "o"
    code: str | None = None
    amount: Decimal = Decimal("10.00")


@dataclass(frozen=True)
class Delivery:
    """One delivery: of event ``key``, ``at`` seconds after the saga started (``None``:
    during its first step), by the second orchestrator or not, accepted or not."""

    key: str
    at: float | None
    other: bool
    good: bool


@dataclass(frozen=True)
class Plan:
    steps: int
    deliveries: tuple[Delivery, ...]
    wakes: tuple[float, ...]


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    steps = draw(st.integers(1, 2))
    keys = draw(st.integers(0, 2))
    times = st.one_of(
        st.none(),
        st.floats(0, TIMEOUT - 0.001),
        st.sampled_from([TIMEOUT - 0.001, TIMEOUT, TIMEOUT + 0.001]),
        st.floats(TIMEOUT, 2 * TIMEOUT),
    )
    deliveries: list[Delivery] = []
    for index in range(keys):
        good = draw(st.booleans()) if index == keys - 1 else True
        for _ in range(draw(st.integers(1, 3))):  # the delivery and its redeliveries
            deliveries.append(Delivery(f"evt-{index}", draw(times), draw(st.booleans()), good))
    wakes = tuple(draw(st.lists(st.floats(0, 2 * TIMEOUT), max_size=3)))
    return Plan(steps, tuple(deliveries), wakes)


class WaitSaga(BaseSaga[WaitData]):
    saga_type = "property_wait"

    def __init__(self, data: WaitData, calls: list[str], steps: int, during: Any) -> None:
        self.calls = calls
        self.count = steps
        self.during = during
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[WaitData]]:
        def action(name: str) -> Any:
            async def run(data: WaitData) -> None:
                self.calls.append(name)
                if name == "s0" and self.during is not None:
                    await self.during()

            return run

        def undo(name: str) -> Any:
            async def run(data: WaitData) -> None:
                self.calls.append(f"undo-{name}")

            return run

        def accept(data: WaitData, payload: Any) -> dict[str, Any]:
            if payload["amount"] != data.amount:
                raise ValueError("wrong amount")
            return {"code": payload["code"]}

        names = [f"s{i}" for i in range(self.count)]
        return [
            *(SagaStep(name, action(name), undo(name)) for name in names),
            wait_for_event("confirm", "confirmed", timeout_seconds=TIMEOUT, accept=accept),
            SagaStep("ticket", action("ticket")),
        ]


class Events:
    def __init__(self) -> None:
        self.events: list[Any] = []

    def on_event(self, event: Any) -> None:
        self.events.append(event)


async def check(plan: Plan, repository: SagaRepository, other_repository: SagaRepository) -> None:
    note(repr(plan))
    clock = ManualClock()
    start = clock.now()
    calls: list[str] = []
    events = Events()
    answers: dict[str, list[DeliveryStatus]] = {}
    received: list[tuple[float, bool]] = []  # (when, accepted) of every stored delivery

    def orchestrator(on: SagaRepository, **options: Any) -> SagaOrchestrator:
        made = SagaOrchestrator(on, clock=clock, **options)
        made.register(
            WaitSaga.saga_type, lambda data: WaitSaga(data, calls, plan.steps, during=None)
        )
        return made

    main = orchestrator(repository, listeners=[events])
    other = orchestrator(other_repository, listeners=[events])
    saga: WaitSaga

    async def deliver(item: Delivery, at: float) -> None:
        payload = {"code": item.key, "amount": Decimal("10.00" if item.good else "9.99")}
        target = other if item.other else main
        delivery = await target.deliver_event(
            "confirmed", payload, event_id=item.key, saga_id=saga.context.saga_id, drive=True
        )
        answers.setdefault(item.key, []).append(delivery.status)
        if delivery.status in (DeliveryStatus.CONSUMED, DeliveryStatus.STORED):
            received.append((at, item.good))

    early = [d for d in plan.deliveries if d.at is None]

    async def during() -> None:
        for item in early:
            await deliver(item, 0.0)

    saga = WaitSaga(WaitData(), calls, plan.steps, during)
    await main.execute(saga)
    timeline = sorted(
        [(d.at, 0, d) for d in plan.deliveries if d.at is not None]
        + [(w, 1, None) for w in plan.wakes]
        + [(2 * TIMEOUT + 1, 1, None)],
        key=lambda item: (item[0], item[1]),
    )
    for at, _, item in timeline:
        now = start.timestamp() + at
        if now > clock.now().timestamp():
            clock.advance(now - clock.now().timestamp())
        if item is not None:
            await deliver(item, at)
        else:
            await main.wake_due()

    stored = await repository.get(saga.context.saga_id)
    assert stored is not None
    note(f"calls={calls} answers={answers} status={stored.status}")
    forward = [f"s{i}" for i in range(plan.steps)]
    # The winner: the first delivery kept before the timeout decides (accepted or not).
    first = next((r for r in received if r[0] < TIMEOUT), None)  # received in time order
    if first is not None and first[1]:
        assert stored.status is SagaStatus.COMPLETED
        assert calls == [*forward, "ticket"]
        assert stored.data.code is not None
        assert stored.steps[plan.steps].event_id == stored.data.code
    else:
        assert stored.status is SagaStatus.COMPENSATED
        assert calls == [*forward, *(f"undo-{name}" for name in reversed(forward))]
        assert stored.data.code is None
    for key, statuses in answers.items():
        assert statuses.count(DeliveryStatus.CONSUMED) <= 1, (key, statuses)
        for later in statuses[1:]:
            assert later in (DeliveryStatus.DUPLICATE, DeliveryStatus.IGNORED), (key, statuses)
    sequences = [e.sequence for e in events.events]
    assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
    confirm = [e.type for e in events.events if e.step == "confirm"]
    assert confirm[0] is SagaEventType.STEP_WAITING
    assert confirm[1:] in (
        [SagaEventType.STEP_COMPLETED],
        [SagaEventType.STEP_FAILED],
    )


quick = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
fewer = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@quick
@given(plans())
def test_in_memory(plan: Plan) -> None:
    repository = InMemorySagaRepository()
    anyio.run(check, plan, repository, repository)


@fewer
@given(plans())
def test_on_sqlite_with_two_repository_objects(plan: Plan) -> None:
    async def run() -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "waits.db"
            async with SQLiteSagaRepository(path) as one, SQLiteSagaRepository(path) as two:
                await check(plan, one, two)

    anyio.run(run)


def test_the_plans_reach_every_case() -> None:
    """The strategy draws events before the wait, before and after the timeout, and none."""
    seen: set[str] = set()

    @settings(max_examples=300, deadline=None)
    @given(plans())
    def look(plan: Plan) -> None:
        ats = [d.at for d in plan.deliveries]
        seen.update(
            name
            for name, hit in (
                ("never", not ats),
                ("early", None in ats),
                ("before", any(a is not None and a < TIMEOUT for a in ats)),
                ("after", any(a is not None and a >= TIMEOUT for a in ats)),
                ("duplicate", len(ats) > len({d.key for d in plan.deliveries})),
            )
            if hit
        )

    look()
    assert seen == {"never", "early", "before", "after", "duplicate"}


pytestmark = pytest.mark.filterwarnings("ignore::saga_orchestrator.errors.MainModuleDataWarning")
