"""Engine semantics: retries, deadlines, pivots, compensation failure, concurrency, events."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from uuid import uuid4

import anyio
import pytest

from saga_orchestrator import (
    BaseSaga,
    InMemoryEventPublisher,
    RetryPolicy,
    SagaConflictError,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    SerializationError,
    StepRefusedError,
    StepStatus,
    current_step,
)
from saga_orchestrator.errors import (
    SagaDefinitionMismatchError,
    SagaNotFoundError,
    SagaStateError,
)
from saga_orchestrator.protocols import SagaRepository
from saga_orchestrator.testing import ManualClock
from tests.conftest import PostgresSchema
from tests.sagas import NoCars, TripData, TripSaga, always, fail_on, returns

pytestmark = pytest.mark.anyio


def orchestrator(repo: SagaRepository, **kwargs: Any) -> SagaOrchestrator:
    kwargs.setdefault("clock", ManualClock())
    return SagaOrchestrator(repo, **kwargs)


async def test_happy_path_costs_one_write_per_step_boundary(saga_repo: SagaRepository) -> None:
    """Start + one write per step end (which also records the next start) = steps + 1."""
    log: list[str] = []
    result = await orchestrator(saga_repo).execute(TripSaga(TripData(), log))
    assert result.status is SagaStatus.COMPLETED
    assert log == ["flight#1", "hotel#1", "car#1"]
    assert result.data.car == "car-ref"
    writes = getattr(saga_repo, "writes", None) or getattr(saga_repo, "transactions", None)
    assert writes == 4


async def test_transient_error_is_retried_with_growing_backoff(saga_repo: SagaRepository) -> None:
    """ConnectionError twice, then success: 3 attempts, 2 backoff sleeps, no compensation."""
    clock = ManualClock()
    log: list[str] = []
    saga = TripSaga(
        TripData(),
        log,
        behaviour={"hotel": fail_on({1, 2}, ConnectionError("reset"))},
        retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=1, jitter_ratio=0),
    )
    result = await orchestrator(saga_repo, clock=clock).execute(saga)
    assert result.status is SagaStatus.COMPLETED
    assert log == ["flight#1", "hotel#1", "hotel#2", "hotel#3", "car#1"]
    assert clock.sleeps == [1.0, 2.0]
    assert result.steps[1].attempts == 3


async def test_business_error_fails_at_once(saga_repo: SagaRepository) -> None:
    """A declared refusal is an answer: no retry, and the step is not undone."""

    class Declined(StepRefusedError):
        pass

    log: list[str] = []
    saga = TripSaga(TripData(), log, behaviour={"hotel": always(Declined("no rooms"))})
    result = await orchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert log == ["flight#1", "hotel#1", "undo-flight#1"]
    assert result.error == "hotel: Declined: no rooms"
    assert not result.steps[1].effect_possible


async def test_exhausted_transient_error_compensates_the_step_itself(
    saga_repo: SagaRepository,
) -> None:
    """After the last transient failure the step may have acted, so it is undone too."""
    log: list[str] = []
    saga = TripSaga(TripData(), log, behaviour={"hotel": always(ConnectionError("reset"))})
    result = await orchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert log == ["flight#1", "hotel#1", "hotel#2", "hotel#3", "undo-hotel#1", "undo-flight#1"]


async def test_policy_can_mark_errors_non_retryable(saga_repo: SagaRepository) -> None:
    """`non_retryable_errors` overrides the default rule for transient-looking errors."""
    log: list[str] = []
    policy = RetryPolicy(non_retryable_errors=(ConnectionRefusedError,))
    saga = TripSaga(
        TripData(), log, behaviour={"flight": always(ConnectionRefusedError())}, retry=policy
    )
    result = await orchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert log == ["flight#1", "undo-flight#1"]


async def test_deadline_stops_forward_steps_and_compensates(saga_repo: SagaRepository) -> None:
    """Past `timeout_minutes` no forward step starts; the saga compensates."""
    clock = ManualClock()

    class SlowTrip(TripSaga):
        timeout_minutes = 1

    async def slow_hotel(step: str, attempt: int) -> dict[str, Any]:
        clock.advance(120)
        return {"hotel": "h"}

    log: list[str] = []
    saga = SlowTrip(TripData(), log, behaviour={"hotel": slow_hotel})
    result = await orchestrator(saga_repo, clock=clock).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert log == ["flight#1", "hotel#1", "undo-hotel#1", "undo-flight#1"]
    assert result.error is not None
    assert "car: saga deadline" in result.error
    assert result.steps[2].status is StepStatus.PENDING


async def test_deadline_is_stored_as_an_absolute_time(saga_repo: SagaRepository) -> None:
    """The deadline survives restarts: it is `created_at + timeout_minutes`, stored."""

    class Timed(TripSaga):
        timeout_minutes = 30

    clock = ManualClock()
    result = await orchestrator(saga_repo, clock=clock).execute(Timed(TripData()))
    stored = await saga_repo.get(result.saga_id)
    assert stored is not None
    assert stored.created_at is not None
    assert stored.deadline is not None
    assert (stored.deadline - stored.created_at).total_seconds() == 1800


async def test_retriable_step_after_pivot_never_compensates(saga_repo: SagaRepository) -> None:
    """A retriable step is retried past max_attempts, on any error, until it succeeds."""
    log: list[str] = []
    saga = TripSaga(
        TripData(),
        log,
        behaviour={"car": fail_on({1, 2, 3, 4, 5}, ValueError("not yet"))},
        retriable_car=True,
    )
    result = await orchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPLETED
    assert log[-1] == "car#6"
    assert not any(entry.startswith("undo") for entry in log)


def test_compensatable_step_after_a_retriable_one_is_refused() -> None:
    """Saga theory: compensatable steps, a pivot, then only retriable ones."""

    class Wrong(BaseSaga[TripData]):
        saga_type = "wrong"

        def define_steps(self) -> list[SagaStep[TripData]]:
            async def noop(data: TripData) -> None:
                return None

            return [SagaStep("a", noop, retriable=True), SagaStep("b", noop, noop)]

    with pytest.raises(SagaDefinitionError, match="retriable steps must come last"):
        Wrong(TripData())


async def test_failing_compensation_leaves_saga_failed_then_retry_finishes(
    saga_repo: SagaRepository,
) -> None:
    """A compensation failing every attempt → FAILED with the error kept; retry() resumes."""
    broken = {"on": True}

    async def refund(step: str, attempt: int) -> None:
        if broken["on"]:
            raise RuntimeError("refund API down")

    log: list[str] = []
    saga = TripSaga(
        TripData(),
        log,
        behaviour={"car": always(NoCars("no cars"))},
        compensation_behaviour={"hotel": refund},
    )
    orch = orchestrator(saga_repo, compensation_retry=RetryPolicy(max_attempts=3))
    orch.register("trip", lambda data: TripSaga(data, log))
    result = await orch.execute(saga)

    assert result.status is SagaStatus.FAILED
    assert log == ["flight#1", "hotel#1", "car#1", "undo-hotel#1", "undo-hotel#2", "undo-hotel#3"]
    assert result.error is not None
    assert "compensating hotel failed after 3 attempts: RuntimeError: refund API down" in (
        result.error
    )
    stored = await saga_repo.get(result.saga_id)
    assert stored is not None
    assert [s.status for s in stored.steps] == [
        StepStatus.COMPLETED,  # still owed a compensation: not lost
        StepStatus.COMPENSATION_FAILED,
        StepStatus.FAILED,
    ]

    broken["on"] = False
    log.clear()
    retried = await orch.retry(result.saga_id)
    assert retried.status is SagaStatus.COMPENSATED
    assert log == ["undo-hotel#1", "undo-flight#1"]
    assert retried.error == "car: NoCars: no cars"


async def test_retry_keeps_the_whole_error_history(saga_repo: SagaRepository) -> None:
    """After a successful retry(), the stored history still has the compensation's failure."""
    broken = {"on": True}

    async def refund(step: str, attempt: int) -> None:
        if broken["on"]:
            raise RuntimeError("refund API down")

    saga = TripSaga(
        TripData(),
        behaviour={"car": always(NoCars("no cars"))},
        compensation_behaviour={"hotel": refund},
    )
    orch = orchestrator(saga_repo, compensation_retry=RetryPolicy(max_attempts=2))
    orch.register("trip", lambda data: TripSaga(data, compensation_behaviour={"hotel": refund}))
    result = await orch.execute(saga)
    assert result.status is SagaStatus.FAILED
    first = await orch.retry(result.saga_id)  # still broken: fails again
    assert first.status is SagaStatus.FAILED
    broken["on"] = False
    final = await orch.retry(result.saga_id)
    assert final.status is SagaStatus.COMPENSATED

    stored = await saga_repo.get(result.saga_id)
    assert stored is not None
    history = [(r.kind.value, r.step, r.message) for r in stored.error_history]
    failure = "compensating hotel failed after 2 attempts: RuntimeError: refund API down"
    assert history == [
        ("compensating", "car", "car: NoCars: no cars"),
        ("compensation_failed", "hotel", failure),
        ("retried", "hotel", "retried: compensating hotel again"),
        ("compensation_failed", "hotel", failure),
        ("retried", "hotel", "retried: compensating hotel again"),
    ]
    assert all(r.at is not None and r.at.tzinfo is not None for r in stored.error_history)
    assert stored.error == "car: NoCars: no cars"
    assert final.error_history == tuple(stored.error_history)


