# --8<-- [start:code]
"""Booking a trip: a flight, a hotel, then the payment, each with the step that undoes it."""

from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from saga_orchestrator import BaseSaga, SagaStep, current_step

from travel_services import Airline, Bank, Hotels


@dataclass
class TripData:
    trip_id: UUID
    city: str
    nights: int
    flight_ref: str | None = None
    flight_price: Decimal | None = None
    hotel_ref: str | None = None
    hotel_price: Decimal | None = None
    payment_ref: str | None = None


class TripSaga(BaseSaga[TripData]):
    saga_type = "trip_booking"  # stored with each saga; recovery finds the code by it

    def __init__(self, data: TripData, airline: Airline, hotels: Hotels, bank: Bank) -> None:
        self.airline = airline  # dependencies first,
        self.hotels = hotels
        self.bank = bank
        super().__init__(data)  # then the base class, which calls define_steps()

    def define_steps(self) -> list[SagaStep[TripData]]:
        return [
            SagaStep(
                "book_flight", self.book_flight, compensation=self.cancel_flight, timeout_seconds=10
            ),
            SagaStep("book_hotel", self.book_hotel, compensation=self.cancel_hotel),
            SagaStep("charge_card", self.charge_card, compensation=self.refund, timeout_seconds=10),
        ]

    # Forward steps: each returns the fields to set on the data (or None).

    async def book_flight(self, data: TripData) -> dict[str, object]:
        key = current_step().idempotency_key  # "<saga id>:book_flight", the same on every try
        ref, price = await self.airline.book(data.city, key=key)
        return {"flight_ref": ref, "flight_price": price}

    async def book_hotel(self, data: TripData) -> dict[str, object]:
        key = current_step().idempotency_key
        ref, price = await self.hotels.book(data.city, data.nights, key=key)
        return {"hotel_ref": ref, "hotel_price": price}

    async def charge_card(self, data: TripData) -> dict[str, object]:
        assert data.flight_price is not None
        assert data.hotel_price is not None
        total = data.flight_price + data.hotel_price
        ref = await self.bank.charge(total, key=current_step().idempotency_key)
        return {"payment_ref": ref}

    # Compensations: find the effect by the forward step's key, so that they also undo an
    # effect whose reply never arrived, and do nothing when there is nothing to undo.

    async def cancel_flight(self, data: TripData) -> None:
        await self.airline.cancel(key=self.context.idempotency_key("book_flight"))

    async def cancel_hotel(self, data: TripData) -> None:
        await self.hotels.cancel(key=self.context.idempotency_key("book_hotel"))

    async def refund(self, data: TripData) -> None:
        await self.bank.refund(key=self.context.idempotency_key("charge_card"))


# --8<-- [end:code]
# travel_services and trip are the reader's own modules, so they are imported last, as
# they would be in the reader's project (where saga_orchestrator is third-party).
# ruff: noqa: I001
