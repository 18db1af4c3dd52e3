"""SagaInboxContract: wait steps, timers and event delivery on the repository under test
(the [`SagaInbox`][saga_orchestrator.protocols.SagaInbox] capability), driven through a
SagaOrchestrator on a ManualClock."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from ...errors import InvalidEventError, SagaNotFoundError
from ...events import SagaEventType
from ...inbox import DeliveryStatus, InboxEvent, StoreOutcome
from ...orchestrator import SagaOrchestrator
from ...protocols import SagaInbox, SagaRepository
from ...serialization import dumps
from ...state import SagaStatus, StepStatus
from .. import ManualClock
from .._contract_sagas import (
    CONFIRMED,
    ContractNapSaga,
    ContractWaitData,
    ContractWaitSaga,
)
from ._support import _EventLog, _require, _run_by_anyio


class _DeadlineWaitSaga(ContractWaitSaga):
    saga_type = "contract_wait_deadline"
    timeout_minutes = 0.5  # 30 s, before the wait's own 60 s


def _inbox(repository: SagaRepository) -> SagaInbox:
    _require(repository, SagaInbox, "store_event/saga_events/due_waits")
    assert isinstance(repository, SagaInbox)
    return repository


def _orchestrator(
    repository: SagaRepository, clock: ManualClock, log: list[str], **options: Any
) -> SagaOrchestrator:
    orchestrator = SagaOrchestrator(repository, clock=clock, **options)
    orchestrator.register(ContractWaitSaga.saga_type, partial(ContractWaitSaga, log=log))
    orchestrator.register(ContractNapSaga.saga_type, partial(ContractNapSaga, log=log))
    orchestrator.register(_DeadlineWaitSaga.saga_type, partial(_DeadlineWaitSaga, log=log))
    return orchestrator


def _payload(code: str, paid: str = "25.00") -> dict[str, Any]:
    return {"code": code, "paid": Decimal(paid)}


def _outcomes(events: _EventLog, step: str) -> list[SagaEventType]:
    """The types of the events of ``step`` (waiting, completed, failed), in order."""
    return [e.type for e in events.events if e.step == step]


class SagaInboxContract:
    """What a repository with [`SagaInbox`][saga_orchestrator.protocols.SagaInbox] does, with
    sagas that wait for events and timers.

    Define the fixture ``saga_repository`` (and ``second_saga_repository`` if the store can be
    shared), as for ``SagaRepositoryContract``. Every test skips if the repository has no
    ``SagaInbox``. Deliveries pass ``drive=True``, so that the delivering call carries the
    saga on whether or not the repository has workers.
    """

    pytestmark = pytest.mark.anyio
    """Every test is marked ``anyio``."""
    _run_by_anyio = pytest.fixture(autouse=True)(_run_by_anyio)

    @pytest.fixture
    def second_saga_repository(self) -> SagaRepository | None:
        """Another repository object on the same store; ``None`` if it cannot be shared."""
        return None

    # ------------------------------------------------------------ the store

    async def test_store_event_keeps_each_id_once_for_running_sagas_only(
        self, saga_repository: SagaRepository
    ) -> None:
        """``store_event``: an unknown saga, a second event with a kept id, and a finished
        saga store nothing; ``saga_events`` gives the kept ones in the order stored."""
        inbox = _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        done = await orchestrator.execute(ContractNapSaga(ContractWaitData(), log))
        clock.advance(31)
        [finished] = await orchestrator.wake_due()
        assert (finished.saga_id, finished.status) == (done.saga_id, SagaStatus.COMPLETED)

        def event(key: str, saga: Any = parked.saga_id, name: str = "other") -> InboxEvent:
            return InboxEvent(key, saga, name, dumps({"n": key}), clock.now())

        assert await inbox.store_event(event("a")) is StoreOutcome.STORED
        assert await inbox.store_event(event("b", name=CONFIRMED)) is StoreOutcome.STORED
        assert await inbox.store_event(event("a")) is StoreOutcome.DUPLICATE
        assert await inbox.store_event(event("c", uuid4())) is StoreOutcome.NO_SAGA
        assert await inbox.store_event(event("d", done.saga_id)) is StoreOutcome.NOT_RUNNING
        kept = await inbox.saga_events(parked.saga_id)
        assert [(e.event_id, e.name, e.data()) for e in kept] == [
            ("a", "other", {"n": "a"}),
            ("b", CONFIRMED, {"n": "b"}),
        ]
        assert kept[0].received_at == clock.now()
        assert await inbox.saga_events(done.saga_id) == []

    async def test_a_parked_saga_is_due_at_its_time_or_when_an_event_is_stored(
        self, saga_repository: SagaRepository
    ) -> None:
        """``due_waits``: a saga parked at a wait is not due before its timeout; it is due once
        the event it waits for is stored (another event does not make it due), or once its
        time comes."""
        inbox = _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        first = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        second = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        assert await inbox.due_waits(clock.now()) == []
        clock.advance(1)
        other = InboxEvent("o", first.saga_id, "another.event", dumps({}), clock.now())
        assert await inbox.store_event(other) is StoreOutcome.STORED
        assert await inbox.due_waits(clock.now()) == []  # not the event it waits for
        event = InboxEvent("e", second.saga_id, CONFIRMED, dumps({}), clock.now())
        assert await inbox.store_event(event) is StoreOutcome.STORED
        assert await inbox.due_waits(clock.now()) == [second.saga_id]
        clock.advance(60)
        assert set(await inbox.due_waits(clock.now())) == {first.saga_id, second.saga_id}
        assert await inbox.due_waits(clock.now(), limit=1) == [second.saga_id]  # soonest

    async def test_purging_forgets_old_events_of_finished_sagas_only(
        self, saga_repository: SagaRepository
    ) -> None:
        """``purge_events_before`` (if the repository has it) deletes the events received
        before the cutoff by finished sagas, and keeps a running saga's; a purged event's id
        may be stored again."""
        inbox = _inbox(saga_repository)
        purge = getattr(saga_repository, "purge_events_before", None)
        if purge is None:
            pytest.skip(f"optional: {type(saga_repository).__name__} has no purge_events_before")
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        done = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        await orchestrator.deliver_event(
            CONFIRMED, _payload("D"), event_id="done", saga_id=done.saga_id, drive=True
        )
        running = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        await orchestrator.deliver_event(
            "trip.confirmed", _payload("R"), event_id="kept", saga_id=running.saga_id, drive=False
        )
        clock.advance(1)
        assert await purge(clock.now()) == 1
        assert await inbox.saga_events(done.saga_id) == []
        assert [e.event_id for e in await inbox.saga_events(running.saga_id)] == ["kept"]

    # ------------------------------------------------------------ delivering

    async def test_an_event_delivered_to_a_parked_saga_is_consumed_once(
        self, saga_repository: SagaRepository
    ) -> None:
        """The saga parks at its wait (``execute`` returns it ``running``); the event, by
        correlation id, is consumed: its fields set, the saga completed; delivered again it
        is a duplicate, and another event is ignored."""
        _inbox(saga_repository)
        clock, log, events = ManualClock(), list[str](), _EventLog()
        orchestrator = _orchestrator(saga_repository, clock, log, listeners=[events])
        data = ContractWaitData()
        parked = await orchestrator.execute(ContractWaitSaga(data, log))
        assert parked.status is SagaStatus.RUNNING
        assert [s.status for s in parked.steps] == [
            StepStatus.COMPLETED,
            StepStatus.WAITING,
            StepStatus.PENDING,
        ]
        stored = await saga_repository.get(parked.saga_id)
        assert stored is not None
        wait = stored.steps[1]
        assert (wait.status, wait.waiting_for) == (StepStatus.WAITING, CONFIRMED)
        assert wait.wait_until == clock.now() + timedelta(seconds=60)
        assert orchestrator._in_flight == set()  # nothing holds a parked saga

        correlation = f"contract-wait-{data.contract_wait_id}"
        delivery = await orchestrator.deliver_event(
            CONFIRMED, _payload("C1"), event_id="evt-1", correlation_id=correlation, drive=True
        )
        assert (delivery.status, delivery.saga_status) == (
            DeliveryStatus.CONSUMED,
            SagaStatus.COMPLETED,
        )
        assert (delivery.saga_id, delivery.event_id) == (parked.saga_id, "evt-1")
        assert log == ["book", "ticket:C1"]
        done = await saga_repository.get(parked.saga_id)
        assert done is not None
        assert done.status is SagaStatus.COMPLETED
        assert (done.data.confirmation, done.data.paid) == ("C1", Decimal("25.00"))
        assert done.steps[1].event_id == "evt-1"
        assert _outcomes(events, "confirm") == [
            SagaEventType.STEP_WAITING,
            SagaEventType.STEP_COMPLETED,
        ]
        again = await orchestrator.deliver_event(
            CONFIRMED, _payload("C1"), event_id="evt-1", saga_id=parked.saga_id, drive=True
        )
        assert again.status is DeliveryStatus.DUPLICATE
        late = await orchestrator.deliver_event(
            CONFIRMED, _payload("C2"), event_id="evt-2", saga_id=parked.saga_id, drive=True
        )
        assert late.status is DeliveryStatus.IGNORED
        assert log == ["book", "ticket:C1"]
        after = await saga_repository.get(parked.saga_id)
        assert after is not None
        assert after.version == done.version

    async def test_an_event_before_the_wait_is_kept_and_consumed_there(
        self, saga_repository: SagaRepository, second_saga_repository: SagaRepository | None
    ) -> None:
        """Delivered while the saga runs its first step (from another orchestrator, on
        another instance if the store can be shared): kept (``STORED``), and consumed as
        soon as the saga reaches its wait, without parking."""
        _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        entered, gate = anyio.Event(), anyio.Event()

        async def hold() -> None:
            entered.set()
            await gate.wait()

        saga = ContractWaitSaga(ContractWaitData(), log, hold_book=hold)
        orchestrator = _orchestrator(saga_repository, clock, log)
        other = _orchestrator(second_saga_repository or saga_repository, clock, log)
        results: list[Any] = []

        async def run() -> None:
            results.append(await orchestrator.execute(saga))

        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            with anyio.fail_after(10):
                await entered.wait()
            delivery = await other.deliver_event(
                CONFIRMED,
                _payload("EARLY"),
                event_id="early",
                saga_id=saga.context.saga_id,
                drive=True,
            )
            assert delivery.status is DeliveryStatus.STORED
            gate.set()
        [result] = results
        assert result.status is SagaStatus.COMPLETED
        assert log == ["book", "ticket:EARLY"]
        assert result.steps[1].event_id == "early"

    async def test_duplicates_delivered_at_once_are_consumed_once(
        self, saga_repository: SagaRepository
    ) -> None:
        """Five deliveries of one event id, concurrently: one consumes it, the others are
        duplicates (or find it consumed), and the next step runs once."""
        _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        statuses: list[DeliveryStatus] = []

        async def deliver() -> None:
            delivery = await orchestrator.deliver_event(
                CONFIRMED, _payload("DUP"), event_id="dup", saga_id=parked.saga_id, drive=True
            )
            statuses.append(delivery.status)

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(deliver)
        assert statuses.count(DeliveryStatus.DUPLICATE) == 4
        assert log == ["book", "ticket:DUP"]
        stored = await saga_repository.get(parked.saga_id)
        assert stored is not None
        assert stored.status is SagaStatus.COMPLETED

    async def test_without_the_event_the_wait_times_out_and_compensates(
        self, saga_repository: SagaRepository
    ) -> None:
        """Not due before its timeout; at it, ``wake_due`` fails the wait and the step before
        it is undone; an event after that is ignored and stores nothing."""
        inbox = _inbox(saga_repository)
        clock, log, events = ManualClock(), list[str](), _EventLog()
        orchestrator = _orchestrator(saga_repository, clock, log, listeners=[events])
        parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        clock.advance(59.9)
        assert await orchestrator.wake_due() == []
        clock.advance(0.1)
        [result] = await orchestrator.wake_due()
        assert result.status is SagaStatus.COMPENSATED
        assert result.error == "confirm: TimeoutError: no event 'trip.confirmed' within 60s"
        assert log == ["book", "undo-book"]
        assert [s.status for s in result.steps] == [
            StepStatus.COMPENSATED,
            StepStatus.FAILED,
            StepStatus.PENDING,
        ]
        assert _outcomes(events, "confirm") == [
            SagaEventType.STEP_WAITING,
            SagaEventType.STEP_FAILED,
        ]
        late = await orchestrator.deliver_event(
            CONFIRMED, _payload("LATE"), event_id="late", saga_id=parked.saga_id, drive=True
        )
        assert (late.status, late.saga_status) == (
            DeliveryStatus.IGNORED,
            SagaStatus.COMPENSATED,
        )
        assert await inbox.saga_events(parked.saga_id) == []
        assert log == ["book", "undo-book"]

    async def test_an_event_received_after_the_timeout_loses_to_it(
        self, saga_repository: SagaRepository
    ) -> None:
        """Delivered after the wait's time was up but before anything woke the saga: the
        timeout wins. With ``drive=False`` the answer is ``ignored``, nothing is stored, and
        the saga times out when woken; driven, the delivering call times it out itself."""
        inbox = _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        driven = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        clock.advance(60)
        delivery = await orchestrator.deliver_event(
            CONFIRMED, _payload("LATE"), event_id="late", saga_id=parked.saga_id, drive=False
        )
        assert (delivery.status, delivery.saga_status) == (
            DeliveryStatus.IGNORED,
            SagaStatus.RUNNING,
        )
        assert await inbox.saga_events(parked.saga_id) == []
        [result] = [r for r in await orchestrator.wake_due() if r.saga_id == parked.saga_id]
        assert result.status is SagaStatus.COMPENSATED
        assert result.data.confirmation is None
        assert result.steps[1].event_id is None
        timed_out = await orchestrator.deliver_event(
            CONFIRMED, _payload("LATE"), event_id="late-2", saga_id=driven.saga_id, drive=True
        )
        assert (timed_out.status, timed_out.saga_status) == (
            DeliveryStatus.IGNORED,
            SagaStatus.COMPENSATED,
        )
        assert log == ["book", "book", "undo-book", "undo-book"]

    async def test_an_event_received_before_the_timeout_wins_even_if_woken_after(
        self, saga_repository: SagaRepository
    ) -> None:
        """Stored (``drive=False``) just before the timeout, the saga woken after it: the
        event was first, so it is consumed, and nothing is undone."""
        _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        clock.advance(59.999)
        await orchestrator.deliver_event(
            CONFIRMED, _payload("JUST"), event_id="just", saga_id=parked.saga_id, drive=False
        )
        clock.advance(10)
        [result] = await orchestrator.wake_due()
        assert result.status is SagaStatus.COMPLETED
        assert log == ["book", "ticket:JUST"]

    async def test_the_timeout_racing_the_event_lets_exactly_one_win(
        self, saga_repository: SagaRepository, second_saga_repository: SagaRepository | None
    ) -> None:
        """At the timeout, one orchestrator delivers the event while another wakes the saga
        for its timeout, concurrently, over and over: each time exactly one wins (the next
        step ran, or the first was undone, never both), and the saga ends accordingly."""
        _inbox(saga_repository)
        other_repository = second_saga_repository or saga_repository
        winners = set()
        for round_ in range(12):
            clock, log = ManualClock(), list[str]()
            orchestrator = _orchestrator(saga_repository, clock, log)
            timer = _orchestrator(other_repository, clock, log)
            parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
            clock.advance(59.999 if round_ % 2 else 60)

            async def deliver(
                orchestrator: SagaOrchestrator = orchestrator,
                key: str = f"race-{round_}",
                saga_id: UUID = parked.saga_id,
            ) -> None:
                await orchestrator.deliver_event(
                    CONFIRMED, _payload("RACE"), event_id=key, saga_id=saga_id, drive=True
                )

            async def wake(
                timer: SagaOrchestrator = timer, clock: ManualClock = clock, late: int = round_ % 2
            ) -> None:
                if late:
                    clock.advance(1)  # the event (if stored) came first
                await timer.wake_due()

            async with anyio.create_task_group() as tg:
                for task in (deliver, wake) if round_ % 4 < 2 else (wake, deliver):
                    tg.start_soon(task)
            stored = await saga_repository.get(parked.saga_id)
            assert stored is not None
            if stored.status is SagaStatus.RUNNING:  # the wake-up lost to a delivery in flight
                await timer.wake_due()
                stored = await saga_repository.get(parked.saga_id)
                assert stored is not None
            assert log in (["book", "ticket:RACE"], ["book", "undo-book"]), log
            expected = SagaStatus.COMPLETED if "ticket:RACE" in log else SagaStatus.COMPENSATED
            assert stored.status is expected
            assert (stored.steps[1].event_id is not None) == (expected is SagaStatus.COMPLETED)
            winners.add(expected)
        assert winners  # at least one outcome seen; each round had exactly one winner

    async def test_a_rejected_event_fails_the_wait_and_compensates(
        self, saga_repository: SagaRepository
    ) -> None:
        """The step's ``accept`` raises (the amount is wrong): the wait fails with the reason,
        the step before it is undone; the rejected event counts as consumed (a redelivery is
        a duplicate)."""
        _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        delivery = await orchestrator.deliver_event(
            CONFIRMED,
            _payload("X", paid="1.00"),
            event_id="bad",
            saga_id=parked.saga_id,
            drive=True,
        )
        assert (delivery.status, delivery.saga_status) == (
            DeliveryStatus.CONSUMED,
            SagaStatus.COMPENSATED,
        )
        stored = await saga_repository.get(parked.saga_id)
        assert stored is not None
        assert stored.error == (
            "confirm: event 'bad' rejected: ValueError: paid Decimal('1.00'), expected 25.00"
        )
        assert log == ["book", "undo-book"]
        again = await orchestrator.deliver_event(
            CONFIRMED,
            _payload("X", paid="1.00"),
            event_id="bad",
            saga_id=parked.saga_id,
            drive=True,
        )
        assert again.status is DeliveryStatus.DUPLICATE

    async def test_bad_deliveries_raise_and_store_nothing(
        self, saga_repository: SagaRepository
    ) -> None:
        """Unknown sagas raise ``SagaNotFoundError``; a bad name, id, address or payload, or an
        event the saga never waits for, ``InvalidEventError``; none stores anything."""
        inbox = _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        with pytest.raises(SagaNotFoundError):
            await orchestrator.deliver_event(CONFIRMED, {}, event_id="x", saga_id=uuid4())
        with pytest.raises(SagaNotFoundError, match="no saga with correlation id 'nope'"):
            await orchestrator.deliver_event(CONFIRMED, {}, event_id="x", correlation_id="nope")
        saga_id = parked.saga_id
        bad: list[dict[str, Any]] = [
            {"event": "", "event_id": "x", "saga_id": saga_id},
            {"event": CONFIRMED, "event_id": "", "saga_id": saga_id},
            {"event": CONFIRMED, "event_id": "x"},
            {"event": CONFIRMED, "event_id": "x", "saga_id": saga_id, "correlation_id": "c"},
            {"event": CONFIRMED, "event_id": "x", "saga_id": saga_id, "payload": [1]},
            {"event": CONFIRMED, "event_id": "x", "saga_id": saga_id, "payload": {1: 2}},
            {"event": CONFIRMED, "event_id": "x", "saga_id": saga_id, "payload": {"o": object()}},
            {"event": "never.waited.for", "event_id": "x", "saga_id": saga_id},
        ]
        for call in bad:
            with pytest.raises(InvalidEventError):
                await orchestrator.deliver_event(**call)
        assert await inbox.saga_events(saga_id) == []
        stored = await saga_repository.get(saga_id)
        assert stored is not None
        assert stored.version == 2  # created, then parked
        assert log == ["book"]

    # ------------------------------------------------------------ timers, deadline, cancel

    async def test_a_timer_sleeps_durably_and_ends_at_its_time(
        self, saga_repository: SagaRepository
    ) -> None:
        """``sleep_for``: parked with its wake-up time; ``wake_due`` before it does nothing,
        after it the saga goes on."""
        _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        parked = await orchestrator.execute(ContractNapSaga(ContractWaitData(), log))
        assert parked.status is SagaStatus.RUNNING
        assert parked.steps[1].wait_until == clock.now() + timedelta(seconds=30)
        assert parked.steps[1].waiting_for is None
        clock.advance(29)
        assert await orchestrator.wake_due() == []
        clock.advance(1)
        [result] = await orchestrator.wake_due()
        assert result.status is SagaStatus.COMPLETED
        assert log == ["book", "ticket"]

    async def test_the_saga_deadline_ends_a_wait(self, saga_repository: SagaRepository) -> None:
        """A deadline (30 s) before the wait's timeout (60 s): the wait fails at the
        deadline, and the saga compensates."""
        _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        await orchestrator.execute(_DeadlineWaitSaga(ContractWaitData(), log))
        clock.advance(30)
        [result] = await orchestrator.wake_due()
        assert result.status is SagaStatus.COMPENSATED
        assert result.error is not None
        assert "exceeded while waiting for event" in result.error
        assert log == ["book", "undo-book"]

    async def test_recover_consumes_kept_events_and_reports_the_waiting(
        self, saga_repository: SagaRepository
    ) -> None:
        """``recover()`` in a new orchestrator: the saga with a kept event completes, the
        other stays parked and is listed in ``report.waiting``."""
        _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        first = _orchestrator(saga_repository, clock, log)
        waiting = await first.execute(ContractWaitSaga(ContractWaitData(), log))
        confirmed = await first.execute(ContractWaitSaga(ContractWaitData(), log))
        await first.deliver_event(
            CONFIRMED, _payload("KEPT"), event_id="kept", saga_id=confirmed.saga_id, drive=False
        )
        report = await _orchestrator(saga_repository, clock, log).recover()
        assert [r.saga_id for r in report] == [confirmed.saga_id]
        assert report[0].status is SagaStatus.COMPLETED
        assert [r.saga_id for r in report.waiting] == [waiting.saga_id]
        assert report.skipped == []

    async def test_cancel_ends_a_wait_and_compensates(
        self, saga_repository: SagaRepository
    ) -> None:
        """``cancel()`` of a parked saga: the wait fails (nothing to undo for it), and the
        step before it is undone."""
        _inbox(saga_repository)
        clock, log = ManualClock(), list[str]()
        orchestrator = _orchestrator(saga_repository, clock, log)
        parked = await orchestrator.execute(ContractWaitSaga(ContractWaitData(), log))
        result = await orchestrator.cancel(parked.saga_id, "customer changed their mind")
        assert result.status is SagaStatus.COMPENSATED
        assert result.steps[1].status is StepStatus.FAILED
        assert result.steps[1].error == "cancelled while waiting for event 'trip.confirmed'"
        assert log == ["book", "undo-book"]
