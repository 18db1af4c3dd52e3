"""The saga under test: reserve stock, charge the card, book a courier.

Its services come in through the constructor, so tests can pass fakes. Every call passes the
step's idempotency key, and every compensation undoes the effect by the key its action used,
so that a step whose reply was lost is undone too.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID

from saga_orchestrator import BaseSaga, SagaStep, current_step


@dataclass
class CheckoutData:
    checkout_id: UUID
    amount: Decimal
    reservation: str | None = None
    charge: str | None = None
    parcel: str | None = None


class CardDeclined(Exception):
    """A business answer: not retried, and the step did not act."""

    refused = True  # a declared refusal: the step did nothing, so it is not undone


class NoCourier(Exception):
    """A business answer: no courier can take the parcel."""

    refused = True  # a declared refusal: the step did nothing, so it is not undone


class Services(Protocol):
    async def reserve(self, key: str) -> str: ...
    async def release(self, key: str) -> None: ...
    async def charge(self, key: str, amount: Decimal) -> str: ...
    async def refund(self, key: str) -> None: ...
    async def book(self, key: str) -> str: ...
    async def cancel_booking(self, key: str) -> None: ...


class CheckoutSaga(BaseSaga[CheckoutData]):
    saga_type = "checkout"

    def __init__(self, data: CheckoutData, services: Services, *, step_timeout: float = 10.0):
        self.services = services
        self.step_timeout = step_timeout
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[CheckoutData]]:
        timeout = self.step_timeout
        return [
            SagaStep("reserve", self.reserve, self.release, timeout_seconds=timeout),
            SagaStep("charge", self.charge, self.refund, timeout_seconds=timeout),
            SagaStep("book_courier", self.book, self.cancel_booking, timeout_seconds=timeout),
        ]

    async def reserve(self, data: CheckoutData) -> dict[str, Any]:
        return {"reservation": await self.services.reserve(current_step().idempotency_key)}

    async def charge(self, data: CheckoutData) -> dict[str, Any]:
        key = current_step().idempotency_key
        return {"charge": await self.services.charge(key, data.amount)}

    async def book(self, data: CheckoutData) -> dict[str, Any]:
        return {"parcel": await self.services.book(current_step().idempotency_key)}

    # Compensations find the effect by the action's key: it may have acted without replying.

    async def release(self, data: CheckoutData) -> None:
        await self.services.release(self.context.idempotency_key("reserve"))

    async def refund(self, data: CheckoutData) -> None:
        await self.services.refund(self.context.idempotency_key("charge"))

    async def cancel_booking(self, data: CheckoutData) -> None:
        await self.services.cancel_booking(self.context.idempotency_key("book_courier"))
