"""SagaRepositoryContract's sagas on the repository under test, run through a
SagaOrchestrator (each test of the class calls one of these)."""

from __future__ import annotations

from datetime import timedelta
from typing import cast

import anyio

from ...errors import SagaConflictError
from ...protocols import SagaRepository, StrandingRecorder
from ...retry import RetryPolicy
from ...state import ErrorKind, SagaStatus, StepStatus
from .. import ManualClock
from .._contract_sagas import ContractData, ContractTripSaga, Refused, always, fail_on
from ._support import _SAGA_TYPE, _Barrier, _EventLog, _interrupted, _LoadTogether, _orchestrator


async def a_saga_runs_to_completion(saga_repository: SagaRepository) -> None:
    events = _EventLog()
    data = ContractData()
    saga = ContractTripSaga(data)
    result = await _orchestrator(saga_repository, listeners=[events]).execute(saga)
    assert result.status is SagaStatus.COMPLETED
    assert saga.log == ["flight#1", "hotel#1", "car#1"]
    stored = await saga_repository.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED
    assert [s.status for s in stored.steps] == [StepStatus.COMPLETED] * 3
    assert stored.data == ContractData(
        data.contract_id, data.price, "flight-ref", "hotel-ref", "car-ref"
    )
    assert stored.event_sequence == events.events[-1].sequence
    found = await saga_repository.get_by_correlation_id(f"contract-{data.contract_id}")
    assert found is not None
    assert found.saga_id == result.saga_id
    completed = await saga_repository.list_sagas(statuses={SagaStatus.COMPLETED})
    assert [c.saga_id for c in completed] == [result.saga_id]


async def a_failing_step_is_compensated_in_reverse_order(saga_repository: SagaRepository) -> None:
    saga = ContractTripSaga(ContractData(), behaviour={"car": always(Refused("no cars"))})
    result = await _orchestrator(saga_repository).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert saga.log == ["flight#1", "hotel#1", "car#1", "undo-hotel#1", "undo-flight#1"]
    stored = await saga_repository.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATED
    assert stored.error == result.error == "car: Refused: no cars"
    assert [s.status for s in stored.steps] == [
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATED,
        StepStatus.FAILED,
    ]


async def a_transient_error_is_retried(saga_repository: SagaRepository) -> None:
    clock = ManualClock()
    saga = ContractTripSaga(
        ContractData(),
        behaviour={"hotel": fail_on({1, 2}, ConnectionError("reset"))},
        retry=RetryPolicy(max_attempts=3, initial_backoff_seconds=1, jitter_ratio=0),
    )
    result = await _orchestrator(saga_repository, clock=clock).execute(saga)
    assert result.status is SagaStatus.COMPLETED
    assert saga.log == ["flight#1", "hotel#1", "hotel#2", "hotel#3", "car#1"]
    assert clock.sleeps == [1.0, 2.0]
    stored = await saga_repository.get(result.saga_id)
    assert stored is not None
    assert stored.steps[1].attempts == 3
    assert stored.steps[1].error == "ConnectionError: reset"


async def a_failed_compensation_is_retried_to_the_end(saga_repository: SagaRepository) -> None:
    broken = {"on": True}

    async def refund(step: str, attempt: int) -> None:
        if broken["on"]:
            raise RuntimeError("refund API down")

    def build(data: ContractData) -> ContractTripSaga:
        return ContractTripSaga(data, compensation_behaviour={"hotel": refund})

    saga = ContractTripSaga(
        ContractData(),
        behaviour={"car": always(Refused("no cars"))},
        compensation_behaviour={"hotel": refund},
    )
    orchestrator = _orchestrator(saga_repository, compensation_retry=RetryPolicy(max_attempts=2))
    orchestrator.register(_SAGA_TYPE, build)
    result = await orchestrator.execute(saga)
    assert result.status is SagaStatus.FAILED
    stored = await saga_repository.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.FAILED
    assert [s.status for s in stored.steps] == [
        StepStatus.COMPLETED,
        StepStatus.COMPENSATION_FAILED,
        StepStatus.FAILED,
    ]
    failed = await saga_repository.list_sagas(statuses={SagaStatus.FAILED})
    assert [c.saga_id for c in failed] == [result.saga_id]

    broken["on"] = False
    final = await orchestrator.retry(result.saga_id)
    assert final.status is SagaStatus.COMPENSATED
    stored = await saga_repository.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATED
    assert [r.kind for r in stored.error_history] == [
        ErrorKind.COMPENSATING,
        ErrorKind.COMPENSATION_FAILED,
        ErrorKind.RETRIED,
    ]
    assert tuple(stored.error_history) == final.error_history


