"""Saga data round-trips exactly through storage, or is refused with a clear error."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from saga_orchestrator import SagaContext, SagaStatus, SerializationError, StepState, StepStatus
from saga_orchestrator.serialization import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    decode_context,
    decode_value,
    dumps,
    encode_changes,
    encode_context,
    encode_value,
    loads,
)
from saga_orchestrator.serialization._documents import _document_dict, _encode_step, _step_text
from saga_orchestrator.serialization._values import _ENCODER
from saga_orchestrator.state import ErrorKind, ErrorRecord


class Color(StrEnum):
    RED = "red"


class Priority(IntEnum):
    HIGH = 1


class Legacy(str, Enum):  # noqa: UP042 - the spec's enum style must round-trip too
    A = "a"


@dataclass
class Line:
    sku: str
    price: Decimal


@dataclass(frozen=True)
class Frozen:
    n: int


@dataclass
class Nested:
    id: UUID
    lines: list[Line] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    when: datetime | None = None


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**70),
        1.5,
        "naïve ✓",
        Decimal("0.10"),
        Decimal("-1E+3"),
        Decimal("59.98"),
        uuid4(),
        datetime(2026, 11, 25, 18, 30, 0, 123456, tzinfo=UTC),
        datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=-5))),
        datetime(2026, 7, 1, 9, 30, tzinfo=ZoneInfo("Europe/Paris")),
        datetime(2026, 10, 25, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
        date(2026, 2, 28),
        timedelta(days=-1, seconds=5, microseconds=7),
        b"\x00\xff",
        Color.RED,
        Priority.HIGH,
        Legacy.A,
        (1, "a", Decimal("2")),
        [1, [2, [3]]],
        {"$weird": 1, "plain": {"$dataclass": "x"}},
        Frozen(3),
        Nested(uuid4(), [Line("SKU-1", Decimal("29.99"))], {"k": [Decimal("1.0")]}),
    ],
    ids=repr,
)
def test_value_round_trips_exactly(value: Any) -> None:
    """Each supported type reads back equal and of the same type."""
    restored = loads(dumps(value))
    assert restored == value
    assert type(restored) is type(value)


def test_decimal_keeps_its_exponent() -> None:
    """Decimal("0.10") is not Decimal("0.1"): money keeps its written precision."""
    restored = loads(dumps(Decimal("0.10")))
    assert str(restored) == "0.10"


def test_datetime_keeps_its_offset() -> None:
    """An aware datetime reads back aware, with the same UTC offset."""
    value = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    restored = loads(dumps(value))
    assert restored.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (datetime(2026, 1, 1), "naive datetime"),  # noqa: DTZ001 - the point of the test
        ({1, 2}, "set values cannot be stored"),
        (math.nan, "not a finite number"),
        (math.inf, "not a finite number"),
        (Decimal("NaN"), "not a finite number"),
        (object(), "object values cannot be stored"),
        ({1: "a"}, "only str keys"),
    ],
    ids=repr,
)
def test_unstorable_value_is_refused_with_a_clear_error(value: Any, message: str) -> None:
    """Values that cannot round-trip raise SerializationError naming the problem."""
    with pytest.raises(SerializationError, match=message):
        dumps({"field": value})


def test_error_names_the_path_to_the_bad_value() -> None:
    """The error says where in the data the bad value sits."""
    with pytest.raises(SerializationError, match=r"data\.lines\[0\]\.price"):
        dumps(Nested(uuid4(), [Line("x", math.nan)]), "data")  # type: ignore[arg-type]


def test_class_defined_in_a_function_is_refused() -> None:
    """A local class could not be imported back, so it is refused up front."""

    @dataclass
    class Local:
        x: int

    with pytest.raises(SerializationError, match="inside a function"):
        dumps(Local(1))


def test_unknown_stored_type_is_a_clear_error() -> None:
    """Reading data whose class no longer exists fails clearly, not with a KeyError."""
    text = '{"$dataclass":"nowhere_module:Gone","fields":{}}'
    with pytest.raises(SerializationError, match="cannot be imported"):
        loads(text)


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text()
        | st.decimals(allow_nan=False, allow_infinity=False)
        | st.uuids()
        | st.datetimes(timezones=st.just(UTC)),
        lambda children: (
            st.lists(children, max_size=4)
            | st.dictionaries(st.text(max_size=5), children, max_size=4)
            | st.tuples(children, children)
        ),
        max_leaves=20,
    )
)
def test_any_supported_value_round_trips(value: Any) -> None:
    """Arbitrary nestings of supported values round-trip exactly."""
    restored = loads(dumps(value))
    assert restored == value
    assert repr(restored) == repr(value)


# ---------------------------------------------------------------------- bounds


@dataclass
class Box:
    inner: Any


NESTERS: dict[str, Any] = {
    "list": lambda inner: [inner],
    "tuple": lambda inner: (inner,),
    "dict": lambda inner: {"k": inner},
    "escaped dict": lambda inner: {"$k": inner},
    "dataclass": lambda inner: Box(inner),
}


def nest(kind: str, levels: int, leaf: Any = 1) -> Any:
    """``levels`` containers of ``kind``, one inside the other, around ``leaf``."""
    value = leaf
    for _ in range(levels):
        value = NESTERS[kind](value)
    return value


def test_the_bounds_are_the_documented_constants() -> None:
    """MAX_INT_DIGITS is CPython's default int/str limit, so every stored int reads back."""
    assert MAX_DEPTH == 100
    assert MAX_INT_DIGITS == sys.int_info.default_max_str_digits == 4300


