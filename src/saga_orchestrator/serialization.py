"""Exact, self-describing JSON for saga data and state.

Values round-trip exactly or are refused with [`SerializationError`][] before anything is
written. Supported: ``None``, ``bool``, ``int``, finite ``float``, ``str``, ``Decimal`` (finite,
as a string, so ``Decimal("0.10")`` keeps its exponent), ``UUID``, timezone-aware ``datetime``,
``date``, ``timedelta``, ``bytes``, enums, dataclasses (nested), lists, tuples and dicts with
string keys. Naive datetimes, sets, NaN and arbitrary objects are refused.

Tagged values are JSON objects with one key starting with ``$``; dataclasses and enums are
named by ``module:QualifiedName`` and imported again when read, so they must be defined at
module level.
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import math
import sys
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from .errors import SerializationError
from .state import SagaContext, SagaStatus, StepState, StepStatus

__all__ = [
    "UnresolvedValue",
    "decode_context",
    "decode_value",
    "dumps",
    "encode_context",
    "encode_value",
    "loads",
]

FORMAT_VERSION = 1

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
    """Raised deep in the encoder; the path to the value is collected while unwinding, so
    the happy path never builds path strings."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []


_TYPE_PATHS: dict[type, str] = {}
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _type_path(cls: type) -> str:
    path = _TYPE_PATHS.get(cls)
    if path is None:
        qualname = cls.__qualname__
        if "<locals>" in qualname:
            raise _Refused(
                f"{qualname} is defined inside a function and could not be rebuilt when read "
                "back; define it at module level"
            )
        path = _TYPE_PATHS[cls] = f"{cls.__module__}:{qualname}"
    return path


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
    except (ImportError, AttributeError) as exc:
        raise SerializationError(f"stored type {path!r} cannot be imported: {exc}") from exc
    if not isinstance(obj, type):
        raise SerializationError(f"stored type {path!r} is not a class")
    return obj


def encode_value(value: Any, where: str = "value") -> Any:
    """Turn ``value`` into JSON-compatible data, or raise naming the offending path."""
    try:
        return _encode(value)
    except _Refused as exc:
        path = "".join(reversed(exc.path))
        raise SerializationError(f"{where}{path}: {exc.reason}") from None


def _encode(value: Any) -> Any:
    # Dispatch on the exact type: a subclass (a str subclass, an IntEnum) would not read
    # back as itself, so it goes through the slower checks below.
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    return _encode_other(value)


def _same(value: Any) -> Any:
    return value


def _float(value: float) -> float:
    if not math.isfinite(value):
        raise _Refused(f"{value!r} is not a finite number")
    return value


def _decimal(value: Decimal) -> dict[str, str]:
    if not value.is_finite():
        raise _Refused(f"Decimal {value} is not a finite number")
    return {"$decimal": str(value)}


def _datetime(value: datetime) -> dict[str, Any]:
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


def _list(value: list[Any]) -> list[Any]:
    out = []
    for index, item in enumerate(value):
        try:
            out.append(_encode(item))
        except _Refused as exc:
            exc.path.append(f"[{index}]")
            raise
    return out


def _tuple(value: tuple[Any, ...]) -> dict[str, Any]:
    return {"$tuple": _list(list(value))}


def _dict(value: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    escaped = False
    for key, item in value.items():
        if type(key) is not str:
            raise _Refused(f"dict key {key!r} is a {type(key).__name__}; only str keys are stored")
        try:
            out[key] = _encode(item)
        except _Refused as exc:
            exc.path.append(f"[{key!r}]")
            raise
        escaped = escaped or key.startswith("$")
    return {"$dict": out} if escaped else out


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    str: _same,
    int: _same,
    bool: _same,
    type(None): _same,
    float: _float,
    Decimal: _decimal,
    UUID: lambda v: {"$uuid": str(v)},
    datetime: _datetime,
    date: lambda v: {"$date": v.isoformat()},
    timedelta: lambda v: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    bytes: lambda v: {"$bytes": base64.b64encode(v).decode("ascii")},
    list: _list,
    tuple: _tuple,
    dict: _dict,
}


