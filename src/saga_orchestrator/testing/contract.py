"""The adapter contract suite: the tests the built-in storage adapters pass, for yours.

Subclass a contract class in one of your test modules (the subclass's name must start with
``Test``, as pytest collects classes), give it a fixture that returns or yields a fresh, empty
store, and run pytest:

```python
import pytest

from saga_orchestrator.testing.contract import SagaRepositoryContract


class TestMyRepository(SagaRepositoryContract):
    @pytest.fixture
    async def saga_repository(self):
        async with MyRepository("mysql://...") as repository:
            yield repository
```

- [`SagaRepositoryContract`][saga_orchestrator.testing.contract.SagaRepositoryContract], on
  your fixture ``saga_repository`` (and ``second_saga_repository``, if your store can be
  shared): the [`SagaRepository`][saga_orchestrator.protocols.SagaRepository] protocol, its
  optional capabilities, and sagas run through
  [`SagaOrchestrator`][saga_orchestrator.orchestrator.SagaOrchestrator] on it.
- [`IdempotencyStoreContract`][saga_orchestrator.testing.contract.IdempotencyStoreContract],
  on your fixture ``idempotency_store``: the
  [`IdempotencyStore`][saga_orchestrator.protocols.IdempotencyStore] protocol, and
  ``purge_before`` if the store has it.
- [`OutboxContract`][saga_orchestrator.testing.contract.OutboxContract], on your fixture
  ``outbox_repository``: a repository with ``stores_events = True`` and the
  [`OutboxSource`][saga_orchestrator.protocols.OutboxSource] methods, read by an
  [`OutboxRelay`][saga_orchestrator.outbox.OutboxRelay].

The tests are async and marked ``anyio``: anyio's pytest plugin, installed with anyio, runs
them and your async fixtures on the event loops that the ``anyio_backend`` fixture names.
Define ``anyio_backend`` (in the subclass, the module or a ``conftest.py``) to choose them:
``"asyncio"``, ``"trio"``, or a parametrized fixture for both; without one, anyio's own default
applies. Write your fixtures with ``@pytest.fixture``, not ``@pytest_asyncio.fixture``. With
pytest-asyncio installed, keep its default ``asyncio_mode = "strict"``, in which the tests run
as they do without it: in auto mode it takes them over, and each errors, saying so.

Tests of optional capabilities (``list_saga_ids``, ``count_by_status``,
``mark_stranded``/``list_stranded``, ``purge_before``, ``purge_sent_before``, a second
instance on the same store) skip, saying why, when the object under test lacks them.

This module imports pytest; [`saga_orchestrator.testing`][saga_orchestrator.testing] does not.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter, defaultdict
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast, runtime_checkable
from uuid import UUID, uuid4

import anyio
import anyio.lowlevel

try:
    import pytest
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "saga_orchestrator.testing.contract is a pytest plugin: pip install pytest"
    ) from exc

from ..adapters.memory import InMemorySagaRepository
from ..errors import SagaAlreadyExistsError, SagaConflictError
from ..events import SagaEvent, SagaEventType
from ..orchestrator import SagaOrchestrator
from ..outbox import OutboxRelay
from ..protocols import (
    IdempotencyPurger,
    IdempotencyStore,
    OutboxSource,
    SagaIdLister,
    SagaRepository,
    SagaStatusCounter,
    StrandingRecorder,
)
from ..retry import RetryPolicy
from ..serialization import encode_context
from ..state import (
    ErrorKind,
    ErrorRecord,
    SagaContext,
    SagaStatus,
    SkippedSaga,
    StepState,
    StepStatus,
)
from . import ManualClock
from ._contract_sagas import (
    ContractData,
    ContractTripSaga,
    Refused,
    RichData,
    always,
    fail_on,
    utc,
)

__all__ = ["IdempotencyStoreContract", "OutboxContract", "SagaRepositoryContract"]

_SAGA_TYPE = ContractTripSaga.saga_type


# ---------------------------------------------------------------------------- helpers


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
    """Every stored field of a record (not the saga object it may be attached to)."""
    assert context is not None, "the saga is not stored"
    return {
        f.name: getattr(context, f.name) for f in dataclasses.fields(context) if f.name != "_saga"
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


# ---------------------------------------------------------------------------- repository


class SagaRepositoryContract:
    """What every [`SagaRepository`][saga_orchestrator.protocols.SagaRepository] does.

    Define a fixture ``saga_repository`` returning (or yielding) a fresh, empty repository:
    each test stores sagas of its own and expects to find only those. To test that writes are
    shared between repository objects on one store, as between processes, also override
    ``second_saga_repository`` in your subclass.
    """

    pytestmark = pytest.mark.anyio
    """Every test is marked ``anyio``: anyio's pytest plugin runs it, on ``anyio_backend``."""
    _run_by_anyio = pytest.fixture(autouse=True)(_run_by_anyio)

    @pytest.fixture
    def second_saga_repository(self) -> SagaRepository | None:
        """Another repository object on the same store as ``saga_repository``, as another
        process would open it; ``None`` (this default) if the store cannot be shared.

        Override it in your subclass (a fixture of the same name in a ``conftest.py`` does
        not replace a class's own). Without one, the test of shared writes skips and the
        race of two orchestrators runs on the one repository object.
        """
        return None

    # ------------------------------------------------------------ create and get

    async def test_a_created_saga_reads_back_exactly(self, saga_repository: SagaRepository) -> None:
        """``get`` returns every field as created: data with every storable kind of value
        (a state document over 64 KiB), steps, errors, times; ``get_by_correlation_id``
        finds it by a correlation id with non-ASCII characters, an emoji included."""
        context = _rich_context()
        await saga_repository.create(context, encode_context(context))
        stored = await saga_repository.get(context.saga_id)
        assert _fields(stored) == _fields(context)
        assert stored is not None
        assert str(stored.data.tiny) == "0.10"
        assert context.correlation_id is not None
        found = await saga_repository.get_by_correlation_id(context.correlation_id)
        assert _fields(found) == _fields(context)

    async def test_get_returns_a_new_object_each_time(
        self, saga_repository: SagaRepository
    ) -> None:
        """The orchestrator mutates contexts in place: ``get`` decodes a new one each time,
        never the object given to ``create``, and changing one changes nothing stored."""
        context = _context()
        expected = _fields(context)
        await saga_repository.create(context, encode_context(context))
        first = await saga_repository.get(context.saga_id)
        assert first is not None
        assert first is not context
        first.status = SagaStatus.FAILED
        first.data.flight = "changed"
        second = await saga_repository.get(context.saga_id)
        assert second is not first
        assert _fields(second) == expected

    async def test_an_unknown_saga_is_none(self, saga_repository: SagaRepository) -> None:
        """``get`` and ``get_by_correlation_id`` return ``None`` for what is not stored."""
        assert await saga_repository.get(uuid4()) is None
        assert await saga_repository.get_by_correlation_id("nobody") is None

    async def test_create_refuses_a_taken_id_and_keeps_the_first(
        self, saga_repository: SagaRepository
    ) -> None:
        """A second ``create`` with the same id raises ``SagaAlreadyExistsError`` (which
        ``execute()`` relies on) and writes nothing."""
        context = _context(correlation_id="first")
        await saga_repository.create(context, encode_context(context))
        again = dataclasses.replace(context, status=SagaStatus.COMPLETED, correlation_id="x")
        with pytest.raises(SagaAlreadyExistsError) as refused:
            await saga_repository.create(again, encode_context(again))
        assert refused.value.saga_id == context.saga_id
        assert _fields(await saga_repository.get(context.saga_id)) == _fields(context)
        assert await saga_repository.get_by_correlation_id("x") is None

    async def test_writes_accept_the_transitions_events(
        self, saga_repository: SagaRepository
    ) -> None:
        """``create`` and ``update`` take the transition's events (stored or not: that is
        ``stores_events``) and write the saga either way."""
        context = _context()
        await saga_repository.create(context, encode_context(context), [_event(context, 1)])
        updated = _next(context, status=SagaStatus.COMPLETED)
        events = [_event(context, 2), _event(context, 3)]
        await saga_repository.update(
            updated, encode_context(updated), expected_version=1, events=events
        )
        assert _fields(await saga_repository.get(context.saga_id)) == _fields(updated)

    # ------------------------------------------------------------ update

    async def test_update_replaces_the_record_at_the_expected_version(
        self, saga_repository: SagaRepository
    ) -> None:
        """``update`` with the stored version stores the new record, version included."""
        context = _context()
        await saga_repository.create(context, encode_context(context))
        updated = _next(
            context,
            status=SagaStatus.COMPENSATING,
            data=dataclasses.replace(context.data, flight="F-1"),
            current_step_index=2,
            updated_at=utc(9),
            error="car: Refused: no cars",
        )
        await saga_repository.update(updated, encode_context(updated), expected_version=1)
        assert _fields(await saga_repository.get(context.saga_id)) == _fields(updated)
        final = _next(updated, status=SagaStatus.COMPENSATED)
        await saga_repository.update(final, encode_context(final), expected_version=2)
        stored = await saga_repository.get(context.saga_id)
        assert _fields(stored) == _fields(final)
        assert stored is not None
        assert stored.version == 3

    async def test_update_at_a_stale_version_conflicts_and_writes_nothing(
        self, saga_repository: SagaRepository
    ) -> None:
        """An ``expected_version`` other than the stored one, lower or higher, raises
        ``SagaConflictError(saga_id, expected_version)`` and leaves the record as it was."""
        context = _context()
        await saga_repository.create(context, encode_context(context))
        current = _next(context, status=SagaStatus.COMPLETED)
        await saga_repository.update(current, encode_context(current), expected_version=1)
        for expected in (1, 0, 3, 7):
            stale = dataclasses.replace(
                current, version=expected + 1, status=SagaStatus.FAILED, error="stale"
            )
            with pytest.raises(SagaConflictError) as conflict:
                await saga_repository.update(
                    stale, encode_context(stale), expected_version=expected
                )
            assert conflict.value.saga_id == context.saga_id
            assert conflict.value.expected_version == expected
        assert _fields(await saga_repository.get(context.saga_id)) == _fields(current)

    async def test_update_of_a_missing_saga_conflicts(
        self, saga_repository: SagaRepository
    ) -> None:
        """Updating a saga that is not stored raises ``SagaConflictError`` and stores
        nothing."""
        context = _next(_context())
        with pytest.raises(SagaConflictError):
            await saga_repository.update(context, encode_context(context), expected_version=1)
        assert await saga_repository.get(context.saga_id) is None

    async def test_of_racing_updates_exactly_one_wins(
        self, saga_repository: SagaRepository
    ) -> None:
        """Five concurrent updates from one version: one is stored, four conflict."""
        context = _context()
        await saga_repository.create(context, encode_context(context))
        won: list[int] = []
        lost: list[int] = []

        async def racer(n: int) -> None:
            mine = _next(context, data=dataclasses.replace(context.data, flight=f"racer-{n}"))
            try:
                await saga_repository.update(mine, encode_context(mine), expected_version=1)
                won.append(n)
            except SagaConflictError:
                lost.append(n)

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(racer, n)
        assert len(won) == 1
        assert len(lost) == 4
        stored = await saga_repository.get(context.saga_id)
        assert stored is not None
        assert (stored.version, stored.data.flight) == (2, f"racer-{won[0]}")

    # ------------------------------------------------------------ queries

    async def test_correlation_id_finds_the_most_recently_created_saga(
        self, saga_repository: SagaRepository
    ) -> None:
        """Of two sagas with one correlation id, the later created is found, even after
        the earlier one was updated last."""
        first = _context(correlation_id="order-1", minute=1)
        second = _context(correlation_id="order-1", minute=2)
        other = _context(correlation_id="order-2", minute=3)
        for context in (first, second, other):
            await saga_repository.create(context, encode_context(context))
        updated = _next(first, status=SagaStatus.COMPLETED, updated_at=utc(10))
        await saga_repository.update(updated, encode_context(updated), expected_version=1)
        assert _fields(await saga_repository.get_by_correlation_id("order-1")) == _fields(second)
        assert _fields(await saga_repository.get_by_correlation_id("order-2")) == _fields(other)
        assert await saga_repository.get_by_correlation_id("order-3") is None

    async def _listing(self, repository: SagaRepository) -> list[SagaContext[Any]]:
        """Five sagas of two types and four statuses, created in this order."""
        contexts = [
            _context(saga_type="alpha", status=SagaStatus.RUNNING, minute=1),
            _context(saga_type="beta", status=SagaStatus.RUNNING, minute=2),
            _context(saga_type="alpha", status=SagaStatus.COMPLETED, minute=3),
            _context(saga_type="beta", status=SagaStatus.FAILED, minute=4),
            _context(saga_type="alpha", status=SagaStatus.COMPENSATING, minute=5),
        ]
        for context in contexts:
            await repository.create(context, encode_context(context))
        return contexts

    async def test_list_sagas_is_oldest_first_filtered_and_limited(
        self, saga_repository: SagaRepository
    ) -> None:
        """``list_sagas`` returns whole records in creation order, filtered by statuses (an
        empty collection selects none) and type, at most ``limit``; filters see updates."""
        a1, b1, a2, b2, a3 = await self._listing(saga_repository)

        async def ids(**selection: Any) -> list[UUID]:
            return [c.saga_id for c in await saga_repository.list_sagas(**selection)]

        running = SagaStatus.RUNNING
        assert await ids() == [c.saga_id for c in (a1, b1, a2, b2, a3)]
        assert await ids(statuses={running}) == [a1.saga_id, b1.saga_id]
        active = [SagaStatus.PENDING, running, SagaStatus.COMPENSATING]
        assert await ids(statuses=active) == [a1.saga_id, b1.saga_id, a3.saga_id]
        assert await ids(saga_type="alpha") == [a1.saga_id, a2.saga_id, a3.saga_id]
        done = {SagaStatus.COMPLETED, SagaStatus.FAILED}
        assert await ids(statuses=done, saga_type="beta") == [b2.saga_id]
        assert await ids(limit=2) == [a1.saga_id, b1.saga_id]
        assert await ids(saga_type="alpha", limit=2) == [a1.saga_id, a2.saga_id]
        assert await ids(statuses=set()) == []
        assert await ids(saga_type="gamma") == []
        assert [_fields(c) for c in await saga_repository.list_sagas(saga_type="beta")] == [
            _fields(b1),
            _fields(b2),
        ]

        updated = _next(a1, status=SagaStatus.COMPLETED, updated_at=utc(10))
        await saga_repository.update(updated, encode_context(updated), expected_version=1)
        assert await ids(statuses={running}) == [b1.saga_id]
        assert await ids(statuses={SagaStatus.COMPLETED}) == [a1.saga_id, a2.saga_id]
        [stored] = await saga_repository.list_sagas(statuses={running}, saga_type="beta")
        assert _fields(stored) == _fields(b1)

    async def test_list_saga_ids_selects_as_list_sagas_does(
        self, saga_repository: SagaRepository
    ) -> None:
        """Optional (``SagaIdLister``): the ids of what ``list_sagas`` returns, in its order,
        for the selections ``recover()`` makes (statuses and limit)."""
        _require(saga_repository, SagaIdLister, "list_saga_ids")
        lister = cast(SagaIdLister, saga_repository)
        await self._listing(saga_repository)
        selections: list[dict[str, Any]] = [
            {},
            {"statuses": {SagaStatus.RUNNING}},
            {"statuses": [SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING]},
            {"statuses": {SagaStatus.FAILED, SagaStatus.COMPLETED}, "limit": 1},
            {"limit": 3},
            {"statuses": set()},
        ]
        for selection in selections:
            listed = [c.saga_id for c in await saga_repository.list_sagas(**selection)]
            assert await lister.list_saga_ids(**selection) == listed, selection
        assert len(await lister.list_saga_ids()) == 5

    async def test_count_by_status_counts_by_type_and_status(
        self, saga_repository: SagaRepository
    ) -> None:
        """Optional (``SagaStatusCounter``): ``{(saga_type, status): count}`` for the given
        statuses, absent meaning 0; the counts follow updates."""
        _require(saga_repository, SagaStatusCounter, "count_by_status")
        counter = cast(SagaStatusCounter, saga_repository)
        a1, *_ = await self._listing(saga_repository)
        more = _context(saga_type="alpha", status=SagaStatus.RUNNING, minute=6)
        await saga_repository.create(more, encode_context(more))
        wanted = {SagaStatus.RUNNING, SagaStatus.FAILED, SagaStatus.COMPLETED}
        assert await counter.count_by_status(wanted) == {
            ("alpha", SagaStatus.RUNNING): 2,
            ("beta", SagaStatus.RUNNING): 1,
            ("alpha", SagaStatus.COMPLETED): 1,
            ("beta", SagaStatus.FAILED): 1,
        }
        assert await counter.count_by_status({SagaStatus.PENDING}) == {}
        assert await counter.count_by_status(set()) == {}
        updated = _next(a1, status=SagaStatus.COMPLETED)
        await saga_repository.update(updated, encode_context(updated), expected_version=1)
        assert await counter.count_by_status({SagaStatus.RUNNING, SagaStatus.COMPLETED}) == {
            ("alpha", SagaStatus.RUNNING): 1,
            ("beta", SagaStatus.RUNNING): 1,
            ("alpha", SagaStatus.COMPLETED): 2,
        }

    async def test_stranding_marks_hold_until_the_saga_moves_on(
        self, saga_repository: SagaRepository
    ) -> None:
        """Optional (``StrandingRecorder``): marks of unfinished sagas are listed oldest
        first, a new mark replaces the old one, and a mark lapses once the saga's stored
        version moves on; marks of finished or unknown sagas are not listed."""
        _require(saga_repository, StrandingRecorder, "mark_stranded/list_stranded")
        recorder = cast(StrandingRecorder, saga_repository)
        first = _context(minute=1)
        second = _context(minute=2)
        finished = _context(status=SagaStatus.COMPLETED, minute=3)
        for context in (first, second, finished):
            await saga_repository.create(context, encode_context(context))
        assert await recorder.list_stranded() == []

        await recorder.mark_stranded(second.saga_id, "no factory", saga_version=2)
        await recorder.mark_stranded(first.saga_id, "unreadable")
        await recorder.mark_stranded(finished.saga_id, "too late")
        await recorder.mark_stranded(uuid4(), "not stored")
        assert await recorder.list_stranded() == [
            SkippedSaga(second.saga_id, _SAGA_TYPE, "no factory", 2),
            SkippedSaga(first.saga_id, _SAGA_TYPE, "unreadable", None),
        ]
        assert await recorder.list_stranded(limit=1) == [
            SkippedSaga(second.saga_id, _SAGA_TYPE, "no factory", 2)
        ]

        await recorder.mark_stranded(second.saga_id, "its factory raised", saga_version=1)
        assert await recorder.list_stranded() == [
            SkippedSaga(first.saga_id, _SAGA_TYPE, "unreadable", None),
            SkippedSaga(second.saga_id, _SAGA_TYPE, "its factory raised", 1),
        ]

        moved = _next(first)
        await saga_repository.update(moved, encode_context(moved), expected_version=1)
        assert await recorder.list_stranded() == [
            SkippedSaga(second.saga_id, _SAGA_TYPE, "its factory raised", 1)
        ]

    async def test_writes_are_shared_with_another_instance(
        self,
        saga_repository: SagaRepository,
        second_saga_repository: SagaRepository | None,
    ) -> None:
        """Two repository objects on one store (``second_saga_repository``) read each
        other's writes at once, and the version check holds across them."""
        other = second_saga_repository
        if other is None:
            pytest.skip(
                "optional: no second_saga_repository fixture (another instance on the same store)"
            )
        context = _context(correlation_id="shared")
        await saga_repository.create(context, encode_context(context))
        assert _fields(await other.get(context.saga_id)) == _fields(context)
        assert _fields(await other.get_by_correlation_id("shared")) == _fields(context)
        assert [c.saga_id for c in await other.list_sagas()] == [context.saga_id]
        with pytest.raises(SagaAlreadyExistsError):
            await other.create(context, encode_context(context))

        updated = _next(context, status=SagaStatus.COMPLETED)
        await saga_repository.update(updated, encode_context(updated), expected_version=1)
        assert _fields(await other.get(context.saga_id)) == _fields(updated)
        stale = _next(context, status=SagaStatus.FAILED)
        with pytest.raises(SagaConflictError):
            await other.update(stale, encode_context(stale), expected_version=1)

        raced = _context(minute=1)
        await other.create(raced, encode_context(raced))
        outcomes: list[str] = []

        async def update(repository: SagaRepository, flight: str) -> None:
            mine = _next(raced, data=dataclasses.replace(raced.data, flight=flight))
            try:
                await repository.update(mine, encode_context(mine), expected_version=1)
                outcomes.append(flight)
            except SagaConflictError:
                outcomes.append("conflict")

        async with anyio.create_task_group() as tg:
            tg.start_soon(update, saga_repository, "first")
            tg.start_soon(update, other, "second")
        [winner] = [outcome for outcome in outcomes if outcome != "conflict"]
        assert sorted(outcomes) == sorted([winner, "conflict"])
        for repository in (saga_repository, other):
            stored = await repository.get(raced.saga_id)
            assert stored is not None
            assert (stored.version, stored.data.flight) == (2, winner)

    # ------------------------------------------------------------ sagas on the repository

    async def test_a_saga_runs_to_completion(self, saga_repository: SagaRepository) -> None:
        """``execute()`` completes a saga; the stored record says so, with every step done,
        the data, the last event's sequence, and its correlation id."""
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

    async def test_a_failing_step_is_compensated_in_reverse_order(
        self, saga_repository: SagaRepository
    ) -> None:
        """A refused step: the steps before it are undone, last first; stored compensated."""
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

    async def test_a_transient_error_is_retried(self, saga_repository: SagaRepository) -> None:
        """Two transient failures, then success: three attempts, recorded on the step."""
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

    async def test_a_failed_compensation_is_retried_to_the_end(
        self, saga_repository: SagaRepository
    ) -> None:
        """A compensation failing every attempt stores the saga ``failed``; ``retry()``
        reads it back and finishes it, and the stored error history keeps every turn."""
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
        orchestrator = _orchestrator(
            saga_repository, compensation_retry=RetryPolicy(max_attempts=2)
        )
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

    async def test_executing_a_stored_saga_again_returns_its_result(
        self, saga_repository: SagaRepository
    ) -> None:
        """The same ``saga_id`` twice: ``create`` refuses it, and the second ``execute()``
        returns the stored result without calling any step."""
        orchestrator = _orchestrator(saga_repository)
        first = ContractTripSaga(ContractData())
        await orchestrator.execute(first)
        second = ContractTripSaga(first.context.data)
        second.context.saga_id = first.context.saga_id
        result = await orchestrator.execute(second)
        assert result.status is SagaStatus.COMPLETED
        assert second.log == []

    async def test_the_deadline_is_stored_as_an_absolute_time(
        self, saga_repository: SagaRepository
    ) -> None:
        """``timeout_minutes`` is stored as ``created_at`` plus the timeout."""

        class Timed(ContractTripSaga):
            timeout_minutes = 30

        result = await _orchestrator(saga_repository).execute(Timed(ContractData()))
        stored = await saga_repository.get(result.saga_id)
        assert stored is not None
        assert stored.created_at is not None
        assert stored.deadline is not None
        assert stored.deadline - stored.created_at == timedelta(minutes=30)

    async def test_recover_resumes_an_interrupted_saga(
        self, saga_repository: SagaRepository
    ) -> None:
        """A saga stopped mid-step: ``recover()`` without its type leaves it (and marks it
        stranded, with ``StrandingRecorder``); with its type it finishes it, counting the
        interrupted attempt and not running the done steps again."""
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

    async def test_cancel_compensates_an_interrupted_saga(
        self, saga_repository: SagaRepository
    ) -> None:
        """``cancel()`` of a saga stopped mid-step: the step in flight counts as possibly
        done, and everything is undone in reverse."""
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

    async def test_two_orchestrators_never_both_advance_one_saga(
        self,
        saga_repository: SagaRepository,
        second_saga_repository: SagaRepository | None,
    ) -> None:
        """Two orchestrators (on two instances if ``second_saga_repository`` gives one) read
        one interrupted saga, then both resume it: one runs the step, the other gets
        ``SagaConflictError`` and stops."""
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


