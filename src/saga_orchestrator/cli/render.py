"""How sagas are shown: tables, the step timeline of ``show``, and JSON documents."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID

from ..inbox import Delivery, InboxEvent
from ..state import SagaContext, SagaStatus, StepState, StepStatus

__all__ = [
    "ERROR_WIDTH",
    "age",
    "current_step",
    "delivery",
    "detail",
    "detail_text",
    "elapsed",
    "inbox",
    "step_cell",
    "summary",
    "table",
    "truncate",
    "waiting_cells",
]

ERROR_WIDTH = 60
_COMPENSATION_STATUSES = {
    StepStatus.COMPENSATING: "compensating",
    StepStatus.COMPENSATED: "compensated",
    StepStatus.COMPENSATION_FAILED: "failed",
}


def current_step(context: SagaContext[Any]) -> str | None:
    """Where an unfinished or failed saga is; None once it completed or compensated."""
    if context.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED):
        return None
    if not 0 <= context.current_step_index < len(context.steps):
        return None
    return context.steps[context.current_step_index].name


def step_cell(context: SagaContext[Any]) -> str:
    """``list``'s STEP: the current step, ``NAME (waiting)`` at a wait step, ``-`` if none."""
    name = current_step(context)
    if name is None:
        return "-"
    if context.steps[context.current_step_index].status is StepStatus.WAITING:
        return f"{name} (waiting)"
    return name


def waiting_cells(steps: tuple[StepState, ...] | list[StepState], now: datetime) -> list[str]:
    """The waiting step of a parked saga: its name, what it waits for, and until when."""
    state = next((s for s in steps if s.status is StepStatus.WAITING), None)
    if state is None:
        return ["-", "-", "-"]
    return [state.name, _waited_for(state), _until(state.wait_until, now)]


def _is_wait(state: StepState) -> bool:
    """Whether the record is of a wait step that began (a step not begun cannot tell)."""
    return (
        state.status is StepStatus.WAITING
        or state.waiting_for is not None
        or state.wait_until is not None
        or state.event_id is not None
    )


def _waited_for(state: StepState) -> str:
    return f"event {state.waiting_for!r}" if state.waiting_for is not None else "a timer"


def _until(when: datetime | None, now: datetime) -> str:
    """A wait's end: ``ISO (in 5m)``, ``ISO (passed 2m ago)``, or ``no timeout``."""
    if when is None:
        return "no timeout"
    if elapsed(when, now) < timedelta(0):
        return f"{when.isoformat()} (in {age(now, when)})"
    return f"{when.isoformat()} (passed {age(when, now)} ago)"


# ---------------------------------------------------------------------- JSON documents


def summary(context: SagaContext[Any]) -> dict[str, Any]:
    """One saga as ``list --json`` shows it."""
    return {
        "saga_id": str(context.saga_id),
        "saga_type": context.saga_type,
        "saga_version": context.saga_version,
        "correlation_id": context.correlation_id,
        "status": context.status.value,
        "current_step": current_step(context),
        "created_at": _iso(context.created_at),
        "updated_at": _iso(context.updated_at),
        "error": context.error,
    }


def detail(context: SagaContext[Any]) -> dict[str, Any]:
    """One saga as ``show --json`` shows it: the summary, its steps and its data."""
    return {
        **summary(context),
        "deadline": _iso(context.deadline),
        "version": context.version,
        "steps": [_step(state) for state in context.steps],
        "error_history": [
            {"kind": r.kind.value, "step": r.step, "at": _iso(r.at), "message": r.message}
            for r in context.error_history
        ],
        "data": _plain(context.data),
    }


def _step(state: StepState) -> dict[str, Any]:
    duration = (
        (state.completed_at - state.started_at).total_seconds()
        if state.started_at is not None and state.completed_at is not None
        else None
    )
    compensation_duration = (
        (state.compensated_at - state.compensation_started_at).total_seconds()
        if state.compensation_started_at is not None and state.compensated_at is not None
        else None
    )
    return {
        "name": state.name,
        "status": state.status.value,
        "attempts": state.attempts,
        "started_at": _iso(state.started_at),
        "completed_at": _iso(state.completed_at),
        "duration_seconds": duration,
        "next_attempt_at": _iso(state.next_attempt_at),
        "error": state.error,
        "effect_possible": state.effect_possible,
        "compensation_status": _COMPENSATION_STATUSES.get(state.status),
        "compensation_attempts": state.compensation_attempts,
        "compensation_started_at": _iso(state.compensation_started_at),
        "compensated_at": _iso(state.compensated_at),
        "compensation_duration_seconds": compensation_duration,
        "compensation_error": state.compensation_error,
        "waiting_for": state.waiting_for,
        "wait_until": _iso(state.wait_until),
        "event_id": state.event_id,
    }


def inbox(context: SagaContext[Any], events: list[InboxEvent]) -> list[dict[str, Any]]:
    """The events kept for the saga, as ``show --json`` lists them: each with the step that
    consumed it (``None``: not consumed) and its payload as stored (the JSON of
    ``saga_orchestrator.serialization``, typed values tagged)."""
    consumers = {s.event_id: s.name for s in context.steps if s.event_id is not None}
    return [
        {
            "event_id": event.event_id,
            "name": event.name,
            "received_at": _iso(event.received_at),
            "consumed": event.event_id in consumers,
            "consumed_by": consumers.get(event.event_id),
            "payload": json.loads(event.payload),
        }
        for event in events
    ]


def delivery(answer: Delivery, event: str) -> dict[str, Any]:
    """What ``deliver --json`` prints."""
    return {
        "delivery": answer.status.value,
        "event": event,
        "event_id": answer.event_id,
        "saga_id": str(answer.saga_id),
        "saga_status": answer.saga_status.value,
    }