@pytest.mark.parametrize("kind", NESTERS)
def test_a_value_nested_max_depth_deep_round_trips(kind: str) -> None:
    value = nest(kind, MAX_DEPTH)
    assert decode_value(encode_value(value)) == value
    assert loads(dumps(value)) == value


@pytest.mark.parametrize("kind", NESTERS)
@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 5000])
def test_a_value_nested_deeper_is_refused_naming_where(kind: str, levels: int) -> None:
    """SerializationError, not RecursionError, with the path abbreviated."""
    with pytest.raises(SerializationError) as caught:
        encode_value(nest(kind, levels), "pay result['x']")
    message = str(caught.value)
    assert message.startswith("pay result['x']")
    assert message.endswith(": nested deeper than 100 levels (MAX_DEPTH)")
    assert " more…" in message
    assert len(message) < 200


def test_a_cycle_is_refused_as_too_deep() -> None:
    looping: list[Any] = []
    looping.append(looping)
    with pytest.raises(SerializationError, match=r"^value\[0\]\[0\].*nested deeper than 100"):
        encode_value(looping)


def test_an_enum_member_counts_as_a_level() -> None:
    """Enum values nest like any container, in the encoder and the decoder alike."""
    assert loads(dumps(nest("list", MAX_DEPTH - 1, Color.RED))) == nest(
        "list", MAX_DEPTH - 1, Color.RED
    )
    with pytest.raises(SerializationError, match="nested deeper than 100"):
        encode_value(nest("list", MAX_DEPTH, Color.RED))


def test_a_whole_record_may_be_one_level_deeper() -> None:
    """The saga's data, and a step's result as dumps() writes it, hold fields that may each
    nest MAX_DEPTH deep: the record itself is one more level."""
    record = {"field": nest("list", MAX_DEPTH)}
    assert loads(dumps(record)) == record
    with pytest.raises(SerializationError, match="nested deeper"):
        encode_value(record)
    with pytest.raises(SerializationError, match=r"^value\['field'\]\[0\]"):
        dumps({"field": nest("list", MAX_DEPTH + 1)})
    context = _context(Box(nest("list", MAX_DEPTH)))
    assert decode_context(encode_context(context)).data == context.data
    with pytest.raises(SerializationError, match=r"^data\.inner\[0\]\[0\].*nested deeper"):
        encode_context(_context(Box(nest("list", MAX_DEPTH + 1))))


@pytest.mark.parametrize("sign", [1, -1])
def test_an_int_of_max_int_digits_round_trips_and_a_longer_one_is_refused(sign: int) -> None:
    longest = sign * (10**MAX_INT_DIGITS - 1)
    assert loads(dumps([longest])) == [longest]
    too_long = sign * 10**MAX_INT_DIGITS
    for encode in (encode_value, dumps):
        with pytest.raises(SerializationError, match=r"^value\[1\]: int longer than 4300"):
            encode([0, too_long])
    with pytest.raises(SerializationError, match=r"^data\.inner: int longer than 4300"):
        encode_context(_context(Box(too_long)))


@pytest.fixture
def int_digits_limit() -> Iterator[Callable[[int], None]]:
    """Set sys.set_int_max_str_digits for one test, restored afterwards."""
    before = sys.get_int_max_str_digits()
    yield sys.set_int_max_str_digits
    sys.set_int_max_str_digits(before)


