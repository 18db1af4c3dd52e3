"""The admin command line and wait steps: `deliver` an event, and waits in `show`, `list` and
`recover`, on real SQLite files.

Most tests call ``main([...])`` in-process, as tests/test_cli.py does; one runs the installed
console script. The ``--app`` is this module's ``orchestrator``: its sagas park at a wait for
an event (an hour's timeout) and then at an hour's timer, so nothing times out while a test
runs.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from saga_orchestrator import BaseSaga, SagaOrchestrator, SagaStep, SQLiteSagaRepository
from saga_orchestrator.cli import main
from saga_orchestrator.definitions import sleep_for, wait_for_event

ROOT = Path(__file__).resolve().parent.parent
APP = "tests.test_cli_waits:orchestrator"


# ---------------------------------------------------------------------- the app


@dataclass
class OrderData:
    order_id: UUID = field(default_factory=uuid4)
    amount: Decimal | None = None
    reference: str | None = None
    approved_by: str | None = None


async def _reserve(data: OrderData) -> dict[str, Any]:
    return {}


async def _ship(data: OrderData) -> dict[str, Any]:
    return {}


class CaptureSaga(BaseSaga[OrderData]):
    """Reserve, wait for the payment's capture (an hour at most), cool off an hour, ship."""

    saga_type = "capture"

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            SagaStep("reserve", _reserve),
            wait_for_event("captured", "payment.captured", timeout_seconds=3600),
            sleep_for("cool_off", 3600),
            SagaStep("ship", _ship),
        ]


class ApprovalSaga(BaseSaga[OrderData]):
    """One wait with no timeout: only the event ends it."""

    saga_type = "approval"

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [wait_for_event("approved", "order.approved")]


def build(repository: SQLiteSagaRepository) -> SagaOrchestrator:
    orchestrator = SagaOrchestrator(repository)
    orchestrator.register(CaptureSaga.saga_type, CaptureSaga)
    orchestrator.register(ApprovalSaga.saga_type, ApprovalSaga)
    return orchestrator


@asynccontextmanager
async def orchestrator(db: str | None) -> AsyncIterator[SagaOrchestrator]:
    """What `--app tests.test_cli_waits:orchestrator` names."""
    assert db is not None
    async with SQLiteSagaRepository(db) as repository:
        yield build(repository)


# ---------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Store:
    path: Path
    capture: UUID
    """A capture saga parked at its wait for payment.captured."""
    approval: UUID
    """An approval saga parked at its wait for order.approved (no timeout)."""
    approval_order: UUID
    """The approval saga's order id: its correlation id is ``order-<id>``."""


async def _build(path: Path) -> Store:
    async with SQLiteSagaRepository(path) as repository:
        sagas = build(repository)
        capture = await sagas.execute(CaptureSaga(OrderData()))
        approval_data = OrderData()
        approval = await sagas.execute(ApprovalSaga(approval_data))
    return Store(path, capture.saga_id, approval.saga_id, approval_data.order_id)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return anyio.run(_build, tmp_path / "sagas.db")


def _read(path: Path, query: str, *args: object) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        return connection.execute(query, args).fetchall()


def document(store: Store, saga_id: UUID) -> dict[str, Any]:
    """The saga's stored state document."""
    [(state,)] = _read(store.path, "SELECT state FROM sagas WHERE saga_id = ?", str(saga_id))
    loaded: dict[str, Any] = json.loads(state)
    return loaded


def steps(store: Store, saga_id: UUID) -> dict[str, dict[str, Any]]:
    """The saga's step records by name (a record omits its default fields)."""
    return {step["name"]: step for step in document(store, saga_id)["steps"]}


def inbox(store: Store) -> list[tuple[Any, ...]]:
    return _read(store.path, "SELECT event_id, saga_id, name, payload FROM saga_inbox ORDER BY seq")


def deliver(store: Store, *extra: str, app: bool = True, saga: UUID | None = None) -> int:
    """`[--app APP] --db FILE deliver payment.captured --saga-id ID --event-id evt-1 ...`."""
    prefix = ["--app", APP] if app else []
    return main(
        [
            *prefix,
            "--db",
            str(store.path),
            "deliver",
            "payment.captured",
            "--saga-id",
            str(saga or store.capture),
            "--event-id",
            "evt-1",
            *extra,
        ]
    )


