"""The spec's HTTP endpoints, served by FastAPI over a `Shop`.

    app = create_app(Shop("orders.db"))  # then uvicorn, or: python -m order_fulfillment --serve

- ``POST /api/v1/orders`` places an order and runs its saga to the end: ``200`` with the
  tracking number, or the spec's ``400`` body when the saga compensated. Prices come from the
  catalog, never from the client; an ``Idempotency-Key`` header makes the request safe to retry.
- ``GET /api/v1/orders/{order_id}/status`` reports the saga, as in the spec.
- ``GET /healthz`` answers once the database does; ``/docs`` is the OpenAPI UI.

Every other client error is an RFC 9457 ``application/problem+json`` document naming the
offending field, and a refused request writes nothing.

Idempotency keys: the first request with a key claims it, in one transaction, together with
the id its order will have, before the saga starts; the saga's id is derived from that order
id. So one key never makes two orders, even across a crash: a retry after the process died
mid-order finishes that same order. The completed response is stored and replayed to later
requests with the same key and body. Keys are kept forever in this example (a real service
would publish an expiry, e.g. 24 h, and purge older keys). Whether a key is still being
processed is known to the process that runs it: serve with a single worker process.
"""

import argparse
import hashlib
import json
import logging
import random
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from typing import Annotated, Any, Literal
from uuid import UUID, uuid4, uuid5

import anyio
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from saga_orchestrator import SagaResult, SagaStatus, StepStatus

from .db import ShopDatabase, utcnow
from .domain import OrderData, ShippingAddress
from .shop import MAX_LINES, MAX_QUANTITY, InvalidOrderError, OrderLine, Shop

__all__ = ["create_app", "request_fingerprint", "saga_id_for", "serve"]

logger = logging.getLogger("order_fulfillment.api")

MAX_BODY_BYTES = 64 * 1024
"""Request bodies above this are refused with 413 before anything parses them."""
MAX_KEY_LENGTH = 255
"""Longest accepted Idempotency-Key (Stripe's limit)."""
PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE = "urn:order-fulfillment:problem:"
"""Prefix of the ``type`` of this API's problem documents; generic HTTP errors use about:blank."""

_KEY_PATTERN = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_MONEY_PATTERN = re.compile(r"^-?\d{1,15}(?:\.\d{1,15})?$")
_JSON_KINDS = {bool: "boolean", int: "number", float: "number", list: "array", dict: "object"}
_SAGA_NAMESPACE = uuid5(uuid5(UUID(int=0), "saga-orchestrator"), "order_fulfillment")


# ---------------------------------------------------------------------------- request models


def _money(value: object) -> object:
    """A price as a decimal string ("29.99"): JSON numbers are lossy, NaN and exponents absurd."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise PydanticCustomError(
            "money_string",
            'money must be a decimal string such as "29.99", not a JSON {kind}',
            {"kind": _JSON_KINDS.get(type(value), type(value).__name__)},
        )
    if not _MONEY_PATTERN.match(value):
        raise PydanticCustomError(
            "money_format",
            'money must be a finite decimal string such as "29.99" (no exponent, NaN or '
            "Infinity; at most 15 digits on either side of the point)",
        )
    return Decimal(value)


Money = Annotated[
    Decimal | None,
    BeforeValidator(_money),
    WithJsonSchema({"type": "string", "pattern": _MONEY_PATTERN.pattern, "examples": ["29.99"]}),
]
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class _Strict(BaseModel):
    """Unknown fields are refused and nothing is coerced (no `true` for 1, no "2" for 2)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OrderItemRequest(_Strict):
    sku: Annotated[str, StringConstraints(min_length=1, max_length=64)] = Field(
        examples=["SKU-001"]
    )
    quantity: Annotated[StrictInt, Field(ge=1, le=MAX_QUANTITY, examples=[2])]
    unit_price: Money = Field(
        default=None,
        description="Optional: the price the client saw, as a string. Refused unless it is "
        "the catalog price; the order is always priced from the catalog.",
    )
    name: Text | None = Field(default=None, description="Optional; must match the catalog.")


class ShippingAddressRequest(_Strict):
    street: Text = Field(examples=["123 Main St"])
    city: Text = Field(examples=["Anytown"])
    state: Text = Field(examples=["CA"])
    postal_code: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20)
    ] = Field(examples=["12345"])
    country: Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")] = Field(
        description="ISO 3166-1 alpha-2 code, upper case.", examples=["US"]
    )


