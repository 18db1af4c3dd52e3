"""The ``--app`` of the CLI tests: two saga types on a SQLite file, behaviour set by flags.

    saga-orchestrator --app tests.cli_app:orchestrator --db sagas.db retry ID

The command line calls ``orchestrator(db)`` with nothing but the file, so what the services
do (a compensation that keeps failing, a step that hangs) is decided by the module-level
``SETTINGS``, which the tests set and ``reset()`` between them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import anyio

from saga_orchestrator import (
    BaseSaga,
    Clock,
    RetryPolicy,
    SagaOrchestrator,
    SagaStep,
    SQLiteSagaRepository,
    current_step,
)
from saga_orchestrator.protocols import SagaRepository
from tests.sagas import TripData, TripSaga


class NotAvailable(Exception):
    """A declared refusal: the service had nothing to give, so the step did not act."""

    refused = True


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so the engine records nothing more."""


@dataclass
class Settings:
    failing_actions: set[str] = field(default_factory=set)
    """Steps whose action refuses (NotAvailable: a refusal, so the saga compensates the steps
    before it)."""
    failing_compensations: set[str] = field(default_factory=set)
    """Steps whose compensation raises RuntimeError (the refund API is down)."""
    crashing_compensations: set[str] = field(default_factory=set)
    """Steps whose compensation raises Crash, as if the process died during it."""
    blocking_actions: set[str] = field(default_factory=set)
    """Steps whose action sets `entered`, then waits until cancelled."""
    entered: anyio.Event | None = None
    log: list[str] = field(default_factory=list)
    """Every action and compensation called, in order: "hotel#1", "undo-hotel#1"."""


SETTINGS = Settings()


def reset() -> None:
    """Every service works again, and the log is empty."""
    global SETTINGS
    SETTINGS = Settings()


async def _action(step: str, attempt: int) -> dict[str, Any] | None:
    if step in SETTINGS.blocking_actions:
        assert SETTINGS.entered is not None
        SETTINGS.entered.set()
        await anyio.sleep_forever()
    if step in SETTINGS.failing_actions:
        raise NotAvailable(f"no {step} available")
    return {step: f"{step}-ref"}


async def _compensation(step: str, attempt: int) -> dict[str, Any] | None:
    if step in SETTINGS.crashing_compensations:
        raise Crash(f"process died while undoing {step}")
    if step in SETTINGS.failing_compensations:
        raise RuntimeError(f"cannot undo {step}: API down")
    return None


def trip(data: TripData) -> TripSaga:
    """The trip saga wired to the flag-driven services (also its recovery factory)."""
    steps = ("flight", "hotel", "car")
    return TripSaga(
        data,
        log=SETTINGS.log,
        behaviour=dict.fromkeys(steps, _action),
        compensation_behaviour=dict.fromkeys(steps, _compensation),
    )


@dataclass
class PaymentData:
    payment_id: UUID = field(default_factory=uuid4)
    amount: Decimal = Decimal("42.50")
    reference: str | None = None


class PaymentSaga(BaseSaga[PaymentData]):
    """A second saga type, for `list --type`: one charge, refunded when undone."""

    saga_type = "payment"

    def define_steps(self) -> list[SagaStep[PaymentData]]:
        async def charge(data: PaymentData) -> dict[str, Any]:
            SETTINGS.log.append(f"charge#{current_step().attempt}")
            return {"reference": f"ch-{data.payment_id.hex[:8]}"}

        async def refund(data: PaymentData) -> None:
            SETTINGS.log.append(f"undo-charge#{current_step().attempt}")

        return [SagaStep("charge", charge, refund)]


def build(
    repository: SagaRepository, *, compensation_attempts: int = 2, clock: Clock | None = None
) -> SagaOrchestrator:
    """An orchestrator knowing both saga types; compensations retried at once."""
    orchestrator = SagaOrchestrator(
        repository,
        compensation_retry=RetryPolicy(
            max_attempts=compensation_attempts, initial_backoff_seconds=0, jitter_ratio=0
        ),
        clock=clock,
    )
    orchestrator.register(TripSaga.saga_type, trip)
    orchestrator.register(PaymentSaga.saga_type, PaymentSaga)
    return orchestrator


@asynccontextmanager
async def orchestrator(db: str | None) -> AsyncIterator[SagaOrchestrator]:
    """What `--app tests.cli_app:orchestrator` names."""
    if db is None:
        raise ValueError("the test app needs --db")
    async with SQLiteSagaRepository(db) as repository:
        yield build(repository)


def not_a_context_manager(db: str | None) -> str | None:
    """A wrong --app: returns its argument instead of an async context manager."""
    return db


@asynccontextmanager
async def postgres_orchestrator(db: str | None) -> AsyncIterator[SagaOrchestrator]:
    """What `--app tests.cli_app:postgres_orchestrator --db URL#SCHEMA` names (workers)."""
    from saga_orchestrator.adapters.postgres import PostgresSagaRepository

    if db is None or "#" not in db:
        raise ValueError("the test app needs --db POSTGRES_URL#SCHEMA")
    url, _, schema = db.partition("#")
    async with PostgresSagaRepository(url, schema=schema, lease_seconds=5) as repository:
        yield build(repository)
