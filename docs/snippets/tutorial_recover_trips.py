# --8<-- [start:code]
"""Finish every trip a crash left half-done: python recover_trips.py"""

import anyio
from saga_orchestrator import SagaOrchestrator, SQLiteSagaRepository

from travel_services import Airline, Bank, Hotels
from trip import TripSaga


async def main() -> None:
    async with SQLiteSagaRepository("trips.db") as repository:
        orchestrator = SagaOrchestrator(repository)
        airline, hotels, bank = Airline(), Hotels(), Bank()
        # How to rebuild a stored "trip_booking" saga, with its services, from its data.
        orchestrator.register("trip_booking", lambda data: TripSaga(data, airline, hotels, bank))
        results = await orchestrator.recover()
    for result in results:
        print(f"trip to {result.data.city}: {result.status.value}")
    if not results:
        print("nothing to recover")


if __name__ == "__main__":
    anyio.run(main)
# --8<-- [end:code]
# travel_services and trip are the reader's own modules, so they are imported last, as
# they would be in the reader's project (where saga_orchestrator is third-party).
# ruff: noqa: I001
