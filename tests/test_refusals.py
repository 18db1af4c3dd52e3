"""Only a declared refusal proves that a failed step did not act; every other failure is undone.

A step whose action charged the card and then hit a bug (an ``AttributeError`` on the reply, a
``KeyError``) must be compensated: nobody but the service can say that nothing happened.
"""

from __future__ import annotations

import functools
from typing import Any
from unittest.mock import AsyncMock

import pytest

from saga_orchestrator import (
    NonRetryableError,
    SagaDefinitionError,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    StepRefusedError,
    StepStatus,
    is_refusal,
)
from saga_orchestrator.protocols import SagaRepository
from tests.sagas import TripData, TripSaga, always, fail_on

pytestmark = pytest.mark.anyio


class NoRooms(Exception):
    """Declared a refusal by the marker attribute alone."""

    refused = True


class Declined(StepRefusedError):
    """Declared a refusal by the base class."""


class SoldOut(Exception):
    """Not declared anywhere: a refusal only where a step lists it."""


UNDONE = ["flight#1", "hotel#1", "undo-hotel#1", "undo-flight#1"]
NOT_UNDONE = ["flight#1", "hotel#1", "undo-flight#1"]


@pytest.mark.parametrize(
    "error",
    [
        AttributeError("'NoneType' object has no attribute 'id'"),
        KeyError("payment_id"),
        TypeError("object dict can't be used in 'await' expression"),
        ValueError("bad reply"),
        NonRetryableError("do not retry"),
        SoldOut("not declared"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_an_undeclared_error_compensates_the_failed_step(
    error: Exception, saga_repo: SagaRepository
) -> None:
    """Any failure that is not a declared refusal may have acted: its own compensation runs."""
    log: list[str] = []
    saga = TripSaga(TripData(), log, behaviour={"hotel": always(error)})
    result = await SagaOrchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert log == UNDONE
    assert result.steps[1].effect_possible
    assert result.steps[1].status is StepStatus.COMPENSATED


@pytest.mark.parametrize("error", [NoRooms("no rooms"), Declined("card declined")], ids=str)
async def test_a_declared_refusal_is_not_compensated(
    error: Exception, saga_repo: SagaRepository
) -> None:
    """A refusal (marker attribute or StepRefusedError) fails at once and is not undone."""
    log: list[str] = []
    saga = TripSaga(TripData(), log, behaviour={"hotel": always(error)})
    result = await SagaOrchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPENSATED
    assert log == NOT_UNDONE
    assert not result.steps[1].effect_possible
    assert result.steps[1].status is StepStatus.FAILED


async def test_a_steps_own_refusals_list_declares_them(saga_repo: SagaRepository) -> None:
    """`SagaStep(refusals=...)` makes an undeclared error a refusal for that step."""
    log: list[str] = []
    saga = TripSaga(TripData(), log, behaviour={"hotel": always(SoldOut("x"))}, refusals=(SoldOut,))
    result = await SagaOrchestrator(saga_repo).execute(saga)
    assert log == NOT_UNDONE
    assert result.error == "hotel: SoldOut: x"


async def test_a_refusal_after_a_possible_effect_is_still_compensated(
    saga_repo: SagaRepository,
) -> None:
    """The mark is sticky: a lost reply on attempt 1 may have acted, whatever attempt 2 says."""
    log: list[str] = []

    async def lost_then_refused(step: str, attempt: int) -> dict[str, Any] | None:
        if attempt == 1:
            raise ConnectionError("reply lost")
        raise Declined("declined")

    saga = TripSaga(TripData(), log, behaviour={"hotel": lost_then_refused})
    result = await SagaOrchestrator(saga_repo).execute(saga)
    assert log == ["flight#1", "hotel#1", "hotel#2", "undo-hotel#1", "undo-flight#1"]
    assert result.steps[1].effect_possible


async def test_a_refusal_can_still_be_retried_when_it_says_so(
    saga_repo: SagaRepository,
) -> None:
    """`retryable` and `refused` are separate questions: a retryable refusal is retried."""

    class Busy(StepRefusedError):
        retryable = True

    log: list[str] = []
    saga = TripSaga(TripData(), log, behaviour={"hotel": fail_on({1}, Busy("later"))})
    result = await SagaOrchestrator(saga_repo).execute(saga)
    assert result.status is SagaStatus.COMPLETED
    assert log == ["flight#1", "hotel#1", "hotel#2", "car#1"]


def test_is_refusal_reads_the_marker_the_class_and_the_list() -> None:
    """The classification rule, on its own."""
    assert is_refusal(NoRooms())
    assert is_refusal(Declined("x"))
    assert is_refusal(SoldOut(), (SoldOut,))
    assert is_refusal(SoldOut(), [ValueError, SoldOut])
    assert not is_refusal(SoldOut())
    assert not is_refusal(KeyError("k"))
    assert not is_refusal(NonRetryableError("x"))

    class Truthy(Exception):
        refused = "yes"  # only the boolean True declares a refusal

    assert not is_refusal(Truthy())


# ---------------------------------------------------------------- definition checks


async def _async_action(data: Any) -> None:
    return None


def _sync_action(data: Any) -> dict[str, Any]:
    return {}


class _AsyncCallable:
    async def __call__(self, data: Any) -> None:
        return None


class _SyncCallable:
    def __call__(self, data: Any) -> None:
        return None


class _Service:
    async def charge(self, data: Any) -> None:
        return None

    def refund(self, data: Any) -> None:
        return None


@pytest.mark.parametrize(
    "action",
    [
        _async_action,
        _Service().charge,
        functools.partial(_async_action),
        _AsyncCallable(),
        AsyncMock(),
    ],
    ids=["async def", "async method", "partial", "async __call__", "AsyncMock"],
)
def test_coroutine_functions_are_accepted(action: Any) -> None:
    """Every way of writing a coroutine function defines a step."""
    step = SagaStep("s", action, action)
    assert step.action is action


@pytest.mark.parametrize(
    "fn",
    [
        _sync_action,
        _Service().refund,
        functools.partial(_sync_action),
        _SyncCallable(),
        lambda data: _async_action(data),
    ],
    ids=["def", "method", "partial", "__call__", "lambda"],
)
@pytest.mark.parametrize("role", ["action", "compensation"])
def test_a_plain_function_is_refused_at_definition(fn: Any, role: str) -> None:
    """A plain `def` would act and then fail when awaited: refused before anything runs."""
    kwargs = {"action": _async_action, "compensation": _async_action, role: fn}
    with pytest.raises(SagaDefinitionError, match=f"step 's': {role} .*async def"):
        SagaStep("s", **kwargs)


def test_refusals_must_be_exception_classes() -> None:
    """`refusals` lists exception classes; a single class is accepted as a one-item tuple."""
    assert SagaStep("s", _async_action, refusals=SoldOut).refusals == (SoldOut,)  # type: ignore[arg-type]
    assert SagaStep("s", _async_action, refusals=[SoldOut]).refusals == (SoldOut,)  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="refusals must be exception classes"):
        SagaStep("s", _async_action, refusals=("SoldOut",))  # type: ignore[arg-type]
    with pytest.raises(SagaDefinitionError, match="refusals must be"):
        SagaStep("s", _async_action, refusals=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [float("inf"), float("nan"), -1, 0, True, "5"])
def test_step_timeouts_must_be_finite_positive_numbers(value: Any) -> None:
    """A timeout of inf, NaN, 0, a bool or a string is refused with the field named."""
    with pytest.raises(SagaDefinitionError, match="timeout_seconds"):
        SagaStep("s", _async_action, timeout_seconds=value)
    with pytest.raises(SagaDefinitionError, match="compensation_timeout_seconds"):
        SagaStep("s", _async_action, compensation_timeout_seconds=value)


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 1e300, -5, True])
def test_saga_timeout_minutes_must_be_a_usable_deadline(value: Any) -> None:
    """`timeout_minutes = math.inf` (or a deadline past year 9999) fails when the saga is
    built, not with an OverflowError when it starts."""

    class Endless(TripSaga):
        timeout_minutes = value

    with pytest.raises(SagaDefinitionError, match="timeout_minutes"):
        Endless(TripData())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("initial_backoff_seconds", float("nan")),
        ("initial_backoff_seconds", float("inf")),
        ("max_backoff_seconds", float("nan")),
        ("max_backoff_seconds", float("inf")),
        ("backoff_coefficient", float("nan")),
        ("backoff_coefficient", float("inf")),
        ("jitter_ratio", float("nan")),
        ("max_attempts", 2.5),
        ("max_attempts", True),
        ("initial_backoff_seconds", "1"),
    ],
)
def test_retry_policy_refuses_nan_inf_and_wrong_types(field: str, value: Any) -> None:
    """`RetryPolicy(initial_backoff_seconds=nan)` and the like fail at once, naming the field."""
    from saga_orchestrator import RetryPolicy

    with pytest.raises(ValueError, match=field):
        RetryPolicy(**{field: value})
