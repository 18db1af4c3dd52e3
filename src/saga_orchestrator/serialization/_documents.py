"""The saga-document codec: a whole saga (its context, step records and error history) as
one JSON document, the repositories' ``state`` column.

Documented, and imported, through [`saga_orchestrator.serialization`][].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any
from uuid import UUID

from .._texts import identity_texts
from ..errors import SerializationError
from ..state import ErrorKind, ErrorRecord, SagaContext, SagaStatus, StepState, StepStatus
from ._values import (
    _ENCODER,
    _KEEP_UNKNOWN,
    _RECORD_DEPTH,
    _decode,
    _encode_top,
    _fast_json,
    _json,
    _parse,
    _Refused,
)

FORMAT_VERSION = 1
_HEAD = f'{{"format":{FORMAT_VERSION},"saga_id":"'


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


_quote = encode_basestring_ascii  # a JSON string literal, as _ENCODER writes it (ASCII)
_time_json: Callable[[datetime | None], str] = identity_texts(
    lambda value: "null" if value is None else f'"{value.isoformat()}"'
)
"""An instant as a JSON literal: its ISO 8601 text quoted (nothing in it to escape), or null.
A saga writes the same instants again and again (``created_at``, ``deadline``, one ``now``
in several fields): their text is kept."""


def _encode_step(step: StepState) -> dict[str, Any]:
    """A step record: its name, and each field that differs from the field's default (a
    pending step that never ran is ``{"name": ...}``). Reading fills in the defaults, so a
    field added to ``StepState`` with a default reads from older records."""
    record: dict[str, Any] = {"name": step.name}
    if step.status is not StepStatus.PENDING:
        record["status"] = step.status.value
    if step.attempts:
        record["attempts"] = step.attempts
    if step.error is not None:
        record["error"] = step.error
    if step.effect_possible:
        record["effect_possible"] = True
    if step.started_at is not None:
        record["started_at"] = _dt(step.started_at)
    if step.completed_at is not None:
        record["completed_at"] = _dt(step.completed_at)
    if step.next_attempt_at is not None:
        record["next_attempt_at"] = _dt(step.next_attempt_at)
    if step.compensation_attempts:
        record["compensation_attempts"] = step.compensation_attempts
    if step.compensation_error is not None:
        record["compensation_error"] = step.compensation_error
    if step.compensation_started_at is not None:
        record["compensation_started_at"] = _dt(step.compensation_started_at)
    if step.compensated_at is not None:
        record["compensated_at"] = _dt(step.compensated_at)
    if step.waiting_for is not None:
        record["waiting_for"] = step.waiting_for
    if step.wait_until is not None:
        record["wait_until"] = _dt(step.wait_until)
    if step.event_id is not None:
        record["event_id"] = step.event_id
    return record


def encode_context(context: SagaContext[Any]) -> str:
    """The whole context as one JSON document (the repositories' ``state`` column).

    The data may nest one level more than
    [`MAX_DEPTH`][saga_orchestrator.serialization.MAX_DEPTH] (each of its fields, that much).
    """
    context._step_json = None
    return _encode_document(context, [_step_text(step) for step in context.steps])


def encode_transition(context: SagaContext[Any]) -> str:
    """The same document as [`encode_context`][], re-encoding only the step records a
    transition can have touched: the step the saga was at when last encoded this way, and
    the one it is at now (every transition of the state machine changes only those). The
    other records' JSON is reused, so a transition costs the same however many steps the
    saga has. The first call (and any after ``encode_context``) encodes every record."""
    texts, _ = _touched_step_texts(context)
    context._step_json = None  # kept only once the document is built
    text = _encode_document(context, texts)
    context._step_json = texts
    context._step_json_at = context.current_step_index
    return text


def _touched_step_texts(context: SagaContext[Any]) -> tuple[list[str], set[int] | None]:
    """Every step record's JSON, re-encoding only those a transition can have touched; and
    those indexes (``None``: all were encoded afresh)."""
    texts = context._step_json
    count = len(context.steps)
    if texts is None or len(texts) != count:
        return [_step_text(step) for step in context.steps], None
    touched = {
        index for index in (context._step_json_at, context.current_step_index) if 0 <= index < count
    }
    for index in touched:
        texts[index] = _step_text(context.steps[index])
    return texts, touched


def _step_text(step: StepState) -> str:
    """``_ENCODER.encode(_encode_step(step))``, the same text, written directly: this runs at
    every transition (tests/test_serialization.py checks that the two agree)."""
    if (
        step.error is None
        and not step.effect_possible
        and step.next_attempt_at is None
        and not step.compensation_attempts
        and step.compensation_error is None
        and step.compensation_started_at is None
        and step.compensated_at is None
        and step.waiting_for is None
        and step.wait_until is None
        and step.event_id is None
    ):
        # The forward path's three shapes, in one piece each: not yet run, running, done.
        status, attempts, started = step.status, step.attempts, step.started_at
        if status is StepStatus.PENDING:
            if not attempts and started is None and step.completed_at is None:
                return f'{{"name":{_quote(step.name)}}}'
        elif attempts and started is not None:
            begun = (
                f'{{"name":{_quote(step.name)},"status":"{status._value_}","attempts":{attempts}'
            )
            if status is StepStatus.RUNNING and step.completed_at is None:
                return f'{begun},"started_at":{_time_json(started)}}}'
            if status is StepStatus.COMPLETED and step.completed_at is not None:
                completed = _time_json(step.completed_at)
                return f'{begun},"started_at":{_time_json(started)},"completed_at":{completed}}}'
    parts = ['{"name":', _quote(step.name)]
    if step.status is not StepStatus.PENDING:
        parts += [',"status":"', step.status._value_, '"']
    if step.attempts:
        parts += [',"attempts":', str(step.attempts)]
    if step.error is not None:
        parts += [',"error":', _quote(step.error)]
    if step.effect_possible:
        parts.append(',"effect_possible":true')
    if step.started_at is not None:
        parts += [',"started_at":', _time_json(step.started_at)]
    if step.completed_at is not None:
        parts += [',"completed_at":', _time_json(step.completed_at)]
    if step.next_attempt_at is not None:
        parts += [',"next_attempt_at":', _time_json(step.next_attempt_at)]
    if step.compensation_attempts:
        parts += [',"compensation_attempts":', str(step.compensation_attempts)]
    if step.compensation_error is not None:
        parts += [',"compensation_error":', _quote(step.compensation_error)]
    if step.compensation_started_at is not None:
        parts += [',"compensation_started_at":', _time_json(step.compensation_started_at)]
    if step.compensated_at is not None:
        parts += [',"compensated_at":', _time_json(step.compensated_at)]
    if step.waiting_for is not None:
        parts += [',"waiting_for":', _quote(step.waiting_for)]
    if step.wait_until is not None:
        parts += [',"wait_until":', _time_json(step.wait_until)]
    if step.event_id is not None:
        parts += [',"event_id":', _quote(step.event_id)]
    parts.append("}")
    return "".join(parts)


def _encode_document(
    context: SagaContext[Any], step_texts: list[str], data_text: str | None = None
) -> str:
    """The document, written directly (it is written at every transition): the same text as
    ``_ENCODER.encode`` of the dict ``_document_dict`` builds, with the steps after it
    (tests/test_serialization.py checks that the two agree). ``data_text``: the data's JSON,
    if already encoded."""
    if data_text is None:
        data = _encode_top(context.data, "data", _RECORD_DEPTH)
        try:
            data_text = _fast_json(data)
        except ValueError:  # only to say where: the same call raises the error
            data_text = _json(data, f"saga {context.saga_id}")
    extra = ""
    if context.saga_version != 1:  # absent for version 1 (and in older rows)
        extra = f',"saga_version":{context.saga_version}'
    if context.error_history:  # absent in the sagas that never failed (and in older rows)
        extra += f',"error_history":{_ENCODER.encode(_error_history(context))}'
    correlation = context.correlation_id
    error = context.error
    # One f-string: the statuses are StrEnums, formatted as their values; ints as JSON.
    return (
        f'{_HEAD}{context.saga_id_text}","saga_type":{_quote(context.saga_type)}'
        f',"correlation_id":{"null" if correlation is None else _quote(correlation)}'
        f',"status":"{context.status._value_}","current_step_index":{context.current_step_index}'
        f',"error":{"null" if error is None else _quote(error)}'
        f',"created_at":{_time_json(context.created_at)}'
        f',"updated_at":{_time_json(context.updated_at)}'
        f',"deadline":{_time_json(context.deadline)}'
        f',"version":{context.version},"event_sequence":{context.event_sequence}'
        f',"data":{data_text}{extra},"steps":[{",".join(step_texts)}]}}'
    )


def _error_history(context: SagaContext[Any]) -> list[dict[str, Any]]:
    return [
        {"kind": r.kind.value, "message": r.message, "at": _dt(r.at), "step": r.step}
        for r in context.error_history
    ]


def _document_dict(context: SagaContext[Any]) -> dict[str, Any]:
    """The document as a dict, steps included: what ``_encode_document`` writes directly."""
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "saga_id": context.saga_id_text,
        "saga_type": context.saga_type,
        "correlation_id": context.correlation_id,
        "status": context.status.value,
        "current_step_index": context.current_step_index,
        "error": context.error,
        "created_at": _dt(context.created_at),
        "updated_at": _dt(context.updated_at),
        "deadline": _dt(context.deadline),
        "version": context.version,
        "event_sequence": context.event_sequence,
        "data": _encode_top(context.data, "data", _RECORD_DEPTH),
    }
    if context.saga_version != 1:
        document["saga_version"] = context.saga_version
    if context.error_history:
        document["error_history"] = _error_history(context)
    document["steps"] = [_encode_step(step) for step in context.steps]
    return document


_MALFORMED = "stored saga state is malformed"


def decode_context(
    text: str | bytes,
    *,
    patches: Sequence[str | bytes] = (),
    keep_unknown_types: bool = False,
) -> SagaContext[Any]:
    """Rebuild a context written by [`encode_context`][], with ``patches`` applied in order
    (each a [`StateChanges.patch`][saga_orchestrator.serialization.StateChanges.patch]
    written after it, oldest first).

    Raises [`SerializationError`][], and nothing else, for any text that is not such a
    document: not JSON, not an object, a field missing or of the wrong type, a status that does
    not exist, ``current_step_index`` outside the steps, data nested past
    [`MAX_DEPTH`][saga_orchestrator.serialization.MAX_DEPTH], a class that cannot be imported.

    With ``keep_unknown_types``, a dataclass or enum value whose class cannot be rebuilt
    becomes an [`UnresolvedValue`][saga_orchestrator.serialization.UnresolvedValue] instead
    of an error: for tools that show stored sagas without their code. Such a context cannot
    be driven.
    """
    document = _parse(text, _MALFORMED)
    token = _KEEP_UNKNOWN.set(keep_unknown_types)
    try:
        for number, patch in enumerate(patches):
            try:
                _apply_patch(document, _parse(patch, _MALFORMED))
            except _Refused as exc:
                exc.path.append(f"patch {number}")
                raise
        return _decode_document(document)
    except _Refused as exc:
        raise SerializationError(
            f"{_MALFORMED}: {exc.where('')}{': ' if exc.path else ''}{exc.reason}"
        ) from None
    except RecursionError:
        raise SerializationError(
            f"{_MALFORMED}: nested too deeply for the interpreter's recursion limit"
        ) from None
    finally:
        _KEEP_UNKNOWN.reset(token)


def _apply_patch(document: Any, patch: Any) -> None:
    """Apply one patch (see ``_patches``) to a parsed document, in place."""
    if type(document) is not dict:
        return  # refused by _decode_document
    if type(patch) is not dict:
        raise _Refused(f"a JSON {_json_type(patch)}, not an object")
    document.update(_get(patch, "head", dict))
    records = patch.get("steps")
    if records is not None:
        steps = _get(document, "steps", list)
        for key, changes in _get(patch, "steps", dict).items():
            if not (key.isdigit() and int(key) < len(steps)):
                raise _Refused(f"step {key!r:.20} is outside the saga's {len(steps)} steps")
            record = steps[int(key)]
            if type(record) is not dict or type(changes) is not dict:
                raise _Refused(f"step {key} is not a JSON object")
            for name, value in changes.items():  # "=": the transition's instant
                record[name] = document.get("updated_at") if value == "=" else value
    if "data" in patch:
        document["data"] = patch["data"]
    elif "data_fields" in patch:
        data = document.get("data")
        if not (type(data) is dict and type(data.get("fields")) is dict):
            raise _Refused("data_fields given for data that is not a dataclass")
        data["fields"].update(_get(patch, "data_fields", dict))


def _decode_document(document: Any) -> SagaContext[Any]:
    if type(document) is not dict:
        raise _Refused(f"a JSON {_json_type(document)}, not an object")
    if document.get("format") != FORMAT_VERSION:
        raise _Refused(f"unsupported state format {document.get('format')!r:.60}")
    saga_id = _get(document, "saga_id", str)
    try:
        uuid = UUID(saga_id)
    except ValueError:
        raise _Refused(f"saga_id {saga_id!r:.60} is not a UUID") from None
    raw_steps = _get(document, "steps", list)
    steps = []
    for index, raw in enumerate(raw_steps):
        try:
            steps.append(_decode_step(raw))
        except _Refused as exc:
            exc.path.append(f"steps[{index}]")
            raise
    current = _get(document, "current_step_index", int)
    if not (0 <= current < len(steps) or current == 0 == len(steps)):
        raise _Refused(
            f"current_step_index {current} is outside the saga's {len(steps)} "
            f"step{'' if len(steps) == 1 else 's'}"
        )
    if "data" not in document:
        raise _Refused("field 'data' is missing")
    try:
        data = _decode(document["data"], _RECORD_DEPTH)
    except _Refused as exc:
        exc.path.append("data")
        raise
    history = []
    raw_history = document.get("error_history")
    if raw_history is not None:
        for index, raw in enumerate(_get(document, "error_history", list)):
            try:
                history.append(_decode_error_record(raw))
            except _Refused as exc:
                exc.path.append(f"error_history[{index}]")
                raise
    return SagaContext(
        saga_id=uuid,
        saga_type=_get(document, "saga_type", str),
        data=data,
        steps=steps,
        correlation_id=_get(document, "correlation_id", str, optional=True),
        status=_status(SagaStatus, document, "status"),
        current_step_index=current,
        error=_get(document, "error", str, optional=True),
        created_at=_time(document, "created_at"),
        updated_at=_time(document, "updated_at"),
        deadline=_time(document, "deadline"),
        version=_count(document, "version"),
        event_sequence=_count(document, "event_sequence"),
        error_history=history,
        saga_version=_saga_version(document),
    )


def _saga_version(document: dict[str, Any]) -> int:
    if "saga_version" not in document:
        return 1
    version = _count(document, "saga_version")
    if version < 1:
        raise _Refused(f"saga_version is {version}, not a version (>= 1)")
    return version


def _decode_error_record(raw: Any) -> ErrorRecord:
    if type(raw) is not dict:
        raise _Refused(f"a JSON {_json_type(raw)}, not an object")
    return ErrorRecord(
        kind=_status(ErrorKind, raw, "kind"),
        message=_get(raw, "message", str),
        at=_time(raw, "at"),
        step=_get(raw, "step", str, optional=True),
    )


def _decode_step(raw: Any) -> StepState:
    """A step record, each absent field taking ``StepState``'s default (see _encode_step)."""
    if type(raw) is not dict:
        raise _Refused(f"a JSON {_json_type(raw)}, not an object")
    return StepState(
        name=_get(raw, "name", str),
        status=_status(StepStatus, raw, "status") if "status" in raw else StepStatus.PENDING,
        attempts=_count(raw, "attempts") if "attempts" in raw else 0,
        error=_get(raw, "error", str, optional=True) if "error" in raw else None,
        effect_possible=(_get(raw, "effect_possible", bool) if "effect_possible" in raw else False),
        started_at=_time(raw, "started_at") if "started_at" in raw else None,
        completed_at=_time(raw, "completed_at") if "completed_at" in raw else None,
        next_attempt_at=_time(raw, "next_attempt_at") if "next_attempt_at" in raw else None,
        compensation_attempts=(
            _count(raw, "compensation_attempts") if "compensation_attempts" in raw else 0
        ),
        compensation_error=(
            _get(raw, "compensation_error", str, optional=True)
            if "compensation_error" in raw
            else None
        ),
        compensation_started_at=(
            _time(raw, "compensation_started_at") if "compensation_started_at" in raw else None
        ),
        compensated_at=_time(raw, "compensated_at") if "compensated_at" in raw else None,
        waiting_for=_get(raw, "waiting_for", str, optional=True) if "waiting_for" in raw else None,
        wait_until=_time(raw, "wait_until") if "wait_until" in raw else None,
        event_id=_get(raw, "event_id", str, optional=True) if "event_id" in raw else None,
    )


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _get(document: dict[str, Any], key: str, kind: type, *, optional: bool = False) -> Any:
    """``document[key]``, which must be a ``kind`` (or null, if ``optional``)."""
    if key not in document:
        raise _Refused(f"field {key!r} is missing")
    value = document[key]
    if (value is None and optional) or type(value) is kind:
        return value
    expected = _JSON_TYPES.get(kind, "boolean") + (" or null" if optional else "")
    raise _Refused(f"{key} is {_json_type(value)} {value!r:.60}, not {expected}")


def _count(document: dict[str, Any], key: str) -> int:
    value: int = _get(document, key, int)
    if value < 0:
        raise _Refused(f"{key} is {value}, not a count (>= 0)")
    return value


def _status(
    kind: type[SagaStatus] | type[StepStatus] | type[ErrorKind], document: dict[str, Any], key: str
) -> Any:
    value = _get(document, key, str)
    try:
        return kind(value)
    except ValueError:
        known = ", ".join(member.value for member in kind)
        raise _Refused(f"{key} {value!r:.60} is none of {known}") from None


def _time(document: dict[str, Any], key: str) -> datetime | None:
    value = document.get(key)
    if type(value) is not str:
        _get(document, key, str, optional=True)  # missing, or of the wrong type: refused
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise _Refused(f"{key} {value!r:.60} is not an ISO 8601 date and time") from None
