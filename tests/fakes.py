"""Recording fakes of the order services: every call lands, in order, in one shared log."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import anyio

from order_fulfillment.domain import OrderData, OrderItem, ShippingAddress
from order_fulfillment.saga import OrderFulfillmentSaga


@dataclass
class Ref:
    id: UUID = field(default_factory=uuid4)
    tracking_number: str = "TRACK123"


@dataclass
class Script:
    """What each service call does: `raise` an error or `hang` (until timed out)."""

    failures: dict[str, BaseException] = field(default_factory=dict)
    hangs: set[str] = field(default_factory=set)

    async def run(self, call: str) -> None:
        if call in self.hangs:
            await anyio.sleep_forever()
        if call in self.failures:
            raise self.failures[call]


class RecordingServices:
    """Inventory, payment, shipping and notification fakes sharing one call log."""

    def __init__(self, script: Script | None = None) -> None:
        self.calls: list[str] = []
        self.script = script or Script()

    async def _call(self, name: str) -> Ref:
        self.calls.append(name)
        await self.script.run(name)
        return Ref()

    # inventory
    async def reserve(self, **kwargs: Any) -> Ref:
        return await self._call("reserve")

    async def release(self, **kwargs: Any) -> None:
        await self._call("release")

    async def release_order(self, **kwargs: Any) -> None:
        await self._call("release_order")

    # payment
    async def charge(self, **kwargs: Any) -> Ref:
        return await self._call("charge")

    async def refund(self, **kwargs: Any) -> None:
        await self._call("refund")

    async def find_by_idempotency_key(self, key: str, **kwargs: Any) -> None:
        await self._call("find_payment")  # the fakes' calls that hang never act: nothing found

    # shipping
    async def create(self, **kwargs: Any) -> Ref:
        return await self._call("create_shipment")

    async def cancel(self, **kwargs: Any) -> None:
        await self._call("cancel_shipment")

    async def initiate_return(self, **kwargs: Any) -> None:
        await self._call("initiate_return")

    async def find_by_order(self, order_id: Any, **kwargs: Any) -> None:
        await self._call("find_shipment")

    # notification
    async def send_email(self, *, template: str, **kwargs: Any) -> None:
        await self._call(f"email:{template}")

    def saga(self, data: OrderData | None = None) -> OrderFulfillmentSaga:
        return OrderFulfillmentSaga(
            data or make_order(),
            inventory_service=self,
            payment_service=self,
            shipping_service=self,
            notification_service=self,
        )


class FastTimeoutSaga(OrderFulfillmentSaga):
    """The order saga with its step timeouts scaled down, so timeouts fire in tests."""

    def define_steps(self) -> list[Any]:
        return [dataclasses.replace(s, timeout_seconds=0.05) for s in super().define_steps()]


def make_order() -> OrderData:
    return OrderData(
        customer_id=uuid4(),
        items=[OrderItem(sku="SKU-001", quantity=2, unit_price=Decimal("29.99"), name="Widget")],
        shipping_address=ShippingAddress("123 Main St", "Anytown", "CA", "12345", "US"),
        total=Decimal("59.98"),
    )
