"""Every SQLite connection the library, its CLI and the worked example open is closed again.

Python 3.13 reports a connection that is garbage-collected while still open (``ResourceWarning:
unclosed database``); earlier versions say nothing. These tests do not rely on that warning:
they record every connection ``sqlite3.connect`` returns during a scenario and check that
each is closed at its end, so a leak fails them on every Python version.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from saga_orchestrator import (
    SagaOrchestrator,
    SagaStatus,
    SQLiteIdempotencyStore,
    SQLiteSagaRepository,
)
from saga_orchestrator.cli import main
from tests.sagas import TripData, TripSaga

pytestmark = pytest.mark.anyio

NOT_A_DATABASE = b"this is not a SQLite database, only some text " * 100


def _is_open(connection: sqlite3.Connection) -> bool:
    try:
        connection.total_changes  # noqa: B018 (any use of a closed connection raises)
    except sqlite3.ProgrammingError:
        return False
    return True


class Connections:
    """The connections ``sqlite3.connect`` returned while installed (kept alive, so that
    none is collected, and so closed, behind the test's back)."""

    def __init__(self) -> None:
        self.opened: list[sqlite3.Connection] = []

    def still_open(self) -> list[sqlite3.Connection]:
        return [c for c in self.opened if _is_open(c)]


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[Connections]:
    seen = Connections()
    real_connect = sqlite3.connect

    def connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = real_connect(*args, **kwargs)
        seen.opened.append(connection)
        return connection

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield seen
    for connection in seen.still_open():  # a failed test does not leak on top
        connection.close()


def _not_a_database(path: Path) -> Path:
    path.write_bytes(NOT_A_DATABASE)
    return path


async def test_repository_and_store_close_their_connections(
    tmp_path: Path, connections: Connections
) -> None:
    path = tmp_path / "sagas.db"
    async with SQLiteSagaRepository(path) as repo, SQLiteIdempotencyStore(path) as store:
        result = await SagaOrchestrator(repo, idempotency_store=store).execute(TripSaga(TripData()))
        assert result.status is SagaStatus.COMPLETED
        assert len(connections.still_open()) == 2
    assert len(connections.opened) == 2
    assert connections.still_open() == []


async def test_close_twice_and_reopen(tmp_path: Path, connections: Connections) -> None:
    repo = SQLiteSagaRepository(tmp_path / "sagas.db")
    await repo.open()
    await repo.close()
    await repo.close()  # a second close is harmless
    assert connections.still_open() == []
    assert await repo.list_sagas() == []  # used again: reopened...
    assert len(connections.still_open()) == 1
    await repo.close()  # ...and closed again
    await repo.close()
    assert len(connections.opened) == 2
    assert connections.still_open() == []


@pytest.mark.parametrize("store", [SQLiteSagaRepository, SQLiteIdempotencyStore])
async def test_a_file_that_is_not_a_database_leaves_no_connection_open(
    tmp_path: Path, connections: Connections, store: type[SQLiteSagaRepository]
) -> None:
    path = _not_a_database(tmp_path / "notes.db")
    for _ in range(2):  # and a second attempt does not leak either
        with pytest.raises(sqlite3.DatabaseError):
            async with store(path):
                pass  # pragma: no cover (never entered)
    assert len(connections.opened) == 2
    assert connections.still_open() == []
    assert path.read_bytes() == NOT_A_DATABASE  # and the file is left as it was


async def test_a_failing_migration_leaves_no_connection_open(
    tmp_path: Path, connections: Connections
) -> None:
    path = tmp_path / "odd.db"
    with closing(sqlite3.connect(path)) as db:  # a table of that name, not the library's
        db.execute("CREATE TABLE saga_schema_migrations (something_else TEXT)")
    repo = SQLiteSagaRepository(path)
    with pytest.raises(sqlite3.OperationalError, match="version"):
        await repo.open()
    assert len(connections.opened) == 2
    assert connections.still_open() == []


async def test_close_in_a_cancelled_scope_still_closes(
    tmp_path: Path, connections: Connections
) -> None:
    repo = SQLiteSagaRepository(tmp_path / "sagas.db")
    await repo.open()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await repo.close()
    assert connections.still_open() == []


async def test_a_cancelled_task_closes_on_its_way_out(
    tmp_path: Path, connections: Connections
) -> None:
    path = tmp_path / "sagas.db"
    with anyio.CancelScope() as scope:
        async with SQLiteSagaRepository(path) as repo, SQLiteIdempotencyStore(path) as store:
            await SagaOrchestrator(repo, idempotency_store=store).execute(TripSaga(TripData()))
            scope.cancel()
            await anyio.lowlevel.checkpoint()  # cancelled here; __aexit__ runs cancelled
    assert scope.cancelled_caught
    assert len(connections.opened) == 2
    assert connections.still_open() == []


async def test_the_example_shop_closes_its_connections(
    tmp_path: Path, connections: Connections
) -> None:
    from order_fulfillment.shop import Shop

    async with Shop(tmp_path / "orders.db") as shop:
        await shop.seed_demo(customers=2, stock=5, rng=random.Random(1))
        assert len(connections.still_open()) == 2  # the services' and the saga store's
    assert connections.still_open() == []

    with anyio.CancelScope() as scope:  # cancelled while open
        async with Shop(tmp_path / "orders.db"):
            scope.cancel()
            await anyio.lowlevel.checkpoint()
    assert scope.cancelled_caught
    assert len(connections.opened) == 4
    assert connections.still_open() == []


async def test_the_example_shop_closes_what_it_opened_when_opening_fails(
    tmp_path: Path, connections: Connections
) -> None:
    from order_fulfillment.db import ShopDatabase
    from order_fulfillment.shop import Shop

    broken = _not_a_database(tmp_path / "broken.db")
    with pytest.raises(sqlite3.DatabaseError):
        await ShopDatabase(broken).open()
    assert connections.still_open() == []

    # The services' file opens, the saga store's does not: the first is closed again.
    shop = Shop(tmp_path / "orders.db", repository=SQLiteSagaRepository(broken))
    with pytest.raises(sqlite3.DatabaseError):
        async with shop:
            pass  # pragma: no cover (never entered)
    assert len(connections.opened) == 3
    assert connections.still_open() == []


def _store(path: Path) -> str:
    async def build() -> str:
        async with SQLiteSagaRepository(path) as repo:
            result = await SagaOrchestrator(repo).execute(TripSaga(TripData()))
            return str(result.saga_id)

    return anyio.run(build)


def test_cli_commands_close_their_connections(
    tmp_path: Path, connections: Connections, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sagas.db"
    saga_id = _store(path)
    before = len(connections.opened)
    assert main(["--db", str(path), "list"]) == 0
    assert main(["--db", str(path), "show", saga_id]) == 0
    assert main(["--db", str(path), "show", "00000000-0000-4000-8000-000000000000"]) == 1
    broken = _not_a_database(tmp_path / "notes.db")
    assert main(["--db", str(broken), "list"]) == 2  # refused by the read-only check
    capsys.readouterr()
    assert len(connections.opened) - before == 7  # per command: the read-only check, the store
    assert connections.still_open() == []


def test_cli_with_the_example_app_closes_its_connections(
    tmp_path: Path, connections: Connections, capsys: pytest.CaptureFixture[str]
) -> None:
    from order_fulfillment.shop import Shop

    path = tmp_path / "orders.db"

    async def seed() -> None:
        async with Shop(path) as shop:
            await shop.seed_demo(customers=1, stock=1, rng=random.Random(2))

    anyio.run(seed)
    app = ["--app", "order_fulfillment.admin:orchestrator", "--db", str(path)]
    assert main([*app, "list"]) == 0
    assert main([*app, "recover"]) == 0
    capsys.readouterr()
    assert connections.opened
    assert connections.still_open() == []