def test_a_long_int_is_refused_whatever_the_interpreter_allows(
    int_digits_limit: Callable[[int], None],
) -> None:
    """With the interpreter's limit off, the bound still holds, writing and reading."""
    int_digits_limit(0)
    with pytest.raises(SerializationError, match="int longer than 4300"):
        dumps(10**5000)
    with pytest.raises(SerializationError, match=r"^stored value\[0\]: int longer than 4300"):
        loads("[" + "9" * 4301 + "]")


def test_an_interpreter_limit_below_the_bound_is_a_serialization_error(
    int_digits_limit: Callable[[int], None],
) -> None:
    """A process that lowered sys.set_int_max_str_digits gets SerializationError, never
    ValueError, on both sides."""
    int_digits_limit(640)
    with pytest.raises(SerializationError, match="cannot be written as JSON"):
        dumps(10**1000)
    with pytest.raises(SerializationError, match="not valid JSON"):
        loads("9" * 1000)
    with pytest.raises(SerializationError, match="cannot be written as JSON"):
        encode_context(_context(Box(10**1000)))


@pytest.mark.parametrize("levels", [MAX_DEPTH + 2, 800, 5000, 100_000])
def test_reading_a_document_nested_too_deep_is_refused(levels: int) -> None:
    """The decoder holds the same bound: neither json nor the decoder runs out of stack."""
    with pytest.raises(SerializationError, match="nested"):
        loads("[" * levels + "]" * levels)
    text = encode_context(_context(Box(None)))
    deep = text.replace('"inner":null', '"inner":' + "[" * levels + "]" * levels)
    with pytest.raises(SerializationError, match="nested"):
        decode_context(deep)


def _context(data: Any, steps: int = 2) -> SagaContext[Any]:
    now = datetime(2026, 11, 25, 18, 30, tzinfo=UTC)
    return SagaContext(
        saga_id=UUID("6f1c2a40-3b9e-4c55-a1f0-9d8e7c6b5a43"),
        saga_type="trip",
        data=data,
        steps=[
            StepState(f"step{i}", StepStatus.COMPLETED, attempts=1, started_at=now)
            for i in range(steps)
        ],
        correlation_id="trip-1",
        status=SagaStatus.RUNNING,
        current_step_index=1,
        created_at=now,
        updated_at=now,
        deadline=now,
        version=3,
        event_sequence=4,
        error_history=[
            ErrorRecord(ErrorKind.COMPENSATING, "step1: KeyError: 'x'", now, "step1"),
            ErrorRecord(ErrorKind.RETRIED, "retried", None, None),
        ],
    )


def test_the_error_history_round_trips_and_older_rows_have_none() -> None:
    """`error_history` is stored in order; a document written before it existed reads as []."""
    context = _context(None)
    text = encode_context(context)
    assert decode_context(text).error_history == context.error_history
    document = json.loads(text)
    del document["error_history"]
    assert decode_context(json.dumps(document)).error_history == []
    context.error_history = []
    assert "error_history" not in json.loads(encode_context(context))


# ---------------------------------------------------------------------- malformed state


def _valid_document() -> dict[str, Any]:
    data = Nested(
        UUID("0b9e4a52-0c1e-4d5e-9a4b-6f0d2b7c8e11"),
        [Line("SKU-1", Decimal("29.99"))],
        {"when": date(2026, 2, 28), "t": (1, b"\x00"), "c": Color.RED, "$k": timedelta(days=1)},
        datetime(2026, 7, 1, 9, 30, tzinfo=ZoneInfo("Europe/Paris")),
    )
    document: dict[str, Any] = json.loads(encode_context(_context(data, steps=3)))
    return document


def _with(path: str, value: Any) -> str:
    """The valid document with the field at ``path`` (dotted; "-" deletes it) set."""
    document = _valid_document()
    *parents, last = path.split(".")
    target: Any = document
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if value == "-":
        del target[last]
    elif isinstance(target, list):
        target[int(last)] = value
    else:
        target[last] = value
    return json.dumps(document)


