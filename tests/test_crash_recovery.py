"""Crash recovery on real processes: SIGKILL a child mid-saga, recover in a fresh process.

Acceptance criterion: a child process runs sagas on a SQLite file and is SIGKILLed while a
step is in flight (before the action, during it, after it but before the state write, during
a compensation); a fresh process calls ``recover()``; every saga ends terminal and no completed
step's action is called twice.

For each kill mode (``tests.crash_child.MODES``) the ``crash`` fixture, once per mode:

1. starts ``python -m tests.crash_child run`` on a fresh SQLite file. It runs ten or eleven
   4-step sagas concurrently (``tests.crash_child.plans``): the *held* ones stop for good at the
   mode's point, each at a different step (in the action modes, one more is refused when its
   cut-short step is retried, so that step must be compensated); two *settled* ones finish
   (one completes, one compensates); four *drifting* ones keep going, wherever the kill finds
   them;
2. blocks on a pipe until the child writes its ready byte, which it does only once every saga
   is stored, every held saga is at its point and the settled ones are done (no sleeps: the
   parent waits on that condition, with a deadline), then sends SIGKILL;
3. reads the file as the kill left it, then runs ``python -m tests.crash_child recover``, a
   fresh process that calls ``recover()``, and reads the file again.

Every action and compensation logs its calls (start, then done / refused / failed, with the
attempt and the pid) to an fsynced file, which the tests below check against the stored state:
exact call sequences for the held and settled sagas, invariants for every saga.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from uuid import UUID

import anyio
import pytest

from saga_orchestrator import SagaContext, SagaStatus, SQLiteSagaRepository, StepStatus
from tests.crash_child import MODES, STEP_NAMES, CrashData, plans

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform == "win32", reason="needs POSIX signals and pass_fds"),
]

REPO_ROOT = Path(__file__).resolve().parent.parent
READY_TIMEOUT = 20.0
"""Seconds the child may take to reach its kill point."""
ENDINGS = {"done", "refused", "failed"}
"""Log events that end a call (a call without one was cut short by the kill)."""


class Call(NamedTuple):
    """One line of the call log, for one saga."""

    step: int
    phase: str  # action | compensation
    attempt: int
    event: str  # start | done | refused | failed
    process: str  # child | recovery


@dataclass(frozen=True)
class Crash:
    """What one kill-and-recover round left behind."""

    mode: str
    child_returncode: int
    killed: dict[UUID, SagaContext[Any]]
    """The stored sagas right after the kill."""
    recovered: dict[UUID, SagaContext[Any]]
    """The stored sagas after the recovering process exited."""
    summary: dict[str, Any]
    """What the recovering process printed."""
    calls: dict[UUID, list[Call]]
    """Each saga's logged calls, in the order they were made."""

    def data(self, saga_id: UUID) -> CrashData:
        data: CrashData = self.recovered[saga_id].data
        return data


# ---------------------------------------------------------------------------- processes


def _child_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.crash_child", *args]