def _encode_other(value: Any) -> Any:
    cls = type(value)
    if isinstance(value, Enum):
        return {"$enum": _type_path(cls), "v": _encode(value.value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields: dict[str, Any] = {}
        for name in _field_names(cls):
            try:
                fields[name] = _encode(getattr(value, name))
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
    """Inverse of [`encode_value`][]."""
    if isinstance(data, list):
        return [decode_value(item) for item in data]
    if not isinstance(data, dict):
        return data
    # encode_value wraps plain dicts having "$" keys in {"$dict": ...}, so a "$" key is a tag.
    for key in data:
        if key.startswith("$"):
            return _decode_tagged(key, data)
    return {key: decode_value(item) for key, item in data.items()}


def _decode_tagged(tag: str, data: dict[str, Any]) -> Any:
    raw = data[tag]
    match tag:
        case "$decimal":
            return Decimal(raw)
        case "$uuid":
            return UUID(raw)
        case "$datetime":
            parsed = datetime.fromisoformat(raw)
            if "tz" in data:
                parsed = parsed.astimezone(ZoneInfo(data["tz"]))
            return parsed.replace(fold=data.get("fold", 0))
        case "$date":
            return date.fromisoformat(raw)
        case "$timedelta":
            days, seconds, micros = raw
            return timedelta(days=days, seconds=seconds, microseconds=micros)
        case "$bytes":
            return base64.b64decode(raw)
        case "$tuple":
            return tuple(decode_value(item) for item in raw)
        case "$dict":
            return {key: decode_value(item) for key, item in raw.items()}
        case "$enum":
            value = decode_value(data["v"])
            try:
                enum_cls = _resolve(raw)
                try:
                    return enum_cls(value)
                except ValueError:
                    raise SerializationError(
                        f"stored value {value!r} is no longer a member of {raw}"
                    ) from None
            except SerializationError:
                if _KEEP_UNKNOWN.get():
                    return UnresolvedValue(raw, value)
                raise
        case "$dataclass":
            try:
                return _decode_dataclass(raw, data["fields"])
            except SerializationError:
                if _KEEP_UNKNOWN.get():
                    fields = {key: decode_value(item) for key, item in data["fields"].items()}
                    return UnresolvedValue(raw, fields)
                raise
    raise SerializationError(f"unknown tag {tag!r} in stored data")


def _decode_dataclass(raw: str, stored: dict[str, Any]) -> Any:
    cls = _resolve(raw)
    if not dataclasses.is_dataclass(cls):
        raise SerializationError(f"stored type {raw!r} is no longer a dataclass")
    obj = object.__new__(cls)
    for f in dataclasses.fields(cls):
        if f.name in stored:
            object.__setattr__(obj, f.name, decode_value(stored[f.name]))
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
    """Encode ``value`` to a JSON string (see [`encode_value`][])."""
    return json.dumps(encode_value(value, where), separators=(",", ":"), allow_nan=False)


def loads(text: str) -> Any:
    """Decode a JSON string written by [`dumps`][]; SerializationError if it cannot be."""
    try:
        return decode_value(json.loads(text))
    except SerializationError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"stored value cannot be read back: {exc!r}") from exc


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


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


def _decode_step(raw: Mapping[str, Any]) -> StepState:
    return StepState(
        name=raw["name"],
        status=StepStatus(raw["status"]),
        attempts=raw["attempts"],
        error=raw["error"],
        effect_possible=raw["effect_possible"],
        started_at=_parse_dt(raw["started_at"]),
        completed_at=_parse_dt(raw["completed_at"]),
        next_attempt_at=_parse_dt(raw["next_attempt_at"]),
        compensation_attempts=raw["compensation_attempts"],
        compensation_error=raw["compensation_error"],
        compensation_started_at=_parse_dt(raw["compensation_started_at"]),
        compensated_at=_parse_dt(raw["compensated_at"]),
    )


def encode_context(context: SagaContext[Any]) -> str:
    """The whole context as one JSON document (the repositories' ``state`` column)."""
    document = {
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
        "steps": [_encode_step(step) for step in context.steps],
        "data": encode_value(context.data, "data"),
    }
    return json.dumps(document, separators=(",", ":"), allow_nan=False)


def decode_context(text: str, *, keep_unknown_types: bool = False) -> SagaContext[Any]:
    """Rebuild a context written by [`encode_context`][].

    With ``keep_unknown_types``, a dataclass or enum value whose class cannot be rebuilt
    becomes an [`UnresolvedValue`][saga_orchestrator.serialization.UnresolvedValue] instead
    of an error: for tools that show stored sagas without their code. Such a context cannot
    be driven.
    """
    token = _KEEP_UNKNOWN.set(keep_unknown_types)
    try:
        document = json.loads(text)
        if document.get("format") != FORMAT_VERSION:
            raise SerializationError(f"unsupported state format {document.get('format')!r}")
        return SagaContext(
            saga_id=UUID(document["saga_id"]),
            saga_type=document["saga_type"],
            data=decode_value(document["data"]),
            steps=[_decode_step(raw) for raw in document["steps"]],
            correlation_id=document["correlation_id"],
            status=SagaStatus(document["status"]),
            current_step_index=document["current_step_index"],
            error=document["error"],
            created_at=_parse_dt(document["created_at"]),
            updated_at=_parse_dt(document["updated_at"]),
            deadline=_parse_dt(document["deadline"]),
            version=document["version"],
            event_sequence=document["event_sequence"],
        )
    except SerializationError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SerializationError(f"stored saga state is malformed: {exc!r}") from exc
    finally:
        _KEEP_UNKNOWN.reset(token)