class CreateOrderRequest(_Strict):
    customer_id: Annotated[UUID, Strict(False)]  # a JSON string is the only way to send one
    items: Annotated[list[OrderItemRequest], Field(min_length=1, max_length=MAX_LINES)]
    shipping_address: ShippingAddressRequest


# ---------------------------------------------------------------------------- response models


class OrderResponse(BaseModel):
    order_id: UUID
    status: str
    tracking_number: str | None = None


class OrderFailureDetail(BaseModel):
    error: str
    reason: str | None
    order_id: UUID


class OrderFailure(BaseModel):
    """The spec's body for an order whose saga did not complete (it was compensated)."""

    detail: OrderFailureDetail


class OrderStatusResponse(BaseModel):
    order_id: UUID
    saga_status: str
    current_step: str | None
    completed_steps: list[str]
    error: str | None


class Health(BaseModel):
    status: Literal["ok"]


class FieldError(BaseModel):
    field: str
    """Dotted path of the offending field, such as ``items[0].quantity``."""
    location: str
    """Where it was: ``body``, ``path``, ``query`` or ``header``."""
    message: str
    type: str


class Problem(BaseModel):
    """An RFC 9457 problem document."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


# ---------------------------------------------------------------------------- problems


class ProblemResponse(JSONResponse):
    media_type = PROBLEM_JSON


class ApiProblem(Exception):
    """Raised by handlers to answer with a problem document."""

    def __init__(
        self,
        status: int,
        kind: str,
        detail: str,
        *,
        title: str | None = None,
        errors: Sequence[FieldError] = (),
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.kind = kind
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.errors = list(errors)
        self.headers = headers


def problem(
    status: int,
    detail: str,
    *,
    kind: str | None = None,
    title: str | None = None,
    errors: Sequence[FieldError] = (),
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> ProblemResponse:
    """A problem response; ``kind`` names this API's problem type (else about:blank)."""
    body = Problem(
        type=f"{PROBLEM_TYPE}{kind}" if kind else "about:blank",
        title=title or HTTPStatus(status).phrase,
        status=status,
        detail=detail,
        instance=instance,
        errors=list(errors) or None,
    )
    return ProblemResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def field_path(location: Sequence[str | int]) -> str:
    """``("items", 0, "quantity")`` → ``items[0].quantity``."""
    text = ""
    for part in location:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _validation_problem(errors: Sequence[FieldError]) -> ProblemResponse:
    first = errors[0]
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return problem(
        422,
        f"{first.field}: {first.message}{more}",
        kind="validation-error",
        title="Invalid request",
        errors=errors,
    )


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors: list[FieldError] = []
    for error in exc.errors():
        where, *path = error.get("loc", ("body",)) or ("body",)
        if error.get("type") == "json_invalid":
            position = path[0] if path else "?"
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            return problem(
                400,
                f"the body is not valid JSON: {reason} at character {position}",
                kind="malformed-json",
                title="Malformed JSON",
                errors=[FieldError(field="body", location="body", message=reason, type="json")],
            )
        errors.append(
            FieldError(
                field=field_path(path) or str(where),
                location=str(where),
                message=str(error.get("msg", "invalid")),
                type=str(error.get("type", "invalid")),
            )
        )
    return _validation_problem(errors)


async def _on_invalid_order(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InvalidOrderError)
    return _validation_problem(
        [FieldError(field=exc.field, location="body", message=exc.message, type="invalid_order")]
    )


