"""Write ``tests/data/v0.1.0/`` with the released 0.1.0 code. Run once; never regenerate.

The fixtures must be what 0.1.0 wrote, so this refuses to run unless the ``saga_orchestrator``
it imports is byte-identical to the ``v0.1.0`` tag's ``src/saga_orchestrator``::

    rm -rf /tmp/v010 && mkdir /tmp/v010
    git -C /work/main archive v0.1.0 src | tar -x -C /tmp/v010
    cd /work/main
    PYTHONPATH=/tmp/v010/src:/work/main .venv/bin/python -m tests.upgrade.make_fixtures

It writes, for each storage (``--only sqlite`` or ``--only postgres`` for one):

1. the sagas that end in this process (``plan.PLANS`` without ``killed``), one after another:
   completed, compensated, failed (a compensation failed for good), failed then retried once
   (compensated, with an error history), an express saga with a deadline; on PostgreSQL a
   submitted saga no worker ran;
2. the sagas left in flight: a child process (``child`` below) runs them concurrently until
   each is at its point (an action hanging, a compensation hanging, a retry backoff under
   way), prints ``ready``, and is SIGKILLed: their state is what 0.1.0 leaves after a crash
   (the attempt recorded as running; on PostgreSQL, the dead process's leases);
3. ``sagas.sqlite`` (checkpointed: no WAL beside it) or ``postgres.sql`` (``pg_dump`` of the
   ``upgrade_fixture`` schema, plain SQL with INSERTs, which is then dropped, and loaded again
   once under another name to check that it loads), and ``stored.json``: every saga's state
   (all but its data) as 0.1.0 read it back.

PostgreSQL: ``SAGA_TEST_POSTGRES_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import anyio

import saga_orchestrator
from saga_orchestrator import (
    SagaEvent,
    SagaEventType,
    SagaOrchestrator,
    SagaStatus,
    SQLiteIdempotencyStore,
    SQLiteSagaRepository,
)
from tests.upgrade import sagas
from tests.upgrade.plan import (
    BY_ID,
    FIXTURE_SCHEMA,
    FIXTURES,
    POSTGRES_FIXTURE,
    SQLITE_FIXTURE,
    SQLITE_OUTBOX_SENT,
    STORED_FIXTURE,
    Planned,
    load_postgres_fixture,
    plans,
    snapshot,
)

POSTGRES_URL = os.environ.get("SAGA_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
READY_TIMEOUT_SECONDS = 60.0
"""How long the child may take to bring every saga to its point."""
TAG = "v0.1.0"


def _say(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------------- the code under use


def check_released_code() -> Path:
    """The imported package's folder; SystemExit unless it is exactly the tag's."""
    package = Path(saga_orchestrator.__file__).resolve().parent
    listing = subprocess.run(
        ["git", "-C", str(FIXTURES.parents[2]), "ls-tree", "-r", "--full-tree", TAG],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    prefix = "src/saga_orchestrator/"
    tagged = {}
    for line in listing.splitlines():
        meta, path = line.split("\t", 1)
        if path.startswith(prefix):
            tagged[path[len(prefix) :]] = meta.split()[2]
    found = {}
    for file in package.rglob("*"):
        if file.is_file() and "__pycache__" not in file.parts:
            content = file.read_bytes()
            header = f"blob {len(content)}\0".encode()
            found[file.relative_to(package).as_posix()] = hashlib.sha1(header + content).hexdigest()
    if found != tagged:
        differing = sorted(
            set(found) ^ set(tagged) | {p for p in found if found[p] != tagged.get(p)}
        )
        raise SystemExit(
            f"{package} is not {TAG}'s src/saga_orchestrator (differs: {differing[:10]}); "
            "put the tag's src first on PYTHONPATH (see this module's docstring)"
        )
    return package


# ---------------------------------------------------------------------- storage


class Storage:
    """One backend's repositories, for the parent and the child alike."""

    def __init__(self, backend: str, target: str) -> None:
        self.backend = backend
        self.target = target

    def repository(self, *, outbox: bool = False) -> Any:
        if self.backend == "sqlite":
            if outbox:
                return SQLiteSagaRepository(self.target, outbox=True)
            return SQLiteSagaRepository(self.target)  # 0.1.0's defaults
        from saga_orchestrator.adapters.postgres import PostgresSagaRepository

        return PostgresSagaRepository(POSTGRES_URL, schema=self.target)

    def idempotency_store(self) -> Any:
        if self.backend == "sqlite":
            return SQLiteIdempotencyStore(self.target)
        from saga_orchestrator.adapters.postgres import PostgresIdempotencyStore

        return PostgresIdempotencyStore(POSTGRES_URL, schema=self.target)


def _arm(plan: Planned) -> None:
    for (step, phase), faults in plan.faults.items():
        sagas.FAULTS[(plan.saga_id, step, phase)] = list(faults)


def _expect(result: Any, status: SagaStatus, plan: Planned) -> None:
    if result.status is not status:
        raise SystemExit(f"{plan.key}: ended {result.status}, expected {status}: {result.error}")


async def run_settled(storage: Storage) -> None:
    """The sagas that end (or are submitted) in this process, one after another."""
    for plan in plans(storage.backend):
        if plan.killed:
            continue
        _arm(plan)
        async with (
            storage.repository(outbox=plan.outbox) as repository,
            storage.idempotency_store() as store,
        ):
            orchestrator = SagaOrchestrator(repository, idempotency_store=store)
            sagas.register(orchestrator)
            if plan.submitted:
                await orchestrator.submit(plan.saga())
                _say(f"  {plan.key}: submitted")
                continue
            result = await orchestrator.execute(plan.saga())
            if plan.retried:
                _expect(result, SagaStatus.FAILED, plan)
                result = await orchestrator.retry(plan.saga_id)
            _say(f"  {plan.key}: {result.status}")
            if plan.outbox:
                unsent = await repository.fetch_unsent(100)
                await repository.mark_sent([i for i, _ in unsent[:SQLITE_OUTBOX_SENT]])


class _Ready:
    """The child's progress: prints ``ready`` once every killed saga is at its point."""

    def __init__(self, keys: set[str]) -> None:
        self.waiting = set(keys)

    def reach(self, key: str, how: str) -> None:
        _say(f"at-point {key} ({how})")
        self.waiting.discard(key)
        if not self.waiting:
            _say("ready")

    def on_event(self, event: SagaEvent) -> None:  # SagaListener
        if event.type is SagaEventType.STEP_FAILED and event.will_retry:
            self.reach(BY_ID[event.saga_id].key, f"backoff after {event.step}")


async def run_child(storage: Storage) -> None:
    """Run the killed sagas concurrently until the parent SIGKILLs this process."""
    _say(f"module {saga_orchestrator.__file__}")
    killed = [plan for plan in plans(storage.backend) if plan.killed]
    ready = _Ready({plan.key for plan in killed})
    sagas.on_hold = lambda saga_id, step, phase: ready.reach(
        BY_ID[saga_id].key, f"{step} {phase} hangs"
    )
    for plan in killed:
        _arm(plan)
    async with storage.repository() as repository, storage.idempotency_store() as store:
        orchestrator = SagaOrchestrator(repository, idempotency_store=store, listeners=[ready])
        sagas.register(orchestrator)
        async with anyio.create_task_group() as tg:
            for plan in killed:
                tg.start_soon(orchestrator.execute, plan.saga())
    raise SystemExit("child: every saga ended, none was left in flight")


def kill_child_at_points(storage: Storage, package: Path) -> None:
    """Start ``child``, wait for its ``ready`` line, SIGKILL it."""
    command = [sys.executable, "-m", "tests.upgrade.make_fixtures", "child"]
    command += ["--backend", storage.backend, "--target", storage.target]
    process = subprocess.Popen(command, cwd=FIXTURES.parents[2], stdout=subprocess.PIPE, text=True)
    watchdog = threading.Timer(READY_TIMEOUT_SECONDS, process.kill)
    watchdog.start()
    try:
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        if first != f"module {package / '__init__.py'}":
            raise SystemExit(f"the child imported another saga_orchestrator: {first!r}")
        while True:
            line = process.stdout.readline()
            if not line:
                raise SystemExit(f"child ended ({process.wait()}) before it was ready")
            _say(f"  child: {line.strip()}")
            if line.strip() == "ready":
                break
        os.kill(process.pid, signal.SIGKILL)
        if process.wait() != -signal.SIGKILL:
            raise SystemExit(f"child ended with {process.returncode}, not by SIGKILL")
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


async def read_back(storage: Storage) -> dict[str, Any]:
    """Every fixture saga as this (0.1.0) code reads it: ``{key: snapshot}``."""
    stored: dict[str, Any] = {}
    async with storage.repository() as repository:
        for plan in plans(storage.backend):
            context = await repository.get(plan.saga_id)
            if context is None:
                raise SystemExit(f"{plan.key}: not stored")
            stored[plan.key] = snapshot(context)
            _say(f"  {plan.key}: {context.status} {[s.status.value for s in context.steps]}")
    return stored


# ---------------------------------------------------------------------- per backend


