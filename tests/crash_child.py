"""Child process of ``tests/test_crash_recovery.py``: runs sagas on SQLite, or recovers them.

Run with the repository root on ``PYTHONPATH``::

    python -m tests.crash_child run --db sagas.db --log calls.jsonl --mode during-action \\
        --ready-fd 5
    python -m tests.crash_child recover --db sagas.db --log calls.jsonl

``run`` starts a batch of 4-step sagas concurrently (see :func:`plans`). Some are *held*: the
saga stops for good at the point that ``--mode`` names (before, during or after an action or a
compensation, or in a retry backoff). Once every saga is stored, every held saga has reached
its point and the *settled* sagas have finished, ``run`` writes one byte to ``--ready-fd`` and
waits forever, for the parent to SIGKILL it. *Drifting* sagas keep running meanwhile, so the
kill lands wherever they happen to be.

``recover`` builds a fresh orchestrator on the same file, registers the saga's factory, calls
``recover()`` (twice: the second must find nothing) and prints a JSON summary on stdout.

Every action and compensation appends a line to the call log (``--log``) before doing
anything else, and another once it is done, each written with ``O_APPEND`` and ``fsync``ed, so
that the log says exactly which calls a killed process made. The data class and the saga live
at module level here so that stored sagas can be read back by the recovering process and by the
test itself (as ``tests.crash_child``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio

from saga_orchestrator import (
    BaseSaga,
    SagaEvent,
    SagaEventType,
    SagaOrchestrator,
    SagaStep,
    SQLiteSagaRepository,
    current_step,
)
from saga_orchestrator.runtime import SystemClock

SAGA_TYPE = "crash_test_order"
STEP_NAMES = ("reserve_stock", "charge_card", "book_courier", "send_receipt")

MODES: dict[str, tuple[str, str]] = {
    # mode: (phase, where) of the held sagas' stopping point
    "before-action": ("action", "before"),
    "during-action": ("action", "during"),
    "after-action": ("action", "after"),
    "retry-backoff": ("action", "backoff"),
    "before-compensation": ("compensation", "before"),
    "during-compensation": ("compensation", "during"),
    "after-compensation": ("compensation", "after"),
}
"""Kill modes: where the held sagas stop when the parent sends SIGKILL."""

# (failing step, step whose compensation is held) of the held sagas in compensation modes.
_COMPENSATION_HOLDS = ((2, 1), (2, 0), (3, 2), (1, 0))


@dataclass
class CrashData:
    """Saga data, carrying the saga's own test plan (so every process can read it)."""

    index: int
    role: str
    """``held`` (stops at the kill point), ``settled`` (finishes before the kill) or
    ``drifting`` (runs freely; the kill hits it wherever it is)."""
    fail_step: int | None = None
    """This step's action refuses (a non-retryable business error), so the saga compensates."""
    fail_from_attempt: int = 1
    """The first attempt of ``fail_step`` that refuses."""
    flaky_step: int | None = None
    """This step's action fails with a retryable ``ConnectionError`` on its first attempt."""
    hold_step: int | None = None
    hold_phase: str | None = None
    """``action`` or ``compensation``."""
    hold_where: str | None = None
    """``before``, ``during`` or ``after`` the call, or ``backoff`` (the retry's sleep)."""
    pace: float = 0.0
    """Seconds each call takes (drifting sagas)."""
    refs: list[str] = field(default_factory=list)
    """Names of the steps whose result was applied, in order (set by the actions)."""


class RefusedError(Exception):
    """A business refusal: not retryable, and the step did not act."""

    refused = True


def plans(mode: str) -> list[CrashData]:
    """The sagas one ``run`` starts: 4 or 5 held at ``mode``'s point, 2 settled, 4 drifting."""
    phase, where = MODES[mode]
    hold: dict[str, Any] = {"role": "held", "hold_phase": phase, "hold_where": where}
    held: list[dict[str, Any]]
    if phase == "action":
        flaky = where == "backoff"
        held = [
            {**hold, "hold_step": k, "flaky_step": k if flaky else None}
            for k in range(len(STEP_NAMES))
        ]
        # Cut short at its first attempt, refused at its second: it may have acted, so it is
        # compensated along with the steps before it.
        held.append(
            {
                **hold,
                "hold_step": 2,
                "flaky_step": 2 if flaky else None,
                "fail_step": 2,
                "fail_from_attempt": 2,
            }
        )
    else:
        held = [{**hold, "hold_step": k, "fail_step": fail} for fail, k in _COMPENSATION_HOLDS]
    settled: list[dict[str, Any]] = [
        {"role": "settled"},
        {"role": "settled", "fail_step": 2},
    ]
    drifting: list[dict[str, Any]] = [
        {"role": "drifting", "pace": 0.004},
        {"role": "drifting", "pace": 0.009},
        {"role": "drifting", "pace": 0.006, "fail_step": 2},
        {"role": "drifting", "pace": 0.012, "fail_step": 3},
    ]
    return [CrashData(index=i, **spec) for i, spec in enumerate(held + settled + drifting)]