def test_the_store_is_what_the_tests_say(store: Store) -> None:
    """Both sagas are running, parked at their wait; no event is kept."""
    assert document(store, store.capture)["status"] == "running"
    assert steps(store, store.capture)["captured"]["status"] == "waiting"
    assert steps(store, store.approval)["approved"]["status"] == "waiting"
    assert inbox(store) == []


# ---------------------------------------------------------------------- deliver


def test_deliver_with_the_app_consumes_the_event(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --app the parked saga consumes the event at once: its fields are set (a tagged
    Decimal as a Decimal, a string as a string), and the saga goes on to its next wait."""
    payload = '{"amount": {"$decimal": "12.50"}, "reference": "12.50"}'
    assert deliver(store, "--payload", payload) == 0
    captured = capsys.readouterr()
    assert captured.out == (
        f"event evt-1 (payment.captured): consumed\nsaga {store.capture}: running\n"
    )
    assert captured.err == ""
    data = document(store, store.capture)["data"]["fields"]
    assert data["amount"] == {"$decimal": "12.50"}
    assert data["reference"] == "12.50"  # a plain JSON string stays a string
    records = steps(store, store.capture)
    assert records["captured"]["status"] == "completed"
    assert records["captured"]["event_id"] == "evt-1"
    assert records["cool_off"]["status"] == "waiting"


def test_deliver_without_the_app_stores_the_event_for_recover(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """--db alone knows no saga type: the event is kept in the saga's inbox (exit 0, and a
    hint to pass --app); `recover` with the app then consumes it."""
    assert deliver(store, "--payload", '{"reference": "ch_1"}', app=False) == 0
    captured = capsys.readouterr()
    assert (
        captured.out == f"event evt-1 (payment.captured): stored\nsaga {store.capture}: running\n"
    )
    assert "kept in the saga's inbox (pass --app MODULE:CALLABLE" in captured.err
    assert steps(store, store.capture)["captured"]["status"] == "waiting"
    assert inbox(store) == [
        ("evt-1", str(store.capture), "payment.captured", '{"reference":"ch_1"}')
    ]

    assert main(["--app", APP, "--db", str(store.path), "recover"]) == 0
    assert steps(store, store.capture)["captured"]["event_id"] == "evt-1"
    assert document(store, store.capture)["data"]["fields"]["reference"] == "ch_1"


def test_no_drive_only_stores(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """--no-drive with the app: stored, not consumed; the note says who will consume it."""
    assert deliver(store, "--no-drive") == 0
    captured = capsys.readouterr()
    assert "): stored\n" in captured.out
    assert captured.err.startswith("kept (--no-drive): the saga consumes it when recover")
    assert steps(store, store.capture)["captured"]["status"] == "waiting"
    assert [row[0] for row in inbox(store)] == ["evt-1"]


def test_a_second_delivery_is_a_duplicate_and_changes_nothing(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same event id again: `duplicate`, exit 0, the saga untouched."""
    assert deliver(store, "--payload", '{"reference": "first"}') == 0
    before = document(store, store.capture)
    capsys.readouterr()
    assert deliver(store, "--payload", '{"reference": "second"}') == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("event evt-1 (payment.captured): duplicate\n")
    assert captured.err == "delivered before: nothing changed\n"
    assert document(store, store.capture) == before
    assert before["data"]["fields"]["reference"] == "first"


