"""The admin command line: list, show, retry, cancel and recover on a SQLite store.

Most tests call ``main([...])`` in-process on a copy of one store holding a saga in every
status; a few run the installed console script and ``python -m`` to prove the entry points.
The app behind ``--app`` is ``tests.cli_app``, whose services module-level flags control.
"""

from __future__ import annotations

import json
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from saga_orchestrator import SagaOrchestrator, SagaStatus, SQLiteSagaRepository, StepStatus
from saga_orchestrator.cli import main
from saga_orchestrator.testing import ManualClock
from tests import cli_app
from tests.sagas import TripData, TripSaga

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.cli_app:orchestrator"
TWO_DAYS_AGO = datetime.now(UTC) - timedelta(days=2)


@dataclass(frozen=True)
class Ids:
    completed: UUID
    payment: UUID
    compensated: UUID
    failed: UUID
    compensating: UUID
    running: UUID


async def _build_store(path: Path) -> Ids:
    async with SQLiteSagaRepository(path) as repository:
        two_days_ago = cli_app.build(repository, clock=ManualClock(TWO_DAYS_AGO))
        now = cli_app.build(repository)

        completed = await two_days_ago.execute(cli_app.trip(TripData()))
        payment = await two_days_ago.execute(cli_app.PaymentSaga(cli_app.PaymentData()))

        cli_app.SETTINGS.failing_actions = {"car"}
        compensated = await now.execute(cli_app.trip(TripData()))

        cli_app.SETTINGS.failing_compensations = {"hotel"}
        once = cli_app.build(repository, compensation_attempts=1)
        failed = await once.execute(cli_app.trip(TripData(price=Decimal("99.95"))))

        cli_app.SETTINGS.failing_compensations = set()
        cli_app.SETTINGS.crashing_compensations = {"hotel"}
        compensating = cli_app.trip(TripData())
        with pytest.raises(cli_app.Crash):
            await now.execute(compensating)

        cli_app.reset()
        cli_app.SETTINGS.blocking_actions = {"hotel"}
        entered = cli_app.SETTINGS.entered = anyio.Event()
        running = cli_app.trip(TripData())
        async with anyio.create_task_group() as tg:
            tg.start_soon(now.execute, running)
            await entered.wait()  # hotel's attempt is recorded as running
            tg.cancel_scope.cancel()
    cli_app.reset()
    return Ids(
        completed=completed.saga_id,
        payment=payment.saga_id,
        compensated=compensated.saga_id,
        failed=failed.saga_id,
        compensating=compensating.context.saga_id,
        running=running.context.saga_id,
    )


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ids]:
    """One store with a saga in every status, built once (copied for each test)."""
    path = tmp_path_factory.mktemp("cli") / "template.db"
    ids = anyio.run(_build_store, path)
    return path, ids


@pytest.fixture
def db(template: tuple[Path, Ids], tmp_path: Path) -> Path:
    """A fresh copy of the template store, for a test to change."""
    copy = tmp_path / "sagas.db"
    shutil.copyfile(template[0], copy)
    return copy


@pytest.fixture
def ids(template: tuple[Path, Ids]) -> Ids:
    return template[1]


@pytest.fixture(autouse=True)
def _working_services() -> Iterator[None]:
    """Each test starts with services that work and an empty call log."""
    cli_app.reset()
    yield
    cli_app.reset()


def rows(path: Path) -> list[tuple[Any, ...]]:
    """Every stored saga row, read-only."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute("SELECT * FROM sagas ORDER BY saga_id").fetchall()


def stored(path: Path, saga_id: UUID) -> dict[str, Any]:
    """A saga's stored state document."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        (state,) = connection.execute(
            "SELECT state FROM sagas WHERE saga_id = ?", (str(saga_id),)
        ).fetchone()
    document: dict[str, Any] = json.loads(state)
    return document


def statuses(path: Path, saga_id: UUID) -> tuple[str, list[str]]:
    document = stored(path, saga_id)
    # A step record omits its default fields: no "status" means pending.
    return document["status"], [step.get("status", "pending") for step in document["steps"]]