def _plain(value: Any) -> Any:
    """Saga data as readable JSON: Decimals, UUIDs and times as strings, dataclasses as dicts."""
    if isinstance(value, Enum):
        return _plain(value.value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal | UUID | timedelta):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return repr(value)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


# ---------------------------------------------------------------------- text


def detail_text(context: SagaContext[Any], detail: dict[str, Any], now: datetime) -> str:
    """``show``'s text: the header, the step timeline, and the data (``detail`` is its JSON)."""

    def when(value: datetime | None) -> str:
        return f"{value.isoformat()} ({age(value, now)} ago)" if value else "-"

    header = [
        ("saga", str(context.saga_id)),
        ("type", f"{context.saga_type} (definition version {context.saga_version})"),
        ("correlation id", context.correlation_id or "-"),
        ("status", context.status.value),
        ("created", when(context.created_at)),
        ("updated", when(context.updated_at)),
        ("deadline", context.deadline.isoformat() if context.deadline else "-"),
        ("version", str(context.version)),
        ("error", context.error or "-"),
    ]
    if detail.get("stranded"):
        header.insert(
            4, ("stranded", f"recover() or a worker could not resume it: {detail['stranded']}")
        )
    lines = [f"{label:<15} {value}" for label, value in header]
    lines += ["", "steps"]
    current = current_step(context)
    name_width = max((len(state.name) for state in context.steps), default=0)
    status_width = max((len(state.status.value) for state in context.steps), default=0)
    for number, (state, step) in enumerate(zip(context.steps, detail["steps"], strict=True), 1):
        forward = _plural(state.attempts, "attempt")
        if step["duration_seconds"] is not None:
            forward += f", took {_seconds(step['duration_seconds'])}"
        if state.status is StepStatus.RUNNING and state.started_at is not None:
            forward += f", started {age(state.started_at, now)} ago"
        marker = "  <- current" if state.name == current else ""
        lines.append(
            f"  {number}. {state.name:<{name_width}}  {state.status.value:<{status_width}}  "
            f"{forward}{marker}"
        )
        pad = " " * (len(str(number)) + 4)
        if _is_wait(state):
            lines.append(f"{pad}{_wait_line(state, now)}")
        if state.error:
            lines.append(f"{pad}error: {state.error}")
        if state.effect_possible:
            lines.append(f"{pad}effect possible: it may have acted, so it is compensated too")
        if state.next_attempt_at is not None:
            lines.append(f"{pad}next attempt at {state.next_attempt_at.isoformat()}")
        if state.compensation_attempts or step["compensation_status"]:
            text = (
                f"{pad}compensation: {step['compensation_status'] or 'pending'}, "
                f"{_plural(state.compensation_attempts, 'attempt')}"
            )
            if step["compensation_duration_seconds"] is not None:
                text += f", took {_seconds(step['compensation_duration_seconds'])}"
            if state.compensated_at is not None:
                text += f", at {state.compensated_at.isoformat()}"
            if state.compensation_error:
                text += f": {state.compensation_error}"
            lines.append(text)
    if detail.get("inbox"):
        lines += ["", "inbox"]
        rows = [
            [
                event["event_id"],
                event["name"],
                when(datetime.fromisoformat(event["received_at"])),
                f"by {event['consumed_by']}" if event["consumed"] else "no",
            ]
            for event in detail["inbox"]
        ]
        lines.append(table(["EVENT_ID", "NAME", "RECEIVED", "CONSUMED"], rows, indent="  "))
    if context.error_history:
        lines += ["", "error history"]
        for record in context.error_history:
            at = record.at.isoformat() if record.at is not None else "-"
            lines.append(f"  {at}  {record.kind.value:<19}  {record.message}")
    lines += ["", "data"]
    lines += [f"  {line}" for line in json.dumps(detail["data"], indent=2).splitlines()]
    return "\n".join(lines)


def _wait_line(state: StepState, now: datetime) -> str:
    """What a wait step waits, or waited, for: since when, until when, the event consumed."""
    if state.status is StepStatus.WAITING:
        since = (
            f" since {state.started_at.isoformat()} ({age(state.started_at, now)} ago)"
            if state.started_at is not None
            else ""
        )
        return f"waiting for {_waited_for(state)}{since}, until {_until(state.wait_until, now)}"
    until = state.wait_until.isoformat() if state.wait_until is not None else "no timeout"
    text = f"waited for {_waited_for(state)}, until {until}"
    if state.event_id is not None:
        text += f"; consumed event {state.event_id}"
    return text


def table(headers: list[str], rows: list[list[str]], indent: str = "") -> str:
    """Left-aligned columns two spaces apart, without trailing spaces."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]
    return "\n".join(
        (indent + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))).rstrip()
        for row in [headers, *rows]
    )


def age(since: datetime | None, now: datetime) -> str:
    """How long ago, in its largest whole unit: 45s, 10m, 3h, 2d; "-" when unknown."""
    if since is None:
        return "-"
    seconds = max(elapsed(since, now).total_seconds(), 0.0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def elapsed(since: datetime, now: datetime) -> timedelta:
    """``now - since``; a naive ``since`` (written by a clock without a time zone) is UTC."""
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    return now - since


def truncate(text: str, width: int) -> str:
    """``text`` on one line, cut to ``width`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _seconds(value: float) -> str:
    if value < 1:
        return f"{value * 1000:.1f}ms"
    if value < 60:
        return f"{value:.2f}s"
    return f"{int(value // 60)}m{int(value % 60):02d}s"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
