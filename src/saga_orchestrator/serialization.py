"""Exact, self-describing JSON for saga data and state.

Values round-trip exactly or are refused with [`SerializationError`][] before anything is
written. Supported: ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``Decimal`` (finite,
as a string, so ``Decimal("0.10")`` keeps its exponent), ``UUID``, timezone-aware ``datetime``,
``date``, ``timedelta``, ``bytes``, enums, dataclasses (nested), lists, tuples and dicts with
string keys. Naive datetimes, sets, NaN and arbitrary objects are refused.

Tagged values are JSON objects with one key starting with ``$``; dataclasses and enums are
named by ``module:QualifiedName`` and imported again when read, so they must be defined at
module level.

Two bounds keep every stored value writable and readable: lists, tuples, dicts, dataclasses and
enum members nest at most [`MAX_DEPTH`][saga_orchestrator.serialization.MAX_DEPTH] levels deep
in a value, and an ``int`` has at most
[`MAX_INT_DIGITS`][saga_orchestrator.serialization.MAX_INT_DIGITS] decimal digits. A value past
either is refused with [`SerializationError`][] naming where it is, and so is stored text past
them when it is read (as is any malformed document: reading raises nothing else).
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import math
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from .errors import SerializationError
from .state import ErrorKind, ErrorRecord, SagaContext, SagaStatus, StepState, StepStatus

__all__ = [
    "MAX_DEPTH",
    "MAX_INT_DIGITS",
    "UnresolvedValue",
    "decode_context",
    "decode_value",
    "dumps",
    "encode_context",
    "encode_value",
    "loads",
]

FORMAT_VERSION = 1

MAX_DEPTH = 100
"""How many levels deep lists, tuples, dicts, dataclasses and enum members may nest in one
stored value: ``[[1]]`` is 2 levels, ``1`` is 0. A value here is one field of a step's result
(which [`encode_value`][saga_orchestrator.serialization.encode_value] checks when the step
returns) or of the saga's data; the saga's data as a whole, and a step's whole result, may be
one level deeper (``MAX_DEPTH + 1``), since they hold such values. A deeper value (a list
nested 5,000 deep, a cycle) is refused with ``SerializationError`` instead of exhausting the
interpreter's stack."""

MAX_INT_DIGITS = 4300
"""The most decimal digits (the sign not counted) a stored ``int`` may have: CPython's default
limit for converting an ``int`` to and from text (``sys.int_info.default_max_str_digits``), so
that every stored ``int`` can be written and read back under the interpreter's default
settings. A longer one is refused with ``SerializationError``, whatever
``sys.set_int_max_str_digits`` says."""

_INT_LIMIT = 10**MAX_INT_DIGITS  # a stored int lies strictly between -_INT_LIMIT and _INT_LIMIT
_INT_TOO_LONG = f"int longer than {MAX_INT_DIGITS} decimal digits (MAX_INT_DIGITS)"
_RECORD_DEPTH = MAX_DEPTH + 1  # the saga's data, a step's whole result: they hold values
_PATH_SHOWN = 8  # path components an error shows before it abbreviates the path

_KEEP_UNKNOWN: ContextVar[bool] = ContextVar("saga_orchestrator_keep_unknown", default=False)


@dataclass(frozen=True, slots=True)
class UnresolvedValue:
    """A stored dataclass or enum value whose class cannot be rebuilt here (its code is not
    installed, or changed since): what ``decode_context(..., keep_unknown_types=True)``
    returns in its place, for tools that only show stored sagas."""

    type: str
    """The stored ``module:QualifiedName``."""
    value: Any
    """The stored fields (a dict) or enum value, decoded as far as possible."""


