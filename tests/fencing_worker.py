"""A worker process for ``tests/test_fencing.py``: the order example on PostgreSQL, gated.

Run with the repository root on ``PYTHONPATH``::

    python -m tests.fencing_worker --conninfo URL --schema NAME --owner NAME \\
        --services PATH --gate PATH --calls DIR --ready PATH [--lease-seconds 3] \\
        [--concurrency 16]

The process builds ``Shop(services, repository=PostgresSagaRepository(...))`` (the sagas in
the test's schema, the services' state in one SQLite file shared with the other worker and
the test) and runs a ``SagaWorker`` until SIGTERM, then prints one JSON line of its counters.

Its services' database is gated (``GatedShopDatabase``): every service transaction is first
written down as a file in ``--calls`` (owner, saga, step, fencing token, and whether the gate
was closed: see ``read_calls``), then waits until the file ``--gate`` exists. The wait and the
transaction run in one worker thread, which a cancellation does not interrupt (anyio waits
for the thread): a call that waited at the gate when its process was frozen goes on to the
service when the process wakes up, whatever the lease guard says by then. That is what makes
the stale call certain, instead of a race between the call's latency and the lease guard.

Nothing of this touches the services' SQLite file before the gate: a process frozen while its
calls wait there holds no lock on it (a frozen SQLite writer would block the other worker).

``--ready`` is created once the worker runs (``SagaWorker.started``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from order_fulfillment.db import ShopDatabase
from order_fulfillment.shop import Shop
from saga_orchestrator import SagaWorker, current_step
from saga_orchestrator.adapters.postgres import PostgresSagaRepository

T = TypeVar("T")


def read_calls(folder: Path) -> list[dict[str, Any]]:
    """Every service transaction the workers started, each as written before the gate:
    ``owner``, ``saga_id``, ``step``, ``phase``, ``token`` (None outside a step), ``gated``."""
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


class GatedShopDatabase(ShopDatabase):
    """The example's database, whose transactions wait for a gate file, written down first."""

    def __init__(self, path: str | Path, *, gate: Path, calls: Path, owner: str) -> None:
        super().__init__(path)
        self.gate = gate
        self.calls = calls
        self.owner = owner
        self._numbers = itertools.count(1)

    def _in_transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        saga_id: str | None = None
        step: str | None = None
        phase: str | None = None
        token: int | None = None
        try:
            run = current_step()  # the step's context is copied into the worker thread
        except LookupError:
            pass
        else:
            saga_id, step, phase = str(run.saga_id), run.step, run.phase.value
            token = run.fencing_token
        gated = not self.gate.exists()
        call = {"owner": self.owner, "saga_id": saga_id, "step": step, "phase": phase}
        call |= {"token": token, "gated": gated}
        name = f"{self.owner}-{next(self._numbers):05d}.json"
        temporary = self.calls / f"{name}.partial"
        temporary.write_text(json.dumps(call))
        os.replace(temporary, self.calls / name)  # whole, or not there
        while not self.gate.exists():  # the gate: a file the test creates
            time.sleep(0.01)  # in the worker thread: the event loop runs on
        return super()._in_transaction(fn)


async def main(args: argparse.Namespace) -> None:
    repository = PostgresSagaRepository(
        args.conninfo,
        schema=args.schema,
        owner=args.owner,
        lease_seconds=args.lease_seconds,
        apply_migrations=False,  # the test migrated the schema
    )
    shop = Shop(args.services, repository=repository)
    gated = GatedShopDatabase(
        args.services, gate=Path(args.gate), calls=Path(args.calls), owner=args.owner
    )
    shop.db = gated
    for service in (shop.inventory, shop.payments, shop.shipping, shop.notifications):
        service.db = gated
    async with shop:
        worker = SagaWorker(
            shop.orchestrator,
            concurrency=args.concurrency,
            poll_interval_seconds=0.2,
            shutdown_grace_seconds=5.0,
        )
        async with anyio.create_task_group() as tg:
            tg.start_soon(worker.run_until_signalled)
            await worker.started()
            await anyio.Path(args.ready).touch()
    summary = {
        "claimed": worker.claimed,
        "finished": worker.finished,
        "lost": worker.lost,
        "leases_lost": repository.leases_lost,
        "held_leases": len(repository.held_leases),
    }
    print(json.dumps(summary), flush=True)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--conninfo", required=True)
    parser.add_argument("--schema", required=True)
    parser.add_argument("--owner", required=True)
    parser.add_argument("--services", required=True)
    parser.add_argument("--gate", required=True)
    parser.add_argument("--calls", required=True)
    parser.add_argument("--ready", required=True)
    parser.add_argument("--lease-seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, default=16)
    return parser.parse_args()


if __name__ == "__main__":
    anyio.run(main, _arguments())
