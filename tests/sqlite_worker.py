"""Child process for the SQLite multi-process tests: runs sagas on a shared file.

    python -m tests.sqlite_worker DB_PATH SAGAS CONCURRENCY
Prints one JSON line: {"completed": n, "errors": [...]}.
"""

from __future__ import annotations

import json
import sys

import anyio

from saga_orchestrator import SagaOrchestrator, SagaStatus, SQLiteSagaRepository
from tests.sagas import TripData, TripSaga


async def main(path: str, sagas: int, concurrency: int) -> None:
    completed = 0
    errors: list[str] = []
    limiter = anyio.CapacityLimiter(concurrency)
    async with SQLiteSagaRepository(path) as repo:
        orchestrator = SagaOrchestrator(repo)

        async def one() -> None:
            nonlocal completed
            async with limiter:
                try:
                    result = await orchestrator.execute(TripSaga(TripData()))
                    completed += result.status is SagaStatus.COMPLETED
                except Exception as exc:  # reported to the parent, which fails the test
                    errors.append(repr(exc))

        async with anyio.create_task_group() as tg:
            for _ in range(sagas):
                tg.start_soon(one)
    print(json.dumps({"completed": completed, "errors": errors}))


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
