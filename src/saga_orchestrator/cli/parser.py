"""The command line's arguments: the parser, its value types, and how it reports bad usage."""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import timedelta
from typing import Any, NoReturn
from uuid import UUID

from ..errors import SerializationError
from ..inbox import NAME_LIMIT
from ..serialization import decode_value
from ..state import SagaStatus
from . import commands
from .exits import EXIT_USAGE, PROG

__all__ = ["DURATION_UNITS", "SAGA_ID_HELP", "build_parser"]

SAGA_ID_HELP = "the saga's id, a UUID (see the list command)"
DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr (exit 2), pointing at --help."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except the uninformative ``None`` and ``False``."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _saga_id(text: str) -> UUID:
    try:
        return UUID(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"malformed saga id {text!r}: expected a UUID") from None


_PREFIX = re.compile(r"[0-9a-f-]{4,36}")


def _saga_id_or_prefix(text: str) -> UUID | str:
    """A whole UUID, or the first characters of one (at least 4 hex digits or hyphens)."""
    try:
        return UUID(text)
    except ValueError:
        pass
    prefix = text.strip().lower()
    if not _PREFIX.fullmatch(prefix):
        raise argparse.ArgumentTypeError(
            f"malformed saga id {text!r}: expected a UUID or its first characters (4 or more)"
        )
    return prefix


def _duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid duration {text!r}: a number and a unit (s, m, h, d), e.g. 30s, 10m, 2h, 1d"
        )
    return timedelta(seconds=float(match[1]) * DURATION_UNITS[match[2]])


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def _name(text: str) -> str:
    """An event's name or id, or a correlation id: as ``deliver_event`` takes them."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a non-empty value")
    if len(text) > NAME_LIMIT:
        raise argparse.ArgumentTypeError(
            f"at most {NAME_LIMIT} characters, got {len(text)}: {text[:40]!r}..."
        )
    return text


def _payload(text: str) -> dict[str, Any]:
    """A JSON object in the format of ``saga_orchestrator.serialization`` (typed values
    tagged: ``{"$decimal": "12.50"}``), decoded."""
    try:
        raw = json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:  # JSONDecodeError, or NaN / Infinity
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise argparse.ArgumentTypeError("not valid JSON: nested too deeply") from None
    if not isinstance(raw, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of data fields, got a JSON {_json_kind(raw)}"
        )
    try:
        value = decode_value(raw)
    except SerializationError as exc:
        message = str(exc)
        if message.startswith("stored value"):
            message = "payload" + message[len("stored value") :]
        raise argparse.ArgumentTypeError(message) from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f"expected a JSON object of data fields, got a tagged {type(value).__name__}"
        )
    return value


def _payload_file(path: str) -> dict[str, Any]:
    """``_payload`` of a file's text (``-``: standard input)."""
    try:
        if path == "-":
            text = sys.stdin.read()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc}") from None
    try:
        return _payload(text)
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _json_kind(value: object) -> str:
    if isinstance(value, list):
        return "array"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "null" if value is None else "number"


def _app_spec(text: str) -> str:
    module, _, attribute = text.partition(":")
    if not module or not attribute:
        raise argparse.ArgumentTypeError(
            f"expected MODULE:CALLABLE (e.g. order_fulfillment.admin:orchestrator), got {text!r}"
        )
    return text


