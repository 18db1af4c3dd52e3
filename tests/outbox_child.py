"""Child process of ``tests/test_outbox.py``'s crash test: runs sagas, then waits to be killed.

    python -m tests.outbox_child DB_PATH FINISHED HELD

Runs FINISHED trip sagas to their end (every third one compensates) and HELD ones that stop
for good inside their hotel step, all at once, on a SQLite file with its outbox. Once every
saga is at rest it prints one JSON line, the encoded events its listener saw (each one right
after its transition was recorded), and waits for the parent's SIGKILL. No relay runs here.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import anyio

from saga_orchestrator import SagaEvent, SagaOrchestrator, SQLiteSagaRepository
from saga_orchestrator.events import encode_event
from tests.sagas import TripData, TripSaga, always


class _Seen:
    def __init__(self) -> None:
        self.events: list[SagaEvent] = []

    def on_event(self, event: SagaEvent) -> None:
        self.events.append(event)


async def main(path: str, finished: int, held: int) -> None:
    seen = _Seen()
    arrived = 0
    all_held = anyio.Event()

    async def hold(step: str, attempt: int) -> dict[str, Any]:
        nonlocal arrived
        arrived += 1
        if arrived == held:
            all_held.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    async with SQLiteSagaRepository(path, outbox=True) as repository:
        orchestrator = SagaOrchestrator(repository, listeners=[seen])
        async with anyio.create_task_group() as holding:
            for _ in range(held):
                holding.start_soon(
                    orchestrator.execute, TripSaga(TripData(), behaviour={"hotel": hold})
                )
            async with anyio.create_task_group() as finishing:
                for index in range(finished):
                    refused = {"car": always(ValueError("no car"))} if index % 3 == 2 else {}
                    finishing.start_soon(
                        orchestrator.execute, TripSaga(TripData(), behaviour=refused)
                    )
            if held:
                await all_held.wait()
            print(json.dumps([encode_event(event) for event in seen.events]), flush=True)
            await anyio.sleep_forever()  # until SIGKILL


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