KEPT_WHEN_UNKNOWN: list[Any] = [
    _with("data.$dataclass", "nowhere_module:Gone"),
    _with("data.$dataclass", ""),
    _with("data.$dataclass", ".relative:X"),
    _with("data.fields.id", {"$enum": "tests.test_serialization:Color", "v": "blue"}),
    _with("data.fields.id", {"$enum": "tests.test_serialization:Color", "v": [1]}),
    _with("data.fields.id", {"$enum": "tests.test_serialization:Line", "v": "x"}),
    _with("data.fields.id", {"$enum": "tests.test_serialization:Color.nope", "v": 1}),
    _with("data.fields.id", {"$enum": "json:dumps", "v": 1}),
    _with("data.fields.id", {"$dataclass": "tests.test_serialization:Color", "fields": {}}),
    _with("data.fields.id", {"$dataclass": "tests.test_serialization:Line", "fields": {}}),
]
"""Classes that cannot be rebuilt: ``keep_unknown_types`` reads them as UnresolvedValue."""

MALFORMED: list[Any] = [
    "",
    "   ",
    '{"format": 1,',
    "[]",
    "null",
    "42",
    "true",
    '"text"',
    "{}",
    "NaN",
    b"\xff\xfe\x00garbage",
    b"\x80",
    42,
    None,
    ["a list object"],
    _with("format", 2),
    _with("format", "-"),
    _with("saga_id", "not-a-uuid"),
    _with("saga_id", 5),
    _with("saga_id", "-"),
    _with("saga_type", None),
    _with("saga_type", 5),
    _with("status", "bogus"),
    _with("status", None),
    _with("correlation_id", 5),
    _with("error", ["x"]),
    _with("current_step_index", -1),
    _with("current_step_index", 3),
    _with("current_step_index", 10**18),
    _with("current_step_index", "1"),
    _with("current_step_index", 1.0),
    _with("current_step_index", True),
    _with("current_step_index", None),
    _with("current_step_index", "-"),
    _with("created_at", "yesterday"),
    _with("created_at", "2026-13-45T00:00:00+00:00"),
    _with("updated_at", 1700000000),
    _with("deadline", "-"),
    _with("version", -1),
    _with("version", "3"),
    _with("event_sequence", "-"),
    _with("steps", "x"),
    _with("steps", {}),
    _with("steps", None),
    _with("steps", []),
    _with("steps.1", "not an object"),
    _with("steps.1", []),
    _with("steps.1", {}),
    _with("steps.1.name", None),
    _with("steps.1.status", "bogus"),
    _with("steps.1.attempts", -1),
    _with("steps.1.attempts", 1.5),
    _with("steps.1.attempts", False),
    _with("steps.1.effect_possible", "yes"),
    _with("steps.1.effect_possible", 0),
    _with("steps.1.started_at", "not a time"),
    _with("steps.1.completed_at", 5),
    _with("steps.1.compensation_attempts", "3"),
    _with("steps.1.name", "-"),
    _with("data", "-"),
    _with("data.$dataclass", 5),
    _with("data.fields", 5),
    _with("data.fields", "-"),
    _with("data.fields.id", {"$uuid": "not-a-uuid"}),
    _with("data.fields.id", {"$uuid": 5}),
    _with("data.fields.id", {"$decimal": "abc"}),
    _with("data.fields.id", {"$decimal": "NaN"}),
    _with("data.fields.id", {"$decimal": ["1"]}),
    _with("data.fields.id", {"$timedelta": [10**10, 0, 0]}),
    _with("data.fields.id", {"$timedelta": [1e308, 0, 0]}),
    _with("data.fields.id", {"$timedelta": 5}),
    _with("data.fields.id", {"$timedelta": [1, 2]}),
    _with("data.fields.id", {"$date": "2026-02-30"}),
    _with("data.fields.id", {"$datetime": "x"}),
    _with("data.fields.id", {"$datetime": None}),
    _with("data.fields.id", {"$datetime": "2026-01-01T00:00:00+00:00", "tz": "America"}),
    _with("data.fields.id", {"$datetime": "2026-01-01T00:00:00+00:00", "tz": "No/Such"}),
    _with("data.fields.id", {"$datetime": "2026-01-01T00:00:00+00:00", "tz": "../etc"}),
    _with("data.fields.id", {"$datetime": "2026-01-01T00:00:00+00:00", "tz": 5}),
    _with("data.fields.id", {"$datetime": "2026-01-01T00:00:00", "tz": "UTC"}),
    _with("data.fields.id", {"$datetime": "0001-01-01T00:00:00+05:00", "tz": "UTC"}),
    _with("data.fields.id", {"$datetime": "2026-01-01T00:00:00+00:00", "fold": 5}),
    _with("data.fields.id", {"$bytes": "!!"}),
    _with("data.fields.id", {"$bytes": 5}),
    _with("data.fields.id", {"$tuple": 5}),
    _with("data.fields.id", {"$dict": []}),
    _with("data.fields.id", {"$enum": 5, "v": 1}),
    _with("data.fields.id", {"$enum": "tests.test_serialization:Color"}),
    _with("data.fields.id", {"$unknown": 1}),
    _with("data.fields.id", 1e999),
    _with("data.fields.id", float("inf")),
    _with("error_history", 5),
    _with("error_history.0", []),
    _with("error_history.0.kind", "bogus"),
    _with("error_history.0.kind", "-"),
    _with("error_history.0.message", 5),
    _with("error_history.0.at", "yesterday"),
    _with("error_history.0.step", 7),
    *KEPT_WHEN_UNKNOWN,
]


