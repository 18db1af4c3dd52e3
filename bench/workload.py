"""The benchmarks' workload: the spec's 4-step order saga against no-op services.

``OrderFulfillmentSaga`` from the example package ``order_fulfillment``
(``examples/order_fulfillment``): reserve inventory, process payment, create shipment, send
confirmation, each with a compensation; dataclass data with a ``Decimal`` total and UUID ids.
``Services`` stands for all four services and returns at once, so that what a benchmark
measures is the engine and its storage. With ``fail_shipping=True`` step 3 raises
``NoCarrierError``, a business refusal (not retried), and steps 2 and 1 are compensated.

``run_plain`` is the no-library baseline: the same actions (and compensations) awaited
directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from order_fulfillment.domain import OrderData, OrderItem, ShippingAddress
from order_fulfillment.saga import OrderFulfillmentSaga
from saga_orchestrator import SagaStatus, SagaStep


class NoCarrierError(Exception):
    """A business refusal: not retryable, so the saga compensates at once."""

    refused = True  # a declared refusal: the failed step did not act, nothing to undo


@dataclass(frozen=True)
class _Ref:
    id: UUID
    tracking_number: str = ""


_RESERVATION = _Ref(UUID("00000000-0000-4000-8000-000000000001"))
_PAYMENT = _Ref(UUID("00000000-0000-4000-8000-000000000002"))
_SHIPMENT = _Ref(UUID("00000000-0000-4000-8000-000000000003"), "TRACK-0001")


class Services:
    """The order saga's four services in one object; every call returns at once."""

    def __init__(self, *, fail_shipping: bool = False) -> None:
        self.fail_shipping = fail_shipping
        self.calls = 0

    # inventory
    async def reserve(self, **_: Any) -> _Ref:
        self.calls += 1
        return _RESERVATION

    async def release(self, **_: Any) -> None:
        self.calls += 1

    # payment
    async def charge(self, **_: Any) -> _Ref:
        self.calls += 1
        return _PAYMENT

    async def refund(self, **_: Any) -> None:
        self.calls += 1

    # shipping
    async def create(self, **_: Any) -> _Ref:
        self.calls += 1
        if self.fail_shipping:
            raise NoCarrierError("no carrier serves this address")
        return _SHIPMENT

    async def cancel(self, **_: Any) -> None:
        self.calls += 1

    async def initiate_return(self, **_: Any) -> None:
        self.calls += 1

    # notification
    async def send_email(self, **_: Any) -> None:
        self.calls += 1


def make_saga(data: OrderData, services: Services) -> OrderFulfillmentSaga:
    return OrderFulfillmentSaga(
        data,
        inventory_service=services,
        payment_service=services,
        shipping_service=services,
        notification_service=services,
    )


_ITEMS = (
    ("SKU-001", 2, Decimal("29.99"), "Widget"),
    ("SKU-002", 1, Decimal("149.00"), "Gadget"),
)


def make_order() -> OrderData:
    items = [OrderItem(sku, qty, price, name) for sku, qty, price, name in _ITEMS]
    return OrderData(
        customer_id=uuid4(),
        items=items,
        shipping_address=ShippingAddress("123 Main St", "Anytown", "CA", "12345", "US"),
        total=sum((i.unit_price * i.quantity for i in items), Decimal("0")),
    )


async def run_plain(steps: Sequence[SagaStep[OrderData]], data: OrderData) -> None:
    """The baseline: the saga's own actions awaited directly, without the orchestrator.

    Their results are set on the data; on the business error, the completed steps are
    compensated in reverse order.
    """
    for done, step in enumerate(steps):
        try:
            result = await step.action(data)
        except NoCarrierError:
            for undo in reversed(steps[:done]):
                if undo.compensation is not None:
                    await undo.compensation(data)
            return
        for key, value in (result or {}).items():
            setattr(data, key, value)


PATHS = ("happy", "fail@3")
CALLS = {"happy": 4, "fail@3": 5}  # service calls per saga: 4 actions / 3 actions + 2 undos
EXPECTED = {"happy": SagaStatus.COMPLETED, "fail@3": SagaStatus.COMPENSATED}

__all__ = [
    "CALLS",
    "EXPECTED",
    "PATHS",
    "NoCarrierError",
    "Services",
    "make_order",
    "make_saga",
    "run_plain",
]
