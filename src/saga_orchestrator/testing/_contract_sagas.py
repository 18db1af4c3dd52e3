"""The sagas and data that the contract tests store (module level, so that stored data can be
rebuilt). Imports no pytest: a repository under test may import this module when it decodes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from typing import Any
from uuid import UUID, uuid4

from ..definitions import BaseSaga, SagaStep, sleep_for, wait_for_event
from ..retry import RetryPolicy
from ..runtime import current_step

Behaviour = Callable[[str, int], Awaitable[dict[str, Any] | None]]
"""What one attempt of a step does: called with the step's name and the attempt number."""


class Colour(Enum):
    """An enum, stored by module and name."""

    RED = "red"
    GREEN = "green"


@dataclass
class Address:
    """A nested data class."""

    street: str
    city: str
    lines: list[str] = field(default_factory=list)


@dataclass
class RichData:
    """Data with every kind of value the library stores, non-ASCII text, and a string long
    enough to make the stored document larger than 64 KiB."""

    rich_id: UUID = field(default_factory=uuid4)
    amount: Decimal = Decimal("1234.50")
    tiny: Decimal = Decimal("0.10")
    when: datetime = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    day: date = date(2026, 2, 28)
    wait: timedelta = timedelta(days=1, microseconds=5)
    blob: bytes = b"\x00\xff saga \x80"
    colour: Colour = Colour.GREEN
    address: Address = field(
        default_factory=lambda: Address("Bahnhofstrasse 1", "Zürich", ['c/o "Ops"', "\\ 2nd"])
    )
    text: str = "naïve café, 東京, emoji 🧳✈️, quote ' \" and nul-free \t tab"
    big: int = 2**80
    ratio: float = 0.1
    flag: bool = True
    nothing: None = None
    pairs: tuple[int, ...] = (1, 2, 3)
    mapping: dict[str, Any] = field(
        default_factory=lambda: {"nested": {"list": [1, "two", None]}, "": "empty key"}
    )
    large: str = "0123456789abcdef" * 6000  # 96,000 characters


@dataclass
class ContractData:
    """The trip saga's data; its correlation id is ``contract-{contract_id}``."""

    contract_id: UUID = field(default_factory=uuid4)
    price: Decimal = Decimal("10.00")
    flight: str | None = None
    hotel: str | None = None
    car: str | None = None


class Refused(Exception):
    """A declared refusal: the step did nothing, so it is not undone."""

    refused = True


async def succeed(step: str, attempt: int) -> dict[str, Any] | None:
    """The default behaviour: the step books ``"{step}-ref"``."""
    return {step: f"{step}-ref"}


class ContractTripSaga(BaseSaga[ContractData]):
    """Three steps (flight, hotel, car), each recording its calls in ``log`` as
    ``"flight#1"`` (attempt 1) and ``"undo-flight#1"``; ``behaviour`` and
    ``compensation_behaviour`` decide what an attempt of a step does."""

    saga_type = "contract_trip"

    def __init__(
        self,
        data: ContractData,
        log: list[str] | None = None,
        behaviour: dict[str, Behaviour] | None = None,
        compensation_behaviour: dict[str, Behaviour] | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.log = log if log is not None else []
        self.behaviour = behaviour or {}
        self.compensation_behaviour = compensation_behaviour or {}
        self.retry = retry
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[ContractData]]:
        """flight, hotel and car, each with a compensation."""
        return [
            SagaStep(name, self._action(name), self._undo(name), retry=self.retry)
            for name in ("flight", "hotel", "car")
        ]

    def _action(self, name: str) -> Callable[[ContractData], Awaitable[dict[str, Any] | None]]:
        async def action(data: ContractData) -> dict[str, Any] | None:
            attempt = current_step().attempt
            self.log.append(f"{name}#{attempt}")
            return await self.behaviour.get(name, succeed)(name, attempt)

        return action

    def _undo(self, name: str) -> Callable[[ContractData], Awaitable[None]]:
        async def undo(data: ContractData) -> None:
            attempt = current_step().attempt
            self.log.append(f"undo-{name}#{attempt}")
            behaviour = self.compensation_behaviour.get(name)
            if behaviour is not None:
                await behaviour(name, attempt)

        return undo


def fail_on(attempts: set[int], error: BaseException) -> Behaviour:
    """Raise ``error`` on the given attempt numbers, succeed otherwise."""

    async def behaviour(step: str, attempt: int) -> dict[str, Any] | None:
        if attempt in attempts:
            raise error
        return {step: f"{step}-ref"}

    return behaviour


def always(error: BaseException) -> Behaviour:
    """Raise ``error`` on every attempt."""

    async def behaviour(step: str, attempt: int) -> dict[str, Any] | None:
        raise error

    return behaviour


def utc(minute: int) -> datetime:
    """A fixed time on 2026-01-01, ``minute`` minutes after midnight UTC."""
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)


@dataclass
class ContractWaitData:
    """The wait saga's data; its correlation id is ``contract-wait-{contract_wait_id}``."""

    contract_wait_id: UUID = field(default_factory=uuid4)
    price: Decimal = Decimal("25.00")
    confirmation: str | None = None
    paid: Decimal | None = None


CONFIRMED = "trip.confirmed"
"""The event the wait saga's ``confirm`` step waits for."""


def accept_confirmation(data: ContractWaitData, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``confirm`` step's acceptor: the payload's ``paid`` must be the price."""
    if payload.get("paid") != data.price:
        raise ValueError(f"paid {payload.get('paid')!r}, expected {data.price}")
    return {"confirmation": payload["code"], "paid": payload["paid"]}


class ContractWaitSaga(BaseSaga[ContractWaitData]):
    """``book`` (undone by ``undo-book``), then ``confirm``: waits up to
    ``timeout_seconds`` for the event ``trip.confirmed``, then ``ticket``. Calls are logged in
    ``log``; ``hold_book`` (if set) is awaited inside ``book``."""

    saga_type = "contract_wait"
    timeout_seconds: float = 60.0

    def __init__(
        self,
        data: ContractWaitData,
        log: list[str] | None = None,
        hold_book: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.log = log if log is not None else []
        self.hold_book = hold_book
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[ContractWaitData]]:
        """book, confirm (the wait), ticket."""

        async def book(data: ContractWaitData) -> None:
            self.log.append("book")
            if self.hold_book is not None:
                await self.hold_book()

        async def undo_book(data: ContractWaitData) -> None:
            self.log.append("undo-book")

        async def ticket(data: ContractWaitData) -> None:
            self.log.append(f"ticket:{data.confirmation}")

        return [
            SagaStep("book", book, undo_book),
            wait_for_event(
                "confirm",
                CONFIRMED,
                timeout_seconds=self.timeout_seconds,
                accept=accept_confirmation,
            ),
            SagaStep("ticket", ticket),
        ]


class ContractNapSaga(BaseSaga[ContractWaitData]):
    """``book``, then ``nap``: a timer of ``seconds``, then ``ticket``."""

    saga_type = "contract_nap"
    seconds: float = 30.0

    def __init__(self, data: ContractWaitData, log: list[str] | None = None) -> None:
        self.log = log if log is not None else []
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[ContractWaitData]]:
        """book, nap (the timer), ticket."""

        async def book(data: ContractWaitData) -> None:
            self.log.append("book")

        async def ticket(data: ContractWaitData) -> None:
            self.log.append("ticket")

        return [SagaStep("book", book), sleep_for("nap", self.seconds), SagaStep("ticket", ticket)]
