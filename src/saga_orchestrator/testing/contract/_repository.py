"""SagaRepositoryContract: the SagaRepository protocol and its optional capabilities; the
sagas it runs through an orchestrator are in _orchestration."""

from __future__ import annotations

import dataclasses
from typing import Any, cast
from uuid import UUID, uuid4

import anyio
import pytest

from ...errors import SagaAlreadyExistsError, SagaConflictError
from ...protocols import (
    IncrementalSagaRepository,
    SagaIdLister,
    SagaRepository,
    SagaStatusCounter,
    StrandingRecorder,
)
from ...serialization import encode_changes, encode_context
from ...serialization._documents import _document_dict
from ...serialization._values import _ENCODER
from ...state import SagaContext, SagaStatus, SkippedSaga, StepState, StepStatus
from .._contract_sagas import utc
from . import _orchestration
from ._support import (
    _SAGA_TYPE,
    _context,
    _event,
    _fields,
    _next,
    _require,
    _rich_context,
    _run_by_anyio,
)


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
        first.error = "changed"
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

    async def test_incremental_writes_read_back_whole(
        self, saga_repository: SagaRepository
    ) -> None:
        """Optional (``IncrementalSagaRepository``): a saga written as patches (after a whole
        document) reads back whole after every write, by ``get``, ``list_sagas`` and
        ``get_by_correlation_id``; a stale version conflicts and writes nothing; a whole
        document, by ``update`` or ``update_changes``, replaces what came before, and patches
        after it apply to it."""
        _require(saga_repository, IncrementalSagaRepository, "update_changes")
        incremental = cast(IncrementalSagaRepository, saga_repository)
        context = _context(correlation_id="incremental")
        context.steps = [StepState(f"s{i:02d}") for i in range(18)]
        first = encode_changes(context, baseline=False)
        assert first.document is not None
        assert first.patch is None
        await saga_repository.create(context, first.document)

        async def reads_back() -> None:
            whole = _ENCODER.encode(_document_dict(context))  # no shortcut, no cache
            stored = await saga_repository.get(context.saga_id)
            listed = await saga_repository.list_sagas()
            found = await saga_repository.get_by_correlation_id("incremental")
            for got in (stored, *listed, found):
                assert got is not None
                assert encode_context(got) == whole

        async def patch(expected: int) -> None:
            changes = encode_changes(context, baseline=True)
            assert changes.document is None
            assert changes.patch is not None
            await incremental.update_changes(context, changes, expected_version=expected)
            await reads_back()

        await reads_back()
        context.version = 2
        _start_step(context, 0)
        await patch(1)
        context.version = 3
        context.steps[0] = dataclasses.replace(
            context.steps[0], status=StepStatus.COMPLETED, completed_at=utc(2)
        )
        _start_step(context, 1)
        await patch(2)

        stale = dataclasses.replace(context, version=4, error="stale")
        with pytest.raises(SagaConflictError):
            await incremental.update_changes(
                stale, encode_changes(stale, baseline=False), expected_version=1
            )
        await reads_back()

        context.version = 4
        context.error = "written whole"
        await saga_repository.update(context, encode_context(context), expected_version=3)
        await reads_back()
        context.version = 5
        context.error = None
        whole = encode_changes(context, baseline=False)
        assert whole.document is not None
        await incremental.update_changes(context, whole, expected_version=4)
        await reads_back()
        context.version = 6
        context.steps[1] = dataclasses.replace(
            context.steps[1], status=StepStatus.COMPLETED, completed_at=utc(3)
        )
        await patch(5)

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
        await _orchestration.a_saga_runs_to_completion(saga_repository)

    async def test_a_failing_step_is_compensated_in_reverse_order(
        self, saga_repository: SagaRepository
    ) -> None:
        """A refused step: the steps before it are undone, last first; stored compensated."""
        await _orchestration.a_failing_step_is_compensated_in_reverse_order(saga_repository)

    async def test_a_transient_error_is_retried(self, saga_repository: SagaRepository) -> None:
        """Two transient failures, then success: three attempts, recorded on the step."""
        await _orchestration.a_transient_error_is_retried(saga_repository)

    async def test_a_failed_compensation_is_retried_to_the_end(
        self, saga_repository: SagaRepository
    ) -> None:
        """A compensation failing every attempt stores the saga ``failed``; ``retry()``
        reads it back and finishes it, and the stored error history keeps every turn."""
        await _orchestration.a_failed_compensation_is_retried_to_the_end(saga_repository)

    async def test_executing_a_stored_saga_again_returns_its_result(
        self, saga_repository: SagaRepository
    ) -> None:
        """The same ``saga_id`` twice: ``create`` refuses it, and the second ``execute()``
        returns the stored result without calling any step."""
        await _orchestration.executing_a_stored_saga_again_returns_its_result(saga_repository)

    async def test_the_deadline_is_stored_as_an_absolute_time(
        self, saga_repository: SagaRepository
    ) -> None:
        """``timeout_minutes`` is stored as ``created_at`` plus the timeout."""
        await _orchestration.the_deadline_is_stored_as_an_absolute_time(saga_repository)

    async def test_recover_resumes_an_interrupted_saga(
        self, saga_repository: SagaRepository
    ) -> None:
        """A saga stopped mid-step: ``recover()`` without its type leaves it (and marks it
        stranded, with ``StrandingRecorder``); with its type it finishes it, counting the
        interrupted attempt and not running the done steps again."""
        await _orchestration.recover_resumes_an_interrupted_saga(saga_repository)

    async def test_cancel_compensates_an_interrupted_saga(
        self, saga_repository: SagaRepository
    ) -> None:
        """``cancel()`` of a saga stopped mid-step: the step in flight counts as possibly
        done, and everything is undone in reverse."""
        await _orchestration.cancel_compensates_an_interrupted_saga(saga_repository)

    async def test_two_orchestrators_never_both_advance_one_saga(
        self,
        saga_repository: SagaRepository,
        second_saga_repository: SagaRepository | None,
    ) -> None:
        """Two orchestrators (on two instances if ``second_saga_repository`` gives one) read
        one interrupted saga, then both resume it: one runs the step, the other gets
        ``SagaConflictError`` and stops."""
        await _orchestration.two_orchestrators_never_both_advance_one_saga(
            saga_repository, second_saga_repository
        )


def _start_step(context: SagaContext[Any], index: int) -> None:
    """The record of an attempt of step ``index`` begun (as the state machine records it)."""
    step = context.steps[index]
    context.steps[index] = dataclasses.replace(
        step, status=StepStatus.RUNNING, attempts=step.attempts + 1, started_at=utc(index + 1)
    )
    context.current_step_index = index