# ---------------------------------------------------------------------- list


def test_list_shows_every_saga_as_a_table(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without filters every saga is listed, oldest first, with status, step, age and error."""
    assert main(["--db", str(db), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["SAGA_ID", "TYPE", "VER", "STATUS", "STEP", "AGE", "ERROR"]
    by_id = {line.split()[0]: line.split() for line in lines[1:]}
    assert list(by_id) == [
        str(i)
        for i in (
            ids.completed,
            ids.payment,
            ids.compensated,
            ids.failed,
            ids.compensating,
            ids.running,
        )
    ]
    assert by_id[str(ids.completed)][1:6] == ["trip", "1", "completed", "-", "2d"]
    assert by_id[str(ids.payment)][1:6] == ["payment", "1", "completed", "-", "2d"]
    assert by_id[str(ids.compensated)][1:5] == ["trip", "1", "compensated", "-"]
    assert re.fullmatch(r"\d+[sm]", by_id[str(ids.compensated)][5])  # built moments ago
    assert by_id[str(ids.failed)][1:5] == ["trip", "1", "failed", "hotel"]
    assert by_id[str(ids.compensating)][1:5] == ["trip", "1", "compensating", "hotel"]
    assert by_id[str(ids.running)][1:5] == ["trip", "1", "running", "hotel"]
    failed_line = next(line for line in lines if line.startswith(str(ids.failed)))
    error = stored(db, ids.failed)["error"]
    assert len(error) > 60
    assert failed_line.endswith(f"  {error[:59]}…")


def test_list_json_matches_the_store(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json gives one object per saga, with the stored ids, statuses and timestamps."""
    assert main(["--db", str(db), "list", "--json"]) == 0
    sagas = json.loads(capsys.readouterr().out)
    assert len(sagas) == 6
    for saga in sagas:
        document = stored(db, UUID(saga["saga_id"]))
        assert set(saga) == {
            "saga_id",
            "saga_type",
            "saga_version",
            "correlation_id",
            "status",
            "current_step",
            "created_at",
            "updated_at",
            "error",
            "stranded",
        }
        assert saga["saga_version"] == 1
        assert saga["stranded"] is None
        for key in ("saga_type", "correlation_id", "status", "created_at", "updated_at", "error"):
            assert saga[key] == document[key], key
    failed = next(s for s in sagas if s["saga_id"] == str(ids.failed))
    assert failed["current_step"] == "hotel"
    assert failed["correlation_id"].startswith("trip-")


def test_list_filters_by_status(db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]) -> None:
    """--status takes one or more statuses, also repeated."""
    assert main(["--db", str(db), "list", "--json", "--status", "failed", "running"]) == 0
    found = [s["saga_id"] for s in json.loads(capsys.readouterr().out)]
    assert found == [str(ids.failed), str(ids.running)]
    assert (
        main(
            ["--db", str(db), "list", "--json", "--status", "completed", "--status", "compensating"]
        )
        == 0
    )
    found = [s["saga_id"] for s in json.loads(capsys.readouterr().out)]
    assert found == [str(ids.completed), str(ids.payment), str(ids.compensating)]


