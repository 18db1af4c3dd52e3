"""Child process for the multi-process tests: runs sagas on a store shared with others.

    python -m tests.saga_worker sqlite DB_PATH SAGAS CONCURRENCY
    python -m tests.saga_worker postgres CONNINFO SCHEMA SAGAS CONCURRENCY
Prints one JSON line: {"completed": n, "errors": [...], "transactions": n}.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from saga_orchestrator import SagaOrchestrator, SagaStatus, SQLiteSagaRepository
from tests.sagas import TripData, TripSaga


def repository(argv: list[str]) -> tuple[Any, list[str]]:
    """The repository the arguments name, and the arguments left (SAGAS CONCURRENCY)."""
    if argv[0] == "postgres":
        from saga_orchestrator.adapters.postgres import PostgresSagaRepository

        return PostgresSagaRepository(argv[1], schema=argv[2]), argv[3:]
    return SQLiteSagaRepository(argv[1]), argv[2:]


async def main(argv: list[str]) -> None:
    repo, (sagas, concurrency) = repository(argv)
    completed = 0
    errors: list[str] = []
    limiter = asyncio.Semaphore(int(concurrency))
    async with repo:
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
            for _ in range(int(sagas)):
                tg.create_task(one())
    print(json.dumps({"completed": completed, "errors": errors, "transactions": repo.transactions}))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