class _Refused(Exception):
    """Raised deep in the encoder or the decoder; the path to the value is collected while
    unwinding, so the happy path never builds path strings."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    def where(self, root: str) -> str:
        """``root`` and the path below it, abbreviated when long (a value nested 5,000 deep)."""
        path = self.path[::-1]
        if len(path) > _PATH_SHOWN + 2:
            hidden = len(path) - _PATH_SHOWN
            path = [*path[: _PATH_SHOWN - 2], f"…{hidden} more…", *path[-2:]]
        return root + "".join(path)


def _too_deep() -> _Refused:
    return _Refused(f"nested deeper than {MAX_DEPTH} levels (MAX_DEPTH)")


_TYPE_PATHS: dict[type, str] = {}
_MAIN_MODULE_TYPES: list[type] = []  # first stored since the last take_main_module_types()
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_FIELDS: dict[type, tuple[dataclasses.Field[Any], ...]] = {}


def _type_path(cls: type) -> str:
    path = _TYPE_PATHS.get(cls)
    if path is None:
        qualname = cls.__qualname__
        if "<locals>" in qualname:
            raise _Refused(
                f"{qualname} is defined inside a function and could not be rebuilt when read "
                "back; define it at module level"
            )
        if cls.__module__ == "__main__":
            _MAIN_MODULE_TYPES.append(cls)
        path = _TYPE_PATHS[cls] = f"{cls.__module__}:{qualname}"
    return path


def take_main_module_types() -> list[type]:
    """The classes defined in ``__main__`` that were stored since the last call (each once per
    process): the orchestrator warns about them
    ([`MainModuleDataWarning`][saga_orchestrator.errors.MainModuleDataWarning])."""
    found = list(_MAIN_MODULE_TYPES)
    _MAIN_MODULE_TYPES.clear()
    return found


def main_module_warning(cls: type) -> str:
    """The text of the [`MainModuleDataWarning`][saga_orchestrator.errors.MainModuleDataWarning]
    for ``cls``."""
    return (
        f"{cls.__qualname__} is defined in __main__ (the script being run), so it is stored as "
        f"'__main__:{cls.__qualname__}': another process (recover(), a worker, the CLI) cannot "
        "import it to resume or show the saga. Define it in a module and import it from your "
        "script."
    )


def _field_names(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def _resolve(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    try:
        obj: Any = sys.modules.get(module_name) or importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, ValueError, TypeError) as exc:
        raise SerializationError(f"stored type {path!r} cannot be imported: {exc}") from exc
    if not isinstance(obj, type):
        raise SerializationError(f"stored type {path!r} is not a class")
    return obj


def encode_value(value: Any, where: str = "value") -> Any:
    """Turn ``value`` into JSON-compatible data, or raise naming the offending path.

    ``value`` may nest [`MAX_DEPTH`][saga_orchestrator.serialization.MAX_DEPTH] levels deep;
    the orchestrator checks each field of a step's result with it.
    """
    return _encode_top(value, where, MAX_DEPTH)


def _encode_top(value: Any, where: str, depth: int) -> Any:
    try:
        return _encode(value, depth)
    except _Refused as exc:
        raise SerializationError(f"{exc.where(where)}: {exc.reason}") from None
    except RecursionError:  # the caller's stack was already deep: refused, not crashed
        raise SerializationError(
            f"{where}: nested too deeply for the interpreter's recursion limit"
        ) from None


# Each encoder takes the value and ``room``: how many more levels of nesting are allowed at
# the value's place. A container needs room 1 or more and gives its items one less.


def _encode(value: Any, room: int) -> Any:
    # Dispatch on the exact type: a subclass (a str subclass, an IntEnum) would not read
    # back as itself, so it goes through the slower checks below.
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value, room)
    return _encode_other(value, room)


def _same(value: Any, room: int) -> Any:
    return value


def _int(value: int, room: int) -> int:
    if -_INT_LIMIT < value < _INT_LIMIT:
        return value
    raise _Refused(_INT_TOO_LONG)


def _float(value: float, room: int) -> float:
    if not math.isfinite(value):
        raise _Refused(f"{value!r} is not a finite number")
    return value


def _decimal(value: Decimal, room: int) -> dict[str, str]:
    if not value.is_finite():
        raise _Refused(f"Decimal {value} is not a finite number")
    return {"$decimal": str(value)}


def _datetime(value: datetime, room: int) -> dict[str, Any]:
    tzinfo = value.tzinfo
    if tzinfo is None or value.utcoffset() is None:
        raise _Refused(
            f"naive datetime {value.isoformat()} is ambiguous; use a timezone-aware datetime (UTC)"
        )
    tagged: dict[str, Any] = {"$datetime": value.isoformat()}
    if isinstance(tzinfo, ZoneInfo):
        tagged["tz"] = tzinfo.key
    elif not isinstance(tzinfo, timezone):
        raise _Refused(
            f"tzinfo {tzinfo!r} cannot be stored exactly; "
            "use datetime.UTC, a fixed datetime.timezone or a zoneinfo.ZoneInfo"
        )
    if value.fold:
        tagged["fold"] = 1
    return tagged


def _list(value: list[Any] | tuple[Any, ...], room: int) -> list[Any]:
    if room < 1:
        raise _too_deep()
    room -= 1
    out = []
    for index, item in enumerate(value):
        try:
            out.append(_encode(item, room))
        except _Refused as exc:
            exc.path.append(f"[{index}]")
            raise
    return out


def _tuple(value: tuple[Any, ...], room: int) -> dict[str, Any]:
    return {"$tuple": _list(value, room)}


def _dict(value: dict[Any, Any], room: int) -> dict[str, Any]:
    if room < 1:
        raise _too_deep()
    room -= 1
    out: dict[str, Any] = {}
    escaped = False
    for key, item in value.items():
        if type(key) is not str:
            raise _Refused(f"dict key {key!r} is a {type(key).__name__}; only str keys are stored")
        try:
            out[key] = _encode(item, room)
        except _Refused as exc:
            exc.path.append(f"[{key!r}]")
            raise
        escaped = escaped or key.startswith("$")
    return {"$dict": out} if escaped else out


_ENCODERS: dict[type, Callable[[Any, int], Any]] = {
    str: _same,
    int: _int,
    bool: _same,
    type(None): _same,
    float: _float,
    Decimal: _decimal,
    UUID: lambda v, room: {"$uuid": str(v)},
    datetime: _datetime,
    date: lambda v, room: {"$date": v.isoformat()},
    timedelta: lambda v, room: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    bytes: lambda v, room: {"$bytes": base64.b64encode(v).decode("ascii")},
    list: _list,
    tuple: _tuple,
    dict: _dict,
}


def _encode_other(value: Any, room: int) -> Any:
    cls = type(value)
    if isinstance(value, Enum):
        if room < 1:
            raise _too_deep()
        return {"$enum": _type_path(cls), "v": _encode(value.value, room - 1)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if room < 1:
            raise _too_deep()
        room -= 1
        fields: dict[str, Any] = {}
        for name in _field_names(cls):
            try:
                fields[name] = _encode(getattr(value, name), room)
            except _Refused as exc:
                exc.path.append(f".{name}")
                raise
        return {"$dataclass": _type_path(cls), "fields": fields}
    raise _Refused(
        f"{cls.__name__} values cannot be stored exactly "
        "(supported: None, bool, int, float, str, Decimal, UUID, aware datetime, date, "
        "timedelta, bytes, enums, dataclasses, lists, tuples, dicts with str keys)"
    )


def decode_value(data: Any) -> Any:
    """Inverse of [`encode_value`][]; ``SerializationError`` if ``data`` is malformed.

    ``data`` may nest one level more than
    [`MAX_DEPTH`][saga_orchestrator.serialization.MAX_DEPTH], as a whole record does (the
    saga's data, a step's result).
    """
    return _decode_top(data, "stored value")


def _decode_top(data: Any, where: str) -> Any:
    try:
        return _decode(data, _RECORD_DEPTH)
    except _Refused as exc:
        raise SerializationError(f"{exc.where(where)}: {exc.reason}") from None
    except RecursionError:
        raise SerializationError(
            f"{where}: nested too deeply for the interpreter's recursion limit"
        ) from None


def _decode(data: Any, room: int) -> Any:
    kind = type(data)
    if kind is list:
        return _decode_list(data, room)
    if kind is dict:
        # encode_value wraps plain dicts having "$" keys in {"$dict": ...}: a "$" key is a tag.
        for key in data:
            if type(key) is str and key.startswith("$"):
                return _decode_tagged(key, data, room)
        return _decode_dict(data, room)
    if kind is int and not -_INT_LIMIT < data < _INT_LIMIT:
        raise _Refused(_INT_TOO_LONG)
    if kind is float and not math.isfinite(data):
        raise _Refused(f"{data!r} is not a finite number")
    return data


def _decode_list(data: list[Any], room: int) -> list[Any]:
    if room < 1:
        raise _too_deep()
    room -= 1
    out = []
    for index, item in enumerate(data):
        try:
            out.append(_decode(item, room))
        except _Refused as exc:
            exc.path.append(f"[{index}]")
            raise
    return out


def _decode_dict(data: dict[Any, Any], room: int) -> dict[str, Any]:
    if room < 1:
        raise _too_deep()
    room -= 1
    out: dict[str, Any] = {}
    for key, item in data.items():
        if type(key) is not str:
            raise _Refused(f"dict key {key!r} is not a str")
        try:
            out[key] = _decode(item, room)
        except _Refused as exc:
            exc.path.append(f"[{key!r}]")
            raise
    return out


def _payload(tag: str, raw: Any, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(raw, kind) or isinstance(raw, bool):
        names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise _Refused(f"{tag} holds {type(raw).__name__} {raw!r:.60}, not {names}")
    return raw


def _decode_tagged(tag: str, data: dict[str, Any], room: int) -> Any:
    raw = data[tag]
    try:
        match tag:
            case "$decimal":
                number = Decimal(_payload(tag, raw, str))
                if not number.is_finite():
                    raise _Refused(f"Decimal {raw!r:.60} is not a finite number")
                return number
            case "$uuid":
                return UUID(_payload(tag, raw, str))
            case "$datetime":
                return _decode_datetime(raw, data)
            case "$date":
                return date.fromisoformat(_payload(tag, raw, str))
            case "$timedelta":
                parts = _payload(tag, raw, list)
                if len(parts) != 3 or any(type(part) is not int for part in parts):
                    raise _Refused(f"$timedelta holds {raw!r:.60}, not [days, seconds, micros]")
                days, seconds, micros = parts
                return timedelta(days=days, seconds=seconds, microseconds=micros)
            case "$bytes":
                return base64.b64decode(_payload(tag, raw, str), validate=True)
            case "$tuple":
                return tuple(_decode_list(_payload(tag, raw, list), room))
            case "$dict":
                return _decode_dict(_payload(tag, raw, dict), room)
            case "$enum":
                return _decode_enum(_payload(tag, raw, str), data, room)
            case "$dataclass":
                fields = _payload("fields of $dataclass", data.get("fields"), dict)
                if room < 1:
                    raise _too_deep()
                try:
                    return _decode_dataclass(_payload(tag, raw, str), fields, room - 1)
                except SerializationError:
                    if _KEEP_UNKNOWN.get():
                        return UnresolvedValue(raw, _decode_dict(fields, room))
                    raise
    except (ArithmeticError, ValueError) as exc:  # a bad ISO date, UUID, base64, Decimal...
        raise _Refused(f"{tag} {raw!r:.60} cannot be read back: {exc}") from None
    raise _Refused(f"unknown tag {tag!r} in stored data")


def _decode_datetime(raw: Any, data: dict[str, Any]) -> datetime:
    parsed = datetime.fromisoformat(_payload("$datetime", raw, str))
    if "tz" in data:
        key = _payload("tz of $datetime", data["tz"], str)
        try:
            zone = ZoneInfo(key)
        except (ValueError, OSError, LookupError) as exc:  # ZoneInfoNotFoundError is a KeyError
            raise _Refused(f"time zone {key!r:.60} is unknown here: {exc!r}") from None
        if parsed.tzinfo is None:
            raise _Refused(f"$datetime {raw!r:.60} with a time zone has no UTC offset")
        parsed = parsed.astimezone(zone)
    fold = data.get("fold", 0)
    if fold not in (0, 1) or type(fold) is not int:
        raise _Refused(f"fold of $datetime is {fold!r:.60}, not 0 or 1")
    return parsed.replace(fold=fold)


def _decode_enum(raw: str, data: dict[str, Any], room: int) -> Any:
    if "v" not in data:
        raise _Refused(f"$enum {raw!r:.60} has no value")
    if room < 1:
        raise _too_deep()
    value = _decode(data["v"], room - 1)
    try:
        enum_cls = _resolve(raw)
        if not issubclass(enum_cls, Enum):
            raise SerializationError(f"stored type {raw!r} is no longer an enum")
        try:
            return enum_cls(value)
        except (ValueError, TypeError):
            raise SerializationError(
                f"stored value {value!r} is no longer a member of {raw}"
            ) from None
    except SerializationError:
        if _KEEP_UNKNOWN.get():
            return UnresolvedValue(raw, value)
        raise


def _decode_dataclass(raw: str, stored: dict[str, Any], room: int) -> Any:
    cls = _resolve(raw)
    if not dataclasses.is_dataclass(cls):
        raise SerializationError(f"stored type {raw!r} is no longer a dataclass")
    obj = object.__new__(cls)
    specs = _FIELDS.get(cls)
    if specs is None:
        specs = _FIELDS[cls] = dataclasses.fields(cls)
    for f in specs:
        if f.name in stored:
            try:
                value = _decode(stored[f.name], room)
            except _Refused as exc:
                exc.path.append(f".{f.name}")
                raise
            object.__setattr__(obj, f.name, value)
        elif f.default is not dataclasses.MISSING:
            object.__setattr__(obj, f.name, f.default)
        elif f.default_factory is not dataclasses.MISSING:
            object.__setattr__(obj, f.name, f.default_factory())
        else:
            raise SerializationError(
                f"stored {raw} has no value for field {f.name!r}, which has no default"
            )
    return obj


def dumps(value: Any, where: str = "value") -> str:
    """Encode ``value`` to a JSON string (see [`encode_value`][]).

    ``value`` is a whole record (a step's result, as the idempotency store keeps it): it may
    nest one level more than [`MAX_DEPTH`][saga_orchestrator.serialization.MAX_DEPTH].
    """
    return _json(_encode_top(value, where, _RECORD_DEPTH), where)


_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _json(data: Any, where: str) -> str:
    try:
        return _ENCODER.encode(data)
    except ValueError as exc:  # sys.set_int_max_str_digits() set below MAX_INT_DIGITS
        raise SerializationError(f"{where} cannot be written as JSON: {exc}") from None


def loads(text: str | bytes) -> Any:
    """Decode a JSON string written by [`dumps`][]; SerializationError if it cannot be."""
    return _decode_top(_parse(text, "stored value cannot be read back"), "stored value")


def _parse(text: Any, failure: str) -> Any:
    """JSON text to data; SerializationError, its message starting with ``failure``, for
    anything that is not JSON."""
    if not isinstance(text, str | bytes | bytearray):
        raise SerializationError(f"{failure}: a {type(text).__name__}, not JSON text")
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise SerializationError(
            f"{failure}: nested too deeply to be read (deeper than MAX_DEPTH allows)"
        ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an int too long
        raise SerializationError(f"{failure}: not valid JSON: {exc}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _encode_step(step: StepState) -> dict[str, Any]:
    return {
        "name": step.name,
        "status": step.status.value,
        "attempts": step.attempts,
        "error": step.error,
        "effect_possible": step.effect_possible,
        "started_at": _dt(step.started_at),
        "completed_at": _dt(step.completed_at),
        "next_attempt_at": _dt(step.next_attempt_at),
        "compensation_attempts": step.compensation_attempts,
        "compensation_error": step.compensation_error,
        "compensation_started_at": _dt(step.compensation_started_at),
        "compensated_at": _dt(step.compensated_at),
    }


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
    texts = context._step_json
    count = len(context.steps)
    if texts is None or len(texts) != count:
        texts = [_step_text(step) for step in context.steps]
    else:
        for index in {context._step_json_at, context.current_step_index}:
            if 0 <= index < count:
                texts[index] = _step_text(context.steps[index])
    context._step_json = None  # kept only once the document is built
    text = _encode_document(context, texts)
    context._step_json = texts
    context._step_json_at = context.current_step_index
    return text


def _step_text(step: StepState) -> str:
    return _ENCODER.encode(_encode_step(step))


def _encode_document(context: SagaContext[Any], step_texts: list[str]) -> str:
    document: dict[str, Any] = {
        "format": FORMAT_VERSION,
        "saga_id": str(context.saga_id),
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
    if context.saga_version != 1:  # absent for version 1 (and in older rows)
        document["saga_version"] = context.saga_version
    if context.error_history:  # absent in the sagas that never failed (and in older rows)
        document["error_history"] = [
            {"kind": r.kind.value, "message": r.message, "at": _dt(r.at), "step": r.step}
            for r in context.error_history
        ]
    head = _json(document, f"saga {context.saga_id}")
    return f'{head[:-1]},"steps":[{",".join(step_texts)}]}}'


_MALFORMED = "stored saga state is malformed"


def decode_context(text: str | bytes, *, keep_unknown_types: bool = False) -> SagaContext[Any]:
    """Rebuild a context written by [`encode_context`][].

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
    if type(raw) is not dict:
        raise _Refused(f"a JSON {_json_type(raw)}, not an object")
    return StepState(
        name=_get(raw, "name", str),
        status=_status(StepStatus, raw, "status"),
        attempts=_count(raw, "attempts"),
        error=_get(raw, "error", str, optional=True),
        effect_possible=_get(raw, "effect_possible", bool),
        started_at=_time(raw, "started_at"),
        completed_at=_time(raw, "completed_at"),
        next_attempt_at=_time(raw, "next_attempt_at"),
        compensation_attempts=_count(raw, "compensation_attempts"),
        compensation_error=_get(raw, "compensation_error", str, optional=True),
        compensation_started_at=_time(raw, "compensation_started_at"),
        compensated_at=_time(raw, "compensated_at"),
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
