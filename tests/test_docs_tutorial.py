"""The tutorial and the concept pages work as written: every command prints what the page shows.

The pages are the source of truth. A code block titled with a file name includes a snippet::

    ```python title="trip.py"
    --8<-- "tutorial_trip.py:code"
    ```

and a ``console`` block holds ``$ command`` lines, each followed by the output the page
promises. These tests save each file under the name the page gives it (as mkdocs renders it:
the named section, or the whole file without section markers), run the commands in a fresh
directory in page order, and compare. Values that differ from run to run (saga ids, times,
ages, durations) and column padding are normalized on both sides; everything else must match.

The tutorial's crash step is run for real: the command that waits for a hotel that never
answers is started, the test waits until the saga is stored as running at that step (reading
the SQLite file read-only, with a deadline), kills it with SIGKILL, and the page's next
commands (the admin CLI, the recovery script) must then show what the page says.

Here the walk-through runs with this checkout's venv; tests/test_fresh_venv.py follows it
(``walk_tutorial``) with only the built wheel installed in a fresh venv.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPETS = DOCS / "snippets"
TUTORIAL = DOCS / "tutorial.md"
CONCEPTS = sorted((DOCS / "concepts").glob("*.md"))

WAIT_SECONDS = 30.0
"""How long a step of the walk-through may take to reach the state the test waits for."""

CRASH_FLAG = "--slow-hotel"
"""Marks the tutorial command that never finishes by itself: the one the reader kills."""


# ---------------------------------------------------------------------- reading the pages

_FILE_BLOCK = re.compile(
    r'^```python title="(?P<name>[^"]+)"\n--8<-- "(?P<include>[^"]+)"\n```$', re.MULTILINE
)
_CONSOLE_BLOCK = re.compile(r"^```console\n(?P<body>.*?)^```$", re.MULTILINE | re.DOTALL)
_SECTION_MARKER = re.compile(r"-+8<-+[ \t]+\[[ \t]*(start|end)[ \t]*:[ \t]*([a-z][-_0-9a-z]*)")


@dataclass(frozen=True)
class Command:
    """One ``$ command`` of a console block and the output the page shows for it."""

    page: str
    line: str
    expected: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.page}: {self.line}"


@dataclass
class Page:
    path: Path
    files: dict[str, str] = field(default_factory=dict)
    """The files the reader saves: name -> content, as the page renders them."""
    includes: dict[str, str] = field(default_factory=dict)
    """name -> the snippet include it comes from."""
    commands: list[Command] = field(default_factory=list)


def snippet_text(include: str) -> str:
    """What ``--8<-- "include"`` renders: a named section, or the file without markers."""
    file_name, _, section = include.partition(":")
    lines = (SNIPPETS / file_name).read_text(encoding="utf-8").splitlines()
    if not section:
        return "\n".join(line for line in lines if not _SECTION_MARKER.search(line)) + "\n"
    selected: list[str] = []
    inside = found = False
    for line in lines:
        marker = _SECTION_MARKER.search(line)
        if marker is not None:
            if marker[2] == section:
                inside = marker[1] == "start"
                found = True
            continue
        if inside:
            selected.append(line)
    assert found, f"{include}: no section {section!r}"
    return "\n".join(selected) + "\n"


def read_page(path: Path) -> Page:
    text = path.read_text(encoding="utf-8")
    page = Page(path)
    for match in _FILE_BLOCK.finditer(text):
        name, include = match["name"], match["include"]
        assert name not in page.files, f"{path.name}: {name} is given twice"
        page.files[name] = snippet_text(include)
        page.includes[name] = include
    label = path.relative_to(DOCS).as_posix()
    for block in _CONSOLE_BLOCK.finditer(text):
        line: str | None = None
        output: list[str] = []
        for row in block["body"].splitlines():
            if row.startswith("$ "):
                if line is not None:
                    page.commands.append(Command(label, line, tuple(output)))
                line, output = row[2:], []
            else:
                assert line is not None, f"{path.name}: console block output before any $ line"
                output.append(row)
        if line is not None:
            page.commands.append(Command(label, line, tuple(output)))
    return page


# ---------------------------------------------------------------------- comparing output

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:\+00:00|Z)")
_DURATION = re.compile(r"\b(?:\d+m\d\ds|\d+(?:\.\d+)?(?:ms|s|m|h|d))\b")


def normalized(lines: list[str] | tuple[str, ...]) -> list[str]:
    """Lines with run-to-run values replaced and runs of spaces collapsed."""
    result = []
    for line in lines:
        line = _UUID.sub("<id>", line)
        line = _TIME.sub("<time>", line)
        line = _DURATION.sub("<duration>", line)
        result.append(" ".join(line.split()))
    while result and not result[-1]:
        result.pop()
    return result


def assert_prints(command: Command, stdout: str) -> None:
    actual = normalized(stdout.splitlines())
    expected = normalized(command.expected)
    assert actual == expected, (
        f"`{command.line}` ({command.page}) printed:\n{stdout}\n"
        f"but the page shows:\n" + "\n".join(command.expected)
    )


# ---------------------------------------------------------------------- running commands


def argv(line: str, python: Path, replace_id: str | None = None) -> list[str]:
    """The command line as the reader types it, run with this venv's tools."""
    if replace_id is not None:
        line = _UUID.sub(replace_id, line)
    words = shlex.split(line)
    if words[0] == "python":
        return [str(python), *words[1:]]
    if words[0] == "saga-orchestrator":
        script = python.parent / "saga-orchestrator"
        if script.exists():
            return [str(script), *words[1:]]
        return [str(python), "-m", "saga_orchestrator.cli", *words[1:]]
    raise AssertionError(f"don't know how to run {line!r}")