@pytest.mark.parametrize("text", MALFORMED, ids=lambda text: repr(text)[:70])
@pytest.mark.parametrize("keep_unknown_types", [False, True])
def test_malformed_state_is_a_serialization_error(text: Any, keep_unknown_types: bool) -> None:
    """Any document that is not a saga's state is refused with SerializationError, never
    AttributeError, IndexError, KeyError, TypeError, ValueError or RecursionError."""
    if keep_unknown_types and text in KEPT_WHEN_UNKNOWN:
        context = decode_context(text, keep_unknown_types=True)
        assert "UnresolvedValue(" in repr(context.data)
        return
    with pytest.raises(SerializationError, match=r"\w"):
        decode_context(text, keep_unknown_types=keep_unknown_types)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[]", r"^stored saga state is malformed: a JSON array, not an object$"),
        ("null", "a JSON null, not an object"),
        ("42", "a JSON number, not an object"),
        ("{nope", "^stored saga state is malformed: not valid JSON"),
        (_with("current_step_index", 3), "current_step_index 3 is outside the saga's 3 steps"),
        (_with("steps.1.status", "bogus"), r"steps\[1\]: status 'bogus' is none of pending, "),
        (_with("steps.1", 7), r"steps\[1\]: a JSON number, not an object"),
        (_with("created_at", "yesterday"), "created_at 'yesterday' is not an ISO 8601"),
        (_with("saga_id", "x"), "saga_id 'x' is not a UUID"),
        (_with("version", "3"), "version is string '3', not number"),
        (_with("data.fields.id", {"$uuid": "x"}), r"data\.id: \$uuid 'x' cannot be read back"),
        (
            _with("data.fields.lines", [{"$decimal": "abc"}]),
            r"data\.lines\[0\]: \$decimal 'abc' cannot be read back",
        ),
    ],
)
def test_malformed_state_says_what_is_wrong_and_where(text: str, message: str) -> None:
    with pytest.raises(SerializationError, match=message):
        decode_context(text)


def test_a_saga_without_steps_reads_back() -> None:
    """Stored records without steps (written by tests and tools) stay readable at index 0."""
    context = _context(None, steps=0)
    context.current_step_index = 0
    assert decode_context(encode_context(context)).steps == []
    with pytest.raises(SerializationError, match="outside the saga's 0 steps"):
        decode_context(
            encode_context(context).replace('"current_step_index":0', '"current_step_index":1')
        )


def test_the_valid_document_of_these_tests_reads_back() -> None:
    """The documents above are malformed by their one change, not by the base they share."""
    context = decode_context(json.dumps(_valid_document()))
    assert context.data.meta["c"] is Color.RED
    assert context.current_step_index == 1


_KEYS = st.sampled_from(
    [
        *["$uuid", "$decimal", "$datetime", "$date", "$timedelta", "$bytes", "$tuple", "$dict"],
        *["$enum", "$dataclass", "fields", "v", "tz", "fold", "name", "status", "steps", "data"],
        *["current_step_index", "format", "x"],
    ]
)
_STRINGS = st.sampled_from(
    [
        *["", "x", "red", "running", "compensated", "compensation_failed", "Europe/Paris"],
        *["America", "../x", "2026-01-01T00:00:00+00:00", "2026-01-01", "0b9e4a52-0c1e-4d5e"],
        *["6f1c2a40-3b9e-4c55-a1f0-9d8e7c6b5a43", "tests.test_serialization:Color"],
        *["tests.test_serialization:Line", "tests.test_serialization:Nope", ":", "a:b", "AA=="],
    ]
) | st.text(alphabet="ab:.$-0", max_size=6)
_LONG_INT = "@an int of 4,301 digits@"  # spliced into the text: json.dumps would refuse it
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.sampled_from([-1, 0, 1, 2, 3, _LONG_INT])
    | st.floats(allow_nan=False)
    | _STRINGS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_KEYS, children, max_size=3),
    max_leaves=6,
)


