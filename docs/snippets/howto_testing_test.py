"""Tests of CheckoutSaga with saga_orchestrator.testing. Run them with `pytest`."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from uuid import uuid4

import anyio
import pytest
from howto_testing_saga import CardDeclined, CheckoutData, CheckoutSaga, NoCourier

from saga_orchestrator import (
    InMemoryEventPublisher,
    InMemorySagaRepository,
    SagaEventType,
    SagaOrchestrator,
    SagaResult,
    SagaStatus,
    SQLiteSagaRepository,
    StepStatus,
)
from saga_orchestrator.runtime import Phase
from saga_orchestrator.testing import CRASH_EXIT_CODE, FaultInjector, ManualClock


# --8<-- [start:fakes]
class FakeServices:
    """Stand-ins that act once per idempotency key, as the real services must.

    `calls` lists every call in order; `effects` maps each key to what it did. With a
    `state_file`, effects outlive the process, like a real service's database.
    """

    def __init__(self, state_file: Path | None = None, *, declines: bool = False) -> None:
        self.calls: list[str] = []
        self.state_file = state_file
        self.declines = declines
        self.effects: dict[str, str] = {}
        if state_file is not None and state_file.exists():
            self.effects = json.loads(state_file.read_text())

    def _act(self, name: str, key: str) -> str:
        self.calls.append(name)
        effect = self.effects.setdefault(key, f"{name}-{len(self.effects) + 1}")
        self._save()
        return effect

    def _undo(self, name: str, key: str) -> None:
        self.calls.append(name)
        self.effects.pop(key, None)  # nothing to undo is fine
        self._save()

    def _save(self) -> None:
        if self.state_file is not None:
            self.state_file.write_text(json.dumps(self.effects))

    async def reserve(self, key: str) -> str:
        return self._act("reserve", key)

    async def release(self, key: str) -> None:
        self._undo("release", key)

    async def charge(self, key: str, amount: Decimal) -> str:
        if self.declines:
            self.calls.append("charge")
            raise CardDeclined("insufficient funds")
        return self._act("charge", key)

    async def refund(self, key: str) -> None:
        self._undo("refund", key)

    async def book(self, key: str) -> str:
        return self._act("book", key)

    async def cancel_booking(self, key: str) -> None:
        self._undo("cancel_booking", key)


# --8<-- [end:fakes]


# --8<-- [start:setup]
def new_checkout() -> CheckoutData:
    return CheckoutData(checkout_id=uuid4(), amount=Decimal("42.00"))


def orchestrator(**options: object) -> SagaOrchestrator:
    """A fresh in-memory store and a clock that never really sleeps."""
    options.setdefault("clock", ManualClock())
    return SagaOrchestrator(InMemorySagaRepository(), **options)  # type: ignore[arg-type]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # or params=["asyncio", "trio"] to run every test on both


# --8<-- [end:setup]


# --8<-- [start:happy]
@pytest.mark.anyio
async def test_happy_path() -> None:
    services = FakeServices()
    result = await orchestrator().execute(CheckoutSaga(new_checkout(), services))
    assert result.status is SagaStatus.COMPLETED
    assert services.calls == ["reserve", "charge", "book"]
    assert result.data.parcel == "book-3"


# --8<-- [end:happy]


# --8<-- [start:transient]
@pytest.mark.anyio
async def test_a_transient_error_is_retried_after_a_backoff() -> None:
    services, clock = FakeServices(), ManualClock()
    faults = FaultInjector().fail("charge", ConnectionError("PSP down"), attempts={1})
    result = await orchestrator(clock=clock, interceptors=[faults]).execute(
        CheckoutSaga(new_checkout(), services)
    )
    assert result.status is SagaStatus.COMPLETED
    assert [entry for entry in faults.log if entry[0] == "charge"] == [
        ("charge", "action", 1),
        ("charge", "action", 2),
    ]
    assert services.calls == ["reserve", "charge", "book"]  # attempt 1 never reached it
    # The default policy waits 0.1 s minus up to 20 % jitter; ManualClock only records it.
    assert len(clock.sleeps) == 1
    assert 0.08 <= clock.sleeps[0] <= 0.1


# --8<-- [end:transient]


# --8<-- [start:business]
@pytest.mark.anyio
async def test_a_business_error_compensates_in_reverse_order() -> None:
    services, publisher = FakeServices(), InMemoryEventPublisher()
    faults = FaultInjector().fail("book_courier", NoCourier("no courier today"))
    result = await orchestrator(event_publisher=publisher, interceptors=[faults]).execute(
        CheckoutSaga(new_checkout(), services)
    )
    assert result.status is SagaStatus.COMPENSATED
    assert result.error == "book_courier: NoCourier: no courier today"
    # Not retried, and not compensated: a business refusal means the step did not act.
    assert services.calls == ["reserve", "charge", "refund", "release"]
    compensated = [
        event.step
        for event in publisher.for_saga(result.saga_id)
        if event.type is SagaEventType.STEP_COMPENSATED
    ]
    assert compensated == ["charge", "reserve"]
    assert services.effects == {}


# --8<-- [end:business]


# --8<-- [start:declined]
@pytest.mark.anyio
async def test_a_declined_card_releases_the_stock() -> None:
    services = FakeServices(declines=True)
    result = await orchestrator().execute(CheckoutSaga(new_checkout(), services))
    assert result.status is SagaStatus.COMPENSATED
    assert result.error == "charge: CardDeclined: insufficient funds"
    assert services.calls == ["reserve", "charge", "release"]


# --8<-- [end:declined]


# --8<-- [start:lost_reply]
@pytest.mark.anyio
async def test_an_effect_whose_reply_was_lost_is_compensated_too() -> None:
    services = FakeServices()
    # Every attempt books the courier, then fails as if the reply never came back.
    faults = FaultInjector().fail("book_courier", ConnectionError("reply lost"), after_call=True)
    result = await orchestrator(interceptors=[faults]).execute(
        CheckoutSaga(new_checkout(), services)
    )
    assert result.status is SagaStatus.COMPENSATED
    assert services.calls == [
        *("reserve", "charge", "book", "book", "book"),  # 3 attempts, one booking (same key)
        *("cancel_booking", "refund", "release"),  # the unacknowledged booking is undone first
    ]
    booking = result.steps[2]
    assert booking.status is StepStatus.COMPENSATED
    assert booking.attempts == 3
    assert services.effects == {}  # nothing left behind


# --8<-- [end:lost_reply]


# --8<-- [start:hang]
@pytest.mark.anyio
async def test_a_call_that_hangs_times_out_and_is_compensated() -> None:
    services = FakeServices()
    faults = FaultInjector().hang("book_courier")
    saga = CheckoutSaga(new_checkout(), services, step_timeout=0.05)  # timeouts use real time
    result = await orchestrator(interceptors=[faults]).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert result.error.startswith("book_courier: TimeoutError: no result within 0.05s")
    # A timed-out call may have acted, so its compensation runs although book never returned.
    assert services.calls == ["reserve", "charge", "cancel_booking", "refund", "release"]


# --8<-- [end:hang]


# --8<-- [start:compensation_fails]
@pytest.mark.anyio
async def test_a_refund_that_keeps_failing_waits_for_an_operator() -> None:
    services, clock = FakeServices(), ManualClock()
    faults = (
        FaultInjector()
        .fail("book_courier", NoCourier("no courier today"))
        .fail("charge", ConnectionError("refund API down"), phase=Phase.COMPENSATION)
    )
    orch = orchestrator(clock=clock, interceptors=[faults])
    result = await orch.execute(CheckoutSaga(new_checkout(), services))
    assert result.status is SagaStatus.FAILED
    assert len(clock.sleeps) == 9  # 10 attempts, 9 backoffs: over a minute, simulated
    assert services.calls == ["reserve", "charge"]  # no refund went through, no release yet

    faults.rules.clear()  # the refund API is back
    orch.register("checkout", lambda data: CheckoutSaga(data, services))
    again = await orch.retry(result.saga_id)
    assert again.status is SagaStatus.COMPENSATED
    assert services.calls == ["reserve", "charge", "refund", "release"]
    assert services.effects == {}


# --8<-- [end:compensation_fails]


# --8<-- [start:crash]
def test_a_crash_after_the_charge_resumes_without_charging_twice(tmp_path: Path) -> None:
    db, state_file = tmp_path / "sagas.db", tmp_path / "services.json"
    # The child process runs the saga on SQLite and dies right after the charge acted,
    # before the orchestrator could record it.
    child = subprocess.run(
        [sys.executable, __file__, str(db), str(state_file)], capture_output=True, text=True
    )
    assert child.returncode == CRASH_EXIT_CODE, child.stderr

    services = FakeServices(state_file)  # the services kept what the child did

    async def restart() -> list[SagaResult[CheckoutData]]:
        async with SQLiteSagaRepository(db) as repository:
            orch = SagaOrchestrator(repository)
            orch.register("checkout", lambda data: CheckoutSaga(data, services))
            return await orch.recover()

    (result,) = anyio.run(restart)
    assert result.status is SagaStatus.COMPLETED
    assert services.calls == ["charge", "book"]  # the charge ran again: at least once...
    assert sorted(services.effects.values()) == ["book-3", "charge-2", "reserve-1"]  # ...acted once
    assert result.steps[1].attempts == 2


async def _crash_after_charge(db: str, state_file: str) -> None:
    faults = FaultInjector().crash("charge", when="after")
    async with SQLiteSagaRepository(db) as repository:
        saga = CheckoutSaga(new_checkout(), FakeServices(Path(state_file)))
        await SagaOrchestrator(repository, interceptors=[faults]).execute(saga)


if __name__ == "__main__":  # the child process of the crash test
    anyio.run(_crash_after_charge, *sys.argv[1:])
# --8<-- [end:crash]
