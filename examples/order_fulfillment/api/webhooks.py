"""``POST /api/v1/webhooks/payments``: the payment provider's capture notices.

The provider signs each body with the shared secret (``X-Signature: sha256=<hex>``, an
HMAC-SHA256 of the raw body). The signature is checked first, over the bytes received: a
missing or wrong one is a ``401`` problem and nothing is delivered. Then the body is parsed
(``400`` if it is not JSON, ``422`` naming the bad fields) and delivered to the order's saga
(`PaymentWebhooks.receive`): ``200`` with what the delivery did, ``404`` for an unknown order,
``409`` for an order that waits for no capture (placed without ``?payment=async``).
"""

from typing import Annotated, Literal
from uuid import UUID

import anyio
from fastapi import APIRouter, Header, Request
from pydantic import BaseModel, Field

from saga_orchestrator.errors import InvalidEventError, SagaNotFoundError

from ..webhooks import SIGNATURE_HEADER, InvalidWebhookError, WebhookSignatureError
from .dependencies import ShopDep
from .models import FieldError
from .problems import ApiProblem, problem_doc


class WebhookAnswer(BaseModel):
    """What the shop did with a capture notice."""

    event_id: str
    order_id: UUID
    status: Literal["consumed", "stored", "duplicate", "ignored"] = Field(
        description="consumed: the order's saga took it (and went on, or compensated if the "
        "capture failed); stored: kept for the saga, which takes it when it reaches its wait; "
        "duplicate: this event id came before, nothing changed; ignored: the order no longer "
        "waits for it (finished or compensated, its wait timed out), nothing changed."
    )
    saga_status: str = Field(description="The order saga's status after the delivery.")


SignatureHeader = Annotated[
    str | None,
    Header(
        alias=SIGNATURE_HEADER,
        description="sha256=<hex>: the HMAC-SHA256 of the raw body, keyed with the secret "
        "shared with the provider.",
    ),
]


def webhooks_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/webhooks", tags=["webhooks"])

    @router.post(
        "/payments",
        response_model=WebhookAnswer,
        responses={
            400: problem_doc("The body is not JSON"),
            401: problem_doc("Missing or wrong X-Signature: nothing was delivered"),
            404: problem_doc("No such order"),
            409: problem_doc("The order waits for no capture (not paid asynchronously)"),
            413: problem_doc("Body over 64 KiB"),
            422: problem_doc("The body is not a capture notice"),
        },
    )
    async def payment_webhook(
        request: Request, shop: ShopDep, x_signature: SignatureHeader = None
    ) -> WebhookAnswer:
        """Receive the payment provider's notice that it captured an order's payment (or
        could not): deliver it to the order's saga, once per event id."""
        body = await request.body()
        try:
            # Shielded: a provider that hangs up must not leave the saga half-way.
            with anyio.CancelScope(shield=True):
                notice, delivery = await shop.webhooks.receive(body, x_signature)
        except WebhookSignatureError as exc:
            raise ApiProblem(
                401,
                "bad-signature",
                str(exc),
                title="Bad signature",
                headers={"WWW-Authenticate": f'HMAC-SHA256 header="{SIGNATURE_HEADER}"'},
            ) from None
        except InvalidWebhookError as exc:
            if exc.malformed:
                raise ApiProblem(
                    400,
                    "malformed-json",
                    exc.message,
                    title="Malformed JSON",
                    errors=[
                        FieldError(field="body", location="body", message=exc.message, type="json")
                    ],
                ) from None
            raise ApiProblem(
                422,
                "validation-error",
                exc.message,
                title="Invalid request",
                errors=[
                    FieldError(field=field, location="body", message=message, type=kind)
                    for field, message, kind in exc.errors
                ],
            ) from None
        except SagaNotFoundError as exc:
            order = (exc.correlation_id or "").removeprefix("order-")
            detail = f"no order {order}: nothing was delivered"
            raise ApiProblem(404, "unknown-order", detail, title="Unknown order") from None
        except InvalidEventError as exc:
            raise ApiProblem(
                409, "no-capture-awaited", str(exc), title="No capture awaited"
            ) from None
        return WebhookAnswer(
            event_id=notice.event_id,
            order_id=notice.order_id,
            status=delivery.status.value,
            saga_status=delivery.saga_status.value,
        )

    return router
