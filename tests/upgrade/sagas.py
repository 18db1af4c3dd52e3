"""The user's code at 0.1.0: the sagas that wrote ``tests/data/v0.1.0/``. FROZEN.

The stored sagas name these classes (``tests.upgrade.sagas:OrderData`` and so on), their
``saga_type`` and their steps: changing any of them makes the fixtures unreadable or
unresumable for reasons that have nothing to do with the upgrade. Leave this module as it is.

Two saga types share four steps: ``upgrade_order``, and ``upgrade_express_order``, whose
sagas have a deadline a minute after their start (``timeout_minutes = 1``).

Every action and compensation appends a [`Call`][] to ``CALLS`` (saga, step, phase, attempt),
then does what ``FAULTS`` says for its call, if anything, and otherwise succeeds. Step results
are computed from the order alone, so that the data a saga ends with is known exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, NamedTuple
from uuid import UUID, uuid5

import anyio

from saga_orchestrator import BaseSaga, RetryPolicy, SagaStep, StepRefusedError, current_step

ORDER_SAGA_TYPE = "upgrade_order"
EXPRESS_SAGA_TYPE = "upgrade_express_order"
STEP_NAMES = ("reserve_stock", "charge_payment", "create_shipment", "send_confirmation")

_RESULTS = UUID("0b1c1a55-0000-4000-8000-00000000c0de")
"""Namespace of the ids that the fake services hand out (uuid5 of the order)."""


class Tier(Enum):
    """How fast the order ships."""

    STANDARD = "standard"
    EXPRESS = "express"


@dataclass(frozen=True)
class Address:
    """Where the order ships to (nested in the data)."""

    street: str
    city: str
    postcode: str
    country: str


@dataclass(frozen=True)
class LineItem:
    """One line of the order (a list of these is nested in the data)."""

    sku: str
    quantity: int
    unit_price: Decimal


@dataclass
class OrderData:
    """The saga's data: the order, then what each step returned."""

    order_id: UUID
    customer_id: UUID
    placed_at: datetime
    tier: Tier
    ship_to: Address
    items: list[LineItem]
    total: Decimal
    reservation_id: UUID | None = None
    charge_id: UUID | None = None
    charged: Decimal | None = None
    charged_at: datetime | None = None
    shipment_id: UUID | None = None
    deliver_by: datetime | None = None
    confirmation: str | None = None


class Fault(Enum):
    """What one call of an action or compensation does instead of succeeding."""

    REFUSE = "refuse"
    """Raise a refusal (``StepRefusedError``): not retried, and the step did not act."""
    BREAK = "break"
    """Raise ``ConnectionError``: retried; a forward step that gives up counts as acted."""
    HANG = "hang"
    """Call ``on_hold`` and never return (the process is killed meanwhile)."""


class Call(NamedTuple):
    """One call of an action or a compensation."""

    saga_id: UUID
    step: str
    phase: str
    """``"action"`` or ``"compensation"``."""
    attempt: int


class ServiceRefusedError(StepRefusedError):
    """A service said no before doing anything."""


FAULTS: dict[tuple[UUID, str, str], list[Fault]] = {}
"""``(saga_id, step, phase)`` → the faults of its next calls, in order (one per call)."""

CALLS: list[Call] = []
"""Every call made in this process, in order."""

on_hold: Callable[[UUID, str, str], None] | None = None
"""Called with ``(saga_id, step, phase)`` when a call starts to hang."""


