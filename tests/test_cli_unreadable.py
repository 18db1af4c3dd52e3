"""One corrupt row does not blind the operator: every command gets past it and names it.

A SQLite store holds two healthy running sagas, a completed one and, written by raw SQL, rows
whose state is ``[]``, ``null``, ``42``, a document whose current step index is out of range,
and bytes that are not text. ``recover`` resumes the healthy ones; ``list`` shows them; both
name every bad row on stderr and exit 1; ``show`` of a bad row says what is wrong and exits 1.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from saga_orchestrator import (
    InMemorySagaRepository,
    SagaOrchestrator,
    SagaStatus,
    SerializationError,
)
from saga_orchestrator.adapters.sqlite import SQLiteSagaRepository
from saga_orchestrator.cli import main
from saga_orchestrator.cli.commands import Unreadable, read_sagas
from saga_orchestrator.cli.exits import Failed
from saga_orchestrator.protocols import SagaRepository
from saga_orchestrator.serialization import encode_context
from saga_orchestrator.state import SagaContext
from tests import cli_app
from tests.sagas import TripData

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.cli_app:orchestrator"


@dataclass(frozen=True)
class Store:
    path: Path
    completed: UUID
    healthy: tuple[UUID, UUID]
    bad: dict[str, UUID]
    """What is wrong with each bad row → its id."""

    @property
    def order(self) -> list[UUID]:
        """Every saga id, oldest first (the order of insertion)."""
        return [self.completed, self.healthy[0], *self.bad.values(), self.healthy[1]]


BAD_STATES: dict[str, Any] = {
    "a JSON array, not an object": "[]",
    "a JSON null, not an object": "null",
    "a JSON number, not an object": "42",
    "current_step_index 7 is outside the saga's 3 steps": None,  # a real document, edited
    "malformed: not valid JSON": b"\xff\xfe\x00 not text \x80",
}


def _started(now: datetime) -> SagaContext[Any]:
    """A trip as stored by a process that died just after starting it."""
    context = cli_app.trip(TripData()).context
    context.status = SagaStatus.RUNNING
    context.created_at = context.updated_at = now
    context.version = 1
    return context


async def _build(path: Path) -> Store:
    now = datetime.now(UTC)
    async with SQLiteSagaRepository(path) as repository:
        completed = await cli_app.build(repository).execute(cli_app.trip(TripData()))
        first = _started(now)
        await repository.create(first, encode_context(first))
    bad: dict[str, UUID] = {}
    with closing(sqlite3.connect(path)) as connection, connection:
        for problem, state in BAD_STATES.items():
            saga_id = uuid4()
            if state is None:
                document = json.loads(encode_context(_started(now)))
                document["saga_id"] = str(saga_id)
                document["current_step_index"] = 7
                state = json.dumps(document)
            connection.execute(
                "INSERT INTO sagas (saga_id, saga_type, correlation_id, status, version,"
                " created_at, updated_at, state) VALUES (?, 'trip', NULL, 'running', 1, ?, ?, ?)",
                (str(saga_id), now.isoformat(), now.isoformat(), state),
            )
            bad[problem] = saga_id
    async with SQLiteSagaRepository(path) as repository:
        second = _started(now)
        await repository.create(second, encode_context(second))
    cli_app.reset()
    return Store(path, completed.saga_id, (first.saga_id, second.saga_id), bad)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return anyio.run(_build, tmp_path_factory.mktemp("unreadable") / "template.db")


@pytest.fixture
def store(template: Store, tmp_path: Path) -> Store:
    """A fresh copy of the template store, for a test to change."""
    copy = tmp_path / "sagas.db"
    shutil.copyfile(template.path, copy)
    return Store(copy, template.completed, template.healthy, template.bad)


@pytest.fixture(autouse=True)
def _working_services() -> Any:
    cli_app.reset()
    yield
    cli_app.reset()


def status_column(path: Path, saga_id: UUID) -> str:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        (status,) = connection.execute(
            "SELECT status FROM sagas WHERE saga_id = ?", (str(saga_id),)
        ).fetchone()
    return str(status)


def named(stderr: str, store: Store, verb: str) -> dict[UUID, str]:
    """The bad rows named on stderr, as ``saga ID {verb}: reason`` lines → their reason."""
    found: dict[UUID, str] = {}
    prefix = "saga-orchestrator: error: saga "
    for line in stderr.splitlines():
        if line.startswith(prefix) and f" {verb}: " in line:
            saga_id, _, reason = line[len(prefix) :].partition(f" {verb}: ")
            found[UUID(saga_id)] = reason
    return found


def assert_names_every_bad_row(found: dict[UUID, str], store: Store) -> None:
    assert set(found) == set(store.bad.values())
    for problem, saga_id in store.bad.items():
        assert problem in found[saga_id]


# ---------------------------------------------------------------------- recover


def test_recover_resumes_the_healthy_sagas_and_names_each_bad_row(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--app", APP, "--db", str(store.path), "recover"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "resumed 2 sagas"
    for saga_id in store.healthy:
        assert status_column(store.path, saga_id) == "completed"
        assert f"{saga_id}  trip  completed" in captured.out
    assert sorted(cli_app.SETTINGS.log) == sorted(["flight#1", "hotel#1", "car#1"] * 2)
    found = named(captured.err, store, "was not resumed")
    assert_names_every_bad_row(found, store)
    assert all(reason.startswith("unreadable: ") for reason in found.values())
    assert captured.err.splitlines()[-1] == (
        "saga-orchestrator: error: 5 sagas could not be resumed (named above)"
    )
    assert "Traceback" not in captured.err
    for saga_id in store.bad.values():
        assert status_column(store.path, saga_id) == "running"


def test_recover_names_a_saga_it_read_but_could_not_resume(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """A readable saga whose steps no longer match its class: recover() logs it as
    saga.recovery.failed; the command names it with that error, with the unreadable ones."""
    with closing(sqlite3.connect(store.path)) as connection, connection:
        (state,) = connection.execute(
            "SELECT state FROM sagas WHERE saga_id = ?", (str(store.healthy[1]),)
        ).fetchone()
        document = json.loads(state)
        document["steps"][2]["name"] = "boat"
        connection.execute(
            "UPDATE sagas SET state = ? WHERE saga_id = ?",
            (json.dumps(document), str(store.healthy[1])),
        )
    assert main(["--app", APP, "--db", str(store.path), "recover"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0] == "resumed 1 saga"
    assert status_column(store.path, store.healthy[0]) == "completed"
    assert status_column(store.path, store.healthy[1]) == "running"
    found = named(captured.err, store, "was not resumed")
    assert found.pop(store.healthy[1]).startswith("SagaDefinitionMismatchError: ")
    assert_names_every_bad_row(found, store)
    assert "6 sagas could not be resumed" in captured.err
    assert "Traceback" not in captured.err


def test_recover_without_the_app_still_names_the_bad_rows(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(store.path), "recover"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "no saga resumed\n"
    assert "skipped 2 sagas of unregistered type trip; pass --app" in captured.err
    found = named(captured.err, store, "was not resumed")
    for saga_id in store.healthy:  # unregistered: named too, they stay unfinished
        assert found.pop(saga_id).startswith(
            "no factory registered for saga_type 'trip' (registered: "
        )
    assert_names_every_bad_row(found, store)


def test_recover_as_a_process_prints_no_traceback(store: Store) -> None:
    """Run as the console command would be: one line per bad row, no logging traceback."""
    command = [sys.executable, "-m", "saga_orchestrator.cli", "--app", APP]
    done = subprocess.run(
        [*command, "--db", str(store.path), "recover"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("resumed 2 sagas\n")
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == len(store.bad) + 1
    assert_names_every_bad_row(named(done.stderr, store, "was not resumed"), store)


# ---------------------------------------------------------------------- list


def test_list_shows_the_readable_sagas_and_names_the_bad_ones(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(store.path), "list"]) == 1
    captured = capsys.readouterr()
    table = captured.out.splitlines()
    assert table[0].split() == ["SAGA_ID", "TYPE", "VER", "STATUS", "STEP", "AGE", "ERROR"]
    assert [UUID(line.split()[0]) for line in table[1:]] == [
        store.completed,
        *store.healthy,
    ]
    assert_names_every_bad_row(named(captured.err, store, "is unreadable"), store)
    assert captured.err.splitlines()[-1] == (
        "saga-orchestrator: error: 5 sagas cannot be read (named above)"
    )


def test_list_json_marks_the_unreadable_entries(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """In creation order; an unreadable entry has its id and the reason, nothing else."""
    assert main(["--db", str(store.path), "list", "--json"]) == 1
    entries = json.loads(capsys.readouterr().out)
    assert [UUID(entry["saga_id"]) for entry in entries] == store.order
    unreadable = {UUID(e["saga_id"]): e["unreadable"] for e in entries if "unreadable" in e}
    assert_names_every_bad_row(unreadable, store)
    for entry in entries:
        if "unreadable" in entry:
            assert set(entry) == {"saga_id", "unreadable"}
        else:
            assert entry["saga_type"] == "trip"


def test_list_filters_and_limits_apply_to_the_unreadable_rows_too(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bad rows are selected by their status and type columns, in creation order."""
    assert main(["--db", str(store.path), "list", "--status", "completed"]) == 0
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[1:]] == [str(store.completed)]
    assert captured.err == ""

    assert main(["--db", str(store.path), "list", "--type", "trip", "--limit", "3", "--json"]) == 1
    captured = capsys.readouterr()
    assert [UUID(entry["saga_id"]) for entry in json.loads(captured.out)] == store.order[:3]
    assert "showing the first 3 (oldest)" in captured.err
    assert "1 saga cannot be read" in captured.err

    assert main(["--db", str(store.path), "list", "--type", "payment"]) == 0
    assert capsys.readouterr().err == "no sagas match\n"


