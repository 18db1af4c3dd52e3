"""Changing a saga while one is in flight, on a SQLite file, in three deployments.

    python this_file.py [FILE]     # runs the three versions one after the other

Each version runs in its own process, as a deployment would, and is killed with a saga in
flight: version 1 starts a payment; version 2 changes the data class and the steps; version 3
adds a field without a default. The data class is stored by module and name (here
`howto_upgrading:PaymentData`; in a service, something like `payments.saga:PaymentData`), so
each version reads the stored data with its own class.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from importlib import import_module
from pathlib import Path
from typing import Any
from uuid import UUID

import anyio

from saga_orchestrator import (
    BaseSaga,
    SagaOrchestrator,
    SagaStatus,
    SagaStep,
    SerializationError,
    SQLiteSagaRepository,
)
from saga_orchestrator.testing import FaultInjector

VERSION = int(sys.argv[2]) if len(sys.argv) > 2 else 0

if VERSION == 1:

    @dataclass
    class PaymentData:
        payment_id: UUID
        amount: Decimal
        coupon: str | None = None  # removed in version 2

elif VERSION == 2:

    @dataclass
    class PaymentData:  # same module, same name: stored version-1 data is read with it
        payment_id: UUID
        amount: Decimal
        currency: str = "EUR"  # added, with a default

else:

    @dataclass
    class PaymentData:
        payment_id: UUID
        amount: Decimal
        country: str  # added without a default: stored sagas have no value for it
        currency: str = "EUR"


class PaymentSagaV1(BaseSaga[PaymentData]):
    """Definition version 1, kept registered until no stored version-1 saga needs it."""

    saga_type = "payment"
    saga_version = 1

    def define_steps(self) -> list[SagaStep[PaymentData]]:
        return [SagaStep("authorize", self.noop), SagaStep("capture", self.noop)]

    async def noop(self, data: PaymentData) -> None:
        return None


class PaymentSaga(BaseSaga[PaymentData]):
    """Definition version 2: "capture" became two steps. Same saga_type, a new version."""

    saga_type = "payment"
    saga_version = 2

    def define_steps(self) -> list[SagaStep[PaymentData]]:
        return [
            SagaStep("authorize", self.noop),
            SagaStep("capture_funds", self.noop),
            SagaStep("send_receipt", self.noop),
        ]

    async def noop(self, data: PaymentData) -> None:
        return None


OLD = UUID(int=1)
UNFINISHED = [SagaStatus.PENDING, SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.FAILED]


async def version_1(db: str) -> None:
    faults = FaultInjector().crash("capture")  # the process is killed before "capture" runs
    async with SQLiteSagaRepository(db) as repository:
        saga = PaymentSagaV1(PaymentData(OLD, Decimal("10.00"), coupon="SPRING"))
        saga.context.saga_id = OLD
        await SagaOrchestrator(repository, interceptors=[faults]).execute(saga)


async def version_2(db: str) -> None:
    async with SQLiteSagaRepository(db) as repository:
        careless = SagaOrchestrator(repository)
        careless.register("payment", PaymentSaga)  # the new definition only
        report = await careless.recover()
        for skipped in report.skipped:  # loud, never silently pending
            print(f"skipped: {skipped.reason}")
        print(f"stranded: {[str(s.saga_id) for s in await repository.list_stranded()]}")

        orchestrator = SagaOrchestrator(repository)
        orchestrator.register("payment", PaymentSagaV1, version=1)  # side by side, to drain
        orchestrator.register("payment", PaymentSaga)  # version 2, as the class says
        for result in await orchestrator.recover():
            print(f"recovered: v{result.saga_version} {result.status.value} {result.data}")
        new = PaymentSaga(PaymentData(UUID(int=2), Decimal("25.00")))
        new.context.saga_id = UUID(int=2)
        result = await orchestrator.execute(new)
        print(f"new: v{result.saga_version} {result.status.value} {result.data}")
        stored = await orchestrator.list_sagas(statuses=UNFINISHED, saga_type="payment")
        left = [context for context in stored if context.saga_version == 1]
        print(f"version-1 sagas left to drain or retry: {len(left)}")
        print(f"stranded now: {len(await repository.list_stranded())}")

        # This process is killed in turn, with a version-2 saga in flight.
        orchestrator.interceptors.append(FaultInjector().crash("send_receipt"))
        in_flight = PaymentSaga(PaymentData(UUID(int=3), Decimal("40.00")))
        in_flight.context.saga_id = UUID(int=3)
        await orchestrator.execute(in_flight)


async def version_3(db: str) -> None:
    async with SQLiteSagaRepository(db) as repository:
        orchestrator = SagaOrchestrator(repository)
        orchestrator.register("payment", PaymentSaga)  # version 1 drained: no longer registered
        resumed = await orchestrator.recover()  # reports (and logs) the unreadable one
        stuck = await repository.list_saga_ids(statuses=[SagaStatus.RUNNING])
        print(f"recover() resumed {len(resumed)}; still running, unreadable: {len(stuck)}")
        try:
            await repository.get(OLD)
        except SerializationError as exc:
            print(f"get() of a finished saga fails too: {exc}")


def main() -> None:
    if VERSION:
        step: Any = {1: version_1, 2: version_2, 3: version_3}[VERSION]
        anyio.run(step, sys.argv[1])
        return
    db = sys.argv[1] if len(sys.argv) > 1 else str(Path(tempfile.mkdtemp()) / "payments.db")
    for version in (1, 2, 3):
        print(f"== version {version}")
        run = subprocess.run([sys.executable, __file__, db, str(version)], check=False)
        if run.returncode:
            print(f"(exit status {run.returncode})")


if __name__ == "__main__":
    # Run this file as a module, not as __main__: stored sagas name their data class by
    # module (howto_upgrading:PaymentData), and every version's process imports it.
    import_module(Path(__file__).stem).main()
