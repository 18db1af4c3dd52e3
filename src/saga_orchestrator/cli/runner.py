"""The entry point: parse, open the store, run the command, and turn errors into exit statuses."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import anyio

from ..errors import SagaError, SerializationError, UnknownSagaTypeError
from ..orchestrator import SagaOrchestrator
from . import commands
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, PROG, Failed, UsageError
from .parser import build_parser

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (the console script exits with it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        with _verbose(bool(args.verbose)), _cwd_importable():
            try:
                source = commands.source(args.db, args.app)
            except UsageError as exc:
                _error(str(exc))
                return EXIT_USAGE
            status: int = anyio.run(_run, args, source)
            return status
    except KeyboardInterrupt:
        _error("interrupted; what was recorded stands, and 'recover' resumes unfinished sagas")
        return EXIT_INTERRUPTED


async def _run(args: argparse.Namespace, source: commands.AppFactory) -> int:
    handler: Callable[[SagaOrchestrator, argparse.Namespace], Any] = args.handler
    try:
        async with source(args.db) as orchestrator:
            status: int = await handler(orchestrator, args)
            return status
    except UsageError as exc:
        _error(str(exc))
        return EXIT_USAGE
    except Failed as exc:
        _error(str(exc))
        return EXIT_FAILED
    except (SagaError, sqlite3.Error, BaseExceptionGroup) as exc:
        expected = _expected_errors(exc)
        if expected is None:
            raise
        for error in expected:
            _error(_explain(error, args.db, args.app))
        return EXIT_FAILED


def _expected_errors(exc: BaseException) -> list[BaseException] | None:
    """The library's (and SQLite's) errors in ``exc``, ungrouped; None if anything else."""
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            errors = _expected_errors(inner)
            if errors is None:
                return None
            found.extend(errors)
        return found
    return [exc] if isinstance(exc, SagaError | sqlite3.Error) else None


def _explain(error: BaseException, db: str | None, app: str | None) -> str:
    if isinstance(error, UnknownSagaTypeError):
        hint = (
            f"the orchestrator from --app {app} has no factory for it"
            if app
            else "pass --app MODULE:CALLABLE to load the code of the sagas"
        )
        return f"{error}; {hint}"
    if isinstance(error, SerializationError) and "cannot be imported" in str(error):
        return (
            f"{error}; run from the directory your saga code is importable from, "
            "or add it to PYTHONPATH"
        )
    if isinstance(error, sqlite3.Error):
        return f"SQLite ({db or app}): {error}"
    return str(error)


def _error(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)


@contextlib.contextmanager
def _verbose(enabled: bool) -> Iterator[None]:
    """With --verbose, the library's log records (saga.* events) go to stderr."""
    if not enabled:
        yield
        return
    logger = logging.getLogger("saga_orchestrator")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """The current directory on sys.path, as ``python -m`` puts it, for --app and saga data."""
    cwd = os.getcwd()
    if cwd in sys.path or "" in sys.path:
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(cwd)
