"""Several processes sharing one SQLite file. Run it: python this_file.py [FILE]

Three worker processes start at once on a new file (the first applies the migrations, the
others wait for it), each runs 100 sagas with 20 in flight, then this process reads the file.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from uuid import UUID, uuid4

import anyio

from saga_orchestrator import BaseSaga, SagaOrchestrator, SagaStatus, SagaStep, SQLiteSagaRepository


@dataclass
class PingData:  # stored by module and name: every process that reads it must import it
    ping_id: UUID


class PingSaga(BaseSaga[PingData]):
    saga_type = "ping"

    def define_steps(self) -> list[SagaStep[PingData]]:
        return [SagaStep("first", self.noop), SagaStep("second", self.noop)]

    async def noop(self, data: PingData) -> None:
        return None


async def worker(path: str, sagas: int) -> None:
    # synchronous="FULL" (the default) makes every acknowledged transition survive power loss;
    # "NORMAL" survives a crash of the process but may lose the last commits on power loss.
    async with SQLiteSagaRepository(path, synchronous="FULL") as repository:
        orchestrator = SagaOrchestrator(repository)
        limiter = anyio.CapacityLimiter(20)

        async def one() -> None:
            async with limiter:
                await orchestrator.execute(PingSaga(PingData(uuid4())))

        async with anyio.create_task_group() as tg:
            for _ in range(sagas):
                tg.start_soon(one)
        # 3 writes per saga; concurrent sagas share transactions (group commit).
        print(f"{sagas} sagas, {3 * sagas} writes in {repository.transactions} transactions")


async def report(path: str) -> None:
    async with SQLiteSagaRepository(path) as repository:
        counts = await repository.count_by_status([SagaStatus.COMPLETED, SagaStatus.RUNNING])
        print("stored:", {f"{t} {s.value}": n for (t, s), n in sorted(counts.items())})
    with sqlite3.connect(path) as connection:
        print("journal mode:", connection.execute("PRAGMA journal_mode").fetchone()[0])


def main() -> None:
    if sys.argv[1:2] == ["worker"]:
        anyio.run(worker, sys.argv[2], int(sys.argv[3]))
        return
    path = sys.argv[1] if len(sys.argv) > 1 else str(Path(tempfile.mkdtemp()) / "sagas.db")
    workers = [
        subprocess.Popen([sys.executable, __file__, "worker", path, "100"]) for _ in range(3)
    ]
    assert all(process.wait() == 0 for process in workers)
    anyio.run(report, path)


if __name__ == "__main__":
    # Run this file as a module, not as __main__: stored sagas name their data class by
    # module (this_file:PingData), and every process that reads them must import it.
    import_module(Path(__file__).stem).main()
