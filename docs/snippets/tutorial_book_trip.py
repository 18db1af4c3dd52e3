# --8<-- [start:code]
"""Book one trip: python book_trip.py CITY NIGHTS [--slow-hotel]"""

import argparse
from uuid import uuid4

import anyio
from saga_orchestrator import SagaOrchestrator, SQLiteSagaRepository

from travel_services import Airline, Bank, Hotels
from trip import TripData, TripSaga


async def main(city: str, nights: int, slow_hotel: bool) -> None:
    async with SQLiteSagaRepository("trips.db") as repository:
        orchestrator = SagaOrchestrator(repository)
        data = TripData(trip_id=uuid4(), city=city, nights=nights)
        saga = TripSaga(data, Airline(), Hotels(slow=slow_hotel), Bank())
        result = await orchestrator.execute(saga)
    print(f"trip to {city}: {result.status.value}")
    if result.error:
        print(f"  error: {result.error}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Book a flight, a hotel, and pay for both.")
    parser.add_argument("city")
    parser.add_argument("nights", type=int)
    parser.add_argument("--slow-hotel", action="store_true", help="the hotel never answers")
    args = parser.parse_args()
    anyio.run(main, args.city, args.nights, args.slow_hotel)
# --8<-- [end:code]
# travel_services and trip are the reader's own modules, so they are imported last, as
# they would be in the reader's project (where saga_orchestrator is third-party).
# ruff: noqa: I001