class CallLog:
    """The durable call log: one JSON line per event, appended and fsynced at once."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def record(self, data: CrashData, event: str) -> None:
        run = current_step()
        line = json.dumps(
            {
                "index": data.index,
                "saga_id": str(run.saga_id),
                "step": run.step,
                "phase": run.phase.value,
                "attempt": run.attempt,
                "event": event,
                "pid": os.getpid(),
            }
        )
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


class Harness:
    """Per-process test switches: the call log and, in the crash run, the hold points.

    Also a :class:`~saga_orchestrator.protocols.SagaListener` counting stored sagas. Build it
    inside the event loop (it owns anyio events).
    """

    def __init__(self, log: CallLog, *, armed: bool, sagas: int = 0, holds: int = 0) -> None:
        self.log = log
        self.armed = armed
        self.expected_sagas = sagas
        self.expected_holds = holds
        self.started = 0
        self.held = 0
        self.all_started = anyio.Event()
        self.all_held = anyio.Event()

    def holds_at(self, data: CrashData, step: int, phase: str, where: str) -> bool:
        """Whether this call of this saga is where it must stop (crash run only)."""
        return (
            self.armed
            and data.hold_step == step
            and data.hold_phase == phase
            and data.hold_where == where
        )

    async def hold(self) -> None:
        """Stop this task for good, counting it as held."""
        self.held += 1
        if self.held == self.expected_holds:
            self.all_held.set()
        await anyio.sleep_forever()

    def on_event(self, event: SagaEvent) -> None:
        if event.type is SagaEventType.SAGA_STARTED:
            self.started += 1
            if self.started == self.expected_sagas:
                self.all_started.set()


class HoldingClock(SystemClock):
    """The system clock, except that a retry backoff's sleep holds its saga for good."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    async def sleep(self, seconds: float) -> None:
        await self.harness.hold()


class CrashSaga(BaseSaga[CrashData]):
    """Four steps; each action and compensation logs its calls and obeys the data's plan."""

    saga_type = SAGA_TYPE

    def __init__(self, data: CrashData, harness: Harness) -> None:
        self.harness = harness
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[CrashData]]:
        return [
            SagaStep(
                name=name,
                action=partial(self._act, k),
                compensation=partial(self._undo, k),
            )
            for k, name in enumerate(STEP_NAMES)
        ]

    async def _act(self, step: int, data: CrashData) -> dict[str, Any]:
        harness = self.harness
        if harness.holds_at(data, step, "action", "before"):
            await harness.hold()
        harness.log.record(data, "start")
        if harness.holds_at(data, step, "action", "during"):
            await harness.hold()
        if data.pace:
            await anyio.sleep(data.pace)
        if step == data.fail_step and current_step().attempt >= data.fail_from_attempt:
            harness.log.record(data, "refused")
            raise RefusedError(f"{STEP_NAMES[step]} refused")
        if step == data.flaky_step and current_step().attempt == 1:
            harness.log.record(data, "failed")
            raise ConnectionError(f"{STEP_NAMES[step]} unreachable")
        harness.log.record(data, "done")
        if harness.holds_at(data, step, "action", "after"):
            await harness.hold()
        return {"refs": [*data.refs, STEP_NAMES[step]]}

    async def _undo(self, step: int, data: CrashData) -> None:
        harness = self.harness
        if harness.holds_at(data, step, "compensation", "before"):
            await harness.hold()
        harness.log.record(data, "start")
        if harness.holds_at(data, step, "compensation", "during"):
            await harness.hold()
        if data.pace:
            await anyio.sleep(data.pace)
        harness.log.record(data, "done")
        if harness.holds_at(data, step, "compensation", "after"):
            await harness.hold()


async def crash_run(db: str, log: str, mode: str, ready_fd: int) -> None:
    """Run one batch of sagas; signal ``ready_fd`` once the kill point is reached; wait."""
    batch = plans(mode)
    held = sum(1 for data in batch if data.role == "held")
    harness = Harness(CallLog(log), armed=True, sagas=len(batch), holds=held)
    repository = SQLiteSagaRepository(db)
    orchestrator = SagaOrchestrator(repository, clock=HoldingClock(harness), listeners=[harness])
    sagas = [CrashSaga(data, harness) for data in batch]
    async with anyio.create_task_group() as tg:
        for saga in sagas:
            if saga.context.data.role != "settled":
                tg.start_soon(orchestrator.execute, saga)
        async with anyio.create_task_group() as settled:
            for saga in sagas:
                if saga.context.data.role == "settled":
                    settled.start_soon(orchestrator.execute, saga)
        await harness.all_started.wait()
        await harness.all_held.wait()
        os.write(ready_fd, b"R")
        os.close(ready_fd)
        await anyio.sleep_forever()  # until SIGKILL


async def recover_run(db: str, log: str) -> dict[str, Any]:
    """Recover every unfinished saga in a fresh orchestrator; summarise what happened."""
    harness = Harness(CallLog(log), armed=False)
    repository = SQLiteSagaRepository(db)
    try:
        orchestrator = SagaOrchestrator(repository)
        orchestrator.register(SAGA_TYPE, lambda data: CrashSaga(data, harness))
        results = await orchestrator.recover()
        again = await orchestrator.recover()
    finally:
        await repository.close()
    return {
        "pid": os.getpid(),
        "recovered": {str(result.saga_id): result.status.value for result in results},
        "second_pass": len(again),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.crash_child")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run sagas until SIGKILLed")
    run.add_argument("--db", required=True)
    run.add_argument("--log", required=True)
    run.add_argument("--mode", required=True, choices=sorted(MODES))
    run.add_argument("--ready-fd", type=int, required=True)
    recover = commands.add_parser("recover", help="recover the sagas left unfinished")
    recover.add_argument("--db", required=True)
    recover.add_argument("--log", required=True)
    args = parser.parse_args(argv)
    if args.command == "run":
        anyio.run(crash_run, args.db, args.log, args.mode, args.ready_fd)
        return 1  # pragma: no cover - crash_run only ends by SIGKILL
    summary = anyio.run(recover_run, args.db, args.log)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    # Run the copy imported as ``tests.crash_child``, not ``__main__``: stored data names its
    # class by module, and the other processes import it under that name.
    from tests.crash_child import main as _main

    sys.exit(_main())