# ---------------------------------------------------------------------------- idempotency


class IdempotencyStoreContract:
    """What every [`IdempotencyStore`][saga_orchestrator.protocols.IdempotencyStore] does.

    Define a fixture ``idempotency_store`` returning (or yielding) a fresh, empty store.
    """

    pytestmark = pytest.mark.anyio
    """Every test is marked ``anyio``: anyio's pytest plugin runs it, on ``anyio_backend``."""
    _run_by_anyio = pytest.fixture(autouse=True)(_run_by_anyio)

    async def test_the_first_value_stands(self, idempotency_store: IdempotencyStore) -> None:
        """``put_if_absent`` keeps the first value and returns it to every later writer."""
        assert await idempotency_store.get("k") is None
        assert await idempotency_store.put_if_absent("k", "first") == "first"
        assert await idempotency_store.put_if_absent("k", "second") == "first"
        assert await idempotency_store.get("k") == "first"

    async def test_keys_are_independent_and_values_exact(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        """Each key keeps its own value, exactly: JSON, non-BMP characters, 96,000
        characters, an empty string; keys differing only in case or a suffix differ."""
        values = {
            f"{uuid4()}:charge": '{"payment_id":"p-1","amount":{"$decimal":"10.00"}}',
            "Key": "naïve 東京 🧳",
            "key": "",
            "key:compensate": "0123456789abcdef" * 6000,
        }
        for key, value in values.items():
            assert await idempotency_store.put_if_absent(key, value) == value
        for key, value in values.items():
            assert await idempotency_store.get(key) == value
        assert await idempotency_store.get("key:") is None

    async def test_concurrent_writers_agree(self, idempotency_store: IdempotencyStore) -> None:
        """Twenty writers racing on one key all get the same, single stored value."""
        seen: list[str] = []

        async def put(value: str) -> None:
            seen.append(await idempotency_store.put_if_absent("race", value))

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(put, f"v{n}")
        assert len(seen) == 20
        assert len(set(seen)) == 1
        assert await idempotency_store.get("race") == seen[0]

    async def test_purge_forgets_only_older_entries(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        """Optional (``IdempotencyPurger``): ``purge_before`` removes the entries stored
        before the cutoff, returns how many, and keeps newer ones."""
        _require(idempotency_store, IdempotencyPurger, "purge_before")
        purger = cast(IdempotencyPurger, idempotency_store)
        await idempotency_store.put_if_absent("old", "1")
        await idempotency_store.put_if_absent("older", "2")
        assert await purger.purge_before(datetime.now(UTC) - timedelta(hours=1)) == 0
        assert await idempotency_store.get("old") == "1"
        assert await purger.purge_before(datetime.now(UTC) + timedelta(seconds=1)) == 2
        assert await idempotency_store.get("old") is None
        assert await idempotency_store.put_if_absent("old", "new") == "new"

    async def test_a_recorded_result_is_replayed_not_redone(
        self, idempotency_store: IdempotencyStore
    ) -> None:
        """Through the orchestrator: a saga run again under the same id on a fresh
        repository, with the same store, applies the recorded results and calls no step."""
        data = ContractData()
        first = ContractTripSaga(data)
        orchestrator = _orchestrator(InMemorySagaRepository(), idempotency_store=idempotency_store)
        done = await orchestrator.execute(first)
        assert first.log == ["flight#1", "hotel#1", "car#1"]

        again = ContractTripSaga(ContractData(data.contract_id))
        again.context.saga_id = first.context.saga_id
        fresh = _orchestrator(InMemorySagaRepository(), idempotency_store=idempotency_store)
        replayed = await fresh.execute(again)
        assert again.log == []
        assert replayed.status is SagaStatus.COMPLETED
        assert replayed.data == done.data


# ---------------------------------------------------------------------------- outbox


@runtime_checkable
class _OutboxRepository(SagaRepository, OutboxSource, Protocol):
    stores_events: bool


class _RecordingPublisher:
    """Keeps every batch it is given, one list per ``publish`` call, and fails the calls
    numbered in ``fail_calls`` (1-based) after taking them, as a broker that went down half
    way would: their events may have reached consumers, so they count as delivered twice."""

    def __init__(self, fail_calls: Collection[int] = ()) -> None:
        self.calls: list[list[SagaEvent]] = []
        self.failed: set[int] = set()
        self.fail_calls = set(fail_calls)
        self._called = anyio.Event()

    async def publish(self, events: Sequence[SagaEvent]) -> None:
        await anyio.lowlevel.checkpoint()
        self.calls.append(list(events))
        self._called.set()
        self._called = anyio.Event()
        if len(self.calls) in self.fail_calls:
            self.failed.add(len(self.calls) - 1)
            raise ConnectionError(f"broker went away (call {len(self.calls)})")

    async def wait_for(self, count: int) -> None:
        """Return once ``count`` distinct events were accepted."""
        while len({e.event_id for e in self.accepted}) < count:
            await self._called.wait()

    @property
    def accepted(self) -> list[SagaEvent]:
        return [e for i, call in enumerate(self.calls) if i not in self.failed for e in call]

    @property
    def delivered(self) -> list[SagaEvent]:
        return [e for call in self.calls for e in call]


class _SpySource:
    """Wraps an outbox source: records each batch read, and says when a read found none."""

    def __init__(self, source: OutboxSource) -> None:
        self.source = source
        self.batches: list[list[tuple[int, SagaEvent]]] = []
        self.marked: list[list[int]] = []
        self.empty = anyio.Event()

    async def fetch_unsent(self, limit: int) -> list[tuple[int, SagaEvent]]:
        batch = await self.source.fetch_unsent(limit)
        self.batches.append(batch)
        if not batch:
            self.empty.set()
        return batch

    async def mark_sent(self, ids: Sequence[int]) -> None:
        await self.source.mark_sent(ids)
        self.marked.append(list(ids))


async def _run_sagas(repository: SagaRepository, count: int = 6) -> list[SagaEvent]:
    """Run ``count`` sagas at once (completing, compensating, retrying a step); return the
    events the orchestrator emitted."""
    log = _EventLog()
    orchestrator = _orchestrator(repository, listeners=[log])
    behaviours: list[dict[str, Any]] = [
        {},
        {"car": always(Refused("no car"))},
        {"hotel": fail_on({1}, ConnectionError("flaky"))},
    ]
    async with anyio.create_task_group() as tg:
        for index in range(count):
            saga = ContractTripSaga(ContractData(), behaviour=behaviours[index % len(behaviours)])
            tg.start_soon(orchestrator.execute, saga)
    return log.events


def _by_saga(events: Sequence[SagaEvent]) -> dict[UUID, list[SagaEvent]]:
    grouped: dict[UUID, list[SagaEvent]] = defaultdict(list)
    for event in events:
        grouped[event.saga_id].append(event)
    return dict(grouped)


def _assert_in_saga_order(events: Sequence[SagaEvent]) -> None:
    for saga_id, own in _by_saga(events).items():
        assert [e.sequence for e in own] == list(range(1, len(own) + 1)), saga_id


async def _drain(relay: OutboxRelay) -> int:
    total = 0
    while count := await relay.run_once():
        assert count <= relay.batch_size
        total += count
    return total


async def _unsent(source: OutboxSource) -> list[SagaEvent]:
    return [e for _, e in await source.fetch_unsent(10_000)]


class OutboxContract:
    """What a repository with a transactional outbox, and the relay over it, guarantee.

    Define a fixture ``outbox_repository`` returning (or yielding) a fresh, empty repository
    that has ``stores_events = True`` and the
    [`OutboxSource`][saga_orchestrator.protocols.OutboxSource] methods.
    """

    pytestmark = pytest.mark.anyio
    """Every test is marked ``anyio``: anyio's pytest plugin runs it, on ``anyio_backend``."""
    _run_by_anyio = pytest.fixture(autouse=True)(_run_by_anyio)

    async def test_the_repository_has_an_outbox(self, outbox_repository: Any) -> None:
        """``stores_events`` is true and the ``OutboxSource`` methods are there."""
        assert outbox_repository.stores_events is True
        assert isinstance(outbox_repository, _OutboxRepository)

    async def test_relay_publishes_every_event_of_real_sagas(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """Every event the sagas emitted is published once, equal (event_id included) and in
        each saga's order, one publish call per batch in outbox order; then all are sent."""
        emitted = await _run_sagas(outbox_repository)
        spy = _SpySource(outbox_repository)
        publisher = _RecordingPublisher()
        relay = OutboxRelay(spy, publisher, batch_size=7)

        assert await _drain(relay) == len(emitted)

        published = publisher.accepted
        assert len(published) == len(emitted)
        assert _by_saga(published) == _by_saga(emitted)
        _assert_in_saga_order(published)
        for saga_id, own in _by_saga(published).items():
            stored = await outbox_repository.get(saga_id)
            assert stored is not None
            assert stored.event_sequence == own[-1].sequence
        read = [batch for batch in spy.batches if batch]
        assert publisher.calls == [[e for _, e in batch] for batch in read]
        ids = [outbox_id for batch in read for outbox_id, _ in batch]
        assert ids == sorted(set(ids))
        assert spy.marked == [[outbox_id for outbox_id, _ in batch] for batch in read]
        assert relay.published == len(emitted)
        assert relay.last_error is None

        assert await relay.run_once() == 0  # everything is marked sent
        assert len(publisher.calls) == len(read)
        assert await _unsent(outbox_repository) == []

    async def test_failing_publisher_loses_nothing_and_skips_nothing(
        self, outbox_repository: _OutboxRepository, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A publisher failing 3 times, then once more later: ``run()`` retries the same
        batch after a growing backoff, keeps each saga's order, and repeats only failed
        batches."""
        emitted = await _run_sagas(outbox_repository)
        spy = _SpySource(outbox_repository)
        publisher = _RecordingPublisher(fail_calls={1, 2, 3, 6})
        clock = ManualClock()
        backoff = RetryPolicy(initial_backoff_seconds=0.05, max_backoff_seconds=5, jitter_ratio=0)
        relay = OutboxRelay(
            spy, publisher, batch_size=5, poll_interval_seconds=0, retry=backoff, clock=clock
        )
        assert len(emitted) > 3 * relay.batch_size  # the late failure hits a third batch

        with caplog.at_level(logging.WARNING, logger="saga_orchestrator"):
            async with anyio.create_task_group() as tg:
                tg.start_soon(relay.run)
                with anyio.fail_after(10):
                    await publisher.wait_for(len(emitted))
                    await spy.empty.wait()  # read after the last mark: all are sent
                tg.cancel_scope.cancel()

        # The same events, again and again, until they went through.
        assert publisher.calls[0] == publisher.calls[1] == publisher.calls[2] == publisher.calls[3]
        assert publisher.calls[5] == publisher.calls[6]
        assert clock.sleeps == [0.05, 0.1, 0.2, 0.05]  # grows while failing, resets after
        # Each event accepted exactly once, in each saga's order; nothing lost.
        assert sorted(e.event_id for e in publisher.accepted) == sorted(e.event_id for e in emitted)
        _assert_in_saga_order(publisher.accepted)
        assert _by_saga(publisher.accepted) == _by_saga(emitted)
        # At least once: the extra deliveries are exactly the failed calls' events.
        extra = Counter(e.event_id for e in publisher.delivered)
        extra.subtract(Counter(e.event_id for e in publisher.accepted))
        failed = Counter(e.event_id for i in publisher.failed for e in publisher.calls[i])
        assert +extra == failed
        # First deliveries already respect each saga's order.
        first: dict[UUID, SagaEvent] = {}
        for e in publisher.delivered:
            first.setdefault(e.event_id, e)
        _assert_in_saga_order(list(first.values()))

        warnings = [r for r in caplog.records if r.getMessage().startswith("saga.outbox.")]
        assert [r.getMessage().split(":")[0] for r in warnings] == [
            "saga.outbox.publish_failed"
        ] * 4
        assert relay.last_error is None
        assert relay.published == len(emitted)
        assert await _unsent(outbox_repository) == []

    async def test_run_once_propagates_a_publish_error_and_marks_nothing(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """``run_once`` re-raises the publisher's error; the batch stays unsent, first in
        line."""
        emitted = await _run_sagas(outbox_repository, count=1)
        relay = OutboxRelay(outbox_repository, _RecordingPublisher(fail_calls={1}), batch_size=3)
        with pytest.raises(ConnectionError, match="broker went away"):
            await relay.run_once()
        last_errors = [relay.last_error]
        assert relay.published == 0
        assert await _unsent(outbox_repository) == emitted

        assert await relay.run_once() == 3
        last_errors.append(relay.last_error)
        assert last_errors == ["ConnectionError: broker went away (call 1)", None]
        assert await _unsent(outbox_repository) == emitted[3:]

    async def test_cancelled_mid_publish_publishes_the_batch_again(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """A relay cancelled while publishing marked nothing: the next one sends the batch."""
        emitted = await _run_sagas(outbox_repository, count=1)
        entered = anyio.Event()

        class Stuck:
            async def publish(self, events: Sequence[SagaEvent]) -> None:
                entered.set()
                await anyio.sleep_forever()

        relay = OutboxRelay(outbox_repository, Stuck(), batch_size=4)
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run)
            with anyio.fail_after(10):
                await entered.wait()
            tg.cancel_scope.cancel()

        publisher = _RecordingPublisher()
        relay = OutboxRelay(outbox_repository, publisher, batch_size=4)
        assert await _drain(relay) == len(emitted)
        assert publisher.accepted == emitted

    async def test_relay_as_a_listener_publishes_right_after_each_transition(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """Among the orchestrator's listeners, the relay is woken by every transition (an
        hour's poll interval would otherwise keep it waiting)."""
        spy = _SpySource(outbox_repository)
        publisher = _RecordingPublisher()
        relay = OutboxRelay(spy, publisher, poll_interval_seconds=3600)
        orchestrator = _orchestrator(outbox_repository, listeners=[relay])
        async with anyio.create_task_group() as tg:
            tg.start_soon(relay.run)
            with anyio.fail_after(10):
                await spy.empty.wait()
                result = await orchestrator.execute(ContractTripSaga(ContractData()))
                stored = await outbox_repository.get(result.saga_id)
                assert stored is not None
                await publisher.wait_for(stored.event_sequence)
            tg.cancel_scope.cancel()
        _assert_in_saga_order(publisher.accepted)
        assert publisher.accepted[-1].type is SagaEventType.SAGA_COMPLETED

    async def test_a_failed_compare_and_set_writes_no_events(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """``update`` with a stale ``expected_version``, and ``create`` of a stored saga,
        store no events; of two racing updates, only the winner's events are stored."""
        repo = outbox_repository
        context = _context()
        created = [_event(context, 1)]
        await repo.create(context, encode_context(context), created)

        stale = _next(context)
        with pytest.raises(SagaConflictError):
            await repo.update(
                stale, encode_context(stale), expected_version=7, events=[_event(context, 2)]
            )
        with pytest.raises(SagaAlreadyExistsError):
            await repo.create(context, encode_context(context), [_event(context, 2)])
        assert await _unsent(repo) == created

        racers = [[_event(context, 2), _event(context, 3)] for _ in range(2)]
        outcomes: list[str] = []

        async def update(events: list[SagaEvent]) -> None:
            try:
                await repo.update(stale, encode_context(stale), expected_version=1, events=events)
                outcomes.append("won")
            except SagaConflictError:
                outcomes.append("lost")

        async with anyio.create_task_group() as tg:
            for events in racers:
                tg.start_soon(update, events)
        assert sorted(outcomes) == ["lost", "won"]
        assert await _unsent(repo) in ([*created, *racers[0]], [*created, *racers[1]])

    async def test_events_that_cannot_be_stored_fail_the_transition(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """An event that does not encode (a NaN duration) fails the write with
        ``ValueError``: no saga, no event."""
        context = _context()
        with pytest.raises(ValueError):
            await outbox_repository.create(
                context,
                encode_context(context),
                [_event(context, 1), _event(context, 2, duration_seconds=float("nan"))],
            )
        assert await outbox_repository.get(context.saga_id) is None
        assert await _unsent(outbox_repository) == []

    async def test_purge_deletes_only_events_sent_before_the_cutoff(
        self, outbox_repository: _OutboxRepository
    ) -> None:
        """Optional (``purge_sent_before``): sent events older than the cutoff are deleted,
        unsent ones never, however old."""
        purge = getattr(outbox_repository, "purge_sent_before", None)
        if purge is None:
            pytest.skip(f"optional: {type(outbox_repository).__name__} has no purge_sent_before")
        repo = outbox_repository
        context = _context()
        events = [_event(context, sequence) for sequence in (1, 2, 3)]
        await repo.create(context, encode_context(context), events)
        before_marking = datetime.now(UTC) - timedelta(seconds=1)
        ids = [outbox_id for outbox_id, _ in await repo.fetch_unsent(10)]
        await repo.mark_sent(ids[:2])

        assert await purge(before_marking) == 0
        later = datetime.now(UTC) + timedelta(hours=1)
        assert await purge(later) == 2
        assert await purge(later) == 0
        assert await _unsent(repo) == events[2:]

        await repo.mark_sent(ids[2:])
        assert await purge(later) == 1
        assert await _unsent(repo) == []
