"""What the 0.1.0 fixtures hold: one saga per situation, its fixed id, order and faults.

Shared by the generator (``make_fixtures``, run with the 0.1.0 code) and the test (run with the
current code), so it uses only what both have: the public API, and the stored state's fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from tests.upgrade.sagas import (
    Address,
    ExpressOrderSaga,
    Fault,
    LineItem,
    OrderData,
    OrderSaga,
    Tier,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURES = REPO_ROOT / "tests" / "data" / "v0.1.0"
SQLITE_FIXTURE = FIXTURES / "sagas.sqlite"
POSTGRES_FIXTURE = FIXTURES / "postgres.sql"
STORED_FIXTURE = FIXTURES / "stored.json"
"""Every fixture saga's state (all but its data) as 0.1.0 read it back, for exact comparison."""

FIXTURE_SCHEMA = "upgrade_fixture"
"""The schema the PostgreSQL fixture was written in; the test loads it under another name."""

RELEASED_MIGRATIONS = {"sqlite": {1, 2, 3, 4}, "postgres": {1, 2, 3}}
"""The migrations 0.1.0 had applied to the fixtures."""


@dataclass(frozen=True)
class Planned:
    """One fixture saga."""

    key: str
    """Its name in the fixtures and the test."""
    number: int
    """Makes its ids and order."""
    express: bool = False
    """An ``ExpressOrderSaga`` (with a deadline) rather than an ``OrderSaga``."""
    faults: dict[tuple[str, str], list[Fault]] = field(default_factory=dict)
    """``(step, phase)`` → faults of its calls while the generator runs it."""
    killed: bool = False
    """Run in the generator's child process, which is SIGKILLed with this saga in flight."""
    submitted: bool = False
    """``submit()``ted and never run (PostgreSQL: no worker claimed it)."""
    retried: bool = False
    """``retry()``ed once after it failed, in the generator."""
    outbox: bool = False
    """SQLite: written by a repository with ``outbox=True`` (off by default in 0.1.0)."""
    backends: tuple[str, ...] = ("sqlite", "postgres")

    @property
    def saga_id(self) -> UUID:
        return UUID(f"5a9a0000-0000-4000-8000-{self.number:012d}")

    @property
    def saga_type(self) -> str:
        return ExpressOrderSaga.saga_type if self.express else OrderSaga.saga_type

    def order(self) -> OrderData:
        """The order as submitted (no step result yet)."""
        n = self.number
        items = [
            LineItem(sku=f"SKU-{n:03d}-A", quantity=2, unit_price=Decimal("19.90")),
            LineItem(sku=f"SKU-{n:03d}-B", quantity=1, unit_price=Decimal("0.10")),
        ]
        return OrderData(
            order_id=UUID(f"0bde0000-0000-4000-8000-{n:012d}"),
            customer_id=UUID(f"c0570000-0000-4000-8000-{n:012d}"),
            placed_at=datetime(2026, 2, 1, 9, n, 30, 123456 + n, tzinfo=UTC),
            tier=Tier.EXPRESS if self.express else Tier.STANDARD,
            ship_to=Address(f"{n} Harbour Street", "Lisbon", "1100-001", "PT"),
            items=items,
            total=sum((i.unit_price * i.quantity for i in items), Decimal("0.00")),
        )

    def saga(self) -> OrderSaga:
        saga = (ExpressOrderSaga if self.express else OrderSaga)(self.order())
        saga.context.saga_id = self.saga_id
        return saga


_REFUSED_SHIPMENT = {("create_shipment", "action"): [Fault.REFUSE]}

PLANS = (
    Planned("completed", 1),
    Planned("compensated", 2, faults={("charge_payment", "action"): [Fault.REFUSE]}),
    Planned(
        "failed",
        3,
        faults={
            **_REFUSED_SHIPMENT,
            ("charge_payment", "compensation"): [Fault.BREAK, Fault.BREAK],
        },
    ),
    Planned(
        "retried",
        4,
        faults={
            ("reserve_stock", "action"): [Fault.BREAK],
            **_REFUSED_SHIPMENT,
            ("charge_payment", "compensation"): [Fault.BREAK, Fault.BREAK],
        },
        retried=True,
    ),
    Planned("express_completed", 5, express=True),
    Planned("outbox_completed", 6, outbox=True, backends=("sqlite",)),
    Planned("submitted", 7, submitted=True, backends=("postgres",)),
    Planned("interrupted", 8, faults={("charge_payment", "action"): [Fault.HANG]}, killed=True),
    Planned("backoff", 9, faults={("charge_payment", "action"): [Fault.BREAK]}, killed=True),
    Planned(
        "compensating",
        10,
        faults={**_REFUSED_SHIPMENT, ("charge_payment", "compensation"): [Fault.HANG]},
        killed=True,
    ),
    Planned(
        "deadline",
        11,
        express=True,
        faults={("create_shipment", "action"): [Fault.HANG]},
        killed=True,
    ),
)

BY_KEY = {plan.key: plan for plan in PLANS}
BY_ID = {plan.saga_id: plan for plan in PLANS}


def plans(backend: str) -> list[Planned]:
    """The sagas of ``backend``'s fixture."""
    return [plan for plan in PLANS if backend in plan.backends]


SQLITE_OUTBOX_SENT = 3
"""The SQLite fixture's outbox saga: its first events are marked sent, the rest are not."""


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def snapshot(context: Any) -> dict[str, Any]:
    """A saga's stored state, all but its data, as JSON-ready values (times as ISO text)."""
    return {
        "saga_id": str(context.saga_id),
        "saga_type": context.saga_type,
        "saga_version": context.saga_version,
        "correlation_id": context.correlation_id,
        "status": context.status.value,
        "current_step_index": context.current_step_index,
        "error": context.error,
        "created_at": _time(context.created_at),
        "updated_at": _time(context.updated_at),
        "deadline": _time(context.deadline),
        "version": context.version,
        "event_sequence": context.event_sequence,
        "error_history": [
            {"kind": r.kind.value, "message": r.message, "at": _time(r.at), "step": r.step}
            for r in context.error_history
        ],
        "steps": [
            {
                "name": s.name,
                "status": s.status.value,
                "attempts": s.attempts,
                "error": s.error,
                "effect_possible": s.effect_possible,
                "started_at": _time(s.started_at),
                "completed_at": _time(s.completed_at),
                "next_attempt_at": _time(s.next_attempt_at),
                "compensation_attempts": s.compensation_attempts,
                "compensation_error": s.compensation_error,
                "compensation_started_at": _time(s.compensation_started_at),
                "compensated_at": _time(s.compensated_at),
            }
            for s in context.steps
        ],
    }


_PSQL_META = ("\\restrict ", "\\unrestrict ")
"""psql meta-commands that pg_dump (15.14 and later) writes around the dump; psycopg cannot
run them, and they only guard psql against a crafted dump."""


def dump_script(schema: str) -> str:
    """``postgres.sql`` as one SQL script creating its tables in ``schema`` instead."""
    lines = []
    for line in POSTGRES_FIXTURE.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.startswith(_PSQL_META):
            continue
        if line.startswith("\\"):
            raise ValueError(f"postgres.sql has a psql meta-command: {line.strip()!r}")
        lines.append(line)
    return re.sub(rf"\b{FIXTURE_SCHEMA}\b", schema, "".join(lines))


def load_postgres_fixture(url: str, schema: str) -> None:
    """Create ``schema`` (which must not exist) holding the PostgreSQL fixture's tables and
    rows, as 0.1.0 left them."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        # No parameters: sent as one simple query, several statements (as psql would).
        connection.execute(dump_script(schema).encode())
