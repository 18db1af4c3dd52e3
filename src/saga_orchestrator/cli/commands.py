"""The commands (list, show, retry, cancel, recover, deliver, worker) and the saga store they
run against."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import json
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

from ..adapters.sqlite import SQLiteSagaRepository
from ..errors import InvalidEventError, SagaError, SagaNotFoundError, SerializationError
from ..inbox import Delivery, DeliveryStatus
from ..orchestrator import SagaOrchestrator
from ..protocols import SagaInbox
from ..state import ACTIVE_STATUSES, SagaContext, SagaResult, SagaStatus
from . import render
from .exits import EXIT_OK, PROG, Failed, UsageError

__all__ = [
    "AppFactory",
    "Unreadable",
    "read_sagas",
    "run_cancel",
    "run_deliver",
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
    if db.startswith(("postgresql://", "postgres://")) or ("host=" in db and "dbname=" in db):
        raise UsageError(
            f"--db {db}: a PostgreSQL URL needs --app MODULE:CALLABLE (a callable that opens "
            "a PostgresSagaRepository on it); --db alone reads SQLite files only"
        )
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


def unreadable_reason(error: SerializationError) -> str:
    """Why a stored saga cannot be read, with a hint when its data's code is not importable."""
    if "cannot be imported" in str(error):
        return (
            f"{error}; run from the directory your saga code is importable from, "
            "or add it to PYTHONPATH"
        )
    return str(error)


def _report(message: str) -> None:
    """One line on stderr, as the runner reports errors, for a command that carries on."""
    print(f"{PROG}: error: {message}", file=sys.stderr)


# ---------------------------------------------------------------------- reading sagas


@dataclass(frozen=True)
class Unreadable:
    """A stored saga whose state cannot be decoded: its id, and what is wrong."""

    saga_id: UUID
    reason: str


async def read_sagas(
    orchestrator: SagaOrchestrator,
    *,
    statuses: Collection[SagaStatus] | None,
    saga_type: str | None,
    limit: int,
) -> list[SagaContext[Any] | Unreadable]:
    """What ``list_sagas`` selects, oldest first, each saga decoded or named as unreadable.

    One query while every row decodes. When one does not, ``list_sagas`` cannot say which or
    return the others, so the ids are listed (``list_saga_ids``, which the built-in
    repositories have) and each saga is read on its own, as ``recover()`` does.
    """
    try:
        found = await orchestrator.list_sagas(statuses=statuses, saga_type=saga_type, limit=limit)
        return list(found)
    except SerializationError as exc:
        first = exc
    repository = orchestrator.repository
    list_ids = getattr(repository, "list_saga_ids", None)
    if list_ids is None or (saga_type is not None and not _accepts(list_ids, "saga_type")):
        raise Failed(
            f"a stored saga cannot be read ({unreadable_reason(first)}), and "
            f"{type(repository).__name__} cannot list saga ids"
            f"{' by type' if list_ids is not None else ''} to read the others one by one"
        ) from first
    options: dict[str, Any] = {"statuses": statuses, "limit": limit}
    if saga_type is not None:
        options["saga_type"] = saga_type
    entries: list[SagaContext[Any] | Unreadable] = []
    for saga_id in await list_ids(**options):
        try:
            context = await repository.get(saga_id)
        except SerializationError as exc:
            entries.append(Unreadable(saga_id, unreadable_reason(exc)))
            continue
        if context is not None:  # else deleted meanwhile
            entries.append(context)
    return entries


def _accepts(function: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


class _RecoveryFailures(logging.Filter):
    """Collects the sagas ``recover()`` logs as not resumed (``saga.recovery.failed``), with
    why. With no logging configured, their records (tracebacks) are dropped: the command
    names each saga on one line instead."""

    def __init__(self, let_through: bool) -> None:
        super().__init__()
        self.let_through = let_through
        self.failures: dict[str, str] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "event", None) != "saga.recovery.failed":
            return True
        error = record.exc_info[1] if record.exc_info else None
        reason = _describe(error) if error is not None else record.getMessage()
        if isinstance(error, SerializationError):
            reason = f"unreadable: {unreadable_reason(error)}"
        self.failures[str(getattr(record, "saga_id", "?"))] = reason
        return self.let_through


@contextlib.contextmanager
def _recovery_failures() -> Iterator[_RecoveryFailures]:
    logger = logging.getLogger("saga_orchestrator")
    failures = _RecoveryFailures(let_through=logger.hasHandlers())
    logger.addFilter(failures)
    try:
        yield failures
    finally:
        logger.removeFilter(failures)


# ---------------------------------------------------------------------- commands