async def test_retry_refuses_a_saga_that_is_not_failed(saga_repo: SagaRepository) -> None:
    """retry() on a completed saga is a clear error that changes nothing."""
    orch = orchestrator(saga_repo)
    result = await orch.execute(TripSaga(TripData()))
    with pytest.raises(SagaStateError, match="only a failed saga"):
        await orch.retry(result.saga_id)
    with pytest.raises(SagaNotFoundError):
        await orch.retry(uuid4())


async def test_unknown_result_field_is_an_error_naming_it(saga_repo: SagaRepository) -> None:
    """An action returning a key the data lacks fails the step, and it is undone."""
    log: list[str] = []
    saga = TripSaga(TripData(), log, behaviour={"hotel": returns({"hotell": "typo"})})
    result = await orchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert "unknown field 'hotell'" in result.error
    assert log == ["flight#1", "hotel#1", "undo-hotel#1", "undo-flight#1"]


async def test_unstorable_result_is_refused_before_the_step_is_done(
    saga_repo: SagaRepository,
) -> None:
    """A result that cannot round-trip is never recorded; the data keeps its old value."""
    saga = TripSaga(TripData(), behaviour={"hotel": returns({"hotel": {1, 2}})})
    result = await orchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert result.data.hotel is None
    assert result.error is not None
    assert "SerializationError" in result.error


async def test_unstorable_data_is_refused_before_anything_is_written(
    saga_repo: SagaRepository,
) -> None:
    """Bad input raises a typed error and stores nothing."""
    data = TripData(price=Decimal("NaN"))
    saga = TripSaga(data)
    with pytest.raises(SerializationError, match=r"data\.price"):
        await orchestrator(saga_repo).execute(saga)
    assert await saga_repo.get(saga.context.saga_id) is None
    assert saga.log == []


async def test_executing_a_stored_saga_again_returns_its_result(saga_repo: SagaRepository) -> None:
    """Same saga_id twice: the second call replays the stored outcome, calls nothing."""
    orch = orchestrator(saga_repo)
    first = TripSaga(TripData())
    await orch.execute(first)
    log: list[str] = []
    second = TripSaga(first.context.data, log)
    second.context.saga_id = first.context.saga_id
    result = await orch.execute(second)
    assert result.status is SagaStatus.COMPLETED
    assert log == []


@pytest.fixture
async def two_repositories(
    backend: str, tmp_path: Any, request: pytest.FixtureRequest
) -> AsyncIterator[list[SagaRepository]]:
    """Two repository objects on one store, as two processes have (in memory, or a backend
    with no branch here: its one `saga_repo`, shared)."""
    from saga_orchestrator import SQLiteSagaRepository

    if backend == "sqlite":
        repos = [SQLiteSagaRepository(tmp_path / "race.db") for _ in range(2)]
        yield list(repos)
        for repo in repos:
            await repo.close()
    elif backend == "postgres":
        schema: PostgresSchema = request.getfixturevalue("postgres_schema")
        async with schema.repository() as first, schema.repository() as second:
            yield [first, second]
    else:
        shared: SagaRepository = request.getfixturevalue("saga_repo")
        yield [shared, shared]