def _places(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key or index) in a JSON tree."""
    found: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        found.append((node, key))
        if isinstance(child, dict | list):
            found.extend(_places(child))
    return found


@settings(max_examples=400, deadline=None)
@given(st.data(), st.booleans())
def test_a_mutated_document_reads_back_or_is_a_serialization_error(
    data: st.DataObject, keep_unknown_types: bool
) -> None:
    """Random edits to a valid state document (fields replaced, removed or added, text cut
    or spliced): decode_context succeeds or raises SerializationError, never anything else."""
    document = _valid_document()
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        places = _places(document)
        container, key = data.draw(st.sampled_from(places), label="place")
        action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
        if action == "replace":
            container[key] = data.draw(_JSON, label="value")
        elif action == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[data.draw(_KEYS, label="key")] = data.draw(_JSON, label="value")
        else:
            container.insert(key, data.draw(_JSON, label="value"))
    text = json.dumps(document).replace(f'"{_LONG_INT}"', "9" * 4301)
    if data.draw(st.booleans(), label="cut the text"):
        start = data.draw(st.integers(0, len(text)), label="start")
        end = data.draw(st.integers(start, min(len(text), start + 20)), label="end")
        text = text[:start] + data.draw(st.sampled_from(["", "[", "}", '"', "1e999"])) + text[end:]
    try:
        context = decode_context(text, keep_unknown_types=keep_unknown_types)
    except SerializationError:
        return
    assert isinstance(context, SagaContext)
    assert 0 <= context.current_step_index < max(len(context.steps), 1)


def test_step_records_omit_defaults_and_read_them_back() -> None:
    """A step record stores only what differs from ``StepState``'s defaults; absent fields
    read back as the defaults, so a field added with a default reads from older records, and
    older records (every field written) read as before."""
    context = _context(Line("SKU-1", Decimal("1")), steps=3)
    context.steps[2] = StepState("step2")  # never ran
    document = json.loads(encode_context(context))
    assert document["steps"][2] == {"name": "step2"}
    assert decode_context(json.dumps(document)).steps == context.steps
    document["steps"][2] = {
        "name": "step2",
        "status": "pending",
        "attempts": 0,
        "error": None,
        "effect_possible": False,
        "started_at": None,
        "completed_at": None,
        "next_attempt_at": None,
        "compensation_attempts": 0,
        "compensation_error": None,
        "compensation_started_at": None,
        "compensated_at": None,
    }  # as 0.1.0 wrote it
    assert decode_context(json.dumps(document)).steps == context.steps


_NAIVE_BOUNDS = (datetime(2000, 1, 1), datetime(2100, 1, 1))  # noqa: DTZ001 (hypothesis wants naive)
_times = st.none() | st.datetimes(*_NAIVE_BOUNDS, timezones=st.just(UTC))
_texts = st.text(max_size=12)  # any code point: quotes, backslashes, lone surrogates, ...


@st.composite
def _step_states(draw: st.DrawFn) -> StepState:
    return StepState(
        name=draw(_texts),
        status=draw(st.sampled_from(StepStatus)),
        attempts=draw(st.integers(0, 10**6)),
        error=draw(st.none() | _texts),
        effect_possible=draw(st.booleans()),
        started_at=draw(_times),
        completed_at=draw(_times),
        next_attempt_at=draw(_times),
        compensation_attempts=draw(st.integers(0, 9)),
        compensation_error=draw(st.none() | _texts),
        compensation_started_at=draw(_times),
        compensated_at=draw(_times),
        waiting_for=draw(st.none() | _texts),
        wait_until=draw(_times),
        event_id=draw(st.none() | _texts),
    )


@st.composite
def _contexts(draw: st.DrawFn) -> SagaContext[Any]:
    steps = draw(st.lists(_step_states(), max_size=4))
    return SagaContext(
        saga_id=draw(st.uuids()),
        saga_type=draw(_texts),
        data=draw(st.none() | st.dictionaries(_texts, st.integers() | _texts, max_size=3)),
        steps=steps,
        correlation_id=draw(st.none() | _texts),
        status=draw(st.sampled_from(SagaStatus)),
        current_step_index=draw(st.integers(0, max(len(steps) - 1, 0))),
        error=draw(st.none() | _texts),
        created_at=draw(_times),
        updated_at=draw(_times),
        deadline=draw(_times),
        version=draw(st.integers(0, 10**9)),
        event_sequence=draw(st.integers(0, 10**9)),
        error_history=draw(
            st.lists(
                st.builds(
                    ErrorRecord, st.sampled_from(ErrorKind), _texts, _times, st.none() | _texts
                ),
                max_size=2,
            )
        ),
        saga_version=draw(st.integers(1, 5)),
    )


@settings(max_examples=300, deadline=None)
@given(_contexts())
def test_the_directly_written_document_is_the_json_encoders(context: SagaContext[Any]) -> None:
    """The document and its step records are written by hand at every transition, for speed;
    they are exactly what the JSON encoder makes of the same fields, and read back."""
    for step in context.steps:
        assert _step_text(step) == _ENCODER.encode(_encode_step(step))
    text = encode_context(context)
    assert text == _ENCODER.encode(_document_dict(context))
    assert encode_context(decode_context(text)) == text  # read back, the same document


_T0 = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "step",
    [
        StepState('a "quoted" \\ name'),
        StepState("run", StepStatus.RUNNING, attempts=1, started_at=_T0),
        StepState("done", StepStatus.COMPLETED, attempts=2, started_at=_T0, completed_at=_T0),
        # Near misses of those shapes: written field by field.
        StepState("odd", StepStatus.PENDING, attempts=1),
        StepState("odd", StepStatus.RUNNING, attempts=1, started_at=_T0, completed_at=_T0),
        StepState("odd", StepStatus.COMPLETED, attempts=1, started_at=_T0),
        StepState("odd", StepStatus.RUNNING, attempts=0, started_at=_T0),
        StepState("odd", StepStatus.FAILED, attempts=1, started_at=_T0, completed_at=_T0),
        StepState("odd", StepStatus.COMPLETED, 1, "boom", started_at=_T0, completed_at=_T0),
        StepState("odd", StepStatus.PENDING, 1, next_attempt_at=_T0, started_at=_T0),
    ],
)
def test_each_step_record_shape_is_written_as_the_encoder_would(step: StepState) -> None:
    """The forward path's shapes (not run, running, completed) have a shortcut; it and the
    field-by-field writer both give the JSON encoder's text of the record."""
    assert _step_text(step) == _ENCODER.encode(_encode_step(step))


