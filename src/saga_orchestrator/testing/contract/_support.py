"""What the contract classes share: records to store, sagas to run, the skip of an optional
capability, the check that anyio runs the tests."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from ...events import SagaEvent, SagaEventType
from ...orchestrator import SagaOrchestrator
from ...protocols import SagaRepository
from ...state import ErrorKind, ErrorRecord, SagaContext, SagaStatus, StepState, StepStatus
from .. import ManualClock
from .._contract_sagas import ContractData, ContractTripSaga, RichData, utc

_SAGA_TYPE = ContractTripSaga.saga_type


def _require(obj: object, capability: type, methods: str) -> None:
    """Skip the test unless ``obj`` has the optional ``capability``."""
    if not isinstance(obj, capability):
        pytest.skip(f"optional: {type(obj).__name__} has no {methods} ({capability.__name__})")


def _steps() -> list[StepState]:
    return [StepState(name) for name in ("flight", "hotel", "car")]


def _context(
    *,
    saga_type: str = _SAGA_TYPE,
    status: SagaStatus = SagaStatus.RUNNING,
    correlation_id: str | None = None,
    minute: int = 0,
) -> SagaContext[Any]:
    """A saga record at version 1, as the orchestrator first stores one."""
    return SagaContext(
        saga_id=uuid4(),
        saga_type=saga_type,
        data=ContractData(),
        steps=_steps(),
        correlation_id=correlation_id,
        status=status,
        created_at=utc(minute),
        updated_at=utc(minute),
        version=1,
    )


def _rich_context() -> SagaContext[Any]:
    """A record with every field set and data holding every kind of storable value."""
    steps = _steps()
    steps[0] = StepState(
        "flight",
        StepStatus.COMPLETED,
        attempts=2,
        error="ConnectionError: reset",
        started_at=utc(1),
        completed_at=utc(2),
        compensation_attempts=0,
    )
    steps[1] = StepState(
        "hotel",
        StepStatus.COMPENSATION_FAILED,
        attempts=1,
        effect_possible=True,
        started_at=utc(2),
        next_attempt_at=utc(3),
        compensation_attempts=10,
        compensation_error="RuntimeError: refund API down — «nope» 🙅",
        compensation_started_at=utc(4),
    )
    return SagaContext(
        saga_id=uuid4(),
        saga_type=_SAGA_TYPE,
        data=RichData(),
        steps=steps,
        correlation_id="rich-Ünïcode-🧾",
        status=SagaStatus.FAILED,
        current_step_index=1,
        error="car: Refused: no cars",
        created_at=utc(0),
        updated_at=utc(5),
        deadline=utc(30),
        version=1,
        event_sequence=17,
        error_history=[
            ErrorRecord(ErrorKind.COMPENSATING, "car: Refused: no cars", utc(3), "car"),
            ErrorRecord(ErrorKind.COMPENSATION_FAILED, "compensating hotel failed", utc(5)),
        ],
        saga_version=3,
    )


def _fields(context: SagaContext[Any] | None) -> dict[str, Any]:
    """Every stored field of a record (not the saga object it may be attached to, nor the
    engine's private caches)."""
    assert context is not None, "the saga is not stored"
    return {
        f.name: getattr(context, f.name)
        for f in dataclasses.fields(context)
        if not f.name.startswith("_")
    }


def _next(context: SagaContext[Any], **changes: Any) -> SagaContext[Any]:
    """The record's next version, with ``changes``."""
    return dataclasses.replace(context, version=context.version + 1, **changes)


def _event(context: SagaContext[Any], sequence: int, **fields: Any) -> SagaEvent:
    return SagaEvent(
        type=SagaEventType.STEP_STARTED,
        saga_id=context.saga_id,
        saga_type=context.saga_type,
        sequence=sequence,
        occurred_at=datetime.now(UTC),
        step="flight",
        attempt=1,
        **fields,
    )


def _orchestrator(repository: SagaRepository, **options: Any) -> SagaOrchestrator:
    options.setdefault("clock", ManualClock())
    return SagaOrchestrator(repository, **options)


async def _interrupted(repository: SagaRepository, step: str) -> ContractTripSaga:
    """A saga stored as a stopped process leaves it: ``step``'s first attempt in flight."""
    entered = anyio.Event()

    async def hold(name: str, attempt: int) -> dict[str, Any] | None:
        entered.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    saga = ContractTripSaga(ContractData(), behaviour={step: hold})
    async with anyio.create_task_group() as tg:
        tg.start_soon(_orchestrator(repository).execute, saga)
        with anyio.fail_after(10):
            await entered.wait()
        tg.cancel_scope.cancel()
    saga.log.clear()
    return saga


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

    async def get(self, saga_id: UUID) -> SagaContext[Any] | None:
        context = await self.inner.get(saga_id)
        await self.barrier.wait()
        return context

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _run_by_anyio(contract: object, request: pytest.FixtureRequest) -> None:
    """Fail clearly when pytest-asyncio's auto mode took a contract test over: it would run
    the test on asyncio whatever ``anyio_backend`` says."""
    if request.node.get_closest_marker("asyncio") is not None:
        pytest.fail(
            "pytest-asyncio runs this contract test, not anyio's plugin: set pytest-asyncio's "
            'asyncio_mode = "strict" (its default); the contract tests are marked anyio',
            pytrace=False,
        )


class _EventLog:
    """A listener: the events the orchestrator emitted, each right after it was recorded."""

    def __init__(self) -> None:
        self.events: list[SagaEvent] = []

    def on_event(self, event: SagaEvent) -> None:
        self.events.append(event)