async def test_two_orchestrators_never_both_advance_one_saga(
    two_repositories: list[SagaRepository],
) -> None:
    """Racing resumes of one interrupted saga: one runs the step, the other stops cleanly."""
    repos = two_repositories
    gate = anyio.Event()
    log: list[str] = []

    async def blocked(step: str, attempt: int) -> dict[str, Any]:
        await gate.wait()
        return {"hotel": "h"}

    # First run: interrupted (cancelled) while the hotel step is in flight.
    saga = TripSaga(TripData(), log, behaviour={"hotel": blocked})
    with anyio.move_on_after(0.2):
        await orchestrator(repos[0]).execute(saga)
    gate.set()
    log.clear()

    outcomes: list[str] = []
    both_loaded = _Barrier(2)

    async def resume(repo: SagaRepository) -> None:
        orch = orchestrator(_LoadTogether(repo, both_loaded))  # type: ignore[arg-type]
        orch.register("trip", lambda data: TripSaga(data, log))
        try:
            await orch.resume(saga.context.saga_id)
            outcomes.append("completed")
        except SagaConflictError:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for repo in repos:
            tg.start_soon(resume, repo)

    assert sorted(outcomes) == ["completed", "conflict"]
    assert log.count("hotel#2") == 1  # the attempt was claimed once
    stored = await repos[0].get(saga.context.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED


class _Barrier:
    def __init__(self, parties: int) -> None:
        self.waiting = parties
        self.event = anyio.Event()

    async def wait(self) -> None:
        self.waiting -= 1
        if self.waiting == 0:
            self.event.set()
        await self.event.wait()


class _LoadTogether:
    """Both racers have read the saga before either writes: a true lost-update race."""

    def __init__(self, inner: SagaRepository, barrier: _Barrier) -> None:
        self.inner = inner
        self.barrier = barrier

    async def get(self, saga_id: Any) -> Any:
        context = await self.inner.get(saga_id)
        await self.barrier.wait()
        return context

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_events_are_typed_ordered_and_gap_free(saga_repo: SagaRepository) -> None:
    """Each saga's events carry ids and a 1..n sequence, in lifecycle order."""
    publisher = InMemoryEventPublisher()
    saga = TripSaga(TripData(), behaviour={"car": always(NoCars("no cars"))})
    result = await orchestrator(saga_repo, event_publisher=publisher).execute(saga)
    events = publisher.for_saga(result.saga_id)
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert len({e.event_id for e in events}) == len(events)
    assert [(e.type.value, e.step) for e in events] == [
        ("saga.started", None),
        ("step.started", "flight"),
        ("step.completed", "flight"),
        ("step.started", "hotel"),
        ("step.completed", "hotel"),
        ("step.started", "car"),
        ("step.failed", "car"),
        ("compensation.started", None),
        ("step.compensated", "hotel"),
        ("step.compensated", "flight"),
        ("saga.compensated", None),
    ]
    assert all(e.saga_type == "trip" and e.occurred_at.tzinfo is not None for e in events)


async def test_broken_listener_and_publisher_do_not_break_sagas(saga_repo: SagaRepository) -> None:
    """Observers fail loudly in logs, never by failing the saga they observe."""

    class Broken:
        def on_event(self, event: Any) -> None:
            raise RuntimeError("listener bug")

        async def publish(self, events: Any) -> None:
            raise ConnectionError("broker down")

    orch = orchestrator(saga_repo, event_publisher=Broken(), listeners=[Broken()])
    result = await orch.execute(TripSaga(TripData()))
    assert result.status is SagaStatus.COMPLETED


async def test_correlation_id_follows_the_documented_rule(saga_repo: SagaRepository) -> None:
    """`TripData.trip_id` gives `trip-{trip_id}`; the latest saga for it is found."""
    data = TripData()
    result = await orchestrator(saga_repo).execute(TripSaga(data))
    assert result.correlation_id == f"trip-{data.trip_id}"
    found = await saga_repo.get_by_correlation_id(f"trip-{data.trip_id}")
    assert found is not None
    assert found.saga_id == result.saga_id
    assert found.steps[found.current_step_index].name == "car"
    assert await saga_repo.get_by_correlation_id("trip-unknown") is None


async def test_idempotency_key_is_stable_across_attempts(saga_repo: SagaRepository) -> None:
    """Every attempt of a step sees the same key; compensation has its own."""
    keys: list[str] = []

    async def record(step: str, attempt: int) -> dict[str, Any]:
        keys.append(current_step().idempotency_key)
        if attempt == 1:
            raise ConnectionError("reset")
        return {"hotel": "h"}

    saga = TripSaga(TripData(), behaviour={"hotel": record})
    result = await orchestrator(saga_repo).execute(saga)
    assert keys == [f"{result.saga_id}:hotel"] * 2
    with pytest.raises(LookupError):
        current_step()


async def test_compensation_is_shielded_from_cancellation(saga_repo: SagaRepository) -> None:
    """Cancelling mid-compensation does not abandon it: it finishes and is recorded."""
    entered = anyio.Event()
    release = anyio.Event()

    async def slow_undo(step: str, attempt: int) -> None:
        entered.set()
        await release.wait()

    saga = TripSaga(
        TripData(),
        behaviour={"car": always(NoCars("no cars"))},
        compensation_behaviour={"hotel": slow_undo},
    )
    async with anyio.create_task_group() as tg:
        tg.start_soon(orchestrator(saga_repo).execute, saga)
        await entered.wait()
        tg.cancel_scope.cancel()
        release.set()
    stored = await saga_repo.get(saga.context.saga_id)
    assert stored is not None
    # Cancellation reaches the saga only between compensation attempts' backoffs, so the
    # undo in flight and the ones that follow without delay all finish and are recorded.
    assert stored.status is SagaStatus.COMPENSATED
    assert saga.log == ["flight#1", "hotel#1", "car#1", "undo-hotel#1", "undo-flight#1"]


async def test_recover_resumes_and_skips_unknown_types(saga_repo: SagaRepository) -> None:
    """recover() finishes interrupted sagas it can rebuild and leaves the others alone."""
    gate = anyio.Event()

    async def blocked(step: str, attempt: int) -> dict[str, Any]:
        await gate.wait()
        return {"car": "c"}

    saga = TripSaga(TripData(), behaviour={"car": blocked})
    with anyio.move_on_after(0.2):
        await orchestrator(saga_repo).execute(saga)

    unaware = orchestrator(saga_repo)
    assert await unaware.recover() == []
    stored = await saga_repo.get(saga.context.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.RUNNING

    log: list[str] = []
    aware = orchestrator(saga_repo)
    aware.register("trip", lambda data: TripSaga(data, log))
    results = await aware.recover()
    assert [r.status for r in results] == [SagaStatus.COMPLETED]
    assert log == ["car#2"]  # the interrupted attempt counted; earlier steps not re-run


async def test_changed_definition_is_refused_on_resume(saga_repo: SagaRepository) -> None:
    """A stored saga whose steps differ from the current class stops with a clear error."""

    class Renamed(TripSaga):
        def define_steps(self) -> list[SagaStep[TripData]]:
            steps = super().define_steps()
            return [steps[0], SagaStep("lodging", steps[1].action), steps[2]]

    gate = anyio.Event()

    async def blocked(step: str, attempt: int) -> dict[str, Any]:
        await gate.wait()
        return {}

    saga = TripSaga(TripData(), behaviour={"hotel": blocked})
    with anyio.move_on_after(0.2):
        await orchestrator(saga_repo).execute(saga)
    orch = orchestrator(saga_repo)
    orch.register("trip", lambda data: Renamed(data))
    with pytest.raises(SagaDefinitionMismatchError, match="lodging"):
        await orch.resume(saga.context.saga_id)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: NoType(TripData()), "saga_type"),
        (lambda: Empty(TripData()), "non-empty list"),
        (lambda: Duplicated(TripData()), "duplicate step name"),
        (lambda: TripSaga({"not": "a dataclass"}), "dataclass instance"),  # type: ignore[arg-type]
    ],
)
def test_bad_definitions_are_refused_with_clear_errors(build: Any, message: str) -> None:
    """Definition mistakes raise SagaDefinitionError at construction, naming the problem."""
    with pytest.raises(SagaDefinitionError, match=message):
        build()