async def _on_api_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiProblem)
    return problem(
        exc.status,
        exc.detail,
        kind=exc.kind,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    return problem(exc.status_code, detail, headers=exc.headers)


async def _on_unexpected_error(request: Request, exc: Exception) -> Response:
    instance = f"urn:uuid:{uuid4()}"
    logger.exception("api.error %s %s: %s", request.method, request.url.path, instance)
    return problem(
        500,
        "The server failed to handle the request; quote the instance id when reporting it.",
        instance=instance,
    )


class BodySizeLimit:
    """Refuse bodies over ``max_bytes`` with 413 before anything parses them.

    A declared Content-Length is checked first; a chunked body is counted while it is read.
    The body is buffered (at most ``max_bytes``) and handed on to the application.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: there is no one to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            f"the request body exceeds {self.max_bytes} bytes",
            kind="body-too-large",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


# ---------------------------------------------------------------------------- idempotency


def request_fingerprint(body: CreateOrderRequest) -> str:
    """SHA-256 of the request's canonical JSON: key order and spacing do not count."""
    canonical = json.dumps(
        {"endpoint": "POST /api/v1/orders", "body": body.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def saga_id_for(order_id: UUID) -> UUID:
    """The saga id of an order: derived from it, so an order can never get a second saga."""
    return uuid5(_SAGA_NAMESPACE, f"order-{order_id}")


@dataclass(frozen=True, slots=True)
class Claim:
    """An ``api_requests`` row: a key, the request it belongs to and, once done, its answer."""

    key: str
    fingerprint: str
    order_id: UUID
    status_code: int | None
    response: str | None


class IdempotencyKeys:
    """The ``Idempotency-Key`` records, in the shop's database, and the keys in flight here."""

    def __init__(self, db: ShopDatabase) -> None:
        self.db = db
        self._in_flight: dict[str, str] = {}

    @contextmanager
    def processing(self, key: str, fingerprint: str) -> Iterator[None]:
        """Mark ``key`` as being processed by this process; 409 (or 422) if it already is."""
        running = self._in_flight.get(key)
        if running is not None:
            if running != fingerprint:
                raise _key_reused(key)
            raise ApiProblem(
                409,
                "idempotency-key-in-use",
                f"a request with Idempotency-Key {key!r} is still being processed; retry later",
                title="Request in progress",
                headers={"Retry-After": "1"},
            )
        self._in_flight[key] = fingerprint
        try:
            yield
        finally:
            del self._in_flight[key]

    async def find(self, key: str) -> Claim | None:
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT idempotency_key, fingerprint, order_id, status_code, response"
                " FROM api_requests WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
        )
        return None if row is None else Claim(row[0], row[1], UUID(row[2]), row[3], row[4])

    async def claim(self, key: str, fingerprint: str, order_id: UUID) -> bool:
        """Claim ``key`` for ``order_id``; False if another request holds it already."""
        now = utcnow().isoformat()

        def op(c: sqlite3.Connection) -> bool:
            inserted = c.execute(
                "INSERT INTO api_requests (idempotency_key, fingerprint, order_id, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                (key, fingerprint, str(order_id), now),
            ).rowcount
            return bool(inserted)

        claimed: bool = await self.db.transaction(op)
        return claimed

    async def store(self, key: str, response: Response) -> None:
        """Record the answer, to be replayed to every later request with this key."""
        body = bytes(response.body).decode("utf-8")
        await self.db.transaction(
            lambda c: c.execute(
                "UPDATE api_requests SET status_code = ?, response = ? WHERE idempotency_key = ?",
                (response.status_code, body, key),
            )
        )

    async def release(self, key: str) -> None:
        """Forget an unanswered claim whose order never started (so nothing was done)."""
        await self.db.transaction(
            lambda c: c.execute(
                "DELETE FROM api_requests WHERE idempotency_key = ? AND response IS NULL", (key,)
            )
        )


def _key_reused(key: str) -> ApiProblem:
    return ApiProblem(
        422,
        "idempotency-key-reused",
        f"Idempotency-Key {key!r} was already used with a different request body",
        title="Idempotency-Key reused",
    )


def _checked_key(key: str | None) -> str | None:
    if key is None:
        return None
    if len(key) > MAX_KEY_LENGTH or not _KEY_PATTERN.fullmatch(key):
        raise ApiProblem(
            400,
            "invalid-idempotency-key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            errors=[
                FieldError(
                    field="Idempotency-Key",
                    location="header",
                    message="1 to 255 printable ASCII characters",
                    type="idempotency_key",
                )
            ],
        )
    return key


# ---------------------------------------------------------------------------- dependencies


def get_shop(request: Request) -> Shop:
    """The shop the application was created with (lifespan state)."""
    shop: Shop = request.state.shop
    return shop


def get_idempotency_keys(request: Request) -> IdempotencyKeys:
    keys: IdempotencyKeys = request.state.idempotency_keys
    return keys


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


ShopDep = Annotated[Shop, Depends(get_shop)]
KeysDep = Annotated[IdempotencyKeys, Depends(get_idempotency_keys)]
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Optional, 1-255 printable ASCII characters. The same key with the same "
        "body replays the first answer; with another body it is refused (422); while the "
        "first is still running, 409.",
    ),
]