def test_list_filters_by_type_and_age(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """--type keeps one saga type; --older-than keeps sagas started longer ago than that."""
    assert main(["--db", str(db), "list", "--json", "--type", "payment"]) == 0
    assert [s["saga_id"] for s in json.loads(capsys.readouterr().out)] == [str(ids.payment)]
    assert main(["--db", str(db), "list", "--json", "--older-than", "1d"]) == 0
    found = [s["saga_id"] for s in json.loads(capsys.readouterr().out)]
    assert found == [str(ids.completed), str(ids.payment)]
    assert main(["--db", str(db), "list", "--json", "--older-than", "3d"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["--db", str(db), "list", "--type", "trip", "--older-than", "36h", "--json"]) == 0
    assert [s["saga_id"] for s in json.loads(capsys.readouterr().out)] == [str(ids.completed)]


def test_list_limit_says_when_more_may_match(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """--limit caps the rows, oldest first, and says so on stderr."""
    assert main(["--db", str(db), "list", "--limit", "2"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 3
    assert "showing the first 2 (oldest); raise --limit" in captured.err


# ---------------------------------------------------------------------- show


def test_show_a_compensated_saga_timeline(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """The header, each step's forward and compensation record, then the data."""
    assert main(["--db", str(db), "show", str(ids.compensated)]) == 0
    out = capsys.readouterr().out
    assert f"saga            {ids.compensated}" in out
    assert "status          compensated" in out
    assert "error           car: NotAvailable: no car available" in out
    assert "version         " in out
    lines = out.splitlines()
    flight = lines.index(next(line for line in lines if "1. flight" in line))
    assert "compensated" in lines[flight]
    assert "1 attempt, took " in lines[flight]
    compensation = lines[flight + 1].strip()
    assert compensation.startswith("compensation: compensated, 1 attempt, took ")
    assert ", at 20" in compensation
    assert "2. hotel   compensated" in out
    car = lines.index(next(line for line in lines if "3. car" in line))
    assert "failed" in lines[car]
    assert "took" not in lines[car]
    assert lines[car + 1].strip() == "error: NotAvailable: no car available"
    assert "<- current" not in out
    data = json.loads("\n".join(lines[lines.index("data") + 1 :]))
    assert data["price"] == "10.00"
    assert UUID(data["trip_id"])
    assert data["flight"] == "flight-ref"


def test_show_a_failed_saga_names_the_compensation_that_failed(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failed saga's hotel shows its failed compensation and is marked current."""
    assert main(["--db", str(db), "show", str(ids.failed)]) == 0
    out = capsys.readouterr().out
    hotel = next(line for line in out.splitlines() if "2. hotel" in line)
    assert "compensation_failed" in hotel
    assert hotel.endswith("<- current")
    assert "compensation: failed, 1 attempt: RuntimeError: cannot undo hotel: API down" in out
    assert '"price": "99.95"' in out


def test_show_json_is_the_whole_record(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: header, steps with durations and compensation fields, and readable data."""
    assert main(["--db", str(db), "show", str(ids.failed), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    document = stored(db, ids.failed)
    assert shown["saga_id"] == str(ids.failed)
    assert shown["status"] == "failed"
    assert shown["version"] == document["version"]
    assert shown["deadline"] is None
    assert shown["error"] == document["error"]
    flight, hotel, car = shown["steps"]
    assert flight["status"] == "completed"
    assert flight["compensation_status"] is None
    assert flight["duration_seconds"] >= 0
    assert hotel["compensation_status"] == "failed"
    assert hotel["compensation_attempts"] == 1
    assert hotel["compensation_error"] == "RuntimeError: cannot undo hotel: API down"
    assert hotel["compensated_at"] is None
    assert car == {
        **car,
        "status": "failed",
        "attempts": 1,
        "error": "NotAvailable: no car available",
        "effect_possible": False,
        "duration_seconds": None,
    }
    assert shown["data"]["price"] == "99.95"
    assert shown["data"]["car"] is None


def test_show_an_order_through_the_example_app(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The worked example's admin app serves the CLI; money shows as exact strings."""
    from order_fulfillment.domain import ShippingAddress
    from order_fulfillment.shop import OrderLine, Shop

    path = tmp_path / "orders.db"

    async def place() -> UUID:
        async with Shop(path) as shop:
            customers = await shop.seed_demo(customers=2, stock=10, rng=random.Random(3))
            address = ShippingAddress("1 Main St", "Town", "CA", "12345", "US")
            order = await shop.price_order(customers[1], [OrderLine("SKU-001", 2)], address)
            return (await shop.place(order)).saga_id

    saga_id = anyio.run(place)
    app = ["--app", "order_fulfillment.admin:orchestrator", "--db", str(path)]
    assert main([*app, "show", str(saga_id), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] in {"completed", "compensated"}
    assert shown["data"]["total"] == "59.98"
    assert shown["data"]["items"][0]["unit_price"] == "29.99"
    assert main([*app, "recover"]) == 0
    assert capsys.readouterr().out == "nothing to recover\n"
    assert (
        main(
            [
                "--app",
                "order_fulfillment.admin:orchestrator",
                "--db",
                str(tmp_path / "x.db"),
                "list",
            ]
        )
        == 1
    )
    assert "no shop database at" in capsys.readouterr().err


# ---------------------------------------------------------------------- retry


def test_retry_compensates_a_failed_saga_once_the_cause_is_fixed(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """Retry runs hotel's compensation again, then flight's: the saga ends compensated."""
    assert main(["--app", APP, "--db", str(db), "retry", str(ids.failed)]) == 0
    assert capsys.readouterr().out == f"saga {ids.failed} (trip): compensated\n"
    assert cli_app.SETTINGS.log == ["undo-hotel#1", "undo-flight#1"]
    assert statuses(db, ids.failed) == ("compensated", ["compensated", "compensated", "failed"])


def test_show_after_retry_keeps_the_error_history(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a successful retry, `show` still tells of the compensation that failed."""
    assert main(["--app", APP, "--db", str(db), "retry", str(ids.failed)]) == 0
    capsys.readouterr()
    assert main(["--db", str(db), "show", str(ids.failed)]) == 0
    out = capsys.readouterr().out
    assert "error           car: NotAvailable: no car available\n" in out
    history = out.split("\nerror history\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert [line.split(None, 2)[1:] for line in history] == [
        ["compensating", "car: NotAvailable: no car available"],
        [
            "compensation_failed",
            "compensating hotel failed after 1 attempt: RuntimeError: cannot undo hotel: API down",
        ],
        ["retried", "retried: compensating hotel again"],
    ]
    assert main(["--db", str(db), "show", "--json", str(ids.failed)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in record["error_history"]] == [
        "compensating",
        "compensation_failed",
        "retried",
    ]


def test_retry_while_the_compensation_still_fails(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """Still failing: exit 1 with the saga's error, and the saga stays failed."""
    cli_app.SETTINGS.failing_compensations = {"hotel"}
    assert main(["--app", APP, "--db", str(db), "retry", str(ids.failed)]) == 1
    captured = capsys.readouterr()
    assert captured.out == f"saga {ids.failed} (trip): failed\n"
    assert captured.err.startswith("saga-orchestrator: error: compensation still failing: ")
    assert "compensating hotel failed after 2 attempts" in captured.err
    assert cli_app.SETTINGS.log == ["undo-hotel#1", "undo-hotel#2"]
    assert statuses(db, ids.failed)[0] == "failed"


def test_retry_a_completed_saga_is_refused(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a failed saga can be retried: exit 1, the reason, nothing written."""
    before = rows(db)
    assert main(["--app", APP, "--db", str(db), "retry", str(ids.completed)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"saga-orchestrator: error: saga {ids.completed} is completed; "
        "only a failed saga can be retried\n"
    )
    assert rows(db) == before
    assert cli_app.SETTINGS.log == []


def test_retry_without_the_app_says_to_pass_it(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db alone knows no saga type: the registry's message, a hint, nothing written."""
    before = rows(db)
    assert main(["--db", str(db), "retry", str(ids.failed)]) == 1
    err = capsys.readouterr().err
    assert "no factory registered for saga_type 'trip'" in err
    assert "pass --app MODULE:CALLABLE" in err
    assert len(err.splitlines()) == 1
    assert rows(db) == before


# ---------------------------------------------------------------------- cancel


def test_cancel_compensates_a_running_saga_in_reverse_order(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """The step in flight counts as possibly done: hotel is undone, then flight."""
    args = [
        "--app",
        APP,
        "--db",
        str(db),
        "cancel",
        str(ids.running),
        "--reason",
        "customer called",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out == f"saga {ids.running} (trip): compensated\n"
    assert cli_app.SETTINGS.log == ["undo-hotel#1", "undo-flight#1"]
    document = stored(db, ids.running)
    assert document["status"] == "compensated"
    assert document["error"] == "cancelled: customer called"
    flight, hotel, car = document["steps"]
    assert [s.get("status", "pending") for s in (flight, hotel, car)] == [
        "compensated",
        "compensated",
        "pending",
    ]
    assert hotel["effect_possible"] is True
    assert hotel["compensated_at"] <= flight["compensated_at"]


def test_cancel_a_completed_saga_is_refused(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """Only a running saga can be cancelled: exit 1, the reason, nothing written."""
    before = rows(db)
    assert main(["--app", APP, "--db", str(db), "cancel", str(ids.completed)]) == 1
    assert capsys.readouterr().err == (
        f"saga-orchestrator: error: saga {ids.completed} is completed; "
        "only a running saga can be cancelled\n"
    )
    assert rows(db) == before
    assert cli_app.SETTINGS.log == []


# ---------------------------------------------------------------------- recover


def test_recover_finishes_the_interrupted_sagas(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """The running saga completes, the compensating one compensates; the others stay."""
    before = {row[0]: row for row in rows(db)}
    assert main(["--app", APP, "--db", str(db), "recover"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "resumed 2 sagas"
    outcomes = {line.split()[0]: line.split()[2] for line in out[2:]}
    assert outcomes == {str(ids.running): "completed", str(ids.compensating): "compensated"}
    assert statuses(db, ids.running) == ("completed", ["completed"] * 3)
    assert statuses(db, ids.compensating) == (
        "compensated",
        ["compensated", "compensated", "failed"],
    )
    assert sorted(cli_app.SETTINGS.log) == sorted(
        ["hotel#2", "car#1", "undo-hotel#2", "undo-flight#1"]
    )
    after = {row[0]: row for row in rows(db)}
    for untouched in (ids.completed, ids.payment, ids.compensated, ids.failed):
        assert after[str(untouched)] == before[str(untouched)]


def test_recover_without_the_app_skips_and_says_why(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db alone cannot run the sagas: nothing resumed, each stuck saga named, exit 1 (the
    sagas stay unfinished), a hint, nothing written."""
    before = rows(db)
    assert main(["--db", str(db), "recover"]) == 1
    captured = capsys.readouterr()
    assert captured.out == "no saga resumed\n"
    assert "skipped 2 sagas of unregistered type trip; pass --app" in captured.err
    assert captured.err.count("was not resumed: no factory registered for saga_type 'trip'") == 2
    assert rows(db) == before


# ---------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "exit_code", "message"),
    [
        (["show", "not-a-uuid"], 2, "malformed saga id 'not-a-uuid': expected a UUID"),
        (["retry", "1234"], 2, "malformed saga id '1234'"),
        (["list", "--status", "done"], 2, "invalid choice: 'done'"),
        (["list", "--older-than", "10x"], 2, "invalid duration '10x'"),
        (["list", "--older-than", "m"], 2, "invalid duration 'm'"),
        (["list", "--limit", "0"], 2, "expected a whole number >= 1"),
        (["frobnicate"], 2, "invalid choice: 'frobnicate'"),
        (["--app", "no_such_module:orchestrator", "list"], 2, "cannot import 'no_such_module'"),
        (["--app", "tests.cli_app:missing", "list"], 2, "tests.cli_app has no attribute 'missing'"),
        (["--app", "tests.cli_app", "list"], 2, "expected MODULE:CALLABLE"),
        (["--app", "tests.cli_app:not_a_context_manager", "list"], 2, "not an async context"),
    ],
)
def test_bad_usage_exits_2_and_changes_nothing(
    db: Path, args: list[str], exit_code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Malformed ids, statuses, durations, commands and apps: exit 2, a message, no write."""
    before = db.read_bytes()
    assert main(["--db", str(db), *args]) == exit_code
    captured = capsys.readouterr()
    assert message in captured.err
    assert "Traceback" not in captured.err
    assert captured.out == ""
    assert db.read_bytes() == before


def test_bad_status_lists_the_valid_ones(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The error names every status there is."""
    assert main(["--db", str(db), "list", "--status", "done"]) == 2
    err = capsys.readouterr().err
    for status in SagaStatus:
        assert repr(status.value) in err


def test_no_store_is_bad_usage(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither --db nor --app: exit 2; a --db that does not exist is not created."""
    before = db.read_bytes()
    assert main(["list"]) == 2
    assert db.read_bytes() == before
    assert capsys.readouterr().err == (
        "saga-orchestrator: error: no saga store: pass --db PATH (a SQLite file) "
        "or --app MODULE:CALLABLE\n"
    )
    missing = tmp_path / "typo.db"
    assert main(["--db", str(missing), "list"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert not missing.exists()


def test_a_file_that_is_not_a_saga_store_is_left_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db on another SQLite file, or on a non-database: exit 2, and no table is added."""
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as connection:
        connection.execute("CREATE TABLE accounts (id INTEGER)")
        connection.commit()
    before = other.read_bytes()
    assert main(["--db", str(other), "list"]) == 2
    assert "no sagas table, so not a saga-orchestrator store" in capsys.readouterr().err
    assert other.read_bytes() == before
    text = tmp_path / "notes.txt"
    text.write_text("hello\n" * 100)
    assert main(["--db", str(text), "show", str(uuid4())]) == 2
    assert "not a SQLite database" in capsys.readouterr().err
    assert text.read_text() == "hello\n" * 100


def test_an_app_that_fails_to_start_exits_1(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The app's own error, in one line, without a traceback."""
    assert main(["--app", APP, "list"]) == 1
    assert capsys.readouterr().err == (
        f"saga-orchestrator: error: --app {APP} could not start: "
        "ValueError: the test app needs --db\n"
    )


def test_verbose_logs_the_saga_events(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """-v shows the library's transition records on stderr, only for that run."""
    assert main(["-v", "--app", APP, "--db", str(db), "cancel", str(ids.running)]) == 0
    err = capsys.readouterr().err
    assert f"saga.compensation.started: trip {ids.running}" in err
    assert "saga.step.compensated" in err
    assert main(["--db", str(db), "show", str(ids.running)]) == 0
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["show", "retry", "cancel"])
def test_unknown_saga_id_exits_1_and_changes_nothing(
    db: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A well-formed id that is not stored: exit 1, "no saga with id ...", no write."""
    before_rows, before_bytes = rows(db), db.read_bytes()
    unknown = uuid4()
    assert main(["--app", APP, "--db", str(db), command, str(unknown)]) == 1
    assert capsys.readouterr().err == f"saga-orchestrator: error: no saga with id {unknown}\n"
    assert rows(db) == before_rows
    assert db.read_bytes() == before_bytes


def test_options_are_accepted_after_the_command(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """`saga-orchestrator list --db FILE` works as well as `--db FILE list`."""
    assert main(["list", "--db", str(db), "--status", "failed", "--json"]) == 0
    assert [s["saga_id"] for s in json.loads(capsys.readouterr().out)] == [str(ids.failed)]


@pytest.mark.parametrize("command", [[], ["list"], ["show"], ["retry"], ["cancel"], ["recover"]])
def test_every_command_has_help_with_defaults(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """--help exits 0 and shows the defaults."""
    assert main([*command, "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: saga-orchestrator")
    assert "--db PATH" in out
    if command == ["list"]:
        assert "(default: 50)" in out
    if command == ["cancel"]:
        assert "(default: cancelled by an operator)" in out


# ---------------------------------------------------------------------- entry points


def _console_script() -> str:
    script = Path(sys.executable).parent / "saga-orchestrator"
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    return str(script)


def test_console_script_lists_the_store(db: Path, ids: Ids) -> None:
    """The installed `saga-orchestrator` runs; saga data imports from the current directory."""
    done = subprocess.run(
        [_console_script(), "--db", str(db), "list", "--json", "--status", "compensated"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert [s["saga_id"] for s in json.loads(done.stdout)] == [str(ids.compensated)]


def test_console_script_lists_sagas_whose_code_is_not_installed(
    db: Path, ids: Ids, tmp_path: Path
) -> None:
    """Run where the sagas' data classes are not importable, --db still lists and shows
    them, with the data as it was stored."""
    done = subprocess.run(
        [_console_script(), "--db", str(db), "list", "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    listed = {row["saga_id"] for row in json.loads(done.stdout)}
    assert str(ids.failed) in listed
    shown = subprocess.run(
        [_console_script(), "--db", str(db), "show", str(ids.failed), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shown.returncode == 0, shown.stderr
    assert "tests.sagas:TripData" in shown.stdout


def test_python_m_recovers_with_the_app(db: Path, ids: Ids) -> None:
    """`python -m saga_orchestrator.cli` runs the app's code; bad usage exits 2 cleanly."""
    command = [sys.executable, "-m", "saga_orchestrator.cli", "--app", APP, "--db", str(db)]
    done = subprocess.run(
        [*command, "recover"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("resumed 2 sagas\n")
    assert statuses(db, ids.running)[0] == "completed"
    bad = subprocess.run(
        [*command, "show", "nope"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
    assert bad.stderr == (
        "saga-orchestrator show: error: argument SAGA_ID: malformed saga id 'nope': "
        "expected a UUID or its first characters (4 or more) "
        "(see 'saga-orchestrator show --help')\n"
    )
    assert "Traceback" not in bad.stderr


def test_the_store_holds_every_status(template: tuple[Path, Ids]) -> None:
    """The fixture is what the tests say it is."""
    path, ids = template
    assert {name: statuses(path, saga_id)[0] for name, saga_id in vars(ids).items()} == {
        "completed": "completed",
        "payment": "completed",
        "compensated": "compensated",
        "failed": "failed",
        "compensating": "compensating",
        "running": "running",
    }
    assert statuses(path, ids.running)[1] == ["completed", "running", "pending"]
    assert statuses(path, ids.compensating)[1] == ["completed", "compensating", "failed"]
    assert StepStatus.COMPENSATION_FAILED.value in statuses(path, ids.failed)[1]


def test_show_accepts_an_unambiguous_id_prefix(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """`show` with the first characters of an id shows that saga, like the whole id."""
    assert main(["--db", str(db), "show", str(ids.failed)]) == 0
    whole = capsys.readouterr().out
    assert main(["--db", str(db), "show", str(ids.failed)[:13]]) == 0
    by_prefix = capsys.readouterr().out
    assert by_prefix.splitlines()[:4] == whole.splitlines()[:4]
    assert by_prefix.startswith(f"saga            {ids.failed}\n")


def test_show_of_an_unknown_or_malformed_prefix(
    db: Path, ids: Ids, capsys: pytest.CaptureFixture[str]
) -> None:
    """No match: exit 1 naming the prefix; not hex or too short: exit 2."""
    known = {str(i)[:4] for i in vars(ids).values()}
    absent = next(p for p in (f"{n:04x}" for n in range(65536)) if p not in known)
    assert main(["--db", str(db), "show", absent]) == 1
    assert f"no saga id starts with '{absent}'" in capsys.readouterr().err
    for bad in ("abc", "zzzz", "12345678-xyz"):
        assert main(["--db", str(db), "show", bad]) == 2
        assert "expected a UUID or its first characters" in capsys.readouterr().err


def test_show_of_an_ambiguous_prefix_lists_the_candidates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two ids sharing the prefix: exit 1 with both named, nothing shown."""
    path = tmp_path / "two.db"

    async def build() -> list[UUID]:
        async with SQLiteSagaRepository(path) as repository:
            made = []
            for tail in ("1", "2"):
                saga = TripSaga(TripData())
                saga.context.saga_id = UUID(f"abcdabcd-{tail}000-4000-8000-000000000000")
                await SagaOrchestrator(repository).execute(saga)
                made.append(saga.context.saga_id)
            return made

    first, second = anyio.run(build)
    assert main(["--db", str(path), "show", "abcdabcd"]) == 1
    err = capsys.readouterr().err
    assert f"2 saga ids start with 'abcdabcd': {first}, {second}; give more of it" in err
    assert main(["--db", str(path), "show", "abcdabcd-2"]) == 0
    assert str(second) in capsys.readouterr().out