def reader_env() -> dict[str, str]:
    """The reader's environment: no PYTHONPATH into this repository, unbuffered output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COLUMNS")}
    env["PYTHONUNBUFFERED"] = "1"  # output is complete even when the process is killed
    return env


def run(line: str, cwd: Path, python: Path = Path(sys.executable), **kwargs: Any) -> Any:
    return subprocess.run(
        argv(line, python, **kwargs),
        cwd=cwd,
        env=reader_env(),
        capture_output=True,
        text=True,
        timeout=WAIT_SECONDS,
        check=False,
    )


def save_files(page: Page, folder: Path) -> None:
    for name, content in page.files.items():
        (folder / name).write_text(content, encoding="utf-8")


def wait_until(condition: Callable[[], bool], what: str, process: subprocess.Popen[str]) -> None:
    """Poll ``condition`` until it holds; fail at the deadline or if ``process`` exits."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the process exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {WAIT_SECONDS:g}s waiting for {what}")
        time.sleep(0.02)


def stored_sagas(db: Path) -> list[dict[str, Any]]:
    """Every saga record in ``db``, read-only (nothing is created or migrated)."""
    if not db.exists():
        return []
    try:
        uri = f"{db.as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            rows = connection.execute("SELECT state FROM sagas").fetchall()
    except sqlite3.OperationalError:  # the file exists but its tables are not there yet
        return []
    return [json.loads(row[0]) for row in rows]


def running_at(db: Path, step: str) -> str | None:
    """The id of a saga stored as running with ``step``'s attempt in flight, if any."""
    for saga in stored_sagas(db):
        current = saga["steps"][saga["current_step_index"]]
        in_flight = current["name"] == step and current["status"] == "running"
        if saga["status"] == "running" and in_flight:
            return str(saga["saga_id"])
    return None


_WITH_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


@dataclass
class Killed:
    saga_id: str
    returncode: int
    stdout: str
    stderr: str


def start_and_kill(
    line: str,
    cwd: Path,
    expected_output: tuple[str, ...],
    sig: signal.Signals,
    python: Path = Path(sys.executable),
) -> Killed:
    """Start the command that waits forever, wait until its saga is stored as running at
    book_hotel and it printed what the page shows, then send ``sig``."""
    out_path = cwd / f"killed-{sig.name}.out"
    command = argv(line, python)
    if sig is signal.SIGINT:
        # As in a terminal: Python turns SIGINT into KeyboardInterrupt only if it does not
        # start with SIGINT ignored, which it inherits when pytest runs as a background job.
        command = [str(python), "-c", _WITH_DEFAULT_SIGINT, *command]
    with out_path.open("w") as out:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=reader_env(),
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        saga_id: list[str] = []

        def stored_running_and_printed() -> bool:
            found = running_at(cwd / "trips.db", "book_hotel")
            if found is None:
                return False
            saga_id[:] = [found]
            printed = out_path.read_text().splitlines()
            return len(printed) >= len(expected_output)

        wait_until(stored_running_and_printed, "the saga stored as running at book_hotel", process)
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=WAIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return Killed(saga_id[0], process.returncode, out_path.read_text(), stderr)


# ---------------------------------------------------------------------- the tutorial

_TUTORIAL = read_page(TUTORIAL)


@dataclass
class Walkthrough:
    folder: Path
    outputs: dict[str, Any] = field(default_factory=dict)
    """command id -> CompletedProcess (or Killed for the crash step)."""
    killed: Killed | None = None


def walk_tutorial(folder: Path, python: Path = Path(sys.executable)) -> Walkthrough:
    """The whole tutorial, followed once in page order in ``folder`` with ``python``'s venv:
    its files saved, its commands run, the crash step killed with SIGKILL."""
    save_files(_TUTORIAL, folder)
    done = Walkthrough(folder)
    for command in _TUTORIAL.commands:
        if CRASH_FLAG in command.line:
            done.killed = start_and_kill(
                command.line, folder, command.expected, signal.SIGKILL, python=python
            )
            done.outputs[command.id] = done.killed
            continue
        replace_id = done.killed.saga_id if done.killed and _UUID.search(command.line) else None
        done.outputs[command.id] = run(command.line, folder, python=python, replace_id=replace_id)
    return done


