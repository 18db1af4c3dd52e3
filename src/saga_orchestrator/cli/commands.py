"""The commands (list, show, retry, cancel, recover) and the saga store they run against."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from ..adapters.sqlite import SQLiteSagaRepository
from ..errors import SagaError, SagaNotFoundError
from ..orchestrator import SagaOrchestrator
from ..state import ACTIVE_STATUSES, SagaContext, SagaResult, SagaStatus
from . import render
from .exits import EXIT_OK, Failed, UsageError

__all__ = [
    "AppFactory",
    "run_cancel",
    "run_list",
    "run_recover",
    "run_retry",
    "run_show",
    "run_worker",
    "source",
]

AppFactory = Callable[[str | None], AbstractAsyncContextManager[SagaOrchestrator]]
"""What ``--app MODULE:CALLABLE`` names: ``CALLABLE(db)`` → ``async with`` → orchestrator."""


# ---------------------------------------------------------------------- the store


def source(db: str | None, app: str | None) -> AppFactory:
    """Where the sagas are, checked before anything is opened (usage errors: exit 2)."""
    if app is not None:
        return _checked(app, _load_app(app))
    if db is None:
        raise UsageError("no saga store: pass --db PATH (a SQLite file) or --app MODULE:CALLABLE")
    _check_store(db)
    return _sqlite


def _check_store(db: str) -> None:
    """Refuse, read-only, a file that is not a saga store: opening it would add the tables."""
    path = Path(db)
    if not path.is_file():
        raise UsageError(f"--db {db}: no such file (this command does not create databases)")
    try:
        uri = f"{path.resolve().as_uri()}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as connection:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sagas'"
            ).fetchone()
    except sqlite3.Error as exc:
        raise UsageError(f"--db {db}: not a SQLite database ({exc})") from exc
    if found is None:
        raise UsageError(f"--db {db}: no sagas table, so not a saga-orchestrator store")


@contextlib.asynccontextmanager
async def _sqlite(db: str | None) -> AsyncIterator[SagaOrchestrator]:
    """--db alone: the SQLite repository and an orchestrator that knows no saga type. Data
    whose classes are not importable here is shown as stored, not refused."""
    assert db is not None
    async with SQLiteSagaRepository(db, keep_unknown_types=True) as repository:
        yield SagaOrchestrator(repository)


def _checked(app: str, factory: AppFactory) -> AppFactory:
    """``factory`` with its contract checked and its own failures explained."""

    @contextlib.asynccontextmanager
    async def open_app(db: str | None) -> AsyncIterator[SagaOrchestrator]:
        try:
            manager = factory(db)
        except Exception as exc:
            raise Failed(f"--app {app}: {_describe(exc)}") from exc
        if not (hasattr(manager, "__aenter__") and hasattr(manager, "__aexit__")):
            raise UsageError(
                f"--app {app} returned {type(manager).__name__}, not an async context "
                "manager (decorate it with @contextlib.asynccontextmanager)"
            )
        async with contextlib.AsyncExitStack() as stack:
            try:
                opened = await stack.enter_async_context(manager)
            except (SagaError, sqlite3.Error):
                raise
            except Exception as exc:
                raise Failed(f"--app {app} could not start: {_describe(exc)}") from exc
            if not isinstance(opened, SagaOrchestrator):
                raise UsageError(
                    f"--app {app} yielded {type(opened).__name__}, not a SagaOrchestrator"
                )
            yield opened

    return open_app


def _load_app(spec: str) -> AppFactory:
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"--app {spec}: cannot import {module_name!r}: {exc}") from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise UsageError(
                f"--app {spec}: {module_name} has no attribute {attribute!r}"
            ) from None
    if not callable(target):
        raise UsageError(f"--app {spec}: {attribute} is a {type(target).__name__}, not callable")
    factory: AppFactory = target
    return factory


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


# ---------------------------------------------------------------------- commands


async def run_list(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    statuses = {SagaStatus(s) for s in args.status} if args.status else None
    limit: int = args.limit
    sagas = await orchestrator.list_sagas(statuses=statuses, saga_type=args.saga_type, limit=limit)
    now = datetime.now(UTC)
    older_than: timedelta | None = args.older_than
    if older_than is not None:
        # Oldest first: the sagas old enough come before the others, so `limit` still holds.
        sagas = [s for s in sagas if s.created_at is not None and now - s.created_at > older_than]
    summaries = [render.summary(context) for context in sagas]
    if args.json:
        print(json.dumps(summaries, indent=2))
    elif not sagas:
        print("no sagas match", file=sys.stderr)
    else:
        headers = ["SAGA_ID", "TYPE", "STATUS", "STEP", "AGE", "ERROR"]
        rows = [
            [
                str(context.saga_id),
                context.saga_type,
                context.status.value,
                render.current_step(context) or "-",
                render.age(context.created_at, now),
                render.truncate(context.error or "", render.ERROR_WIDTH),
            ]
            for context in sagas
        ]
        print(render.table(headers, rows))
    if len(sagas) == limit:
        print(f"showing the first {limit} (oldest); raise --limit to see more", file=sys.stderr)
    return EXIT_OK


async def run_show(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    context = await _get(orchestrator, args.saga_id)
    detail = render.detail(context)
    if args.json:
        print(json.dumps(detail, indent=2))
    else:
        print(render.detail_text(context, detail, datetime.now(UTC)))
    return EXIT_OK


async def run_retry(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    result = await orchestrator.retry(args.saga_id)
    return _outcome(result, "compensation still failing")


async def run_cancel(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    result = await orchestrator.cancel(args.saga_id, args.reason)
    return _outcome(result, "compensation failed")


async def run_recover(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    pending = await orchestrator.list_sagas(statuses=ACTIVE_STATUSES, limit=1_000_000)
    unknown = sorted({s.saga_type for s in pending if s.saga_type not in orchestrator.registry})
    results = await orchestrator.recover()
    if not results:
        print("nothing to recover")
    else:
        print(f"resumed {len(results)} saga{'s' if len(results) != 1 else ''}")
        rows = [
            [
                str(r.saga_id),
                r.saga_type,
                r.status.value,
                render.truncate(r.error or "", render.ERROR_WIDTH),
            ]
            for r in results
        ]
        print(render.table(["SAGA_ID", "TYPE", "STATUS", "ERROR"], rows, indent="  "))
    if unknown:
        skipped = sum(1 for s in pending if s.saga_type in unknown)
        hint = "" if args.app else "; pass --app MODULE:CALLABLE to load their code"
        print(
            f"skipped {skipped} saga{'s' if skipped != 1 else ''} of unregistered type "
            f"{', '.join(unknown)}{hint}",
            file=sys.stderr,
        )
    return EXIT_OK


async def _get(orchestrator: SagaOrchestrator, saga_id: UUID) -> SagaContext[Any]:
    context = await orchestrator.get(saga_id)
    if context is None:
        raise SagaNotFoundError(saga_id)
    return context


def _outcome(result: SagaResult[Any], failure: str) -> int:
    print(f"saga {result.saga_id} ({result.saga_type}): {result.status.value}")
    if result.status is SagaStatus.COMPENSATED:
        return EXIT_OK
    raise Failed(f"{failure}: saga {result.saga_id} is {result.status.value}: {result.error}")


async def run_worker(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    """Claim and run sagas until SIGTERM or SIGINT, then hand back what is left."""
    from ..worker import SagaWorker

    if args.app is None:
        raise UsageError(
            "worker needs --app MODULE:CALLABLE yielding an orchestrator on a repository with "
            "leases (PostgresSagaRepository) and its saga types registered"
        )
    try:
        worker = SagaWorker(
            orchestrator,
            concurrency=args.concurrency,
            poll_interval_seconds=args.poll_interval,
            park_after_seconds=args.park_after,
            shutdown_grace_seconds=args.grace,
        )
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--app {args.app}: {exc}") from None
    if not orchestrator.registry.saga_types:
        raise UsageError(f"--app {args.app}: the orchestrator has no saga type registered")
    print(
        f"worker {getattr(orchestrator.repository, 'owner', '?')}: running "
        f"{', '.join(sorted(orchestrator.registry.saga_types))} with {args.concurrency} at "
        "once; SIGTERM or Ctrl-C stops it",
        file=sys.stderr,
        flush=True,
    )
    await worker.run_until_signalled()
    print(
        f"worker stopped: {worker.claimed} claimed, {worker.finished} finished, "
        f"{worker.parked} parked, {worker.lost} lost, {worker.handed_back} handed back",
        file=sys.stderr,
    )
    return EXIT_OK
