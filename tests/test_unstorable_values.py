"""A value past the serialization bounds (MAX_DEPTH, MAX_INT_DIGITS) never leaves a saga stuck.

Returned by a step, it is refused when the result is checked: the action ran, so the step counts
as acted and is compensated (not retried), and the saga ends compensated with an error naming
where the value was. Given as the initial data, ``execute()`` refuses it and stores nothing. At
the bounds exactly, values are stored and read back unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from saga_orchestrator import (
    SagaOrchestrator,
    SagaStatus,
    SerializationError,
    StepStatus,
)
from saga_orchestrator.protocols import IdempotencyStore, SagaRepository
from saga_orchestrator.serialization import MAX_DEPTH, MAX_INT_DIGITS
from tests.sagas import TripData, TripSaga

pytestmark = pytest.mark.anyio


def nested_list(levels: int) -> Any:
    """``levels`` lists, one inside the other, around 1: ``nested_list(2) == [[1]]``."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def nested_dict(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = {"k": value}
    return value


def cycle() -> Any:
    looping: list[Any] = []
    looping.append(looping)
    return looping


TOO_DEEP = "nested deeper than 100 levels"
TOO_LONG = "int longer than 4300 decimal digits"

UNSTORABLE: dict[str, tuple[Callable[[], Any], str]] = {
    "list nested 5,000 deep": (lambda: nested_list(5000), TOO_DEEP),
    "dict nested 5,000 deep": (lambda: nested_dict(5000), TOO_DEEP),
    "one level past MAX_DEPTH": (lambda: nested_list(MAX_DEPTH + 1), TOO_DEEP),
    "a list containing itself": (cycle, TOO_DEEP),
    "int of 5,000 digits": (lambda: 10**4999, TOO_LONG),
    "negative int of 4,301 digits": (lambda: -(10**MAX_INT_DIGITS), TOO_LONG),
    "long int deep in a list": (lambda: [1, [2, 10**5000]], TOO_LONG),
}


def hotel_returns(value: Any, log: list[str]) -> TripSaga:
    """A trip whose hotel action books and then returns ``value`` as its result."""

    async def hotel(step: str, attempt: int) -> dict[str, Any]:
        return {"hotel": value}

    return TripSaga(TripData(), log=log, behaviour={"hotel": hotel})


@pytest.mark.parametrize("case", UNSTORABLE, ids=str)
async def test_an_unstorable_result_compensates_the_step_that_returned_it(
    saga_repo: SagaRepository, case: str
) -> None:
    """The hotel was booked, so it is undone with the flight; it is not retried."""
    make, reason = UNSTORABLE[case]
    log: list[str] = []
    orchestrator = SagaOrchestrator(saga_repo)
    saga = hotel_returns(make(), log)

    result = await orchestrator.execute(saga)

    assert result.status is SagaStatus.COMPENSATED
    assert log == ["flight#1", "hotel#1", "undo-hotel#1", "undo-flight#1"]
    assert result.error is not None
    assert result.error.startswith("hotel: SerializationError: hotel result['hotel']")
    assert reason in result.error
    assert len(result.error) < 300  # the path is abbreviated, not 5,000 "[0]"s
    hotel = result.steps[1]
    assert hotel.status is StepStatus.COMPENSATED
    assert hotel.effect_possible
    assert hotel.attempts == 1
    stored = await saga_repo.get(result.saga_id)
    assert stored is not None
    assert stored.status is SagaStatus.COMPENSATED
    assert stored.data.hotel is None  # the refused value was never applied


async def test_an_unstorable_result_with_an_idempotency_store_records_nothing(
    saga_repo: SagaRepository, idempotency_store: IdempotencyStore
) -> None:
    """Refused before the idempotency store is written: a rerun would not replay it."""
    log: list[str] = []
    orchestrator = SagaOrchestrator(saga_repo, idempotency_store=idempotency_store)
    saga = hotel_returns(nested_list(5000), log)

    result = await orchestrator.execute(saga)

    assert result.status is SagaStatus.COMPENSATED
    assert log == ["flight#1", "hotel#1", "undo-hotel#1", "undo-flight#1"]
    assert await idempotency_store.get(saga.context.idempotency_key("hotel")) is None
    assert await idempotency_store.get(saga.context.idempotency_key("flight")) is not None


@pytest.mark.parametrize("with_store", [False, True], ids=["plain", "idempotency-store"])
async def test_values_at_the_bounds_are_stored_and_read_back(
    saga_repo: SagaRepository, idempotency_store: IdempotencyStore, with_store: bool
) -> None:
    """A field nested exactly MAX_DEPTH deep and an int of exactly MAX_INT_DIGITS digits are
    stored: in the saga's data (one level deeper) and in the idempotency record alike."""
    deepest = nested_list(MAX_DEPTH)
    longest = -(10**MAX_INT_DIGITS - 1)
    log: list[str] = []

    async def hotel(step: str, attempt: int) -> dict[str, Any]:
        return {"hotel": deepest, "car": longest}

    store = idempotency_store if with_store else None
    orchestrator = SagaOrchestrator(saga_repo, idempotency_store=store)
    saga = TripSaga(TripData(), log=log, behaviour={"hotel": hotel, "car": _no_result})

    result = await orchestrator.execute(saga)

    assert result.status is SagaStatus.COMPLETED, result.error
    stored = await saga_repo.get(result.saga_id)
    assert stored is not None
    assert stored.data.hotel == deepest
    assert stored.data.car == longest
    if store is not None:
        assert await store.get(saga.context.idempotency_key("hotel")) is not None


async def _no_result(step: str, attempt: int) -> None:
    return None


@pytest.mark.parametrize("case", UNSTORABLE, ids=str)
async def test_unstorable_initial_data_is_refused_and_nothing_is_stored(
    saga_repo: SagaRepository, case: str
) -> None:
    """execute() raises SerializationError naming the field; no action ran, no row exists."""
    make, reason = UNSTORABLE[case]
    log: list[str] = []
    orchestrator = SagaOrchestrator(saga_repo)
    saga = TripSaga(TripData(flight=make()), log=log)

    with pytest.raises(SerializationError, match=r"^data\.flight") as caught:
        await orchestrator.execute(saga)

    assert reason in str(caught.value)
    assert log == []
    assert await saga_repo.get(saga.context.saga_id) is None
    assert await saga_repo.list_sagas() == []
    assert saga.context.status is SagaStatus.PENDING
