"""SQLite specifics: migrations, several processes on one file, group commit, durability."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from saga_orchestrator import SagaOrchestrator, SagaStatus, SerializationError, SQLiteSagaRepository
from tests.sagas import TripData, TripSaga

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.anyio


def _spawn(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_fresh_file_gets_the_current_schema(tmp_path: Path) -> None:
    """Migrating from empty applies every migration once and records it."""
    path = tmp_path / "fresh.db"
    async with SQLiteSagaRepository(path):
        pass
    async with SQLiteSagaRepository(path):  # reopening migrates nothing more
        pass
    with closing(sqlite3.connect(path)) as db, db:
        versions = db.execute("SELECT version, name FROM saga_schema_migrations").fetchall()
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
        journal = db.execute("PRAGMA journal_mode").fetchone()[0]
    assert versions == [
        (1, "0001_initial.sql"),
        (2, "0002_failed_index.sql"),
        (3, "0003_outbox.sql"),
        (4, "0004_stranded.sql"),
        (5, "0005_waits.sql"),
    ]
    assert {
        "sagas",
        "saga_inbox",
        "sagas_parked",
        "idempotency_keys",
        "sagas_active",
        "sagas_failed",
        "saga_outbox",
        "saga_outbox_unsent",
        "saga_outbox_sent",
    } <= tables
    assert journal == "wal"


@pytest.mark.slow
def test_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    """Several processes opening a new file at once: no error, one migration row."""
    path = tmp_path / "together.db"
    code = (
        "import anyio, sys; from saga_orchestrator import SQLiteSagaRepository as R\n"
        "async def main():\n"
        "    async with R(sys.argv[1]): pass\n"
        "anyio.run(main)"
    )
    children = [_spawn("-c", code, str(path)) for _ in range(6)]
    for child in children:
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
    with closing(sqlite3.connect(path)) as db, db:
        migrations = db.execute("SELECT count(*) FROM saga_schema_migrations").fetchone()[0]
    assert migrations == 5  # each migration applied once, not once per process


@pytest.mark.slow
def test_several_processes_share_one_file(tmp_path: Path) -> None:
    """Three processes running sagas concurrently on one file: all complete, none errors."""
    path = tmp_path / "shared.db"
    children = [
        _spawn("-m", "tests.saga_worker", "sqlite", str(path), "40", "16") for _ in range(3)
    ]
    reports = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert [r["errors"] for r in reports] == [[], [], []]
    assert sum(r["completed"] for r in reports) == 120
    with closing(sqlite3.connect(path)) as db, db:
        statuses = db.execute("SELECT status, count(*) FROM sagas GROUP BY status").fetchall()
    assert statuses == [("completed", 120)]


async def test_concurrent_sagas_share_transactions(tmp_path: Path) -> None:
    """Group commit: 64 sagas in flight need far fewer transactions than writes."""
    async with SQLiteSagaRepository(tmp_path / "group.db") as repo:
        orchestrator = SagaOrchestrator(repo)
        async with anyio.create_task_group() as tg:
            for _ in range(64):
                tg.start_soon(orchestrator.execute, TripSaga(TripData()))
        writes = 64 * 4  # start + one per step boundary
        assert repo.transactions < writes / 2
        done = await repo.list_sagas(statuses=[SagaStatus.COMPLETED], limit=100)
        assert len(done) == 64


async def test_state_survives_reopening(tmp_path: Path) -> None:
    """What one repository object wrote, a new one (a new process) reads back exactly."""
    path = tmp_path / "durable.db"
    async with SQLiteSagaRepository(path) as repo:
        result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
    async with SQLiteSagaRepository(path) as reopened:
        stored = await reopened.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED
    assert stored.data == result.data
    assert [s.status for s in stored.steps] == [s.status for s in result.steps]


async def test_malformed_stored_row_is_a_clear_error(tmp_path: Path) -> None:
    """A row that cannot be decoded raises SerializationError, not a KeyError."""
    path = tmp_path / "bad.db"
    async with SQLiteSagaRepository(path) as repo:
        result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("UPDATE sagas SET state = '{\"format\": 1}'")
    async with SQLiteSagaRepository(path) as repo:
        with pytest.raises(SerializationError, match="malformed"):
            await repo.get(result.saga_id)


async def test_recover_goes_on_past_an_unreadable_row(tmp_path: Path) -> None:
    """A saga whose stored data no longer decodes is logged and left; the others resume."""
    path = tmp_path / "unreadable.db"
    gate = anyio.Event()

    async def blocked(step: str, attempt: int) -> dict[str, object]:
        await gate.wait()
        return {}

    async with SQLiteSagaRepository(path) as repo:
        sagas = [TripSaga(TripData(), behaviour={"car": blocked}) for _ in range(2)]
        for saga in sagas:
            with anyio.move_on_after(0.1):
                await SagaOrchestrator(repo).execute(saga)
    broken = str(sagas[0].context.saga_id)
    with closing(sqlite3.connect(path)) as db, db:
        state = db.execute("SELECT state FROM sagas WHERE saga_id = ?", (broken,)).fetchone()[0]
        renamed = state.replace("tests.sagas:TripData", "tests.sagas:RenamedSinceThen")
        db.execute("UPDATE sagas SET state = ? WHERE saga_id = ?", (renamed, broken))

    async with SQLiteSagaRepository(path) as repo:
        orchestrator = SagaOrchestrator(repo)
        orchestrator.register("trip", lambda data: TripSaga(data))
        results = await orchestrator.recover()
        assert [r.saga_id for r in results] == [sagas[1].context.saga_id]
        assert [r.status for r in results] == [SagaStatus.COMPLETED]


async def test_tools_can_read_sagas_whose_code_is_not_installed(tmp_path: Path) -> None:
    """keep_unknown_types: an unimportable data class reads as an UnresolvedValue, not an
    error (the admin CLI's --db uses it); the default stays strict."""
    from saga_orchestrator.serialization import UnresolvedValue

    path = tmp_path / "foreign.db"
    async with SQLiteSagaRepository(path) as repo:
        result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
    with closing(sqlite3.connect(path)) as db, db:
        state = db.execute("SELECT state FROM sagas").fetchone()[0]
        db.execute("UPDATE sagas SET state = ?", (state.replace("tests.sagas:", "gone.mod:"),))

    async with SQLiteSagaRepository(path) as strict:
        with pytest.raises(SerializationError, match="cannot be imported"):
            await strict.get(result.saga_id)
    async with SQLiteSagaRepository(path, keep_unknown_types=True) as lenient:
        stored = await lenient.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED
    assert isinstance(stored.data, UnresolvedValue)
    assert stored.data.type == "gone.mod:TripData"
    assert stored.data.value["car"] == "car-ref"


async def test_status_queries_are_served_by_the_partial_indexes(tmp_path: Path) -> None:
    """``recover()`` and the ``saga_states`` gauge ask for the active (or the failed) sagas:
    the adapter writes those terms as literals, spelled as the partial indexes' own, because
    SQLite matches a partial index only then (a bound parameter cannot imply the index's
    ``WHERE``); with parameters, every finished saga of the file would be scanned."""
    from saga_orchestrator.adapters._common import status_filter
    from saga_orchestrator.adapters.sqlite import _selection
    from saga_orchestrator.state import ACTIVE_STATUSES

    path = tmp_path / "sagas.db"
    async with SQLiteSagaRepository(path) as repository:
        await repository.list_sagas()  # migrated
    with closing(sqlite3.connect(path)) as connection:

        def plan(query: str, params: list[object]) -> str:
            rows = connection.execute(f"EXPLAIN QUERY PLAN {query}", params).fetchall()
            return " ".join(str(row[-1]) for row in rows)

        where, params = _selection(ACTIVE_STATUSES, None)
        listing = plan(f"SELECT saga_id FROM sagas{where} ORDER BY rowid LIMIT ?", [*params, 9])
        assert "USING INDEX sagas_active" in listing
        for group, index in (
            (ACTIVE_STATUSES, "sagas_active"),
            ({SagaStatus.FAILED}, "sagas_failed"),
        ):
            counting = plan(
                "SELECT saga_type, status, count(*) FROM sagas"
                f" WHERE {status_filter(group)} GROUP BY saga_type, status",
                [],
            )
            assert f"INDEX {index}" in counting, counting
        # The same term with a parameter scans the table: what the literals avoid.
        assert "USING INDEX sagas_active" not in plan(
            "SELECT saga_id FROM sagas WHERE status IN (?, ?, ?) ORDER BY rowid LIMIT 9",
            ["pending", "running", "compensating"],
        )