def _problem_doc(description: str) -> dict[str, Any]:
    """An OpenAPI response documented as a problem document."""
    schema = {"$ref": "#/components/schemas/Problem"}
    return {"description": description, "content": {PROBLEM_JSON: {"schema": schema}}}


# ---------------------------------------------------------------------------- orders


def _order_lines(body: CreateOrderRequest) -> list[OrderLine]:
    return [OrderLine(i.sku, i.quantity, i.unit_price, i.name) for i in body.items]


def _address(body: CreateOrderRequest) -> ShippingAddress:
    return ShippingAddress(**body.shipping_address.model_dump())


async def _run_saga(shop: Shop, order: OrderData) -> SagaResult[OrderData]:
    saga = shop.saga(order)
    saga.context.saga_id = saga_id_for(order.order_id)
    # Shielded: a client that hangs up must not leave its order half-done until a restart.
    with anyio.CancelScope(shield=True):
        result = await shop.orchestrator.execute(saga)
    return result


def _answer(result: SagaResult[Any]) -> JSONResponse:
    data: OrderData = result.data
    if result.status is SagaStatus.COMPLETED:
        body: BaseModel = OrderResponse(
            order_id=data.order_id, status="completed", tracking_number=data.tracking_number
        )
        return JSONResponse(body.model_dump(mode="json"))
    body = OrderFailure(
        detail=OrderFailureDetail(
            error="Order processing failed", reason=result.error, order_id=data.order_id
        )
    )
    return JSONResponse(body.model_dump(mode="json"), status_code=400)


