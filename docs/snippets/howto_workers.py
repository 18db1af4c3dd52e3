"""Workers on PostgreSQL. Run it: python this_file.py postgresql://user@host/db

Two worker processes run the sagas this process submits; SIGTERM stops them cleanly. The
tables go in a schema of their own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from uuid import UUID, uuid4

import psycopg

from saga_orchestrator import BaseSaga, SagaOrchestrator, SagaStep, SagaWorker
from saga_orchestrator.adapters.postgres import PostgresSagaRepository


@dataclass
class PingData:  # stored by module and name: the workers must import it too
    ping_id: UUID


class PingSaga(BaseSaga[PingData]):
    saga_type = "ping"

    def define_steps(self) -> list[SagaStep[PingData]]:
        return [SagaStep("first", self.noop), SagaStep("second", self.noop)]

    async def noop(self, data: PingData) -> None:
        return None


@asynccontextmanager
async def orchestrator(url: str, schema: str) -> AsyncIterator[SagaOrchestrator]:
    """The same for the service and the workers: repository, orchestrator, saga types."""
    async with PostgresSagaRepository(url, schema=schema, lease_seconds=10) as repository:
        orchestrator = SagaOrchestrator(repository)
        orchestrator.register(PingSaga.saga_type, PingSaga)
        yield orchestrator


async def work(url: str, schema: str) -> None:
    """A worker process: run sagas until SIGTERM."""
    async with orchestrator(url, schema) as sagas:
        worker = SagaWorker(sagas, concurrency=8)
        await worker.run_until_signalled()


async def serve(url: str, schema: str) -> None:
    async with orchestrator(url, schema) as sagas:
        argv = [sys.executable, __file__, url, schema]
        workers = [await asyncio.create_subprocess_exec(*argv) for _ in range(2)]
        ids = [await sagas.submit(PingSaga(PingData(uuid4()))) for _ in range(100)]
        results = [await sagas.wait(saga_id, timeout_seconds=60) for saga_id in ids]
        print("submitted 100 sagas:", sorted({r.status.value for r in results}))
        result = await sagas.execute(PingSaga(PingData(uuid4())), on_workers=True)
        print("execute(on_workers=True):", result.status.value)
        for process in workers:
            process.send_signal(signal.SIGTERM)
        print("workers exited with:", [await process.wait() for process in workers])
    with psycopg.connect(url, autocommit=True) as connection:
        leased = connection.execute(  # in flight and leased (a finished saga holds no lease)
            f'SELECT count(*) FROM "{schema}".sagas WHERE lease_owner IS NOT NULL'
            " AND status IN ('pending', 'running', 'compensating')"
        ).fetchone()
        print("leases still held:", leased[0] if leased else None)
        connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main() -> None:
    if len(sys.argv) == 3:  # started by serve()
        asyncio.run(work(sys.argv[1], sys.argv[2]))
    else:
        asyncio.run(serve(sys.argv[1], f"howto_workers_{uuid4().hex[:8]}"))


if __name__ == "__main__":
    # Run this file as a module, not as __main__: stored sagas name their data class by
    # module (this_file:PingData), and every worker process must import it by that name.
    import_module(Path(__file__).stem).main()
