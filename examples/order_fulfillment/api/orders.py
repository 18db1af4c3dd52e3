"""``/api/v1/orders``: place an order and run its saga to the end; read an order's status.

Prices come from the catalog, never from the client. A ``200`` carries the tracking number; a
``400`` with the spec's body means the saga ran and was compensated. An ``Idempotency-Key``
header makes placing an order safe to retry (see `.idempotency`). ``?payment=async`` runs the
order's saga with an asynchronous payment instead: ``202`` once it waits for the capture's
webhook (``POST /api/v1/webhooks/payments``, see `.webhooks`).
"""

from typing import Annotated, Any, Literal
from uuid import UUID

import anyio
from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from saga_orchestrator import SagaResult, SagaStatus, StepStatus

from ..domain import OrderData, ShippingAddress
from ..shop import InvalidOrderError, OrderLine, PaymentFlow, Shop
from .dependencies import KeysDep, ShopDep
from .idempotency import (
    Claim,
    IdempotencyKeyHeader,
    IdempotencyKeys,
    checked_key,
    replayed,
    request_fingerprint,
    saga_id_for,
)
from .models import (
    CreateOrderRequest,
    OrderFailure,
    OrderFailureDetail,
    OrderResponse,
    OrderStatusResponse,
)
from .problems import ApiProblem, problem_doc


def require_json(
    content_type: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> None:
    """Refuse a body that does not say it is JSON (415), rather than guess."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise ApiProblem(
            415,
            "unsupported-media-type",
            "send the order as JSON, with Content-Type: application/json",
        )


def _order_lines(body: CreateOrderRequest) -> list[OrderLine]:
    return [OrderLine(i.sku, i.quantity, i.unit_price, i.name) for i in body.items]


def _address(body: CreateOrderRequest) -> ShippingAddress:
    return ShippingAddress(**body.shipping_address.model_dump())


PaymentQuery = Annotated[
    Literal["sync", "async"],
    Query(
        description="sync (default): the specification's saga charges the card and the "
        "answer waits for the end. async: the provider authorises now and captures later; the "
        "answer is a 202 once the saga waits for the capture's webhook."
    ),
]


async def _run_saga(
    shop: Shop, order: OrderData, payment: PaymentFlow = "sync"
) -> SagaResult[OrderData]:
    # Shielded: a client that hangs up must not leave its order half-done until a restart.
    with anyio.CancelScope(shield=True):
        result = await shop.place(order, saga_id=saga_id_for(order.order_id), payment=payment)
    return result


def _answer(result: SagaResult[Any]) -> JSONResponse:
    data: OrderData = result.data
    if result.status is SagaStatus.COMPLETED:
        body: BaseModel = OrderResponse(
            order_id=data.order_id, status="completed", tracking_number=data.tracking_number
        )
        return JSONResponse(body.model_dump(mode="json"))
    if result.status is SagaStatus.RUNNING:  # parked: it waits for the capture's webhook
        body = OrderResponse(order_id=data.order_id, status="awaiting_payment")
        return JSONResponse(body.model_dump(mode="json"), status_code=202)
    body = OrderFailure(
        detail=OrderFailureDetail(
            error="Order processing failed", reason=result.error, order_id=data.order_id
        )
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=400)


async def _finish_claimed(
    shop: Shop, keys: IdempotencyKeys, claim: Claim, body: CreateOrderRequest, payment: PaymentFlow
) -> JSONResponse:
    """Answer for a key whose first request stopped (its process died) before answering."""
    saga = await shop.repository.get_by_correlation_id(f"order-{claim.order_id}")
    if saga is not None:
        with anyio.CancelScope(shield=True):
            result = await shop.orchestrator.resume(saga.saga_id)
        return _answer(result)
    try:  # claimed, but the saga never started: start it now, as that same order
        order = await shop.price_order(
            body.customer_id, _order_lines(body), _address(body), order_id=claim.order_id
        )
    except InvalidOrderError:
        await keys.release(claim.key)
        raise
    return _answer(await _run_saga(shop, order, payment))


def orders_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/orders", tags=["orders"])

    @router.post(
        "",
        response_model=OrderResponse,
        responses={
            202: {
                "description": "payment=async: the order waits for its payment's capture "
                "(status awaiting_payment)",
                "model": OrderResponse,
            },
            400: {
                **problem_doc(
                    "The saga was compensated (application/json, as in the spec); "
                    "or malformed JSON or Idempotency-Key (problem)"
                ),
                "model": OrderFailure,
            },
            409: problem_doc("A request with this Idempotency-Key is still in progress"),
            413: problem_doc("Body over 64 KiB"),
            415: problem_doc("Body not sent as JSON"),
            422: problem_doc(
                "Invalid order or payment, or Idempotency-Key reused with another body"
            ),
        },
        dependencies=[Depends(require_json)],
    )
    async def create_order(
        request: CreateOrderRequest,
        shop: ShopDep,
        keys: KeysDep,
        idempotency_key: IdempotencyKeyHeader = None,
        payment: PaymentQuery = "sync",
    ) -> Response:
        """Create a new order and execute fulfillment saga.

        Totals come from the catalog. A 400 means the saga ran and was compensated (nothing
        charged, nothing held); its body names the order, whose status stays readable. With
        ``?payment=async``, a 202 means the order waits for its payment's capture.
        """
        key = checked_key(idempotency_key)
        if key is None:
            order = await shop.price_order(
                request.customer_id, _order_lines(request), _address(request)
            )
            return _answer(await _run_saga(shop, order, payment))

        fingerprint = request_fingerprint(request, payment=payment)
        if replay := replayed(await keys.find(key), fingerprint):
            return replay
        with keys.processing(key, fingerprint):
            claim = await keys.find(key)  # again: it may have been answered meanwhile
            if replay := replayed(claim, fingerprint):
                return replay
            if claim is not None:
                response = await _finish_claimed(shop, keys, claim, request, payment)
            else:
                # Validated and priced before the key is claimed: a refused order stores nothing.
                order = await shop.price_order(
                    request.customer_id, _order_lines(request), _address(request)
                )
                if not await keys.claim(key, fingerprint, order.order_id):
                    raise ApiProblem(
                        409,
                        "idempotency-key-in-use",
                        f"a request with Idempotency-Key {key!r} is being processed elsewhere",
                        title="Request in progress",
                        headers={"Retry-After": "1"},
                    )
                response = _answer(await _run_saga(shop, order, payment))
            with anyio.CancelScope(shield=True):
                await keys.store(key, response)
            return response

    @router.get(
        "/{order_id}/status",
        response_model=OrderStatusResponse,
        responses={404: problem_doc("No such order"), 422: problem_doc("Malformed order id")},
    )
    async def get_order_status(order_id: UUID, shop: ShopDep) -> OrderStatusResponse:
        """Get current order/saga status."""
        saga = await shop.repository.get_by_correlation_id(f"order-{order_id}")
        if not saga:
            raise HTTPException(status_code=404, detail="Order not found")
        return OrderStatusResponse(
            order_id=order_id,
            saga_status=saga.status.value,
            current_step=saga.steps[saga.current_step_index].name if saga.steps else None,
            completed_steps=[s.name for s in saga.steps if s.status == StepStatus.COMPLETED],
            error=saga.error,
        )

    return router