async def _noop(data: Any) -> None:
    return None


class NoType(BaseSaga[TripData]):
    def define_steps(self) -> list[SagaStep[TripData]]:
        return [SagaStep("a", _noop)]


class Empty(BaseSaga[TripData]):
    saga_type = "empty"

    def define_steps(self) -> list[SagaStep[TripData]]:
        return []


class Duplicated(BaseSaga[TripData]):
    saga_type = "dup"

    def define_steps(self) -> list[SagaStep[TripData]]:
        return [SagaStep("a", _noop), SagaStep("a", _noop)]


async def test_cancel_compensates_a_running_saga(saga_repo: SagaRepository) -> None:
    """cancel(): the step in flight counts as possibly done; all is undone in reverse."""
    gate = anyio.Event()
    log: list[str] = []

    async def blocked(step: str, attempt: int) -> dict[str, Any]:
        await gate.wait()
        return {"car": "c"}

    saga = TripSaga(TripData(), log, behaviour={"car": blocked})
    with anyio.move_on_after(0.2):  # the process driving it stops (or is elsewhere)
        await orchestrator(saga_repo).execute(saga)

    operator = orchestrator(saga_repo)
    operator.register("trip", lambda data: TripSaga(data, log))
    result = await operator.cancel(saga.context.saga_id, "customer changed their mind")
    assert result.status is SagaStatus.COMPENSATED
    assert result.error == "cancelled: customer changed their mind"
    assert log == ["flight#1", "hotel#1", "car#1", "undo-car#1", "undo-hotel#1", "undo-flight#1"]
    with pytest.raises(SagaStateError, match="only a running saga can be cancelled"):
        await operator.cancel(saga.context.saga_id)


