"""Child process of ``tests/test_journal.py``: runs one long saga on PostgreSQL until its
step ``s10`` is under way, says so, and waits there for the parent's SIGKILL.

    python -m tests.journal_child URL SCHEMA

It prints the saga's id, then ``ready`` once step ``s10``'s action has started (the
transitions before it were written through ``update_changes``, as journal patches). Leases
last 1 s, so that the parent can take the saga over soon after the kill.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio

from saga_orchestrator import SagaOrchestrator
from saga_orchestrator.adapters.postgres import PostgresSagaRepository
from tests.test_journal import BIG, LongData, LongSaga


class BlockingLongSaga(LongSaga):
    """``LongSaga`` (same ``saga_type``) whose step ``s10`` never returns."""

    @staticmethod
    def _action(index: int) -> Any:
        action = LongSaga._action(index)
        if index != 10:
            return action

        async def block(data: LongData) -> None:
            print("ready", flush=True)
            await anyio.sleep_forever()

        return block


async def main(url: str, schema: str) -> None:
    async with PostgresSagaRepository(url, schema=schema, lease_seconds=1.0) as repo:
        saga = BlockingLongSaga(LongData(payload=BIG))
        print(saga.context.saga_id, flush=True)
        await SagaOrchestrator(repo).execute(saga)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