def _child_env() -> dict[str, str]:
    paths = [str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


def _wait_ready(fd: int, process: subprocess.Popen[bytes], stderr: Path) -> None:
    """Block until the child writes its ready byte; fail if it dies or takes too long."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"child did not reach its kill point in {READY_TIMEOUT}s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if readable:
            break
    if os.read(fd, 1) != b"R":  # EOF: the child ended on its own
        process.wait(timeout=10)
        pytest.fail(
            f"child exited ({process.returncode}) before its kill point:\n"
            f"{stderr.read_text(errors='replace')}"
        )


def _run_and_kill(workdir: Path, db: Path, log: Path, mode: str) -> tuple[int, int]:
    """Run the sagas in a child, SIGKILL it at the kill point; its pid and exit status."""
    read_fd, write_fd = os.pipe()
    stdout, stderr = workdir / "child.out", workdir / "child.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            _child_command(
                *("run", "--db", str(db), "--log", str(log), "--mode", mode),
                *("--ready-fd", str(write_fd)),
            ),
            cwd=REPO_ROOT,
            env=_child_env(),
            pass_fds=(write_fd,),
            stdout=out,
            stderr=err,
        )
    os.close(write_fd)  # only the child holds the write end now: its death means EOF
    try:
        _wait_ready(read_fd, process, stderr)
        os.kill(process.pid, signal.SIGKILL)
        return process.pid, process.wait(timeout=10)
    finally:
        os.close(read_fd)
        if process.poll() is None:
            process.kill()
            process.wait()


def _recover(db: Path, log: Path) -> dict[str, Any]:
    """Run ``recover()`` in a fresh process; the summary it printed."""
    done = subprocess.run(
        _child_command("recover", "--db", str(db), "--log", str(log)),
        cwd=REPO_ROOT,
        env=_child_env(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    summary: dict[str, Any] = json.loads(done.stdout.decode().splitlines()[-1])
    return summary


def _stored(db: Path) -> dict[UUID, SagaContext[Any]]:
    """Every saga in the file, read through the library's own repository."""

    async def load() -> list[SagaContext[Any]]:
        repository = SQLiteSagaRepository(db)
        try:
            return await repository.list_sagas(limit=1000)
        finally:
            await repository.close()

    return {context.saga_id: context for context in anyio.run(load)}


def _calls(log: Path, child_pid: int, recovery_pid: int) -> dict[UUID, list[Call]]:
    processes = {child_pid: "child", recovery_pid: "recovery"}
    calls: dict[UUID, list[Call]] = defaultdict(list)
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        calls[UUID(entry["saga_id"])].append(
            Call(
                step=STEP_NAMES.index(entry["step"]),
                phase=entry["phase"],
                attempt=entry["attempt"],
                event=entry["event"],
                process=processes[entry["pid"]],
            )
        )
    return dict(calls)


@pytest.fixture(scope="module", params=list(MODES))
def crash(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Crash:
    """Kill a child running sagas at one mode's point, then recover in a fresh process."""
    mode: str = request.param
    workdir = tmp_path_factory.mktemp(mode)
    db, log = workdir / "sagas.db", workdir / "calls.jsonl"
    child_pid, returncode = _run_and_kill(workdir, db, log, mode)
    killed = _stored(db)
    summary = _recover(db, log)
    return Crash(
        mode=mode,
        child_returncode=returncode,
        killed=killed,
        recovered=_stored(db),
        summary=summary,
        calls=_calls(log, child_pid, summary["pid"]),
    )


# ---------------------------------------------------------------------------- the oracle


def _cut_short(step: int, phase: str, where: str) -> list[Call]:
    """The calls a held saga made, in the child, at its kill point."""
    events = {"before": [], "during": ["start"], "after": ["start", "done"]}
    events["backoff"] = ["start", "failed"]
    return [Call(step, phase, 1, event, "child") for event in events[where]]


def expected_calls(data: CrashData) -> list[Call]:
    """The exact calls a held or settled saga makes across the kill and the recovery.

    Everything up to the kill point happens once, in the child. The call cut short there is
    made again (attempt 2) by the recovering process, which then finishes the saga.
    """
    calls: list[Call] = []
    process = "child"

    def run(step: int, phase: str, ending: str = "done") -> None:
        nonlocal process
        if data.hold_phase == phase and data.hold_step == step:
            assert data.hold_where is not None
            calls.extend(_cut_short(step, phase, data.hold_where))
            process = "recovery"
            calls.extend(
                [Call(step, phase, 2, "start", process), Call(step, phase, 2, ending, process)]
            )
        else:
            calls.extend(
                [Call(step, phase, 1, "start", process), Call(step, phase, 1, ending, process)]
            )

    if data.fail_step is None:
        for step in range(len(STEP_NAMES)):
            run(step, "action")
        return calls
    for step in range(data.fail_step):
        run(step, "action")
    run(data.fail_step, "action", "refused")
    # The refusing step is undone too if an earlier attempt of it was cut short.
    cut_short = data.hold_phase == "action" and data.hold_step == data.fail_step
    for step in range(data.fail_step if cut_short else data.fail_step - 1, -1, -1):
        run(step, "compensation")
    return calls


def _ended(calls: list[Call], call: Call) -> bool:
    """Whether the attempt that ``call`` started logged how it ended."""
    return any(
        other[:3] == call[:3] and other.event in ENDINGS and other.process == call.process
        for other in calls
    )


# ---------------------------------------------------------------------------- the tests


def test_child_is_killed_by_sigkill(crash: Crash) -> None:
    """The child running the sagas ends by SIGKILL, not on its own."""
    assert crash.child_returncode == -signal.SIGKILL


def test_kill_leaves_held_sagas_in_flight_at_their_point(crash: Crash) -> None:
    """The file, as the kill left it, shows each held saga stopped where its mode says."""
    assert len(crash.killed) == len(plans(crash.mode))  # every saga was stored before the kill
    for context in crash.killed.values():
        data: CrashData = context.data
        if data.role == "settled":
            assert context.is_terminal, data
        if data.role != "held":
            continue
        assert data.hold_step is not None
        state = context.steps[data.hold_step]
        assert context.current_step_index == data.hold_step, data
        if data.hold_phase == "compensation":
            assert context.status is SagaStatus.COMPENSATING, data
            assert (state.status, state.compensation_attempts) == (StepStatus.COMPENSATING, 1)
        elif data.hold_where == "backoff":
            assert context.status is SagaStatus.RUNNING, data
            assert (state.status, state.attempts) == (StepStatus.PENDING, 1)
            assert state.next_attempt_at is not None
        else:
            assert context.status is SagaStatus.RUNNING, data
            assert (state.status, state.attempts) == (StepStatus.RUNNING, 1)


def test_recover_resumes_exactly_the_unfinished_sagas(crash: Crash) -> None:
    """The fresh process's recover() drives every unfinished saga, and only those, to its end."""
    unfinished = {str(saga_id) for saga_id, c in crash.killed.items() if not c.is_terminal}
    assert set(crash.summary["recovered"]) == unfinished
    for saga_id, status in crash.summary["recovered"].items():
        assert crash.recovered[UUID(saga_id)].status.value == status
    assert crash.summary["second_pass"] == 0


def test_every_saga_ends_terminal(crash: Crash) -> None:
    """Every saga ends completed, or compensated if one of its steps refused."""
    indices = sorted(crash.data(saga_id).index for saga_id in crash.recovered)
    assert indices == list(range(len(plans(crash.mode))))
    for saga_id, context in crash.recovered.items():
        data = crash.data(saga_id)
        expected = SagaStatus.COMPLETED if data.fail_step is None else SagaStatus.COMPENSATED
        assert context.status is expected, (data, context.error)


def test_held_and_settled_sagas_make_exactly_the_expected_calls(crash: Crash) -> None:
    """Held sagas redo only the call cut short; settled ones are not called again."""
    for saga_id in crash.recovered:
        data = crash.data(saga_id)
        if data.role != "drifting":
            assert crash.calls.get(saga_id, []) == expected_calls(data), data


def test_no_recorded_step_or_compensation_runs_again(crash: Crash) -> None:
    """No saga repeats a call whose end was recorded; only the one cut short is redone."""
    for saga_id in crash.recovered:
        calls = crash.calls.get(saga_id, [])
        actions = [c.step for c in calls if c.phase == "action"]
        compensations = [c.step for c in calls if c.phase == "compensation"]
        assert actions == sorted(actions), calls  # forward, one step after the other
        assert compensations == sorted(compensations, reverse=True), calls  # backward
        assert calls[: len(actions)] == [c for c in calls if c.phase == "action"], calls
        child_calls = [c for c in calls if c.process == "child"]
        for i, call in enumerate(calls):
            if call.event not in ("done", "refused"):
                continue
            again = [c for c in calls[i + 1 :] if c[:2] == call[:2]]
            if again:  # allowed only if the kill came before the child recorded that end
                assert call.process == "child", calls
                assert call == child_calls[-1], calls
                assert {c.process for c in again} == {"recovery"}, calls
        # What the file says was done when the child died is never done again.
        for step, state in enumerate(crash.killed[saga_id].steps):
            redone = {c.phase for c in calls if c.step == step and c.process == "recovery"}
            if state.completed_at is not None:
                assert "action" not in redone, (state, calls)
            if state.compensated_at is not None:
                assert "compensation" not in redone, (state, calls)


def test_compensations_undo_in_reverse_exactly_the_steps_that_may_have_acted(
    crash: Crash,
) -> None:
    """A compensated saga undoes every step that acted or was cut short, and no other."""
    for saga_id, context in crash.recovered.items():
        calls = crash.calls.get(saga_id, [])
        compensated = [c.step for c in calls if c.phase == "compensation" and c.event == "done"]
        if context.status is SagaStatus.COMPLETED:
            assert compensated == [], calls
            continue
        actions = [c for c in calls if c.phase == "action"]
        acted = {c.step for c in actions if c.event == "done"}
        cut_short = {c.step for c in actions if c.event == "start" and not _ended(calls, c)}
        started = {c.step for c in actions if c.event == "start"}
        assert acted | cut_short <= set(compensated) <= started, calls
        first_done = list(dict.fromkeys(compensated))
        assert first_done == sorted(first_done, reverse=True), calls
        for step in {c.step for c in calls if c.phase == "compensation"}:
            last = [c for c in calls if c.phase == "compensation" and c.step == step][-1]
            assert last.event == "done", calls  # no compensation left unfinished


def test_saga_data_holds_each_completed_step_once(crash: Crash) -> None:
    """The stored data holds the result of each step whose last attempt succeeded, once."""
    for saga_id in crash.recovered:
        calls = crash.calls.get(saga_id, [])
        last_end = {c.step: c.event for c in calls if c.phase == "action" and c.event in ENDINGS}
        succeeded = sorted(step for step, event in last_end.items() if event == "done")
        assert crash.data(saga_id).refs == [STEP_NAMES[s] for s in succeeded], calls
