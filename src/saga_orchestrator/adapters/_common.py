"""What the SQLite and PostgreSQL adapters share: their migration files and status filters (and
a SQLite read, for the rows of a query)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection
from importlib import resources
from typing import Any, Literal, TypeVar

from ..state import ACTIVE_STATUSES, SagaStatus

_Clause = TypeVar("_Clause")

ACTIVE_STATUS_FILTER = "status IN ('pending', 'running', 'compensating')"
"""The active sagas' WHERE term, spelled as in the migrations' partial indexes."""

FAILED_STATUS_FILTER = "status = 'failed'"
"""The failed sagas' WHERE term, spelled as in the migrations' partial indexes."""


def migration_files(dialect: Literal["sqlite", "postgres"]) -> list[tuple[int, str, str]]:
    """The numbered ``.sql`` files of ``adapters/migrations/<dialect>``, in order, as
    ``(number, file name, script)``."""
    folder = resources.files("saga_orchestrator.adapters.migrations") / dialect
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            number = int(entry.name.split("_", 1)[0])
            found.append((number, entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def pending_migrations(
    dialect: Literal["sqlite", "postgres"], applied: Collection[int]
) -> list[tuple[int, str, str]]:
    """The migration files of ``dialect`` whose numbers are not in ``applied``, in order."""
    return [found for found in migration_files(dialect) if found[0] not in applied]


def script_statements(script: str) -> list[str]:
    """A migration script's statements, one by one (for ``sqlite3``, which runs one statement
    per call); raises ``ValueError`` if the script ends inside a statement."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip() and not all(
        part.strip().startswith("--") for part in buffer.strip().splitlines()
    ):
        raise ValueError(f"incomplete SQL statement in migration: {buffer.strip()[:80]!r}")
    return statements


def status_values(statuses: Collection[SagaStatus]) -> list[str]:
    """The statuses' values, once each, in a stable order (for SQL literals)."""
    return sorted({SagaStatus(status).value for status in statuses})


def status_filter(statuses: Collection[SagaStatus]) -> str:
    """The WHERE term for these statuses, as literals (the values are the enum's own). SQLite
    uses a partial index only for a query term written exactly as the index's own, so the
    active and the failed sets are spelled as in the migrations."""
    wanted = {SagaStatus(status) for status in statuses}
    if wanted == ACTIVE_STATUSES:
        return ACTIVE_STATUS_FILTER
    if wanted == {SagaStatus.FAILED}:
        return FAILED_STATUS_FILTER
    return f"status IN ({', '.join(repr(value) for value in status_values(wanted))})"


def selection(
    statuses: Collection[SagaStatus] | None,
    saga_type: str | None,
    *,
    status_clause: Callable[[Collection[SagaStatus]], _Clause],
    type_clause: _Clause,
) -> tuple[list[_Clause], list[Any]]:
    """The filter clauses and parameters that ``list_sagas`` and ``list_saga_ids`` share:
    the status clause (if ``statuses`` is given), then ``type_clause`` with ``saga_type`` as
    its parameter (if given)."""
    clauses: list[_Clause] = []
    params: list[Any] = []
    if statuses is not None:
        clauses.append(status_clause(statuses))
    if saga_type is not None:
        clauses.append(type_clause)
        params.append(saga_type)
    return clauses, params


def fetch_all(query: str) -> Callable[[sqlite3.Connection], list[Any]]:
    """A SQLite read (for the adapter's reader thread): ``query``'s rows."""

    def run(connection: sqlite3.Connection) -> list[Any]:
        return connection.execute(query).fetchall()

    return run
