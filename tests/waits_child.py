"""A process that parks, delivers to and recovers wait sagas on a SQLite file, for
``tests/test_waits_crash.py`` (which SIGKILLs it at the points it reports).

    python -m tests.waits_child park --db PATH --ledger PATH --order ID
    python -m tests.waits_child deliver --db PATH --ledger PATH --order ID --event-id ID
        [--hang-in-accept]
    python -m tests.waits_child recover --db PATH --ledger PATH

``park`` starts the saga, prints ``parked`` once it waits for its event, then blocks until
killed. ``deliver`` delivers ``payment.captured`` (drive: it carries the saga on); with
``--hang-in-accept`` the step's acceptor prints ``accepting`` and blocks the process, after
the event is stored and before it is consumed. ``recover`` runs ``recover()`` then
``wake_due()``. Every action and compensation appends a line to the fsynced ledger; the last
two commands print their outcome as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anyio

from saga_orchestrator import BaseSaga, SagaOrchestrator, SagaStep, SQLiteSagaRepository
from saga_orchestrator.definitions import wait_for_event

HANG_IN_ACCEPT = {"on": False}


@dataclass
class CaptureData:
    """An order whose payment capture is confirmed by an event."""

    order_id: str
    amount: Decimal = Decimal("42.00")
    capture_id: str | None = None


def _write(ledger: str, line: str) -> None:
    with open(ledger, "a", encoding="utf-8") as file:
        file.write(f"{line}\n")
        file.flush()
        os.fsync(file.fileno())


def _say(text: str) -> None:
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


class CaptureSaga(BaseSaga[CaptureData]):
    """authorize (undone by void), wait for payment.captured, ship."""

    saga_type = "crash_capture"

    def __init__(self, data: CaptureData, ledger: str) -> None:
        self.ledger = ledger
        super().__init__(data)

    def correlation_id(self, data: CaptureData) -> str:
        return f"capture-{data.order_id}"

    def define_steps(self) -> list[SagaStep[CaptureData]]:
        ledger = self.ledger

        async def authorize(data: CaptureData) -> None:
            _write(ledger, f"authorize {data.order_id} {os.getpid()}")

        async def void(data: CaptureData) -> None:
            _write(ledger, f"void {data.order_id} {os.getpid()}")

        async def ship(data: CaptureData) -> None:
            _write(ledger, f"ship {data.order_id} {data.capture_id} {os.getpid()}")

        def accept(data: CaptureData, payload: Any) -> dict[str, Any]:
            if HANG_IN_ACCEPT["on"]:
                _say("accepting")
                time.sleep(3600)  # blocks the whole process, as a stuck one would
            return {"capture_id": payload["capture_id"]}

        return [
            SagaStep("authorize", authorize, void),
            wait_for_event("capture", "payment.captured", timeout_seconds=3600, accept=accept),
            SagaStep("ship", ship),
        ]


def _orchestrator(repository: SQLiteSagaRepository, ledger: str) -> SagaOrchestrator:
    orchestrator = SagaOrchestrator(repository)
    orchestrator.register(CaptureSaga.saga_type, lambda data: CaptureSaga(data, ledger))
    return orchestrator


async def main(args: argparse.Namespace) -> None:
    async with SQLiteSagaRepository(args.db) as repository:
        orchestrator = _orchestrator(repository, args.ledger)
        if args.command == "park":
            result = await orchestrator.execute(CaptureSaga(CaptureData(args.order), args.ledger))
            _say(f"parked {result.saga_id} {result.status.value}")
            await anyio.sleep_forever()
        elif args.command == "deliver":
            HANG_IN_ACCEPT["on"] = args.hang_in_accept
            delivery = await orchestrator.deliver_event(
                "payment.captured",
                {"capture_id": f"cap-{args.order}"},
                event_id=args.event_id,
                correlation_id=f"capture-{args.order}",
                drive=True,
            )
            _say(json.dumps({"status": delivery.status.value, "saga": delivery.saga_status.value}))
        else:
            report = await orchestrator.recover()
            woken = await orchestrator.wake_due()
            _say(
                json.dumps(
                    {
                        "resumed": [r.status.value for r in report],
                        "waiting": len(report.waiting),
                        "woken": [r.status.value for r in woken],
                    }
                )
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["park", "deliver", "recover"])
    parser.add_argument("--db", required=True)
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--order", default="1")
    parser.add_argument("--event-id", default="evt-1")
    parser.add_argument("--hang-in-accept", action="store_true")
    anyio.run(main, parser.parse_args())
