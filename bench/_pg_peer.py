"""A second process for ``bench/engine.py``'s ``postgres-x2`` adapter: the same saga, on its
own ``PostgresSagaRepository`` (defaults, outbox on) in the scenario's schema.

Protocol on stdin/stdout, one line each: it prints ``ready`` once connected; then for each
line ``N`` it runs N sagas with ``in_flight`` at a time and prints ``done <service calls>
<write transactions> <CPU seconds> <statements> <transaction control statements> <autocommit
prepares>``
(all cumulative; the last three as ``pgstats.COUNTER`` counts them); ``quit`` (or end of
input) closes it. Every saga must end as the path expects, or it exits with status 1.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pgstats import COUNTER
from saga_orchestrator import SagaOrchestrator
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from workload import EXPECTED, Services, make_order, make_saga


async def main(url: str, schema: str, path: str, in_flight: int) -> int:
    COUNTER.install()  # its statements are added to the parent's counts
    repo = PostgresSagaRepository(url, schema=schema, apply_migrations=False)
    await repo.open()
    orchestrator = SagaOrchestrator(repo)
    services = Services(fail_shipping=path == "fail@3")
    expected = EXPECTED[path]
    limiter = anyio.CapacityLimiter(in_flight)
    wrong: list[str] = []

    async def one() -> None:
        async with limiter:
            result = await orchestrator.execute(make_saga(make_order(), services))
            if result.status is not expected:
                wrong.append(f"{result.status}: {result.error}")

    try:
        print("ready", flush=True)
        while True:
            line = (await anyio.to_thread.run_sync(sys.stdin.readline)).strip()
            if not line or line == "quit":
                return 0
            async with anyio.create_task_group() as tg:
                for _ in range(int(line)):
                    tg.start_soon(one)
            if wrong:
                print(f"failed {wrong[0]}", flush=True)
                return 1
            counts = " ".join(str(n) for n in COUNTER.snapshot())
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime
            print(f"done {services.calls} {repo.transactions} {cpu} {counts}", flush=True)
    finally:
        await repo.close()


if __name__ == "__main__":
    url, schema, path, in_flight = sys.argv[1:5]
    sys.exit(anyio.run(main, url, schema, path, int(in_flight)))
