"""The specification's saga class, verbatim but for its import lines.

(The spec's `OrderData` defaults `customer_id`/`shipping_address` to None; we import the
example's domain, which is the spec's with those fields typed as optional.)
"""

from typing import Any

from order_fulfillment.domain import OrderData
from order_fulfillment.errors import ShipmentAlreadyDispatchedError
from saga_orchestrator import BaseSaga, SagaOrchestrator, SagaStep  # noqa: F401


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
        inventory_service,
        payment_service,
        shipping_service,
        notification_service,
    ):
        self.inventory = inventory_service
        self.payment = payment_service
        self.shipping = shipping_service
        self.notification = notification_service
        super().__init__(order_data)

    def define_steps(self) -> list[SagaStep]:
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
            items=[
                {"sku": item.sku, "quantity": item.quantity}
                for item in data.items
            ],
            expires_in_minutes=30,
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
        )
        return {"payment_id": payment.id}

    async def _create_shipment(self, data: OrderData) -> dict[str, Any]:
        """Create shipment for order."""
        shipment = await self.shipping.create(
            order_id=data.order_id,
            address=data.shipping_address.__dict__,
            items=[
                {"sku": item.sku, "quantity": item.quantity, "name": item.name}
                for item in data.items
            ],
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
        )
        return {}

    # Compensation Actions

    async def _release_inventory(self, data: OrderData) -> None:
        """Release reserved inventory."""
        if data.reservation_id:
            await self.inventory.release(
                reservation_id=data.reservation_id,
                reason="saga_compensation",
            )

    async def _refund_payment(self, data: OrderData) -> None:
        """Refund customer payment."""
        if data.payment_id:
            await self.payment.refund(
                payment_id=data.payment_id,
                reason="order_cancelled",
                idempotency_key=f"order-{data.order_id}-refund",
            )

    async def _cancel_shipment(self, data: OrderData) -> None:
        """Cancel shipment if possible."""
        if data.shipment_id:
            try:
                await self.shipping.cancel(
                    shipment_id=data.shipment_id,
                    reason="order_cancelled",
                )
            except ShipmentAlreadyDispatchedError:
                # Shipment already dispatched, initiate return
                await self.shipping.initiate_return(
                    shipment_id=data.shipment_id,
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
        )