async def _call(data: OrderData, result: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    run = current_step()
    CALLS.append(Call(run.saga_id, run.step, run.phase.value, run.attempt))
    faults = FAULTS.get((run.saga_id, run.step, run.phase.value))
    fault = faults.pop(0) if faults else None
    if fault is Fault.REFUSE:
        raise ServiceRefusedError(f"{run.step} refused order {data.order_id}")
    if fault is Fault.BREAK:
        raise ConnectionError(f"{run.step} service unreachable")
    if fault is Fault.HANG:
        if on_hold is not None:
            on_hold(run.saga_id, run.step, run.phase.value)
        await anyio.sleep_forever()
    return result


def _id(kind: str, data: OrderData) -> UUID:
    return uuid5(_RESULTS, f"{kind}:{data.order_id}")


def reservation_result(data: OrderData) -> dict[str, Any]:
    """What ``reserve_stock`` returns for this order."""
    return {"reservation_id": _id("reservation", data)}


def charge_result(data: OrderData) -> dict[str, Any]:
    """What ``charge_payment`` returns for this order."""
    return {
        "charge_id": _id("charge", data),
        "charged": data.total,
        "charged_at": data.placed_at + timedelta(minutes=1, microseconds=1),
    }


def shipment_result(data: OrderData) -> dict[str, Any]:
    """What ``create_shipment`` returns for this order."""
    days = 1 if data.tier is Tier.EXPRESS else 4
    return {"shipment_id": _id("shipment", data), "deliver_by": data.placed_at + timedelta(days)}


def confirmation_result(data: OrderData) -> dict[str, Any]:
    """What ``send_confirmation`` returns for this order."""
    return {"confirmation": f"CONF-{data.order_id.hex[:12].upper()}"}


RESULTS: dict[str, Callable[[OrderData], dict[str, Any]]] = {
    "reserve_stock": reservation_result,
    "charge_payment": charge_result,
    "create_shipment": shipment_result,
    "send_confirmation": confirmation_result,
}
"""Each step's result, by step name."""


async def reserve_stock(data: OrderData) -> Mapping[str, Any] | None:
    return await _call(data, reservation_result(data))


async def release_stock(data: OrderData) -> None:
    await _call(data, None)


async def charge_payment(data: OrderData) -> Mapping[str, Any] | None:
    return await _call(data, charge_result(data))


async def refund_payment(data: OrderData) -> None:
    await _call(data, None)


async def create_shipment(data: OrderData) -> Mapping[str, Any] | None:
    return await _call(data, shipment_result(data))


async def cancel_shipment(data: OrderData) -> None:
    await _call(data, None)


async def send_confirmation(data: OrderData) -> Mapping[str, Any] | None:
    return await _call(data, confirmation_result(data))


def _quick(max_attempts: int) -> RetryPolicy:
    return RetryPolicy(max_attempts=max_attempts, initial_backoff_seconds=0.01, jitter_ratio=0)


CHARGE_BACKOFF_SECONDS = 60.0
"""The wait before ``charge_payment``'s next attempt: long enough for the generator to kill a
saga waiting it out, and long past when the test reads it."""


class OrderSaga(BaseSaga[OrderData]):
    """Reserve, charge, ship, confirm; the first three are undone in reverse."""

    saga_type = ORDER_SAGA_TYPE

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            SagaStep(
                "reserve_stock",
                reserve_stock,
                release_stock,
                retry=_quick(3),
                compensation_retry=_quick(3),
            ),
            SagaStep(
                "charge_payment",
                charge_payment,
                refund_payment,
                retry=RetryPolicy(
                    max_attempts=3,
                    initial_backoff_seconds=CHARGE_BACKOFF_SECONDS,
                    backoff_coefficient=1.0,
                    max_backoff_seconds=CHARGE_BACKOFF_SECONDS,
                    jitter_ratio=0,
                ),
                # Two attempts: the generator makes this compensation fail for good.
                compensation_retry=_quick(2),
            ),
            SagaStep(
                "create_shipment",
                create_shipment,
                cancel_shipment,
                retry=_quick(3),
                compensation_retry=_quick(3),
            ),
            SagaStep("send_confirmation", send_confirmation, retry=_quick(3)),
        ]


class ExpressOrderSaga(OrderSaga):
    """The same steps, with a deadline a minute after the start."""

    saga_type = EXPRESS_SAGA_TYPE
    timeout_minutes = 1


def register(orchestrator: Any) -> None:
    """Register both saga types' factories on ``orchestrator`` (as the user's app does)."""
    orchestrator.register(ORDER_SAGA_TYPE, OrderSaga)
    orchestrator.register(EXPRESS_SAGA_TYPE, ExpressOrderSaga)