async def run_list(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    statuses = {SagaStatus(s) for s in args.status} if args.status else None
    limit: int = args.limit
    entries = await read_sagas(
        orchestrator, statuses=statuses, saga_type=args.saga_type, limit=limit
    )
    now = datetime.now(UTC)
    older_than: timedelta | None = args.older_than
    if older_than is not None:
        # Oldest first: the sagas old enough come before the others, so `limit` still holds.
        # An unreadable saga's age is unknown: it is always named.
        entries = [
            entry
            for entry in entries
            if isinstance(entry, Unreadable)
            or (entry.created_at is not None and render.elapsed(entry.created_at, now) > older_than)
        ]
    if args.saga_version is not None:
        entries = [
            entry
            for entry in entries
            if isinstance(entry, Unreadable) or entry.saga_version == args.saga_version
        ]
    stranded = await _stranded(orchestrator)
    if args.stranded:
        entries = [entry for entry in entries if str(entry.saga_id) in stranded]
    sagas = [entry for entry in entries if not isinstance(entry, Unreadable)]
    unreadable = [entry for entry in entries if isinstance(entry, Unreadable)]
    if args.json:
        documents = [
            {"saga_id": str(entry.saga_id), "unreadable": entry.reason}
            if isinstance(entry, Unreadable)
            else {**render.summary(entry), "stranded": stranded.get(str(entry.saga_id))}
            for entry in entries
        ]
        print(json.dumps(documents, indent=2))
    elif not entries:
        print("no sagas match", file=sys.stderr)
    elif sagas:
        headers = ["SAGA_ID", "TYPE", "VER", "STATUS", "STEP", "AGE", "ERROR"]
        rows = []
        for context in sagas:
            reason = stranded.get(str(context.saga_id))
            status = context.status.value + (" (stranded)" if reason is not None else "")
            error = f"stranded: {reason}" if reason is not None else context.error or ""
            rows.append(
                [
                    str(context.saga_id),
                    context.saga_type,
                    str(context.saga_version),
                    status,
                    render.step_cell(context),
                    render.age(context.created_at, now),
                    render.truncate(error, render.ERROR_WIDTH),
                ]
            )
        print(render.table(headers, rows))
    for entry in unreadable:
        _report(f"saga {entry.saga_id} is unreadable: {entry.reason}")
    if len(entries) == limit:
        print(f"showing the first {limit} (oldest); raise --limit to see more", file=sys.stderr)
    if unreadable:
        raise Failed(f"{_plural(len(unreadable), 'saga')} cannot be read (named above)")
    return EXIT_OK


async def _stranded(orchestrator: SagaOrchestrator) -> dict[str, str]:
    """``{saga id: why}`` of the stranded sagas, where the repository records them."""
    list_stranded = getattr(orchestrator.repository, "list_stranded", None)
    if list_stranded is None:
        return {}
    return {str(s.saga_id): s.reason for s in await list_stranded(limit=1_000_000)}


async def _by_prefix(orchestrator: SagaOrchestrator, prefix: str) -> UUID:
    """The one stored saga whose id starts with ``prefix`` (reads every id: a CLI aid)."""
    list_ids = getattr(orchestrator.repository, "list_saga_ids", None)
    if list_ids is not None:
        ids: list[UUID] = list(await list_ids(limit=100_000_000))
    else:
        ids = [c.saga_id for c in await orchestrator.repository.list_sagas(limit=100_000_000)]
    matches = sorted(str(i) for i in ids if str(i).startswith(prefix))
    if not matches:
        raise Failed(f"no saga id starts with {prefix!r}")
    if len(matches) > 1:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        raise Failed(f"{len(matches)} saga ids start with {prefix!r}: {shown}; give more of it")
    return UUID(matches[0])


async def run_show(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    saga_id = args.saga_id
    if not isinstance(saga_id, UUID):
        saga_id = await _by_prefix(orchestrator, saga_id)
    context = await _get(orchestrator, saga_id)
    detail = render.detail(context)
    detail["stranded"] = (await _stranded(orchestrator)).get(str(context.saga_id))
    repository = orchestrator.repository
    detail["inbox"] = (
        render.inbox(context, await repository.saga_events(context.saga_id))
        if isinstance(repository, SagaInbox)
        else None
    )
    if args.json:
        print(json.dumps(detail, indent=2))
    else:
        print(render.detail_text(context, detail, datetime.now(UTC)))
    return EXIT_OK


async def run_retry(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    await _get(orchestrator, args.saga_id)  # an unreadable saga is named as such
    result = await orchestrator.retry(args.saga_id)
    return _outcome(result, "compensation still failing")


async def run_cancel(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    await _get(orchestrator, args.saga_id)  # an unreadable saga is named as such
    result = await orchestrator.cancel(args.saga_id, args.reason)
    return _outcome(result, "compensation failed")


async def run_recover(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    entries = await read_sagas(
        orchestrator, statuses=ACTIVE_STATUSES, saga_type=None, limit=1_000_000
    )
    pending = [entry for entry in entries if not isinstance(entry, Unreadable)]
    not_resumed = {
        str(entry.saga_id): f"unreadable: {entry.reason}"
        for entry in entries
        if isinstance(entry, Unreadable)
    }
    unknown = sorted({s.saga_type for s in pending if s.saga_type not in orchestrator.registry})
    with _recovery_failures() as failures:
        results = await orchestrator.recover()
    for saga_id, reason in failures.failures.items():
        not_resumed.setdefault(saga_id, reason)
    for skipped_saga in results.skipped:  # unregistered types included: they stay unfinished
        not_resumed.setdefault(str(skipped_saga.saga_id), skipped_saga.reason)
    if results:
        print(f"resumed {_plural(len(results), 'saga')}")
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
    elif not results.waiting:
        print("no saga resumed" if not_resumed else "nothing to recover")
    if results.waiting:
        now = datetime.now(UTC)
        print(
            f"{_plural(len(results.waiting), 'saga')} still waiting "
            "(parked at a wait step until its event or its time comes)"
        )
        waiting = [
            [str(r.saga_id), r.saga_type, *render.waiting_cells(r.steps, now)]
            for r in results.waiting
        ]
        print(
            render.table(["SAGA_ID", "TYPE", "STEP", "WAITING FOR", "UNTIL"], waiting, indent="  ")
        )
    if unknown:
        skipped = sum(1 for s in pending if s.saga_type in unknown)
        hint = "" if args.app else "; pass --app MODULE:CALLABLE to load their code"
        print(
            f"skipped {_plural(skipped, 'saga')} of unregistered type {', '.join(unknown)}{hint}",
            file=sys.stderr,
        )
    for saga_id, reason in not_resumed.items():
        _report(f"saga {saga_id} was not resumed: {reason}")
    if not_resumed:
        raise Failed(f"{_plural(len(not_resumed), 'saga')} could not be resumed (named above)")
    return EXIT_OK


async def _get(orchestrator: SagaOrchestrator, saga_id: UUID) -> SagaContext[Any]:
    try:
        context = await orchestrator.get(saga_id)
    except SerializationError as exc:
        raise Failed(f"saga {saga_id} is unreadable: {unreadable_reason(exc)}") from exc
    if context is None:
        raise SagaNotFoundError(saga_id)
    return context


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _outcome(result: SagaResult[Any], failure: str) -> int:
    print(f"saga {result.saga_id} ({result.saga_type}): {result.status.value}")
    if result.status is SagaStatus.COMPENSATED:
        return EXIT_OK
    raise Failed(f"{failure}: saga {result.saga_id} is {result.status.value}: {result.error}")


async def run_deliver(orchestrator: SagaOrchestrator, args: argparse.Namespace) -> int:
    """Deliver an event to one saga (``deliver_event``); say what was done with it."""
    if not isinstance(orchestrator.repository, SagaInbox):
        raise Failed(
            f"{type(orchestrator.repository).__name__} keeps no events (it is no SagaInbox): "
            "events cannot be delivered to its sagas"
        )
    try:
        delivery = await orchestrator.deliver_event(
            args.event,
            args.payload,
            event_id=args.event_id,
            saga_id=args.saga_id,
            correlation_id=args.correlation_id,
            drive=False if args.no_drive else None,
        )
    except InvalidEventError as exc:
        raise UsageError(f"{exc} (nothing was stored)") from exc
    if args.json:
        print(json.dumps(render.delivery(delivery, args.event), indent=2))
    else:
        print(f"event {delivery.event_id} ({args.event}): {delivery.status.value}")
        print(f"saga {delivery.saga_id}: {delivery.saga_status.value}")
    return await _delivered(orchestrator, args, delivery)


async def _delivered(
    orchestrator: SagaOrchestrator, args: argparse.Namespace, delivery: Delivery
) -> int:
    """The exit status of a delivery, with a note on stderr saying what comes next."""
    if delivery.status is DeliveryStatus.CONSUMED:
        return EXIT_OK
    if delivery.status is DeliveryStatus.IGNORED:
        if delivery.saga_status is SagaStatus.RUNNING:
            why = f"it is past every wait step for event {args.event!r}"
        else:
            why = f"it is {delivery.saga_status.value}"
        raise Failed(
            f"saga {delivery.saga_id} will never consume event {delivery.event_id}: {why} "
            "(nothing was stored)"
        )
    if delivery.status is DeliveryStatus.DUPLICATE:
        note = "delivered before: nothing changed"
    elif args.no_drive:
        note = f"kept (--no-drive): {_RESUMERS}"
    else:
        try:
            context = await orchestrator.get(delivery.saga_id)
        except SerializationError:  # stored all the same; whoever resumes it will say
            context = None
        saga_type = context.saga_type if context is not None else None
        if saga_type is not None and saga_type not in orchestrator.registry:
            hint = (
                f"the orchestrator from --app {args.app} has no factory for saga type {saga_type!r}"
                if args.app
                else "pass --app MODULE:CALLABLE for the saga to consume it now"
            )
            note = f"kept in the saga's inbox ({hint}): {_RESUMERS}"
        else:
            note = (
                "kept in the saga's inbox: the saga consumes it when it reaches its wait "
                "step, or when the process driving it (a worker) resumes it"
            )
    print(note, file=sys.stderr)
    return EXIT_OK


_RESUMERS = "the saga consumes it when recover, the service's wake_due or a worker resumes it"


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
