"""Child process for the PostgreSQL multi-process tests: runs sagas on a shared schema.

    python -m tests.postgres_worker CONNINFO SCHEMA SAGAS CONCURRENCY
Prints one JSON line: {"completed": n, "errors": [...], "transactions": n}.
"""

from __future__ import annotations

import asyncio
import json
import sys

from saga_orchestrator import SagaOrchestrator, SagaStatus
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from tests.sagas import TripData, TripSaga


async def main(conninfo: str, schema: str, sagas: int, concurrency: int) -> None:
    completed = 0
    errors: list[str] = []
    limiter = asyncio.Semaphore(concurrency)
    async with PostgresSagaRepository(conninfo, schema=schema) as repo:
        orchestrator = SagaOrchestrator(repo)

        async def one() -> None:
            nonlocal completed
            async with limiter:
                try:
                    result = await orchestrator.execute(TripSaga(TripData()))
                    completed += result.status is SagaStatus.COMPLETED
                except Exception as exc:  # reported to the parent, which fails the test
                    errors.append(repr(exc))

        async with asyncio.TaskGroup() as tg:
            for _ in range(sagas):
                tg.create_task(one())
    print(json.dumps({"completed": completed, "errors": errors, "transactions": repo.transactions}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