def assert_printed_what_the_page_shows(command: Command, walkthrough: Walkthrough) -> None:
    """The command exited as the page implies (killed by SIGKILL, or 0 with nothing on
    stderr) and printed exactly the output shown under it."""
    outcome = walkthrough.outputs[command.id]
    if isinstance(outcome, Killed):
        assert outcome.returncode == -signal.SIGKILL
        assert outcome.stderr == ""
    else:
        assert outcome.returncode == 0, outcome.stderr
        assert outcome.stderr == ""
    assert_prints(command, outcome.stdout)


def assert_recovered_without_redoing_the_flight(walkthrough: Walkthrough) -> None:
    """Stored after the walk-through: completed; the flight ran once, the hotel twice."""
    assert walkthrough.killed is not None
    sagas = {saga["saga_id"]: saga for saga in stored_sagas(walkthrough.folder / "trips.db")}
    saga = sagas[walkthrough.killed.saga_id]
    assert saga["status"] == "completed"
    attempts = {step["name"]: step["attempts"] for step in saga["steps"]}
    assert attempts == {"book_flight": 1, "book_hotel": 2, "charge_card": 1}
    assert [saga["status"] for saga in sagas.values()].count("compensated") == 1


@pytest.fixture(scope="module")
def walkthrough(tmp_path_factory: pytest.TempPathFactory) -> Walkthrough:
    """The whole tutorial, followed once in page order in a fresh directory."""
    return walk_tutorial(tmp_path_factory.mktemp("reader"))


def test_tutorial_includes_every_tutorial_snippet() -> None:
    """Each docs/snippets/tutorial_*.py is a file the reader saves, and all are run."""
    included = {include.partition(":")[0] for include in _TUTORIAL.includes.values()}
    on_disk = {path.name for path in SNIPPETS.glob("tutorial_*.py")}
    assert included == on_disk
    assert any(CRASH_FLAG in command.line for command in _TUTORIAL.commands)


@pytest.mark.slow
@pytest.mark.parametrize("command", _TUTORIAL.commands, ids=lambda c: c.line)
def test_tutorial_command_prints_what_the_page_shows(
    command: Command, walkthrough: Walkthrough
) -> None:
    """Run in page order: each command prints exactly the output shown under it."""
    assert_printed_what_the_page_shows(command, walkthrough)


@pytest.mark.slow
def test_killed_saga_is_finished_by_recovery_without_redoing_the_flight(
    walkthrough: Walkthrough,
) -> None:
    """Stored after the walk-through: completed; the flight ran once, the hotel twice."""
    assert_recovered_without_redoing_the_flight(walkthrough)


@pytest.mark.slow
def test_ctrl_c_leaves_the_saga_recoverable_too(tmp_path: Path) -> None:
    """The page offers Ctrl+C as well as kill -9: SIGINT also leaves it running, then recovered."""
    crash = next(c for c in _TUTORIAL.commands if CRASH_FLAG in c.line)
    save_files(_TUTORIAL, tmp_path)
    killed = start_and_kill(crash.line, tmp_path, crash.expected, signal.SIGINT)
    assert killed.returncode != 0
    assert_prints(crash, killed.stdout)
    assert running_at(tmp_path / "trips.db", "book_hotel") == killed.saga_id
    recovered = run("python recover_trips.py", tmp_path)
    assert recovered.returncode == 0, recovered.stderr
    assert recovered.stdout.splitlines()[-1] == "trip to Porto: completed"
    (saga,) = stored_sagas(tmp_path / "trips.db")
    assert saga["status"] == "completed"


# ---------------------------------------------------------------------- concept pages

_CONCEPT_PAGES = [read_page(path) for path in CONCEPTS]
_CONCEPT_COMMANDS = [(page, command) for page in _CONCEPT_PAGES for command in page.commands]


def test_concept_pages_include_every_concepts_snippet() -> None:
    """Each docs/snippets/concepts_*.py is included by a concept page and run below."""
    included = {
        include.partition(":")[0] for page in _CONCEPT_PAGES for include in page.includes.values()
    }
    assert included == {path.name for path in SNIPPETS.glob("concepts_*.py")}
    ran = {shlex.split(command.line)[1] for _, command in _CONCEPT_COMMANDS}
    assert ran == {name for page in _CONCEPT_PAGES for name in page.files}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("page", "command"), _CONCEPT_COMMANDS, ids=[c.id for _, c in _CONCEPT_COMMANDS]
)
def test_concept_snippet_prints_what_its_page_shows(
    page: Page, command: Command, tmp_path: Path
) -> None:
    save_files(page, tmp_path)
    outcome = run(command.line, tmp_path)
    assert outcome.returncode == 0, outcome.stderr
    assert_prints(command, outcome.stdout)