# ---------------------------------------------------------------------- show, retry, cancel


@pytest.mark.parametrize("problem", BAD_STATES)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_show_an_unreadable_saga_says_what_is_wrong(
    store: Store, problem: str, as_json: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    saga_id = store.bad[problem]
    assert (
        main(["--db", str(store.path), "show", str(saga_id), *(["--json"] if as_json else [])]) == 1
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith(f"saga-orchestrator: error: saga {saga_id} is unreadable: ")
    assert problem in line


def test_show_a_readable_saga_of_the_same_store(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--db", str(store.path), "show", str(store.healthy[0])]) == 0
    out = capsys.readouterr().out
    assert f"saga            {store.healthy[0]}" in out
    assert "1. flight  pending  0 attempts  <- current" in out


@pytest.mark.parametrize("command", ["retry", "cancel"])
def test_retry_and_cancel_of_an_unreadable_saga_say_what_is_wrong(
    store: Store, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    saga_id = store.bad["a JSON null, not an object"]
    assert main(["--app", APP, "--db", str(store.path), command, str(saga_id)]) == 1
    captured = capsys.readouterr()
    assert captured.err == (
        f"saga-orchestrator: error: saga {saga_id} is unreadable: "
        "stored saga state is malformed: a JSON null, not an object\n"
    )
    assert cli_app.SETTINGS.log == []


# ---------------------------------------------------------------------- read_sagas


class _NoIds:
    """A repository with the protocol's methods only (no list_saga_ids)."""

    def __init__(self, inner: InMemorySagaRepository) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        if name == "list_saga_ids":
            raise AttributeError(name)
        return getattr(self.inner, name)


async def _with_a_bad_row(repository: Any) -> tuple[UUID, UUID, UUID]:
    """A running trip, an unreadable running trip, then a completed payment: their ids."""
    good = _started(datetime.now(UTC))
    await repository.create(good, encode_context(good))
    bad = _started(datetime.now(UTC))
    await repository.create(bad, "[]")
    payment = cli_app.PaymentSaga(cli_app.PaymentData())
    await cli_app.build(repository).execute(payment)
    return good.saga_id, bad.saga_id, payment.context.saga_id


@pytest.mark.anyio
async def test_read_sagas_reads_one_by_one_past_a_bad_row(saga_repo: SagaRepository) -> None:
    """On every repository: the same selection and order as list_sagas, the bad row named."""
    good, bad, payment = await _with_a_bad_row(saga_repo)
    orchestrator = SagaOrchestrator(saga_repo)
    with pytest.raises(SerializationError):
        await orchestrator.list_sagas()

    async def ids(**selection: Any) -> list[UUID | None]:
        entries = await read_sagas(orchestrator, **selection)
        return [getattr(entry, "saga_id", None) for entry in entries]

    assert await ids(statuses=None, saga_type=None, limit=10) == [good, bad, payment]
    assert await ids(statuses=None, saga_type="trip", limit=10) == [good, bad]
    assert await ids(statuses=None, saga_type="payment", limit=10) == [payment]
    assert await ids(statuses={SagaStatus.RUNNING}, saga_type=None, limit=10) == [good, bad]
    assert await ids(statuses={SagaStatus.COMPLETED}, saga_type="trip", limit=10) == []
    assert await ids(statuses=None, saga_type=None, limit=2) == [good, bad]
    entries = await read_sagas(orchestrator, statuses=None, saga_type="trip", limit=10)
    assert isinstance(entries[1], Unreadable)
    assert entries[1].reason == "stored saga state is malformed: a JSON array, not an object"


async def _memory_with_a_bad_row() -> InMemorySagaRepository:
    repository = InMemorySagaRepository()
    await _with_a_bad_row(repository)
    return repository


@pytest.mark.anyio
async def test_read_sagas_without_list_saga_ids_fails_saying_why() -> None:
    """A repository that cannot list ids cannot be read one by one: exit 1, explained."""
    orchestrator = SagaOrchestrator(_NoIds(await _memory_with_a_bad_row()))  # type: ignore[arg-type]
    with pytest.raises(Failed, match=r"a stored saga cannot be read \(.*a JSON array.*cannot list"):
        await read_sagas(orchestrator, statuses=None, saga_type=None, limit=10)
