"""Child process of ``tests/test_versions.py``: version 1 of a payment saga, in flight.

    python -m tests.versions_child DB COUNT

Starts COUNT version-1 sagas; each completes ``authorize`` and blocks inside ``capture``. Once
all of them are blocked there (their attempts recorded), it prints ``ready`` and waits to be
SIGKILLed. The data class and both definitions live here, at module level, so that the test
process can import them as ``tests.versions_child``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from decimal import Decimal
from typing import ClassVar
from uuid import UUID, uuid4

import anyio

from saga_orchestrator import BaseSaga, SagaOrchestrator, SagaStep, SQLiteSagaRepository


@dataclass
class PaymentData:
    payment_id: UUID
    amount: Decimal
    captured: bool = False
    receipt_sent: bool = False


class PaymentSagaV1(BaseSaga[PaymentData]):
    saga_type = "payment"
    saga_version = 1

    def define_steps(self) -> list[SagaStep[PaymentData]]:
        return [SagaStep("authorize", self.noop), SagaStep("capture", self.capture)]

    async def noop(self, data: PaymentData) -> None:
        return None

    async def capture(self, data: PaymentData) -> dict[str, bool]:
        return {"captured": True}


class PaymentSagaV2(BaseSaga[PaymentData]):
    saga_type = "payment"
    saga_version = 2

    def define_steps(self) -> list[SagaStep[PaymentData]]:
        return [
            SagaStep("authorize", self.noop),
            SagaStep("capture_funds", self.capture),
            SagaStep("send_receipt", self.receipt),
        ]

    async def noop(self, data: PaymentData) -> None:
        return None

    async def capture(self, data: PaymentData) -> dict[str, bool]:
        return {"captured": True}

    async def receipt(self, data: PaymentData) -> dict[str, bool]:
        return {"receipt_sent": True}


class _BlockingV1(PaymentSagaV1):
    """Version 1 as the killed process ran it: ``capture`` never returns."""

    blocked: ClassVar[list[UUID]] = []
    all_blocked: ClassVar[anyio.Event]
    count = 0

    async def capture(self, data: PaymentData) -> dict[str, bool]:
        type(self).blocked.append(data.payment_id)
        if len(type(self).blocked) == type(self).count:
            type(self).all_blocked.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")


async def main(db: str, count: int) -> None:
    _BlockingV1.count = count
    _BlockingV1.all_blocked = anyio.Event()
    async with SQLiteSagaRepository(db) as repository:
        orchestrator = SagaOrchestrator(repository)
        async with anyio.create_task_group() as tg:
            for _ in range(count):
                tg.start_soon(
                    orchestrator.execute, _BlockingV1(PaymentData(uuid4(), Decimal("10")))
                )
            await _BlockingV1.all_blocked.wait()
            print("ready", flush=True)
            await anyio.sleep_forever()


if __name__ == "__main__":
    # As tests.versions_child, not __main__: the stored data class must be importable.
    from tests import versions_child

    anyio.run(versions_child.main, sys.argv[1], int(sys.argv[2]))
