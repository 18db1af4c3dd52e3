"""The value codec: exact, self-describing JSON for one value (a field of the saga's data, a
step's result), within the bounds MAX_DEPTH and MAX_INT_DIGITS.

Documented, and imported, through [`saga_orchestrator.serialization`][].
"""

from __future__ import annotations

import base64
import dataclasses
import importlib
import json
import json.encoder
import math
import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from json.encoder import encode_basestring_ascii
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from .._texts import identity_texts
from ..errors import SerializationError

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


_uuid_text: Callable[[UUID], str] = identity_texts(str)
"""``str`` of a UUID; a saga's ids are written at every transition, so their text is kept."""


_ENCODERS: dict[type, Callable[[Any, int], Any]] = {
    str: _same,
    int: _int,
    bool: _same,
    type(None): _same,
    float: _float,
    Decimal: _decimal,
    UUID: lambda v, room: {"$uuid": _uuid_text(v)},
    datetime: _datetime,
    date: lambda v, room: {"$date": v.isoformat()},
    timedelta: lambda v, room: {"$timedelta": [v.days, v.seconds, v.microseconds]},
    bytes: lambda v, room: {"$bytes": base64.b64encode(v).decode("ascii")},
    list: _list,
    tuple: _tuple,
    dict: _dict,
}


def _dataclass_encoder(path: str, names: tuple[str, ...]) -> Callable[[Any, int], Any]:
    def encode(value: Any, room: int) -> Any:
        if room < 1:
            raise _too_deep()
        room -= 1
        fields: dict[str, Any] = {}
        for name in names:
            try:
                fields[name] = _encode(getattr(value, name), room)
            except _Refused as exc:
                exc.path.append(f".{name}")
                raise
        return {"$dataclass": path, "fields": fields}

    return encode


def _encode_other(value: Any, room: int) -> Any:
    cls = type(value)
    if isinstance(value, Enum):
        if room < 1:
            raise _too_deep()
        return {"$enum": _type_path(cls), "v": _encode(value.value, room - 1)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # The class's encoder, built once: its type path (refused for a local class, which
        # is then never cached) and field names, then dispatched on like the builtins.
        encoder = _ENCODERS[cls] = _dataclass_encoder(_type_path(cls), _field_names(cls))
        return encoder(value, room)
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


# One C encoder, made once (``JSONEncoder.encode`` makes one per call): the same settings as
# ``_ENCODER`` (compact separators, ASCII, no NaN), without the cycle check (the values were
# built by ``_encode``, which bounds their depth).
_make_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_c_encode: Any = (
    _make_encoder(
        None, _ENCODER.default, encode_basestring_ascii, None, ":", ",", False, False, False
    )
    if _make_encoder is not None
    else None
)


def _fast_json(value: Any) -> str:
    """``_ENCODER.encode(value)``, the same text."""
    if _c_encode is None:  # pragma: no cover - CPython has the C encoder
        return _ENCODER.encode(value)
    return "".join(_c_encode(value, 0))


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
