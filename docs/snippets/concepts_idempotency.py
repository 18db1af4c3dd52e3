"""A reply lost after the airline booked: the retry books again, unless the airline dedupes."""

from dataclasses import dataclass

import anyio

from saga_orchestrator import (
    BaseSaga,
    InMemorySagaRepository,
    SagaOrchestrator,
    SagaStep,
    current_step,
)
from saga_orchestrator.testing import FaultInjector, ManualClock


class Airline:
    def __init__(self, *, dedupe: bool) -> None:
        self.dedupe = dedupe
        self.bookings: dict[str, str] = {}  # reference -> idempotency key

    async def book(self, key: str) -> str:
        if self.dedupe:
            for reference, seen in self.bookings.items():
                if seen == key:
                    return reference  # the same request again: the first booking
        reference = f"FL-{len(self.bookings) + 1}"
        self.bookings[reference] = key
        return reference

    async def cancel_by_key(self, key: str) -> None:
        for reference, seen in list(self.bookings.items()):
            if seen == key:
                del self.bookings[reference]


@dataclass
class FlightData:
    flight_ref: str | None = None


class FlightSaga(BaseSaga[FlightData]):
    saga_type = "flight"

    def __init__(self, data: FlightData, airline: Airline) -> None:
        self.airline = airline
        super().__init__(data)

    def define_steps(self) -> list[SagaStep[FlightData]]:
        return [SagaStep("book_flight", self.book, compensation=self.cancel)]

    async def book(self, data: FlightData) -> dict[str, str]:
        return {"flight_ref": await self.airline.book(current_step().idempotency_key)}

    async def cancel(self, data: FlightData) -> None:
        # data.flight_ref is None if no reply ever arrived: find the booking by its key.
        await self.airline.cancel_by_key(self.context.idempotency_key("book_flight"))


async def run(label: str, airline: Airline, lost_replies: set[int]) -> None:
    faults = FaultInjector()
    # The airline acts, then the reply is lost: the step sees a ConnectionError.
    faults.fail(
        "book_flight", ConnectionError("reply lost"), attempts=lost_replies, after_call=True
    )
    orchestrator = SagaOrchestrator(
        InMemorySagaRepository(), clock=ManualClock(), interceptors=[faults]
    )
    result = await orchestrator.execute(FlightSaga(FlightData(), airline))
    print(
        f"{label:<26} {result.status.value:<12} flight_ref={result.data.flight_ref}"
        f"  airline holds {sorted(airline.bookings)}"
    )


async def main() -> None:
    await run("first reply lost, naive:", Airline(dedupe=False), {1})
    await run("first reply lost, dedupe:", Airline(dedupe=True), {1})
    await run("every reply lost, dedupe:", Airline(dedupe=True), {1, 2, 3})


anyio.run(main)
