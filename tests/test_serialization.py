"""Saga data round-trips exactly through storage, or is refused with a clear error."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum, IntEnum, StrEnum
from typing import Any
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from saga_orchestrator import SerializationError
from saga_orchestrator.serialization import dumps, loads


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