async def executing_a_stored_saga_again_returns_its_result(saga_repository: SagaRepository) -> None:
    orchestrator = _orchestrator(saga_repository)
    first = ContractTripSaga(ContractData())
    await orchestrator.execute(first)
    second = ContractTripSaga(first.context.data)
    second.context.saga_id = first.context.saga_id
    result = await orchestrator.execute(second)
    assert result.status is SagaStatus.COMPLETED
    assert second.log == []


async def the_deadline_is_stored_as_an_absolute_time(saga_repository: SagaRepository) -> None:

    class Timed(ContractTripSaga):
        timeout_minutes = 30

    result = await _orchestrator(saga_repository).execute(Timed(ContractData()))
    stored = await saga_repository.get(result.saga_id)
    assert stored is not None
    assert stored.created_at is not None
    assert stored.deadline is not None
    assert stored.deadline - stored.created_at == timedelta(minutes=30)


async def recover_resumes_an_interrupted_saga(saga_repository: SagaRepository) -> None:
    saga = await _interrupted(saga_repository, "car")
    stored = await saga_repository.get(saga.context.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.RUNNING
    assert [s.status for s in stored.steps[:2]] == [StepStatus.COMPLETED] * 2

    report = await _orchestrator(saga_repository).recover()
    assert list(report) == []
    assert [s.saga_id for s in report.skipped] == [saga.context.saga_id]
    if isinstance(saga_repository, StrandingRecorder):
        stranded = await saga_repository.list_stranded()
        assert [s.saga_id for s in stranded] == [saga.context.saga_id]

    log: list[str] = []
    aware = _orchestrator(saga_repository)
    aware.register(_SAGA_TYPE, lambda data: ContractTripSaga(data, log))
    report = await aware.recover()
    assert [r.status for r in report] == [SagaStatus.COMPLETED]
    assert report.skipped == []
    assert log == ["car#2"]
    stored = await saga_repository.get(saga.context.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED
    assert stored.data.car == "car-ref"
    if isinstance(saga_repository, StrandingRecorder):
        assert await saga_repository.list_stranded() == []


async def cancel_compensates_an_interrupted_saga(saga_repository: SagaRepository) -> None:
    saga = await _interrupted(saga_repository, "car")
    log: list[str] = []
    operator = _orchestrator(saga_repository)
    operator.register(_SAGA_TYPE, lambda data: ContractTripSaga(data, log))
    result = await operator.cancel(saga.context.saga_id, "changed their mind")
    assert result.status is SagaStatus.COMPENSATED
    assert result.error == "cancelled: changed their mind"
    assert log == ["undo-car#1", "undo-hotel#1", "undo-flight#1"]
    stored = await saga_repository.get(saga.context.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATED


async def two_orchestrators_never_both_advance_one_saga(
    saga_repository: SagaRepository,
    second_saga_repository: SagaRepository | None,
) -> None:
    saga = await _interrupted(saga_repository, "hotel")
    repositories = [saga_repository, second_saga_repository or saga_repository]
    log: list[str] = []
    outcomes: list[str] = []
    both_loaded = _Barrier(2)

    async def resume(repository: SagaRepository) -> None:
        racer = _LoadTogether(repository, both_loaded)
        orchestrator = _orchestrator(cast(SagaRepository, racer))
        orchestrator.register(_SAGA_TYPE, lambda data: ContractTripSaga(data, log))
        try:
            await orchestrator.resume(saga.context.saga_id)
            outcomes.append("completed")
        except SagaConflictError:
            outcomes.append("conflict")

    async with anyio.create_task_group() as tg:
        for repository in repositories:
            tg.start_soon(resume, repository)
    assert sorted(outcomes) == ["completed", "conflict"]
    assert log.count("hotel#2") == 1
    stored = await saga_repository.get(saga.context.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED
