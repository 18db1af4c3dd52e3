"""Property-based tests of compensation ordering under random failures and crashes.

Hypothesis draws a saga of 1 to 6 steps and, for each step, a script of forward outcomes per
attempt (success, business refusal, transient error, lost reply, timeout before or after
acting), how many times its compensation fails (below or above the compensation retry
limit), and up to two crash points. A crash stops the running orchestrator at the n-th
action or compensation call, before or after it, either by cancelling its task (as a
graceful shutdown does: compensations are shielded, so it lands later) or by raising a
``BaseException`` through everything (as SIGKILL does); a fresh orchestrator on the same
repository then calls ``recover()``.

The services record every call, and an effect ledger deduplicated by idempotency key, as
real idempotent services would. The properties are checked against the stored state and
that ledger:

* forward steps run in declared order, and never once compensation has begun;
* COMPLETED: every step completed, nothing was compensated;
* COMPENSATED: every step that may have acted was compensated exactly once, in strictly
  reverse order, and no other step was;
* FAILED: exactly one compensation is recorded as failed, the steps after it are
  compensated, the ones before it still owe compensation, and ``retry`` finishes the job;
* events are numbered 1..n without gaps;
* without crashes, the outcome is exactly the one a simple model predicts.

Each property runs on the in-memory repository under asyncio; all of them together also
run, with fewer examples, on SQLite (a temporary file per example), on PostgreSQL (one schema
for all examples) and under trio.
"""

from __future__ import annotations

import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from saga_orchestrator import (
    BaseSaga,
    InMemoryEventPublisher,
    InMemorySagaRepository,
    RetryPolicy,
    SagaEvent,
    SagaEventType,
    SagaOrchestrator,
    SagaRepository,
    SagaStatus,
    SagaStep,
    SQLiteSagaRepository,
    StepStatus,
    current_step,
)
from saga_orchestrator.errors import SagaConflictError
from saga_orchestrator.runtime import Phase, StepRun
from saga_orchestrator.serialization import StateChanges, decode_context, encode_context
from saga_orchestrator.serialization._documents import _document_dict
from saga_orchestrator.serialization._values import _ENCODER
from saga_orchestrator.state import SagaContext
from saga_orchestrator.testing import ManualClock

MAX_ATTEMPTS = 3
"""Forward and compensation attempts allowed by the orchestrators under test."""
STEP_TIMEOUT = 0.005
"""Real seconds before a hanging action times out (the only real waiting in this file)."""

OK = "ok"
BUSINESS = "business"  # refused before acting: not retried, nothing to undo
TRANSIENT = "transient"  # ConnectionError before acting
LOST_REPLY = "lost_reply"  # acted, then ConnectionError
HANG = "hang"  # never answers, nothing done: times out
HANG_AFTER = "hang_after"  # acted, then never answers: times out
FAILING = "failing"  # a compensation call that raised
CRASHED = "crashed"  # the process stopped during this call
RETRYABLE_OUTCOMES = (TRANSIENT, LOST_REPLY, HANG, HANG_AFTER)

POLICY = RetryPolicy(max_attempts=MAX_ATTEMPTS, initial_backoff_seconds=0.1, jitter_ratio=0)
TERMINAL_EVENTS = {
    SagaStatus.COMPLETED: SagaEventType.SAGA_COMPLETED,
    SagaStatus.COMPENSATED: SagaEventType.SAGA_COMPENSATED,
    SagaStatus.FAILED: SagaEventType.SAGA_FAILED,
}


class BusinessError(Exception):
    """A declared refusal: the service did nothing (not retryable by default)."""

    refused = True


class Crash(BaseException):
    """The process dies here; nothing catches it but the test harness."""


# ---------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class CrashPoint:
    """Stop the orchestrator at its ``call``-th call of ``phase`` (0-based, all processes)."""

    phase: Phase
    call: int
    when: str  # "before" or "after" the call
    kind: str  # "cancel" (task cancelled) or "kill" (BaseException, nothing more runs)


@dataclass(frozen=True)
class Scenario:
    """Everything hypothesis draws for one saga run."""

    scripts: tuple[tuple[str, ...], ...]
    """Per step, the outcome of attempt 1, 2, ...; attempts past the script succeed."""
    compensation_failures: tuple[int, ...]
    """Per step, how many compensation calls fail before one succeeds."""
    undo_then_fail: tuple[bool, ...]
    """Per step, whether a failing compensation call undoes before raising (lost reply)."""
    crashes: tuple[CrashPoint, ...] = ()

    @property
    def steps(self) -> int:
        return len(self.scripts)


whens = st.sampled_from(("before", "after"))
kinds = st.sampled_from(("cancel", "kill"))
retryable_outcomes = st.sampled_from(RETRYABLE_OUTCOMES)
succeeding_scripts = st.lists(retryable_outcomes, max_size=MAX_ATTEMPTS - 1).map(tuple)
failing_scripts = st.one_of(
    succeeding_scripts.map(lambda prefix: (*prefix, BUSINESS)),
    st.lists(retryable_outcomes, min_size=MAX_ATTEMPTS, max_size=MAX_ATTEMPTS).map(tuple),
)
crash_points = st.one_of(
    st.builds(CrashPoint, st.just(Phase.ACTION), st.integers(0, 10), whens, kinds),
    st.builds(CrashPoint, st.just(Phase.COMPENSATION), st.integers(0, 4), whens, kinds),
)


@st.composite
def scenarios(draw: st.DrawFn, *, crashes: bool = True) -> Scenario:
    """A saga of 1 to 6 steps, where at most one step fails for good."""
    steps = draw(st.integers(1, 6))
    failing = draw(st.none() | st.integers(0, steps - 1))
    stuck = draw(st.none() | st.integers(0, steps - 1))
    scripts = tuple(
        draw(failing_scripts if index == failing else succeeding_scripts) for index in range(steps)
    )
    compensation_failures = tuple(
        draw(st.integers(MAX_ATTEMPTS, MAX_ATTEMPTS + 2) if index == stuck else st.integers(0, 2))
        for index in range(steps)
    )
    undo_then_fail = tuple(draw(st.booleans()) for _ in range(steps))
    crash_list = (
        draw(st.lists(crash_points, max_size=2, unique_by=lambda c: (c.phase, c.call)))
        if crashes
        else []
    )
    return Scenario(scripts, compensation_failures, undo_then_fail, tuple(crash_list))


# ---------------------------------------------------------------- scripted services


@dataclass
class Call:
    """One action or compensation call, as the orchestrator made it."""

    step: int
    phase: Phase
    attempt: int
    outcome: str = "started"


@dataclass
class World:
    """The services of every step, the effect ledger and the crash switch (an interceptor)."""

    scenario: Scenario
    calls: list[Call] = field(default_factory=list)
    ledger: list[tuple[Phase, int]] = field(default_factory=list)
    """Effects that took place, once per idempotency key, in order."""
    seen_keys: set[str] = field(default_factory=set)
    compensation_calls: dict[int, int] = field(default_factory=dict)
    repaired: bool = False
    """Set by the operator before ``retry``: compensations stop failing."""
    crashes_fired: int = 0
    scope: anyio.CancelScope | None = None

    def action(self, index: int) -> Callable[[Any], Awaitable[None]]:
        async def act(data: Any) -> None:
            await self._act(index)

        return act

    def compensation(self, index: int) -> Callable[[Any], Awaitable[None]]:
        async def undo(data: Any) -> None:
            await self._undo(index)

        return undo

    async def _act(self, index: int) -> None:
        run = current_step()
        script = self.scenario.scripts[index]
        outcome = script[run.attempt - 1] if run.attempt <= len(script) else OK
        self.calls[-1].outcome = outcome
        if outcome == BUSINESS:
            raise BusinessError(f"step{index} refused")
        if outcome == TRANSIENT:
            raise ConnectionError(f"step{index} unreachable")
        if outcome == HANG:
            await anyio.sleep_forever()
        self._record(Phase.ACTION, index, run.idempotency_key)
        if outcome == LOST_REPLY:
            raise ConnectionError(f"step{index} reply lost")
        if outcome == HANG_AFTER:
            await anyio.sleep_forever()

    async def _undo(self, index: int) -> None:
        run = current_step()
        count = self.compensation_calls[index] = self.compensation_calls.get(index, 0) + 1
        fails = not self.repaired and count <= self.scenario.compensation_failures[index]
        self.calls[-1].outcome = FAILING if fails else OK
        if fails and not self.scenario.undo_then_fail[index]:
            raise RuntimeError(f"undo step{index} failed")
        self._record(Phase.COMPENSATION, index, run.idempotency_key)
        if fails:
            raise RuntimeError(f"undo step{index} reply lost")

    def _record(self, phase: Phase, index: int, key: str) -> None:
        if key not in self.seen_keys:
            self.seen_keys.add(key)
            self.ledger.append((phase, index))

    async def __call__(self, run: StepRun, proceed: Callable[[], Awaitable[Any]]) -> Any:
        call = Call(int(run.step.removeprefix("step")), run.phase, run.attempt)
        crash = self._crash_point(run.phase, sum(c.phase is run.phase for c in self.calls))
        self.calls.append(call)
        if crash is not None and crash.when == "before":
            await self._crash(crash, call)
        try:
            return await proceed()
        finally:
            if crash is not None and crash.when == "after":
                await self._crash(crash, call)

    def _crash_point(self, phase: Phase, number: int) -> CrashPoint | None:
        return next(
            (c for c in self.scenario.crashes if c.phase is phase and c.call == number), None
        )

    async def _crash(self, crash: CrashPoint, call: Call) -> None:
        self.crashes_fired += 1
        if crash.kind == "kill":
            call.outcome = CRASHED
            raise Crash
        assert self.scope is not None
        self.scope.cancel()
        try:
            await anyio.lowlevel.checkpoint()  # shielded (a compensation): lands later
        except BaseException:
            call.outcome = CRASHED
            raise

    async def until_crash(self, work: Awaitable[object]) -> None:
        """Run ``work`` as one process, which a crash point may stop."""
        with anyio.CancelScope() as scope:
            self.scope = scope
            try:
                await work
            except* Crash:
                pass
        self.scope = None


@dataclass
class LedgerData:
    """The saga's data: nothing to carry, the services keep the ledger."""

    label: str = ""


class LedgerSaga(BaseSaga[LedgerData]):
    """N steps whose actions and compensations are the world's scripted services."""

    saga_type = "property-ledger"

    def __init__(self, data: LedgerData, world: World) -> None:
        self.world = world
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[LedgerData]]:
        return [
            SagaStep(
                name=f"step{index}",
                action=self.world.action(index),
                compensation=self.world.compensation(index),
                timeout_seconds=STEP_TIMEOUT,
            )
            for index in range(self.world.scenario.steps)
        ]


# ---------------------------------------------------------------- running


class _CheckedWrites:
    """Checks that each written document (encoded by ``encode_transition``, which reuses the
    step records a transition cannot have touched) is exactly the document of the whole
    context encoded afresh, then writes it as the repository it is mixed into does."""

    async def create(self, context: Any, state: str, events: Any = ()) -> None:
        _assert_fresh(context, state)
        await super().create(context, state, events)  # type: ignore[misc]

    async def update(
        self, context: Any, state: str, *, expected_version: int, events: Any = ()
    ) -> None:
        _assert_fresh(context, state)
        await super().update(  # type: ignore[misc]
            context, state, expected_version=expected_version, events=events
        )


def _assert_fresh(context: Any, state: str) -> None:
    full = _ENCODER.encode(_document_dict(context))  # the reference encoding, no shortcuts
    assert state == full, "a stale step record was written"


class CheckedMemoryRepository(_CheckedWrites, InMemorySagaRepository):
    """The in-memory repository, every write checked (``_CheckedWrites``)."""


class CheckedSQLiteRepository(_CheckedWrites, SQLiteSagaRepository):
    """The SQLite repository, every write checked (``_CheckedWrites``)."""


class JournaledMemoryRepository(CheckedMemoryRepository):
    """The in-memory repository with incremental writes (``IncrementalSagaRepository``): it
    keeps each saga's last whole document and the patches after it, and stores what
    ``decode_context(document, patches=...)`` rebuilds, which must be exactly the whole
    context encoded afresh. A patch against another version than the stored one conflicts."""

    def __init__(self) -> None:
        super().__init__()
        self.journals: dict[UUID, tuple[str, list[str]]] = {}
        self.patched = 0

    async def create(self, context: Any, state: str, events: Any = ()) -> None:
        await super().create(context, state, events)
        self.journals[context.saga_id] = (state, [])

    async def update(
        self, context: Any, state: str, *, expected_version: int, events: Any = ()
    ) -> None:
        await super().update(context, state, expected_version=expected_version, events=events)
        self.journals[context.saga_id] = (state, [])

    async def update_changes(
        self,
        context: Any,
        changes: StateChanges,
        *,
        expected_version: int,
        events: Any = (),
    ) -> None:
        if changes.document is not None:
            assert changes.patch is None
            await self.update(
                context, changes.document, expected_version=expected_version, events=events
            )
            return
        assert changes.patch is not None
        document, patches = self.journals[context.saga_id]
        if decode_context(document, patches=patches).version != expected_version:
            raise SagaConflictError(context.saga_id, expected_version)
        rebuilt = encode_context(decode_context(document, patches=[*patches, changes.patch]))
        await super().update(context, rebuilt, expected_version=expected_version, events=events)
        patches.append(changes.patch)
        self.patched += 1


class MemoryStorage:
    """One in-memory repository, surviving the simulated restarts."""

    def __init__(self, *, journaled: bool = False) -> None:
        self.repository = JournaledMemoryRepository() if journaled else CheckedMemoryRepository()

    def open(self) -> SagaRepository:
        return self.repository

    async def close(self) -> None:
        pass


class SQLiteStorage:
    """One SQLite file; each simulated process opens its own repository on it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.repositories: list[SQLiteSagaRepository] = []

    def open(self) -> SagaRepository:
        repository = CheckedSQLiteRepository(self.path, synchronous="NORMAL")
        self.repositories.append(repository)
        return repository

    async def close(self) -> None:
        for repository in self.repositories:
            await repository.close()


class PostgresStorage:
    """One PostgreSQL schema; each simulated process opens its own repository (and pool)."""

    def __init__(self, url: str, schema: str) -> None:
        self.url = url
        self.schema = schema
        self.repositories: list[SagaRepository] = []

    def open(self) -> SagaRepository:
        from saga_orchestrator.adapters.postgres import PostgresSagaRepository

        # Every simulated process is the same lease holder, as a restarted process with a
        # fixed owner name is: a crashed one's leases would otherwise hold recovery back
        # for lease_seconds. Takeover after expiry is tested in tests/test_workers.py.
        repository = PostgresSagaRepository(
            self.url, schema=self.schema, owner=f"property-test:{self.schema}"
        )
        self.repositories.append(repository)
        return repository

    async def close(self) -> None:
        for repository in self.repositories:
            await repository.close()  # type: ignore[attr-defined]


@dataclass
class Run:
    """What one scenario did: the calls, the ledger and the stored states."""

    scenario: Scenario
    world: World
    terminal: SagaContext[Any]
    """The stored state once terminal (before any ``retry``)."""
    calls_before_retry: int
    ledger_before_retry: int
    crashed_before_retry: bool
    retried: SagaContext[Any] | None
    """The stored state after an operator's ``retry`` of a FAILED saga."""
    events: list[SagaEvent]

    @property
    def owed(self) -> set[int]:
        """Steps that may have acted: called, and not refused before acting."""
        return {
            c.step for c in self.world.calls if c.phase is Phase.ACTION and c.outcome != BUSINESS
        }

    def calls(self, phase: Phase, *, before_retry: bool = True) -> list[Call]:
        """The calls of ``phase``, up to the first terminal state or all of them."""
        calls = self.world.calls[: self.calls_before_retry] if before_retry else self.world.calls
        return [c for c in calls if c.phase is phase]

    @property
    def ledger(self) -> list[tuple[Phase, int]]:
        return self.world.ledger

    def undone(self, *, before_retry: bool = True) -> list[int]:
        """The steps whose compensation took effect, in the order it did."""
        ledger = self.ledger[: self.ledger_before_retry] if before_retry else self.ledger
        return [index for phase, index in ledger if phase is Phase.COMPENSATION]


async def _run(scenario: Scenario, storage: MemoryStorage | SQLiteStorage | PostgresStorage) -> Run:
    world = World(scenario)
    clock = ManualClock()
    publisher = InMemoryEventPublisher()

    def process() -> SagaOrchestrator:
        orchestrator = SagaOrchestrator(
            storage.open(),
            publisher,
            retry=POLICY,
            compensation_retry=POLICY,
            clock=clock,
            interceptors=[world],
        )
        orchestrator.register(LedgerSaga.saga_type, lambda data: LedgerSaga(data, world))
        return orchestrator

    saga = LedgerSaga(LedgerData(), world)
    saga_id = saga.context.saga_id

    async def settle(work: Awaitable[object]) -> SagaContext[Any]:
        """Run ``work``, then recover after each crash until the saga is terminal."""
        await world.until_crash(work)
        for _ in range(len(scenario.crashes)):
            stored = await storage.open().get(saga_id)
            assert stored is not None
            if stored.is_terminal:
                break
            await world.until_crash(process().recover())
        stored = await storage.open().get(saga_id)
        assert stored is not None
        assert stored.is_terminal, f"not terminal after every crash: {stored.status}"
        return stored

    terminal = await settle(process().execute(saga))
    calls_before_retry, ledger_before_retry = len(world.calls), len(world.ledger)
    crashes_before_retry = world.crashes_fired
    retried = None
    if terminal.status is SagaStatus.FAILED:
        world.repaired = True
        retried = await settle(process().retry(saga_id))
    await storage.close()
    event(f"{terminal.status.value}, {world.crashes_fired} crash(es)")
    note(f"calls: {world.calls}\nledger: {world.ledger}\nsteps: {terminal.steps}")
    return Run(
        scenario=scenario,
        world=world,
        terminal=terminal,
        calls_before_retry=calls_before_retry,
        ledger_before_retry=ledger_before_retry,
        crashed_before_retry=crashes_before_retry > 0,
        retried=retried,
        events=publisher.for_saga(saga_id),
    )


def run_in_memory(scenario: Scenario, backend: str = "asyncio") -> Run:
    """Run the scenario on the in-memory repository."""
    return anyio.run(_run, scenario, MemoryStorage(), backend=backend)


def run_journaled(scenario: Scenario) -> tuple[Run, int]:
    """Run the scenario on the in-memory repository with incremental writes; and how many
    patches were written."""
    storage = MemoryStorage(journaled=True)
    run = anyio.run(_run, scenario, storage, backend="asyncio")
    assert isinstance(storage.repository, JournaledMemoryRepository)
    return run, storage.repository.patched


def run_on_sqlite(scenario: Scenario) -> Run:
    """Run the scenario on a fresh SQLite file."""
    with tempfile.TemporaryDirectory() as folder:
        return anyio.run(_run, scenario, SQLiteStorage(Path(folder) / "sagas.db"))


def run_on_postgres(scenario: Scenario, url: str, schema: str) -> Run:
    """Run the scenario on a PostgreSQL schema (sagas have fresh ids: one schema serves all)."""
    return anyio.run(_run, scenario, PostgresStorage(url, schema), backend="asyncio")


# ---------------------------------------------------------------- properties


def check_forward_order(run: Run) -> None:
    """Actions run in declared order, each step's effect once, none after compensation."""
    calls = run.world.calls
    actions = [c.step for c in calls if c.phase is Phase.ACTION]
    assert actions == sorted(actions), "an earlier step ran after a later one had started"
    assert sorted(set(actions)) == list(range(len(set(actions)))), "a step was skipped"
    first_undo = next((i for i, c in enumerate(calls) if c.phase is Phase.COMPENSATION), None)
    if first_undo is not None:
        assert all(c.phase is Phase.COMPENSATION for c in calls[first_undo:])
    done = [index for phase, index in run.ledger if phase is Phase.ACTION]
    assert done == sorted(set(done))


def check_completed(run: Run) -> None:
    """COMPLETED: every step completed and no compensation ran."""
    state = run.terminal
    if state.status is not SagaStatus.COMPLETED:
        return
    assert [s.status for s in state.steps] == [StepStatus.COMPLETED] * run.scenario.steps
    assert state.error is None
    assert run.calls(Phase.COMPENSATION, before_retry=False) == []
    assert run.ledger == [(Phase.ACTION, index) for index in range(run.scenario.steps)]


def check_compensated(run: Run) -> None:
    """COMPENSATED: exactly the steps that may have acted were undone, once, in reverse."""
    state = run.terminal
    if state.status is not SagaStatus.COMPENSATED:
        return
    owed = run.owed
    compensated = {i for i, s in enumerate(state.steps) if s.status is StepStatus.COMPENSATED}
    assert compensated == owed
    assert run.undone() == sorted(owed, reverse=True)
    undo_calls = [c.step for c in run.calls(Phase.COMPENSATION)]
    assert undo_calls == sorted(undo_calls, reverse=True), "went back to a later step"
    assert set(undo_calls) == owed
    for index, step in enumerate(state.steps):
        if index in owed:
            assert step.compensation_error is None
        else:
            assert step.status in (StepStatus.FAILED, StepStatus.PENDING)
            assert not step.effect_possible
    reached = max(c.step for c in run.calls(Phase.ACTION))
    assert state.error is not None
    assert state.error.startswith(f"step{reached}: ")
    failed = [i for i, s in enumerate(state.steps) if s.status is StepStatus.FAILED]
    assert failed in ([], [reached])
    if not run.crashed_before_retry:
        for index in owed:
            outcomes = [c.outcome for c in run.calls(Phase.COMPENSATION) if c.step == index]
            assert outcomes.count(OK) == 1
            assert outcomes[-1] == OK


def check_failed(run: Run) -> None:
    """FAILED: the stuck compensation is recorded, later steps undone, earlier ones owed."""
    state = run.terminal
    if state.status is not SagaStatus.FAILED:
        return
    owed = run.owed
    stuck = [i for i, s in enumerate(state.steps) if s.status is StepStatus.COMPENSATION_FAILED]
    assert len(stuck) == 1
    (j,) = stuck
    assert j in owed
    record = state.steps[j]
    assert record.compensation_error is not None
    assert state.error is not None
    assert f"compensating step{j} failed after" in state.error
    assert state.error.endswith(record.compensation_error)
    assert state.current_step_index == j
    j_outcomes = [c.outcome for c in run.calls(Phase.COMPENSATION) if c.step == j]
    assert OK not in j_outcomes, "a compensation that succeeded was recorded as failed"
    if not run.crashed_before_retry:
        assert j_outcomes == [FAILING] * MAX_ATTEMPTS
        assert record.compensation_attempts == MAX_ATTEMPTS
    undo_calls = [c.step for c in run.calls(Phase.COMPENSATION)]
    assert undo_calls == sorted(undo_calls, reverse=True)
    assert set(undo_calls) == {i for i in owed if i >= j}
    undone = run.undone()
    assert undone == sorted(set(undone), reverse=True)
    assert {i for i in owed if i > j} <= set(undone) <= {i for i in owed if i >= j}
    for index, step in enumerate(state.steps):
        if index in owed and index > j:
            assert step.status is StepStatus.COMPENSATED
        elif index in owed and index < j:
            assert step.status is StepStatus.COMPLETED, f"step{index}'s compensation was lost"
            assert step.needs_compensation
        elif index not in owed:
            assert step.status in (StepStatus.FAILED, StepStatus.PENDING)
            assert not step.needs_compensation


def check_retry(run: Run) -> None:
    """After a FAILED saga's compensation is repaired, retry undoes everything still owed."""
    if run.retried is None:
        return
    state = run.retried
    owed = run.owed
    assert state.status is SagaStatus.COMPENSATED
    compensated = {i for i, s in enumerate(state.steps) if s.status is StepStatus.COMPENSATED}
    assert compensated == owed
    assert run.calls(Phase.ACTION, before_retry=False) == run.calls(Phase.ACTION)
    assert run.undone(before_retry=False) == sorted(owed, reverse=True)
    undo_calls = [c.step for c in run.calls(Phase.COMPENSATION, before_retry=False)]
    assert undo_calls == sorted(undo_calls, reverse=True)
    assert not any(s.needs_compensation for s in state.steps)


def check_events(run: Run) -> None:
    """Events are numbered 1..n per saga, without gaps, and end with the final status."""
    final = run.retried or run.terminal
    sequences = [e.sequence for e in run.events]
    assert sequences == list(range(1, len(sequences) + 1))
    assert len(sequences) == final.event_sequence
    assert run.events[0].type is SagaEventType.SAGA_STARTED
    assert run.events[-1].type is TERMINAL_EVENTS[final.status]
    started = [int(e.step[4:]) for e in run.events if e.type is SagaEventType.STEP_STARTED]
    assert started == sorted(started)
    undone = [int(e.step[4:]) for e in run.events if e.type is SagaEventType.STEP_COMPENSATED]
    assert undone == sorted(set(undone), reverse=True)
    assert set(undone) == {
        i for i, s in enumerate(final.steps) if s.status is StepStatus.COMPENSATED
    }


def predict(scenario: Scenario) -> tuple[SagaStatus, set[int], int | None]:
    """Without crashes: the final status, the compensated steps and the stuck step."""
    owed: set[int] = set()
    failed = False
    for index, script in enumerate(scenario.scripts):
        outcomes = [script[a] if a < len(script) else OK for a in range(MAX_ATTEMPTS)]
        attempted = outcomes[: outcomes.index(OK) + 1] if OK in outcomes else outcomes
        if BUSINESS in attempted:
            attempted = attempted[: attempted.index(BUSINESS) + 1]
        if any(outcome != BUSINESS for outcome in attempted):
            owed.add(index)
        if attempted[-1] != OK:
            failed = True
            break
    if not failed:
        return SagaStatus.COMPLETED, set(), None
    for index in sorted(owed, reverse=True):
        if scenario.compensation_failures[index] >= MAX_ATTEMPTS:
            return SagaStatus.FAILED, {i for i in owed if i > index}, index
    return SagaStatus.COMPENSATED, owed, None


def check_model(run: Run) -> None:
    """Without crashes, the status, compensated steps and stuck step are as predicted."""
    status, compensated, stuck = predict(run.scenario)
    state = run.terminal
    assert state.status is status
    assert {i for i, s in enumerate(state.steps) if s.status is StepStatus.COMPENSATED} == (
        compensated
    )
    assert [i for i, s in enumerate(state.steps) if s.status is StepStatus.COMPENSATION_FAILED] == (
        [] if stuck is None else [stuck]
    )
    for index in compensated:
        expected = run.scenario.compensation_failures[index] + 1
        assert sum(1 for c in run.calls(Phase.COMPENSATION) if c.step == index) == expected


ALL_CHECKS = (
    check_forward_order,
    check_completed,
    check_compensated,
    check_failed,
    check_retry,
    check_events,
)

in_memory = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
fewer = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@in_memory
@given(scenarios())
def test_forward_steps_run_in_declared_order(scenario: Scenario) -> None:
    """Forward steps run in declared order and never once compensation has begun."""
    check_forward_order(run_in_memory(scenario))


@in_memory
@given(scenarios())
def test_completed_means_every_step_completed_and_nothing_compensated(
    scenario: Scenario,
) -> None:
    """A COMPLETED saga completed every step and ran no compensation."""
    check_completed(run_in_memory(scenario))


@in_memory
@given(scenarios())
def test_compensated_means_every_possible_effect_undone_once_in_reverse(
    scenario: Scenario,
) -> None:
    """A COMPENSATED saga undid exactly the steps that may have acted, once, in reverse."""
    check_compensated(run_in_memory(scenario))


@in_memory
@given(scenarios())
def test_failed_records_the_failing_compensation_and_loses_nothing(scenario: Scenario) -> None:
    """A FAILED saga records its stuck compensation and keeps every other obligation."""
    check_failed(run_in_memory(scenario))


@in_memory
@given(scenarios())
def test_retry_of_a_failed_saga_finishes_compensation(scenario: Scenario) -> None:
    """Retrying a FAILED saga once its compensation works leaves it COMPENSATED."""
    check_retry(run_in_memory(scenario))


@in_memory
@given(scenarios())
def test_events_are_numbered_without_gaps(scenario: Scenario) -> None:
    """Each saga's events are numbered 1..n and end with its final status."""
    check_events(run_in_memory(scenario))


@in_memory
@given(scenarios(crashes=False))
def test_outcome_matches_the_model_without_crashes(scenario: Scenario) -> None:
    """Without crashes, the outcome is the one a simple model of the scripts predicts."""
    check_model(run_in_memory(scenario))


@in_memory
@given(scenarios())
def test_every_property_holds_with_incremental_writes(scenario: Scenario) -> None:
    """Every property above also holds when the repository is written patches (and each
    patched document it rebuilds is exactly the whole context, ``JournaledMemoryRepository``
    checks)."""
    run, patched = run_journaled(scenario)
    assert patched > 0 or scenario.crashes, "no transition was written as a patch"
    for check in ALL_CHECKS:
        check(run)


@fewer
@given(scenarios())
def test_every_property_holds_on_sqlite(scenario: Scenario) -> None:
    """Every property above also holds on the SQLite repository."""
    run = run_on_sqlite(scenario)
    for check in ALL_CHECKS:
        check(run)


@pytest.fixture(scope="module")
def properties_schema(postgres_url: str) -> Iterator[str]:
    """One schema for every example (hypothesis reruns the test; fixtures run once)."""
    import psycopg
    from psycopg import sql

    name = f"saga_test_{uuid4().hex}"
    yield name
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        connection.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@fewer
@given(scenario=scenarios())
def test_every_property_holds_on_postgres(
    scenario: Scenario, postgres_url: str, properties_schema: str
) -> None:
    """Every property above also holds on the PostgreSQL repository."""
    run = run_on_postgres(scenario, postgres_url, properties_schema)
    for check in ALL_CHECKS:
        check(run)


@fewer
@given(scenarios())
def test_every_property_holds_on_trio(scenario: Scenario) -> None:
    """Every property above also holds on trio, whose cancellation differs from asyncio's."""
    run = run_in_memory(scenario, backend="trio")
    for check in ALL_CHECKS:
        check(run)
