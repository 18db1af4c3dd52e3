"""The order-fulfilment saga, as in the specification.

Three additions:

- the constructor also accepts the short keyword spelling the spec's tests use
  (``inventory=`` as well as ``inventory_service=``);
- each compensation also undoes a step whose reply never arrived. The library compensates a
  step that timed out or kept failing transiently, because it may have acted; the reservation,
  payment or shipment id is then unknown, so the compensation finds the effect by the key the
  action used (the order id, the payment's idempotency key). Without that, a charge whose reply
  was lost would never be refunded;
- every service call also carries the running attempt's fencing token and saga id
  (``**_fencing()``), so that the services refuse a call from a process that was frozen past
  its lease while another one took the saga over.
"""

from __future__ import annotations

from typing import Any

from saga_orchestrator import BaseSaga, SagaStep, current_step

from .domain import OrderData
from .errors import ShipmentAlreadyDispatchedError

_MISSING: Any = object()


class OrderFulfillmentSaga(BaseSaga[OrderData]):
    """
    Order fulfillment saga with 4 steps.

    Steps:
    1. Reserve inventory - Hold items for customer
    2. Process payment - Charge customer
    3. Create shipment - Dispatch order
    4. Send confirmation - Notify customer
    """

    saga_type = "order_fulfillment"
    timeout_minutes = 30

    def __init__(
        self,
        order_data: OrderData,
        inventory_service: Any = _MISSING,
        payment_service: Any = _MISSING,
        shipping_service: Any = _MISSING,
        notification_service: Any = _MISSING,
        *,
        inventory: Any = _MISSING,
        payment: Any = _MISSING,
        shipping: Any = _MISSING,
        notification: Any = _MISSING,
    ) -> None:
        self.inventory = _one("inventory", inventory_service, inventory)
        self.payment = _one("payment", payment_service, payment)
        self.shipping = _one("shipping", shipping_service, shipping)
        self.notification = _one("notification", notification_service, notification)
        super().__init__(order_data)

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            SagaStep(
                name="reserve_inventory",
                action=self._reserve_inventory,
                compensation=self._release_inventory,
                timeout_seconds=30,
            ),
            SagaStep(
                name="process_payment",
                action=self._process_payment,
                compensation=self._refund_payment,
                timeout_seconds=60,
            ),
            SagaStep(
                name="create_shipment",
                action=self._create_shipment,
                compensation=self._cancel_shipment,
                timeout_seconds=30,
            ),
            SagaStep(
                name="send_confirmation",
                action=self._send_confirmation,
                compensation=self._send_cancellation,
                timeout_seconds=15,
            ),
        ]

    # Step Actions

    async def _reserve_inventory(self, data: OrderData) -> dict[str, Any]:
        """Reserve inventory for order items."""
        reservation = await self.inventory.reserve(
            order_id=data.order_id,
            items=[{"sku": item.sku, "quantity": item.quantity} for item in data.items],
            expires_in_minutes=30,
            **_fencing(),
        )
        return {"reservation_id": reservation.id}

    async def _process_payment(self, data: OrderData) -> dict[str, Any]:
        """Process customer payment."""
        payment = await self.payment.charge(
            customer_id=data.customer_id,
            amount=data.total,
            currency=data.currency,
            order_id=data.order_id,
            idempotency_key=f"order-{data.order_id}-payment",
            **_fencing(),
        )
        return {"payment_id": payment.id}

    async def _create_shipment(self, data: OrderData) -> dict[str, Any]:
        """Create shipment for order."""
        assert data.shipping_address is not None
        shipment = await self.shipping.create(
            order_id=data.order_id,
            address=data.shipping_address.__dict__,
            items=[
                {"sku": item.sku, "quantity": item.quantity, "name": item.name}
                for item in data.items
            ],
            **_fencing(),
        )
        return {
            "shipment_id": shipment.id,
            "tracking_number": shipment.tracking_number,
        }

    async def _send_confirmation(self, data: OrderData) -> dict[str, Any]:
        """Send order confirmation to customer."""
        await self.notification.send_email(
            user_id=data.customer_id,
            template="order_confirmed",
            data={
                "order_id": str(data.order_id),
                "items": [item.name for item in data.items],
                "total": str(data.total),
                "tracking_number": data.tracking_number,
            },
            **_fencing(),
        )
        return {}

    # Compensation Actions

    async def _release_inventory(self, data: OrderData) -> None:
        """Release reserved inventory."""
        if data.reservation_id:
            await self.inventory.release(
                reservation_id=data.reservation_id,
                reason="saga_compensation",
                **_fencing(),
            )
        else:
            # The reservation's reply may have been lost: release by order.
            await self.inventory.release_order(
                order_id=data.order_id,
                reason="saga_compensation",
                **_fencing(),
            )

    async def _refund_payment(self, data: OrderData) -> None:
        """Refund customer payment."""
        payment_id = data.payment_id
        if payment_id is None:
            # The charge's reply may have been lost after the money moved.
            payment = await self.payment.find_by_idempotency_key(
                f"order-{data.order_id}-payment", order_id=data.order_id, **_fencing()
            )
            payment_id = payment.id if payment is not None else None
        if payment_id:
            await self.payment.refund(
                payment_id=payment_id,
                reason="order_cancelled",
                idempotency_key=f"order-{data.order_id}-refund",
                **_fencing(),
            )

    async def _cancel_shipment(self, data: OrderData) -> None:
        """Cancel shipment if possible."""
        shipment_id = data.shipment_id
        if shipment_id is None:
            shipment = await self.shipping.find_by_order(data.order_id, **_fencing())
            shipment_id = shipment.id if shipment is not None else None
        if shipment_id:
            try:
                await self.shipping.cancel(
                    shipment_id=shipment_id,
                    reason="order_cancelled",
                    **_fencing(),
                )
            except ShipmentAlreadyDispatchedError:
                # Shipment already dispatched, initiate return
                await self.shipping.initiate_return(
                    shipment_id=shipment_id,
                    **_fencing(),
                )

    async def _send_cancellation(self, data: OrderData) -> None:
        """Send cancellation notification."""
        await self.notification.send_email(
            user_id=data.customer_id,
            template="order_cancelled",
            data={
                "order_id": str(data.order_id),
                "reason": "We were unable to process your order",
            },
            **_fencing(),
        )


def _fencing() -> dict[str, Any]:
    """The running attempt's fencing token and saga id, as the services' keywords.

    Empty outside a saga step (a step's method called directly, as the benchmark's DBOS
    workflow does): the call is then made as the specification makes it, and not fenced."""
    try:
        run = current_step()
    except LookupError:
        return {}
    return {"fencing_token": run.fencing_token, "saga_id": run.saga_id}


def _one(name: str, long_form: Any, short_form: Any) -> Any:
    if long_form is _MISSING and short_form is _MISSING:
        raise TypeError(f"OrderFulfillmentSaga needs {name}_service= (or {name}=)")
    if long_form is not _MISSING and short_form is not _MISSING:
        raise TypeError(f"pass either {name}_service= or {name}=, not both")
    return short_form if long_form is _MISSING else long_form


__all__ = ["OrderFulfillmentSaga"]
