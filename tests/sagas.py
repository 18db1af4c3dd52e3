"""Small sagas for engine tests, defined at module level so stored data can be rebuilt."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from saga_orchestrator import BaseSaga, RetryPolicy, SagaStep, current_step


@dataclass
class TripData:
    trip_id: UUID = field(default_factory=uuid4)
    price: Decimal = Decimal("10.00")
    flight: str | None = None
    hotel: str | None = None
    car: str | None = None


class NoCars(Exception):
    """A declared refusal (the marker attribute): the car step did nothing, nothing to undo."""

    refused = True


Behaviour = Callable[[str, int], Awaitable[dict[str, Any] | None]]


async def succeed(step: str, attempt: int) -> dict[str, Any] | None:
    return {step: f"{step}-ref"}


class TripSaga(BaseSaga[TripData]):
    """Three steps (flight, hotel, car); `behaviour` decides what each attempt does."""

    saga_type = "trip"

    def __init__(
        self,
        data: TripData,
        log: list[str] | None = None,
        behaviour: dict[str, Behaviour] | None = None,
        compensation_behaviour: dict[str, Behaviour] | None = None,
        retriable_car: bool = False,
        retry: RetryPolicy | None = None,
        refusals: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.log = log if log is not None else []
        self.refusals = refusals
        self.behaviour = behaviour or {}
        self.compensation_behaviour = compensation_behaviour or {}
        self.retriable_car = retriable_car
        self.retry = retry
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[TripData]]:
        return [
            SagaStep(
                "flight",
                self._action("flight"),
                self._undo("flight"),
                retry=self.retry,
                refusals=self.refusals,
            ),
            SagaStep(
                "hotel",
                self._action("hotel"),
                self._undo("hotel"),
                retry=self.retry,
                refusals=self.refusals,
            ),
            SagaStep(
                "car",
                self._action("car"),
                None if self.retriable_car else self._undo("car"),
                retriable=self.retriable_car,
                retry=self.retry,
                refusals=self.refusals,
            ),
        ]

    def _action(self, name: str) -> Callable[[TripData], Awaitable[dict[str, Any] | None]]:
        async def action(data: TripData) -> dict[str, Any] | None:
            attempt = current_step().attempt
            self.log.append(f"{name}#{attempt}")
            return await self.behaviour.get(name, succeed)(name, attempt)

        return action

    def _undo(self, name: str) -> Callable[[TripData], Awaitable[None]]:
        async def undo(data: TripData) -> None:
            attempt = current_step().attempt
            self.log.append(f"undo-{name}#{attempt}")
            behaviour = self.compensation_behaviour.get(name)
            if behaviour is not None:
                await behaviour(name, attempt)

        return undo


def fail_on(attempts: set[int], error: BaseException) -> Behaviour:
    """Raise `error` on the given attempt numbers, succeed otherwise."""

    async def behaviour(step: str, attempt: int) -> dict[str, Any] | None:
        if attempt in attempts:
            raise error
        return {step: f"{step}-ref"}

    return behaviour


def always(error: BaseException) -> Behaviour:
    async def behaviour(step: str, attempt: int) -> dict[str, Any] | None:
        raise error

    return behaviour


def returns(value: Any) -> Behaviour:
    async def behaviour(step: str, attempt: int) -> Any:
        return value

    return behaviour
