"""Stand-ins for the airline, hotel and bank APIs a real trip service would call.

Every flight costs 180.00 EUR, every hotel night 120.00 EUR, and the card's limit is
1500.00 EUR. Each service remembers what it did under the idempotency key it was given, as a
real API that deduplicates requests would: asked twice with one key, it acts once.
"""

from decimal import Decimal

import anyio

FLIGHT_PRICE = Decimal("180.00")
NIGHT_PRICE = Decimal("120.00")
CARD_LIMIT = Decimal("1500.00")


class CardDeclined(Exception):
    """The bank's answer, not a glitch: retrying will not change it."""

    refused = True  # a declared refusal: the step did nothing, so it is not undone


class Airline:
    def __init__(self) -> None:
        self.bookings: dict[str, str] = {}  # idempotency key -> booking reference

    async def book(self, city: str, *, key: str) -> tuple[str, Decimal]:
        if key not in self.bookings:  # a repeated request returns the first booking
            self.bookings[key] = f"FL-{len(self.bookings) + 1}"
            print(f"airline: booked a flight to {city}, {self.bookings[key]}")
        return self.bookings[key], FLIGHT_PRICE

    async def cancel(self, *, key: str) -> None:
        reference = self.bookings.pop(key, None)
        if reference is not None:  # nothing booked under this key: nothing to undo
            print(f"airline: cancelled {reference}")


class Hotels:
    def __init__(self, *, slow: bool = False) -> None:
        self.slow = slow
        self.bookings: dict[str, str] = {}

    async def book(self, city: str, nights: int, *, key: str) -> tuple[str, Decimal]:
        if self.slow:
            print(f"hotels: waiting for the hotel in {city} to answer...")
            await anyio.sleep_forever()
        if key not in self.bookings:
            self.bookings[key] = f"HT-{len(self.bookings) + 1}"
            print(f"hotels: booked {nights} nights in {city}, {self.bookings[key]}")
        return self.bookings[key], nights * NIGHT_PRICE

    async def cancel(self, *, key: str) -> None:
        reference = self.bookings.pop(key, None)
        if reference is not None:
            print(f"hotels: cancelled {reference}")


class Bank:
    def __init__(self) -> None:
        self.payments: dict[str, tuple[str, Decimal]] = {}  # key -> (reference, amount)

    async def charge(self, amount: Decimal, *, key: str) -> str:
        if amount > CARD_LIMIT:
            print(f"bank: declined {amount} EUR")
            raise CardDeclined(f"{amount} EUR is over the card's limit of {CARD_LIMIT} EUR")
        if key not in self.payments:
            self.payments[key] = (f"PAY-{len(self.payments) + 1}", amount)
            print(f"bank: charged {amount} EUR, {self.payments[key][0]}")
        return self.payments[key][0]

    async def refund(self, *, key: str) -> None:
        payment = self.payments.pop(key, None)
        if payment is not None:
            print(f"bank: refunded {payment[1]} EUR, {payment[0]}")