async def _finish_claimed(
    shop: Shop, keys: IdempotencyKeys, claim: Claim, body: CreateOrderRequest
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
    return _answer(await _run_saga(shop, order))


def _replay(claim: Claim | None, fingerprint: str) -> Response | None:
    """The stored answer for this key, if there is one; 422 if the key was another request's."""
    if claim is None:
        return None
    if claim.fingerprint != fingerprint:
        raise _key_reused(claim.key)
    if claim.status_code is None or claim.response is None:
        return None  # claimed, not answered yet
    return Response(
        claim.response,
        status_code=claim.status_code,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


def _orders_router() -> APIRouter:
    router = APIRouter(prefix="/api/v1/orders", tags=["orders"])

    @router.post(
        "",
        response_model=OrderResponse,
        responses={
            400: {
                **_problem_doc(
                    "The saga was compensated (application/json, as in the spec); "
                    "or malformed JSON or Idempotency-Key (problem)"
                ),
                "model": OrderFailure,
            },
            409: _problem_doc("A request with this Idempotency-Key is still in progress"),
            413: _problem_doc("Body over 64 KiB"),
            415: _problem_doc("Body not sent as JSON"),
            422: _problem_doc("Invalid order, or Idempotency-Key reused with another body"),
        },
        dependencies=[Depends(require_json)],
    )
    async def create_order(
        request: CreateOrderRequest,
        shop: ShopDep,
        keys: KeysDep,
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response:
        """Create a new order and execute fulfillment saga.

        Totals come from the catalog. A 400 means the saga ran and was compensated (nothing
        charged, nothing held); its body names the order, whose status stays readable.
        """
        key = _checked_key(idempotency_key)
        if key is None:
            order = await shop.price_order(
                request.customer_id, _order_lines(request), _address(request)
            )
            return _answer(await _run_saga(shop, order))

        fingerprint = request_fingerprint(request)
        if replay := _replay(await keys.find(key), fingerprint):
            return replay
        with keys.processing(key, fingerprint):
            claim = await keys.find(key)  # again: it may have been answered meanwhile
            if replay := _replay(claim, fingerprint):
                return replay
            if claim is not None:
                response = await _finish_claimed(shop, keys, claim, request)
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
                response = _answer(await _run_saga(shop, order))
            with anyio.CancelScope(shield=True):
                await keys.store(key, response)
            return response

    @router.get(
        "/{order_id}/status",
        response_model=OrderStatusResponse,
        responses={404: _problem_doc("No such order"), 422: _problem_doc("Malformed order id")},
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


def _health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, responses={503: _problem_doc("Unhealthy")})
    async def healthz(shop: ShopDep) -> Health | Response:
        """Whether the service and saga databases answer."""
        try:
            await shop.db.read(lambda c: c.execute("SELECT 1").fetchone())
            await shop.repository.get(UUID(int=0))
        except Exception:
            logger.exception("api.healthz: the database does not answer")
            return problem(503, "the database does not answer", kind="unhealthy")
        return Health(status="ok")

    return router


# ---------------------------------------------------------------------------- the app


def create_app(shop: Shop) -> FastAPI:
    """The HTTP API over ``shop``, which the app opens (and recovers) at start-up."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with shop:
            recovered = await shop.recover()
            if recovered:
                logger.info("api.recovered %d unfinished orders", len(recovered))
            yield {"shop": shop, "idempotency_keys": IdempotencyKeys(shop.db)}

    app = FastAPI(
        title="Order fulfilment",
        version="1.0.0",
        summary="The order saga of saga-orchestrator's worked example.",
        lifespan=lifespan,
    )
    app.include_router(_orders_router())
    app.include_router(_health_router())
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(InvalidOrderError, _on_invalid_order)
    app.add_exception_handler(ApiProblem, _on_api_problem)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected_error)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            # The problem responses refer to Problem by $ref; publish it among the schemas.
            defined = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defined.pop("$defs", {}))
            schemas["Problem"] = defined
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


# ---------------------------------------------------------------------------- serving


class _Server(uvicorn.Server):
    """A uvicorn server that calls ``on_started(port)`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[int], None]) -> None:
        super().__init__(config)
        self.on_started = on_started

    async def startup(self, sockets: list[Any] | None = None) -> None:
        await super().startup(sockets)
        if not self.should_exit:
            port: int = self.servers[0].sockets[0].getsockname()[1]
            self.on_started(port)


def _url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def demo_curl(base_url: str, customer_id: UUID) -> str:
    """A curl command that places a real order on the demo catalog, ready to paste."""
    body = {
        "customer_id": str(customer_id),
        "items": [{"sku": "SKU-001", "quantity": 2}],
        "shipping_address": {
            "street": "123 Main St",
            "city": "Anytown",
            "state": "CA",
            "postal_code": "12345",
            "country": "US",
        },
    }
    return (
        f"curl -sS -X POST {base_url}/api/v1/orders"
        " -H 'Content-Type: application/json'"
        f" -H 'Idempotency-Key: demo-{uuid4()}'"
        f" -d '{json.dumps(body)}'"
    )


def serve(args: argparse.Namespace, shop: Shop) -> int:
    """Seed the demo data, print a curl line and the docs URL, then serve until interrupted.

    ``args`` needs ``host``, ``port`` (0 picks a free one), ``customers``, ``stock``, ``seed``.
    """

    async def seed() -> UUID:
        async with shop:
            await shop.seed_demo(
                customers=args.customers, stock=args.stock, rng=random.Random(args.seed)
            )
            # The line must work verbatim: pick a customer who can pay for it (or make one).
            solvent = await shop.customers(min_balance=Decimal("1000"))
            if solvent:
                return solvent[0]
            customer_id = uuid4()
            await shop.payments.open_account(customer_id, Decimal("5000.00"))
            return customer_id

    customer_id = anyio.run(seed)
    faults = shop.faults.config

    def on_started(port: int) -> None:
        base = f"http://{_url_host(args.host)}:{port}"
        print(f"order-fulfilment API on {base} (SQLite file {shop.db_path})")
        if faults.transient_rate or faults.reply_lost_rate or faults.permanent_rate:
            print(
                f"faults injected: transient {faults.transient_rate:g}, reply lost "
                f"{faults.reply_lost_rate:g}, permanent {faults.permanent_rate:g} "
                "(some orders fail with 400 on purpose)"
            )
        print("place an order:")
        print(f"  {demo_curl(base, customer_id)}")
        print(f"OpenAPI docs: {base}/docs")
        sys.stdout.flush()

    config = uvicorn.Config(create_app(shop), host=args.host, port=args.port, log_level="info")
    server = _Server(config, on_started)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C once it has shut down cleanly
        pass
    except SystemExit:  # uvicorn exits when it cannot start (port taken, ...), having said why
        return 1
    return 0 if server.started else 1