def make_sqlite(package: Path, workdir: Path) -> dict[str, Any]:
    path = workdir / SQLITE_FIXTURE.name
    storage = Storage("sqlite", str(path))
    _say(f"SQLite: {path}")
    anyio.run(run_settled, storage)
    kill_child_at_points(storage, package)
    stored: dict[str, Any] = anyio.run(read_back, storage)
    # Fold the WAL into the file (the child died with it open): one self-contained file.
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (check,) = connection.execute("PRAGMA integrity_check").fetchone()
        if check != "ok":
            raise SystemExit(f"integrity check: {check}")
    finally:
        connection.close()
    for extra in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        if extra.exists() and extra.stat().st_size:
            raise SystemExit(f"{extra} is not empty after the checkpoint")
        extra.unlink(missing_ok=True)
    path.replace(SQLITE_FIXTURE)
    return stored


async def _mark_completed_sent(storage: Storage) -> None:
    """Mark the completed saga's outbox events sent (a relay published them)."""
    completed = next(plan for plan in plans(storage.backend) if plan.key == "completed")
    async with storage.repository() as repository:
        unsent = await repository.fetch_unsent(1000)
        await repository.mark_sent([i for i, e in unsent if e.saga_id == completed.saga_id])


def _drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


def _counts(schema: str) -> dict[str, int]:
    import psycopg
    from psycopg import sql

    counts = {}
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        for table in ("sagas", "saga_outbox", "idempotency_keys", "saga_schema_migrations"):
            query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
            row = connection.execute(query).fetchone()
            assert row is not None
            counts[table] = int(row[0])
    return counts


def make_postgres(package: Path, workdir: Path) -> dict[str, Any]:
    _say(f"PostgreSQL: {POSTGRES_URL} schema {FIXTURE_SCHEMA}")
    storage = Storage("postgres", FIXTURE_SCHEMA)
    _drop_schema(FIXTURE_SCHEMA)
    try:
        anyio.run(run_settled, storage, backend="asyncio")
        kill_child_at_points(storage, package)
        anyio.run(_mark_completed_sent, storage, backend="asyncio")
        stored: dict[str, Any] = anyio.run(read_back, storage, backend="asyncio")
        counts = _counts(FIXTURE_SCHEMA)
        dump = workdir / POSTGRES_FIXTURE.name
        subprocess.run(
            [
                "pg_dump",
                f"--schema={FIXTURE_SCHEMA}",
                "--no-owner",
                "--no-privileges",
                "--column-inserts",  # no COPY blocks: psycopg can run the script as it is
                f"--file={dump}",
                POSTGRES_URL,
            ],
            check=True,
        )
    finally:
        _drop_schema(FIXTURE_SCHEMA)
    dump.replace(POSTGRES_FIXTURE)
    check_schema = f"{FIXTURE_SCHEMA}_load_check"
    _drop_schema(check_schema)
    try:
        load_postgres_fixture(POSTGRES_URL, check_schema)
        if _counts(check_schema) != counts:
            raise SystemExit(f"the dump loads {_counts(check_schema)}, not {counts}")
    finally:
        _drop_schema(check_schema)
    _say(f"  dump loads: {counts}")
    return stored


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.upgrade.make_fixtures")
    parser.add_argument("role", nargs="?", choices=["parent", "child"], default="parent")
    parser.add_argument("--only", choices=["sqlite", "postgres"])
    parser.add_argument("--backend", choices=["sqlite", "postgres"], help="child only")
    parser.add_argument("--target", help="child only: the SQLite file or PostgreSQL schema")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace existing fixtures (never do this)"
    )
    args = parser.parse_args(argv)
    if args.role == "child":
        anyio.run(run_child, Storage(args.backend, args.target), backend="asyncio")
        return
    package = check_released_code()
    _say(f"saga_orchestrator: {saga_orchestrator.__file__} (identical to {TAG})")
    backends = [args.only] if args.only else ["sqlite", "postgres"]
    targets = {"sqlite": SQLITE_FIXTURE, "postgres": POSTGRES_FIXTURE}
    existing = [str(targets[b]) for b in backends if targets[b].exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"refusing to overwrite {existing}: the fixtures are never regenerated")
    FIXTURES.mkdir(parents=True, exist_ok=True)
    stored = json.loads(STORED_FIXTURE.read_text()) if STORED_FIXTURE.exists() else {}
    with tempfile.TemporaryDirectory() as workdir:
        for backend in backends:
            make = make_sqlite if backend == "sqlite" else make_postgres
            stored[backend] = make(package, Path(workdir))
    stored["made_with"] = f"saga-orchestrator {TAG}"
    STORED_FIXTURE.write_text(json.dumps(stored, indent=2, sort_keys=True) + "\n")
    _say(f"wrote {', '.join(str(targets[b]) for b in backends)} and {STORED_FIXTURE}")


if __name__ == "__main__":
    main()