@dataclass
class PatchedData:
    """Dataclass data for the patch tests: a patch carries only the fields that changed."""

    order: int = 0
    note: str = ""
    tags: list[str] = field(default_factory=list)


_patch_data = st.builds(PatchedData, st.integers(), _texts, st.lists(_texts, max_size=2))


@settings(max_examples=300, deadline=None)
@given(_contexts(), _contexts(), st.none() | st.tuples(_patch_data, _patch_data), st.data())
def test_a_patch_applied_to_the_previous_document_gives_the_next(
    before: SagaContext[Any],
    after: SagaContext[Any],
    data: tuple[PatchedData, PatchedData] | None,
    draw: st.DataObject,
) -> None:
    """``encode_changes`` after a whole write gives a patch of what changed (whatever changed
    in the head and the data, and in the step records a transition may touch: the one the
    saga was at, and the one it is at); ``decode_context(document, patches=[patch])`` is then
    exactly the new context."""
    context = before
    if data is not None:
        context.data = data[0]
    first = encode_changes(context, baseline=False)
    assert first.document == encode_context(context)
    assert first.patch is None
    # The transition: every head field and the data may change, and the records at the old
    # and the new current index.
    old_index = context.current_step_index
    if context.steps:
        context.current_step_index = draw.draw(st.integers(0, len(context.steps) - 1))
    for index in {old_index, context.current_step_index}:
        if index < len(after.steps) and index < len(context.steps):
            context.steps[index] = StepState(
                context.steps[index].name,
                after.steps[index].status,
                after.steps[index].attempts,
                after.steps[index].error,
                started_at=after.steps[index].started_at,
                completed_at=after.steps[index].completed_at,
                compensated_at=after.steps[index].compensated_at,
                waiting_for=after.steps[index].waiting_for,
                wait_until=after.steps[index].wait_until,
                event_id=after.steps[index].event_id,
            )
    context.status = after.status
    context.error = after.error
    context.updated_at = after.updated_at
    context.deadline = after.deadline
    context.version = after.version
    context.event_sequence = after.event_sequence
    context.error_history = after.error_history
    context.saga_version = after.saga_version
    context.data = data[1] if data is not None else after.data
    changes = encode_changes(context, baseline=True)
    assert first.document is not None
    if changes.patch is None:  # past the budget: whole again
        assert changes.document == encode_context(context)
        return
    assert changes.document is None
    rebuilt = decode_context(first.document, patches=[changes.patch])
    assert encode_context(rebuilt) == _ENCODER.encode(_document_dict(context))