async def test_cancel_stops_the_orchestrator_driving_the_saga(saga_repo: SagaRepository) -> None:
    """The orchestrator mid-step loses its next write and stops; nothing runs twice."""
    entered = anyio.Event()
    gate = anyio.Event()
    log: list[str] = []

    async def blocked(step: str, attempt: int) -> dict[str, Any]:
        entered.set()
        await gate.wait()
        return {"hotel": "h"}

    saga = TripSaga(TripData(), log, behaviour={"hotel": blocked})
    outcome: list[str] = []

    async def drive() -> None:
        try:
            await orchestrator(saga_repo).execute(saga)
            outcome.append("finished")
        except SagaConflictError:
            outcome.append("stopped")

    operator = orchestrator(saga_repo)
    operator.register("trip", lambda data: TripSaga(data, log))
    async with anyio.create_task_group() as tg:
        tg.start_soon(drive)
        await entered.wait()
        result = await operator.cancel(saga.context.saga_id)
        gate.set()
    assert outcome == ["stopped"]
    assert result.status is SagaStatus.COMPENSATED
    assert log == ["flight#1", "hotel#1", "undo-hotel#1", "undo-flight#1"]
    assert "car#1" not in log


async def test_recover_goes_on_past_a_saga_it_cannot_resume(
    saga_repo: SagaRepository, caplog: pytest.LogCaptureFixture
) -> None:
    """A factory that raises for one saga leaves that saga as it was; the others finish."""
    gate = anyio.Event()

    async def blocked(step: str, attempt: int) -> dict[str, Any]:
        await gate.wait()
        return {}

    sagas = [TripSaga(TripData(), behaviour={"car": blocked}) for _ in range(2)]
    for saga in sagas:
        with anyio.move_on_after(0.1):
            await orchestrator(saga_repo).execute(saga)
    broken_id = sagas[0].context.data.trip_id

    def factory(data: TripData) -> TripSaga:
        if data.trip_id == broken_id:
            raise RuntimeError("cannot build this one")
        return TripSaga(data)

    recovering = orchestrator(saga_repo)
    recovering.register("trip", factory)
    results = await recovering.recover()
    assert [r.saga_id for r in results] == [sagas[1].context.saga_id]
    stored = await saga_repo.get(sagas[0].context.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.RUNNING
    assert any(getattr(r, "event", None) == "saga.recovery.failed" for r in caplog.records)


async def test_hung_compensation_times_out_and_is_retried(saga_repo: SagaRepository) -> None:
    """A compensation that never returns is cut by its timeout and retried, not awaited
    forever: here it hangs on every attempt, so the saga ends FAILED with the timeout kept."""

    class Hanging(TripSaga):
        def define_steps(self) -> list[SagaStep[TripData]]:
            return [
                dataclasses.replace(step, compensation_timeout_seconds=0.02)
                for step in super().define_steps()
            ]

    async def hang(step: str, attempt: int) -> None:
        await anyio.sleep_forever()

    log: list[str] = []
    saga = Hanging(
        TripData(),
        log,
        behaviour={"car": always(NoCars("no cars"))},
        compensation_behaviour={"hotel": hang},
    )
    orch = orchestrator(saga_repo, compensation_retry=RetryPolicy(max_attempts=3))
    with anyio.fail_after(5):
        result = await orch.execute(saga)
    assert result.status is SagaStatus.FAILED
    assert log[-3:] == ["undo-hotel#1", "undo-hotel#2", "undo-hotel#3"]
    assert result.steps[1].compensation_error == "TimeoutError: no result within 0.02s"


def test_compensation_timeout_must_be_positive() -> None:
    """A zero or negative compensation timeout is a definition error naming the field."""

    async def noop(data: TripData) -> None:
        return None

    with pytest.raises(
        SagaDefinitionError, match="compensation_timeout_seconds must be a finite number > 0"
    ):
        SagaStep("a", noop, noop, compensation_timeout_seconds=0)


async def test_recover_reports_what_it_skipped_and_why(saga_repo: SagaRepository) -> None:
    """recover() returns the resumed results as a list, and names each saga it left unfinished:
    a typo in register()'s type name is no longer "nothing to recover"."""
    saga = TripSaga(TripData())
    saga.context.saga_id = uuid4()
    crashed = orchestrator(saga_repo)

    class Stop(BaseException):
        pass

    async def stop(step: str, attempt: int) -> None:
        raise Stop

    saga.behaviour["hotel"] = stop
    with pytest.raises(Stop):
        await crashed.execute(saga)

    typo = orchestrator(saga_repo)
    typo.register("trips", lambda data: TripSaga(data))
    report = await typo.recover()
    assert list(report) == []
    assert report.resumed == []
    [skipped] = report.skipped
    assert skipped.saga_id == saga.context.saga_id
    assert skipped.saga_type == "trip"
    assert skipped.reason.startswith("no factory registered for saga_type 'trip' (registered: ")

    right = orchestrator(saga_repo)
    right.register("trip", lambda data: TripSaga(data))
    report = await right.recover()
    assert [r.status for r in report] == [SagaStatus.COMPLETED]
    assert report.skipped == []
