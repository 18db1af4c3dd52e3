"""The order saga with an asynchronous payment: authorise now, wait for the capture's webhook.

The specification's `OrderFulfillmentSaga` charges the card in one call. Many providers
answer a payment later instead: they authorise at once, capture on their own, and tell the
shop by webhook. This second saga keeps the specification's other steps exactly as they are
and puts, where ``process_payment`` was, an authorisation and a *wait step*:

1. ``reserve_inventory``: the specification's step;
2. ``authorize_payment``: the provider authorises the total (compensation: void the payment,
   or refund it if the provider captured it meanwhile);
3. ``confirm_capture``: wait for the event ``payment.captured`` (the provider's webhook,
   delivered by `webhooks.PaymentWebhooks`), at most ``capture_timeout_seconds``. Its
   ``accept`` checks the notice: the order's payment, status ``captured``, the order's exact
   total and currency. A ``failed`` capture, or a notice that does not match, raises: the
   step fails and the saga compensates. No notice in time: the step fails the same way, and a
   notice that comes later is ignored;
4. ``create_shipment`` and 5. ``send_confirmation``: the specification's steps.

The spec's saga is not changed: this one reuses its steps and compensations (it subclasses
it), and is registered under its own ``saga_type``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from saga_orchestrator import SagaStep
from saga_orchestrator.definitions import wait_for_event

from .domain import OrderData
from .saga import OrderFulfillmentSaga, _fencing
from .webhooks import CAPTURE_EVENT

CAPTURE_TIMEOUT_SECONDS = 600.0
"""How long an order waits for its capture's webhook by default (the demo waits 2 s)."""


class CaptureFailedError(Exception):
    """The provider says it could not capture the payment: the order is compensated."""


class CaptureMismatchError(Exception):
    """A capture notice that does not match the order (another payment, another amount or
    currency, an unknown status): the order is compensated, the capture refunded."""


def accept_capture(data: OrderData, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``accept`` of ``confirm_capture``: the notice must be the order's payment,
    captured, for exactly its total. Sets nothing on the data (``payment_id`` is set by
    ``authorize_payment``)."""
    if payload.get("payment_id") != data.payment_id:
        raise CaptureMismatchError(
            f"the notice is for payment {payload.get('payment_id')}, not the order's payment "
            f"{data.payment_id}"
        )
    status = payload.get("status")
    if status == "failed":
        raise CaptureFailedError(
            f"payment {data.payment_id} was not captured: {payload.get('reason') or 'no reason'}"
        )
    if status != "captured":
        raise CaptureMismatchError(f"capture status {status!r} is not 'captured' or 'failed'")
    amount, currency = payload.get("amount"), payload.get("currency")
    if amount != data.total or currency != data.currency:
        raise CaptureMismatchError(
            f"captured {amount} {currency}, but the order's total is {data.total} {data.currency}"
        )
    return {}


class AsyncPaymentOrderSaga(OrderFulfillmentSaga):
    """
    Order fulfillment saga with an asynchronous payment, 5 steps.

    Steps:
    1. Reserve inventory - Hold items for customer
    2. Authorize payment - The provider authorises the total
    3. Confirm capture - Wait for the provider's webhook (payment.captured)
    4. Create shipment - Dispatch order
    5. Send confirmation - Notify customer

    ``payment_service`` (or ``payment=``) is an `AsyncPaymentProvider`.
    """

    saga_type = "order_fulfillment_async_payment"

    def __init__(
        self,
        order_data: OrderData,
        *services: Any,
        capture_timeout_seconds: float = CAPTURE_TIMEOUT_SECONDS,
        **named_services: Any,
    ) -> None:
        self.capture_timeout_seconds = capture_timeout_seconds
        super().__init__(order_data, *services, **named_services)

    def define_steps(self) -> list[SagaStep[OrderData]]:
        spec = {step.name: step for step in super().define_steps()}
        return [
            spec["reserve_inventory"],
            SagaStep(
                name="authorize_payment",
                action=self._authorize_payment,
                compensation=self._void_payment,
                timeout_seconds=60,
            ),
            wait_for_event(
                "confirm_capture",
                CAPTURE_EVENT,
                timeout_seconds=self.capture_timeout_seconds,
                accept=accept_capture,
            ),
            spec["create_shipment"],
            spec["send_confirmation"],
        ]

    async def _authorize_payment(self, data: OrderData) -> dict[str, Any]:
        """Have the provider authorise the total; the capture is told later, by webhook."""
        payment = await self.payment.authorize(
            customer_id=data.customer_id,
            amount=data.total,
            currency=data.currency,
            order_id=data.order_id,
            idempotency_key=f"order-{data.order_id}-authorization",
            **_fencing(),
        )
        return {"payment_id": payment.id}

    async def _void_payment(self, data: OrderData) -> None:
        """Void the payment, or refund it if the provider captured it already."""
        payment_id = data.payment_id
        if payment_id is None:
            # The authorisation's reply may have been lost after the provider made it.
            payment = await self.payment.find_by_idempotency_key(
                f"order-{data.order_id}-authorization", order_id=data.order_id, **_fencing()
            )
            payment_id = payment.id if payment is not None else None
        if payment_id:
            await self.payment.void_or_refund(
                payment_id=payment_id, reason="order_cancelled", **_fencing()
            )


__all__ = [
    "CAPTURE_TIMEOUT_SECONDS",
    "AsyncPaymentOrderSaga",
    "CaptureFailedError",
    "CaptureMismatchError",
    "accept_capture",
]