def _add_common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """The store options; also accepted after the command (then they override)."""
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("where the sagas are")
    group.add_argument(
        "--db",
        metavar="PATH",
        default=default,
        help="SQLite file holding the sagas; with --app, passed to its callable (which may "
        "take a PostgreSQL URL instead)",
    )
    group.add_argument(
        "--app",
        metavar="MODULE:CALLABLE",
        type=_app_spec,
        default=default,
        help="callable taking the --db value and returning an async context manager that "
        "yields a configured SagaOrchestrator; needed by retry, cancel and recover",
    )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="log the library's saga events to stderr",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command (exposed for documentation tools)."""
    parser = _Parser(
        prog=PROG,
        description="Inspect and repair the sagas stored by saga-orchestrator. Exit status: "
        "0 success; 1 the operation failed (unknown saga, wrong status, compensation still "
        "failing, a stored saga that cannot be read: list and recover name it and carry on "
        "with the others; an event ignored); 2 bad usage (bad input: nothing stored); 130 "
        "interrupted.",
        epilog="Run 'saga-orchestrator COMMAND --help' for a command's options.",
        formatter_class=_HelpFormatter,
    )
    _add_common(parser, suppress=False)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {_version()}", help="print the version"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        sub = subparsers.add_parser(
            name, help=summary, description=description, formatter_class=_HelpFormatter
        )
        _add_common(sub, suppress=True)
        return sub

    listing = command(
        "list",
        "list stored sagas, oldest first",
        "List stored sagas, oldest first: id, type, definition version (VER), status, current "
        "step (where a running, compensating or failed saga is; 'NAME (waiting)' when it is "
        "parked at a wait step), age since it started, and error. An unfinished saga that "
        "recover() or a worker could not resume shows '(stranded)' after its status and why "
        "in place of the error. A saga whose "
        "stored state cannot be read is named on stderr (in --json, an entry with its "
        "saga_id and an 'unreadable' reason) and the others are listed; the exit status is "
        "then 1.",
    )
    listing.add_argument(
        "--status",
        nargs="+",
        action="extend",
        choices=[status.value for status in SagaStatus],
        metavar="STATUS",
        help="only sagas in these statuses (repeatable): "
        + ", ".join(status.value for status in SagaStatus),
    )
    listing.add_argument("--type", dest="saga_type", metavar="TYPE", help="only this saga_type")
    listing.add_argument(
        "--saga-version",
        type=_positive_int,
        metavar="N",
        help="only sagas started by this definition version (with --type: is version N drained?)",
    )
    listing.add_argument(
        "--stranded",
        action="store_true",
        help="only unfinished sagas that recover() or a worker could not resume",
    )
    listing.add_argument(
        "--older-than",
        type=_duration,
        metavar="DURATION",
        help="only sagas started longer ago than this: 30s, 10m, 2h, 1d",
    )
    listing.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most this many sagas"
    )
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    listing.set_defaults(handler=commands.run_list)

    show = command(
        "show",
        "show one saga: header, step timeline and data",
        "Show one saga: its header, each step's forward and compensation record (for a wait "
        "step: what it waits or waited for, since when, until when, the event it consumed), "
        "the events kept in its inbox (each consumed by which step, or not), and its data. "
        "Exit 1 if it is not stored or its stored state cannot be read (what is wrong is "
        "printed).",
    )
    show.add_argument(
        "saga_id",
        type=_saga_id_or_prefix,
        metavar="SAGA_ID",
        help="the saga's id, a UUID, or an unambiguous prefix of it (4 characters or more)",
    )
    show.add_argument("--json", action="store_true", help="one JSON document instead of text")
    show.set_defaults(handler=commands.run_show)

    retry = command(
        "retry",
        "retry the failed compensation of a failed saga",
        "Retry the failed compensation of a FAILED saga (once its cause is fixed), then carry "
        "on compensating. Exit 0 when the saga ends compensated, 1 when it is still failed. "
        "Needs --app.",
    )
    retry.add_argument("saga_id", type=_saga_id, metavar="SAGA_ID", help=SAGA_ID_HELP)
    retry.set_defaults(handler=commands.run_retry)

    cancel = command(
        "cancel",
        "stop a running saga and compensate it",
        "Stop a RUNNING saga and compensate what it did, the step in flight included, in "
        "reverse order. Exit 0 when the saga ends compensated. Needs --app.",
    )
    cancel.add_argument("saga_id", type=_saga_id, metavar="SAGA_ID", help=SAGA_ID_HELP)
    cancel.add_argument(
        "--reason", default="cancelled by an operator", help="recorded in the saga's error"
    )
    cancel.set_defaults(handler=commands.run_cancel)

    recover = command(
        "recover",
        "resume every unfinished saga",
        "Resume every running or compensating saga from where it stopped and drive it to the "
        "end. Only while no service process is driving them (after a crash, service stopped). "
        "Needs --app. A saga parked at a wait step consumes an event kept for it, or ends its "
        "wait if its time has come, or else is listed as still waiting. A saga that cannot be "
        "read or resumed is named on stderr and the others are still resumed; the exit status "
        "is then 1.",
    )
    recover.set_defaults(handler=commands.run_recover)

    deliver = command(
        "deliver",
        "deliver an event to a saga waiting for it",
        "Deliver the event EVENT to one saga, addressed by --saga-id or --correlation-id, for "
        "its wait step (wait_for_event) to consume, as SagaOrchestrator.deliver_event does: "
        "the event is stored in the saga's inbox, then, with --app knowing the saga's type "
        "(and no --no-drive), a saga parked at that wait consumes it and goes on, up to its "
        "end or its next wait (PostgreSQL: workers are woken instead). Otherwise the event is "
        "kept until the saga reaches its wait, or recover, the service's wake_due or a worker "
        "resumes it. Prints what was done (consumed, stored, duplicate or ignored) and the "
        "saga's status. Exit 0 when consumed, stored or a duplicate (delivered before: "
        "nothing changed); 1 when ignored (the saga is finished or compensating, or past "
        "every wait for EVENT: nothing stored) or no such saga; 2 for bad input (nothing "
        "stored).",
    )
    deliver.add_argument(
        "event",
        type=_name,
        metavar="EVENT",
        help="the event's name, as the wait step waits for it (e.g. payment.captured)",
    )
    target = deliver.add_mutually_exclusive_group(required=True)
    target.add_argument("--saga-id", type=_saga_id, metavar="SAGA_ID", help=SAGA_ID_HELP)
    target.add_argument(
        "--correlation-id",
        type=_name,
        metavar="KEY",
        help="the saga's correlation id (the most recent saga with it)",
    )
    deliver.add_argument(
        "--event-id",
        required=True,
        type=_name,
        metavar="ID",
        help="the event's unique id (e.g. the webhook's delivery id): an id delivered before "
        "changes nothing",
    )
    payload = deliver.add_mutually_exclusive_group()
    payload.add_argument(
        "--payload",
        type=_payload,
        metavar="JSON",
        help='a JSON object of data fields, e.g. \'{"reference": "ch_1"}\'; strings stay '
        'strings: give a Decimal as {"$decimal": "12.50"}, a UUID as {"$uuid": "..."}, a '
        'datetime as {"$datetime": "2026-01-01T00:00:00+00:00"} (default: {})',
    )
    payload.add_argument(
        "--payload-file",
        dest="payload",
        type=_payload_file,
        metavar="PATH",
        help="read the payload (as --payload) from this file; - reads standard input",
    )
    deliver.add_argument(
        "--no-drive",
        action="store_true",
        help="only store the event: the saga consumes it when recover, the service's "
        "wake_due or a worker resumes it",
    )
    deliver.add_argument("--json", action="store_true", help="one JSON object instead of text")
    deliver.set_defaults(handler=commands.run_deliver)

    worker = command(
        "worker",
        "run stored sagas until SIGTERM (PostgreSQL)",
        "Claim runnable sagas (submitted ones, and those whose process died) and run them, "
        "each in one worker at a time, until SIGTERM or SIGINT; then let running steps finish "
        "for the grace period and hand back the rest. Needs --app yielding an orchestrator on "
        "PostgresSagaRepository with its saga types registered.",
    )
    worker.add_argument(
        "--concurrency", type=_positive_int, default=16, metavar="N", help="sagas run at once"
    )
    worker.add_argument(
        "--poll-interval",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="look for work this often when no notification arrives",
    )
    worker.add_argument(
        "--park-after",
        type=_seconds,
        default=1.0,
        metavar="SECONDS",
        help="hand back a saga that must wait longer than this (retry backoff)",
    )
    worker.add_argument(
        "--grace",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="after SIGTERM, how long running steps may take to finish",
    )
    worker.set_defaults(handler=commands.run_worker)
    return parser


def _version() -> str:
    from .. import __version__

    return __version__
