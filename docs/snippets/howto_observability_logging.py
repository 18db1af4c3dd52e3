"""The library logs to the `saga_orchestrator` logger and never configures handlers: your
application does, once, at start-up. Here: one line per record, with the saga fields."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from uuid import UUID

import anyio

from saga_orchestrator import BaseSaga, InMemorySagaRepository, SagaOrchestrator, SagaStep
from saga_orchestrator.testing import ManualClock


@dataclass
class InvoiceData:
    invoice_id: UUID


class InvoiceSaga(BaseSaga[InvoiceData]):
    saga_type = "invoice"

    def define_steps(self) -> list[SagaStep[InvoiceData]]:
        return [SagaStep("render", self.render), SagaStep("send", self.send)]

    async def render(self, data: InvoiceData) -> None:
        return None

    async def send(self, data: InvoiceData) -> None:
        raise ValueError("no e-mail address on file")


def configure_logging() -> None:
    """Application code, not library code."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        logging.Formatter(
            "%(levelname)-7s %(event)-26s step=%(step)s attempt=%(attempt)s | %(message)s",
            # Records from other loggers lack the saga fields: give them defaults.
            defaults={"event": "-", "step": None, "attempt": None},
        )
    )
    logger = logging.getLogger("saga_orchestrator")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # WARNING: failures only


async def main() -> None:
    configure_logging()
    saga = InvoiceSaga(InvoiceData(UUID(int=42)))
    saga.context.saga_id = UUID(int=1)
    await SagaOrchestrator(InMemorySagaRepository(), clock=ManualClock()).execute(saga)


if __name__ == "__main__":
    anyio.run(main)