def test_a_patch_names_only_what_changed() -> None:
    """The fields that did not change are not in the patch; an instant that is the
    transition's own is written "="; a field back at its default is written explicitly."""
    context = SagaContext(
        saga_id=UUID(int=1),
        saga_type="order",
        data=PatchedData(order=1, note="n"),
        steps=[StepState("a", StepStatus.RUNNING, 1, started_at=_T0), StepState("b")],
        status=SagaStatus.RUNNING,
        created_at=_T0,
        updated_at=_T0,
        version=1,
    )
    assert encode_changes(context, baseline=False).document is not None
    later = _T0 + timedelta(seconds=1)
    context.steps[0] = StepState("a", StepStatus.COMPLETED, 1, started_at=_T0, completed_at=later)
    context.steps[1] = StepState("b", StepStatus.RUNNING, 1, started_at=later)
    context.current_step_index = 1
    context.updated_at = later
    context.version = 2
    context.data = PatchedData(order=1, note="changed")
    patch = encode_changes(context, baseline=True).patch
    assert patch is not None
    assert json.loads(patch) == {
        "head": {"current_step_index": 1, "updated_at": later.isoformat(), "version": 2},
        "steps": {
            "0": {"status": "completed", "completed_at": "="},
            "1": {"status": "running", "attempts": 1, "started_at": "="},
        },
        "data_fields": {"note": "changed"},
    }
    context.steps[1] = StepState("b")  # back to a step that never ran
    context.version = 3
    patch = encode_changes(context, baseline=True).patch
    assert patch is not None
    assert json.loads(patch)["steps"] == {
        "1": {"status": "pending", "attempts": 0, "started_at": None}
    }


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ("[]", "patch 0: a JSON array, not an object"),
        ('{"steps": {}}', "patch 0: field 'head' is missing"),
        ('{"head": {}, "steps": {"9": {}}}', "step '9' is outside the saga's 1 steps"),
        ('{"head": {}, "steps": {"0": 1}}', "step 0 is not a JSON object"),
        ('{"head": {}, "data_fields": {"x": 1}}', "data_fields given for data that is not"),
        ('{"head": {"status": "lost"}}', "status 'lost' is none of"),
        ("not json", "not valid JSON"),
    ],
)
def test_a_malformed_patch_is_a_serialization_error(patch: str, message: str) -> None:
    context = SagaContext(
        saga_id=UUID(int=1), saga_type="order", data={"a": 1}, steps=[StepState("a")]
    )
    with pytest.raises(SerializationError, match=re.escape(message)):
        decode_context(encode_context(context), patches=[patch])


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ({"a": 1}, {"a": True}),
        ({"a": 0.0}, {"a": -0.0}),
        ({"a": 1, "b": 2}, {"b": 2, "a": 1}),
        ({"a": [1, {"x": 1}]}, {"a": [1, {"x": True}]}),
        (PatchedData(order=1), PatchedData(order=True)),  # type: ignore[arg-type]
        (PatchedData(tags=["a"]), PatchedData(tags=["a", "b"])),
    ],
)
def test_a_change_python_calls_equal_is_still_patched(old: Any, new: Any) -> None:
    """``1 == True`` and ``0.0 == -0.0`` in Python, and dicts ignore their order; their JSON
    differs, and so does the patched document."""
    context = SagaContext(saga_id=UUID(int=1), saga_type="t", data=old, steps=[StepState("a")])
    context.version = 1
    document = encode_changes(context, baseline=False).document
    assert document is not None
    context.data = new
    context.version = 2
    patch = encode_changes(context, baseline=True).patch
    assert patch is not None
    rebuilt = decode_context(document, patches=[patch])
    assert encode_context(rebuilt) == encode_context(context)