def test_deliver_by_correlation_id_as_json(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """--correlation-id finds the saga; --json prints one object; a wait with no timeout
    completes the saga."""
    code = main(
        [
            "--app",
            APP,
            "--db",
            str(store.path),
            "deliver",
            "order.approved",
            "--correlation-id",
            f"order-{store.approval_order}",
            "--event-id",
            "approval-7",
            "--payload",
            '{"approved_by": "ops"}',
            "--json",
        ]
    )
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {
        "delivery": "consumed",
        "event": "order.approved",
        "event_id": "approval-7",
        "saga_id": str(store.approval),
        "saga_status": "completed",
    }
    assert document(store, store.approval)["data"]["fields"]["approved_by"] == "ops"


def test_payload_from_a_file_and_from_stdin(store: Store, tmp_path: Path) -> None:
    """--payload-file PATH reads the payload from a file, and `-` from standard input (the
    installed console script, run as an operator would)."""
    payload = tmp_path / "payload.json"
    payload.write_text('{"amount": {"$decimal": "7.05"}}')
    assert deliver(store, "--payload-file", str(payload), "--no-drive") == 0
    script = Path(sys.executable).parent / "saga-orchestrator"
    if not script.exists():
        pytest.skip("the console script is not installed next to this interpreter")
    done = subprocess.run(
        [
            str(script),
            "--app",
            APP,
            "--db",
            str(store.path),
            "deliver",
            "order.approved",
            "--saga-id",
            str(store.approval),
            "--event-id",
            "from-stdin",
            "--payload-file",
            "-",
        ],
        input='{"approved_by": "stdin"}',
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "event from-stdin (order.approved): consumed\n" + (
        f"saga {store.approval}: completed\n"
    )
    assert document(store, store.approval)["data"]["fields"]["approved_by"] == "stdin"
    assert [row[:3] for row in inbox(store)] == [
        ("evt-1", str(store.capture), "payment.captured"),
        ("from-stdin", str(store.approval), "order.approved"),
    ]
    assert json.loads(inbox(store)[0][3]) == {"amount": {"$decimal": "7.05"}}


def test_an_event_for_a_finished_saga_is_ignored(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cancel` compensates a waiting saga; an event delivered after it is ignored: exit 1,
    nothing stored."""
    assert main(["--app", APP, "--db", str(store.path), "cancel", str(store.capture)]) == 0
    assert steps(store, store.capture)["captured"]["error"] == (
        "cancelled while waiting for event 'payment.captured'"
    )
    capsys.readouterr()
    assert deliver(store) == 1
    captured = capsys.readouterr()
    assert captured.out == (
        f"event evt-1 (payment.captured): ignored\nsaga {store.capture}: compensated\n"
    )
    assert captured.err == (
        f"saga-orchestrator: error: saga {store.capture} will never consume event evt-1: "
        "it is compensated (nothing was stored)\n"
    )
    assert inbox(store) == []


def test_an_event_past_every_wait_is_ignored(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """Once the capture wait is done, another payment.captured is ignored (exit 1)."""
    assert deliver(store) == 0
    capsys.readouterr()
    code = main(
        [
            "--app",
            APP,
            "--db",
            str(store.path),
            "deliver",
            "payment.captured",
            "--saga-id",
            str(store.capture),
            "--event-id",
            "evt-2",
        ]
    )
    assert code == 1
    assert "it is past every wait step for event 'payment.captured'" in capsys.readouterr().err
    assert [row[0] for row in inbox(store)] == ["evt-1"]


def test_an_unknown_saga_exits_1(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """No saga with that id, or that correlation id: said so, exit 1, nothing stored."""
    unknown = uuid4()
    assert deliver(store, saga=unknown) == 1
    assert capsys.readouterr().err == f"saga-orchestrator: error: no saga with id {unknown}\n"
    code = main(
        [
            *("--db", str(store.path), "deliver", "payment.captured"),
            *("--correlation-id", "order-nope", "--event-id", "evt-1"),
        ]
    )
    assert code == 1
    assert capsys.readouterr().err == (
        "saga-orchestrator: error: no saga with correlation id 'order-nope'\n"
    )
    assert inbox(store) == []


BAD_INPUT = [
    (["--payload", "{not json"], "argument --payload: not valid JSON: "),
    (["--payload", '["a"]'], "argument --payload: expected a JSON object of data fields, got a "),
    (["--payload", '{"amount": NaN}'], "NaN is not a finite number"),
    (
        ["--payload", '{"amount": {"$decimal": 12}}'],
        "argument --payload: payload['amount']: $decimal holds int 12, not str",
    ),
    (
        ["--payload", "{}", "--payload-file", "GOOD_FILE"],
        "argument --payload-file: not allowed with argument --payload",
    ),
    (["--payload-file", "/nonexistent/p.json"], "argument --payload-file: cannot read "),
    (["--correlation-id", "order-1"], "argument --correlation-id: not allowed with argument"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUT)
def test_bad_input_exits_2_and_changes_nothing(
    store: Store, extra: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bad JSON, a payload that is not an object or holds a malformed typed value, two
    payloads, two addresses: exit 2 with what is wrong, and the file is not even opened."""
    good = store.path.parent / "good.json"
    good.write_text("{}")
    before = store.path.read_bytes()
    assert deliver(store, *[str(good) if arg == "GOOD_FILE" else arg for arg in extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("saga-orchestrator deliver: error: ")
    assert message in err
    assert store.path.read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["payment.captured", "--event-id", "e"], "one of the arguments --saga-id"),
        (["payment.captured", "--saga-id", "nope", "--event-id", "e"], "malformed saga id"),
        (["payment.captured", "--saga-id", str(uuid4())], "arguments are required: --event-id"),
        (["  ", "--saga-id", str(uuid4()), "--event-id", "e"], "expected a non-empty value"),
        (["payment.captured", "--saga-id", str(uuid4()), "--event-id", "e" * 201], "at most 200"),
    ],
)
def test_a_missing_or_malformed_address_exits_2(
    store: Store, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No saga address, a malformed id, no event id, a blank or overlong name: exit 2."""
    before = store.path.read_bytes()
    assert main(["--db", str(store.path), "deliver", *argv]) == 2
    assert message in capsys.readouterr().err
    assert store.path.read_bytes() == before


def test_an_event_the_saga_never_waits_for_exits_2(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """With --app, an event name none of the saga's steps waits for is bad input: exit 2,
    the saga's waits named, nothing stored, the saga unchanged."""
    before = document(store, store.capture)
    code = main(
        [
            *("--app", APP, "--db", str(store.path), "deliver", "payment.refunded"),
            *("--saga-id", str(store.capture), "--event-id", "evt-1"),
        ]
    )
    assert code == 2
    assert capsys.readouterr().err == (
        f"saga-orchestrator: error: saga {store.capture} (capture) has no step waiting for "
        "event 'payment.refunded'; its waits: ['payment.captured'] (nothing was stored)\n"
    )
    assert inbox(store) == []
    assert document(store, store.capture) == before


def test_a_field_the_data_has_not_fails_the_wait(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """The payload is checked when the saga consumes it, as deliver_event does: a field the
    data has not rejects the event, the wait fails and the saga compensates (exit 0: the
    event was delivered, and the saga's status says what became of it)."""
    assert deliver(store, "--payload", '{"colour": "red"}') == 0
    assert capsys.readouterr().out == (
        f"event evt-1 (payment.captured): consumed\nsaga {store.capture}: compensated\n"
    )
    assert steps(store, store.capture)["captured"]["error"].startswith(
        "event 'evt-1' rejected: InvalidStepResultError: step 'captured' received an event "
        "with unknown field 'colour'"
    )


def test_deliver_help_documents_the_options(capsys: pytest.CaptureFixture[str]) -> None:
    """--help exits 0 and names every option and the exit statuses."""
    assert main(["deliver", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for option in (
        "--saga-id",
        "--correlation-id",
        "--event-id",
        "--payload JSON",
        "--payload-file PATH",
        "--no-drive",
        "--json",
        "--db PATH",
        '{"$decimal": "12.50"}',
        "Exit 0 when consumed, stored or a duplicate",
    ):
        assert option in out, option


# ---------------------------------------------------------------------- show, list, recover


def _show(store: Store, saga_id: UUID, capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["--db", str(store.path), "show", str(saga_id)]) == 0
    return capsys.readouterr().out


def _line(out: str, start: str) -> str:
    return next(line.strip() for line in out.splitlines() if line.strip().startswith(start))


def test_show_a_saga_waiting_for_an_event(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """The waiting step says what it waits for, since when and until when."""
    out = _show(store, store.capture, capsys)
    lines = out.splitlines()
    captured = lines.index(next(line for line in lines if "2. captured" in line))
    assert lines[captured].split()[2] == "waiting"
    assert lines[captured].endswith("<- current")
    started = datetime.fromisoformat(steps(store, store.capture)["captured"]["started_at"])
    assert (
        lines[captured + 1]
        .strip()
        .startswith(f"waiting for event 'payment.captured' since {started.isoformat()} (")
    )
    until = (started + timedelta(seconds=3600)).isoformat()
    assert lines[captured + 1].endswith(f", until {until} (in 59m)")
    assert "inbox" not in lines  # no event kept: no inbox section


def test_show_a_wait_with_no_timeout(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    out = _show(store, store.approval, capsys)
    assert _line(out, "waiting for event 'order.approved'").endswith(", until no timeout")


def test_show_after_the_event_the_timer_and_the_inbox(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """After consumption: the wait names the event it consumed, the timer waits, and the
    inbox lists each kept event, consumed by which step or not."""
    assert deliver(store) == 0
    assert (
        main(
            [
                *("--db", str(store.path), "deliver", "payment.refunded"),
                *("--saga-id", str(store.capture), "--event-id", "evt-early"),
            ]
        )
        == 0
    )  # --db alone cannot check the saga's waits: kept, never consumed
    capsys.readouterr()
    out = _show(store, store.capture, capsys)
    records = steps(store, store.capture)
    until = datetime.fromisoformat(records["captured"]["wait_until"]).isoformat()
    assert _line(out, "waited for event") == (
        f"waited for event 'payment.captured', until {until}; consumed event evt-1"
    )
    assert _line(out, "3. cool_off").split()[2] == "waiting"
    timer = _line(out, "waiting for a timer since ")
    assert timer.endswith(f"until {records['cool_off']['wait_until']} (in 59m)")
    lines = out.splitlines()
    table = lines[lines.index("inbox") + 1 : lines.index("inbox") + 4]
    assert table[0].split() == ["EVENT_ID", "NAME", "RECEIVED", "CONSUMED"]
    assert table[1].split()[:2] == ["evt-1", "payment.captured"]
    assert table[1].endswith("by captured")
    assert table[2].split()[:2] == ["evt-early", "payment.refunded"]
    assert table[2].endswith("  no")

    assert main(["--db", str(store.path), "show", str(store.capture), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    by_name = {step["name"]: step for step in shown["steps"]}
    assert by_name["captured"]["waiting_for"] == "payment.captured"
    assert by_name["captured"]["event_id"] == "evt-1"
    assert by_name["cool_off"]["waiting_for"] is None
    assert by_name["cool_off"]["wait_until"] == records["cool_off"]["wait_until"]
    assert by_name["reserve"]["wait_until"] is None
    assert [(e["event_id"], e["consumed"], e["consumed_by"]) for e in shown["inbox"]] == [
        ("evt-1", True, "captured"),
        ("evt-early", False, None),
    ]
    assert shown["inbox"][0]["payload"] == {}
    assert datetime.fromisoformat(shown["inbox"][0]["received_at"]).tzinfo is not None


def test_list_marks_the_waiting_step(store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """`list`'s STEP column says the current step is waiting; --json is unchanged."""
    assert main(["--db", str(store.path), "list"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows[str(store.capture)][3:6] == ["running", "captured", "(waiting)"]
    assert rows[str(store.approval)][3:6] == ["running", "approved", "(waiting)"]
    assert main(["--db", str(store.path), "list", "--json"]) == 0
    listed = {s["saga_id"]: s for s in json.loads(capsys.readouterr().out)}
    assert listed[str(store.capture)]["current_step"] == "captured"


def test_recover_lists_the_sagas_still_waiting(
    store: Store, capsys: pytest.CaptureFixture[str]
) -> None:
    """`recover` resumes the parked sagas, which park again: named as still waiting, exit 0."""
    assert main(["--app", APP, "--db", str(store.path), "recover"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (
        "2 sagas still waiting (parked at a wait step until its event or its time comes)"
    )
    assert lines[1].split() == ["SAGA_ID", "TYPE", "STEP", "WAITING", "FOR", "UNTIL"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows[str(store.capture)].split()[1:5] == [
        "capture",
        "captured",
        "event",
        "'payment.captured'",
    ]
    assert re.split(r"\s{2,}", rows[str(store.approval)].strip())[1:] == [
        "approval",
        "approved",
        "event 'order.approved'",
        "no timeout",
    ]
