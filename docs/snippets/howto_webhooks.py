"""A FastAPI service whose order saga waits for the payment provider's webhook.

Run it: python this_file.py (it needs FastAPI; the demo calls the app in process).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from decimal import Decimal
from importlib import import_module
from pathlib import Path
from typing import Annotated, Any
from uuid import UUID, uuid4

import anyio
import httpx
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from saga_orchestrator import (
    BaseSaga,
    DeliveryStatus,
    InvalidEventError,
    SagaOrchestrator,
    SagaStep,
    SQLiteSagaRepository,
    StepStatus,
    wait_for_event,
)
from saga_orchestrator.errors import SagaNotFoundError

logger = logging.getLogger("shop")


# --8<-- [start:saga]
@dataclass
class OrderData:
    order_id: UUID
    amount: Decimal
    payment_id: str | None = None


class OrderSaga(BaseSaga[OrderData]):
    saga_type = "order"

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            SagaStep("reserve_stock", self.reserve_stock, compensation=self.release_stock),
            wait_for_event(
                "await_payment",
                "payment.captured",
                timeout_seconds=30 * 60,
                accept=self.check_payment,
                compensation=self.refund,
            ),
            SagaStep("ship", self.ship),
        ]

    def check_payment(self, data: OrderData, payload: Mapping[str, Any]) -> dict[str, Any]:
        if payload["amount"] != data.amount:
            raise ValueError(f"captured {payload['amount']}, the order is {data.amount}")
        return {"payment_id": payload["payment_id"]}

    async def reserve_stock(self, data: OrderData) -> None: ...
    async def release_stock(self, data: OrderData) -> None: ...
    async def refund(self, data: OrderData) -> None: ...
    async def ship(self, data: OrderData) -> None: ...


# --8<-- [end:saga]


def get_orchestrator(request: Request) -> SagaOrchestrator:
    orchestrator: SagaOrchestrator = request.app.state.orchestrator
    return orchestrator


Orchestrator = Annotated[SagaOrchestrator, Depends(get_orchestrator)]


def problem(status: int, title: str, detail: str) -> JSONResponse:
    """An RFC 9457 problem document."""
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type="application/problem+json")


class NewOrder(BaseModel):
    amount: Decimal


orders = APIRouter()


@orders.post("/orders", status_code=201)
async def place_order(order: NewOrder, orchestrator: Orchestrator) -> dict[str, Any]:
    saga = OrderSaga(OrderData(uuid4(), order.amount))
    result = await orchestrator.execute(saga)  # returns `running` once parked at the wait
    current = next((s for s in result.steps if s.status is StepStatus.WAITING), None)
    return {
        "order_id": str(saga.context.data.order_id),
        "status": result.status,
        "waiting_for": current.waiting_for if current else None,
    }


# --8<-- [start:webhook]
class Capture(BaseModel):
    order_id: UUID
    payment_id: str
    amount: Decimal


class ProviderEvent(BaseModel):
    """What the payment provider posts: its event's id, type and object."""

    id: str
    type: str
    data: Capture


# Every answer in 2xx tells the provider to stop sending this event.
STATUS_CODES = {
    DeliveryStatus.CONSUMED: 200,  # the saga took it, and went on (or compensated)
    DeliveryStatus.STORED: 202,  # kept: the saga takes it when it gets to its wait
    DeliveryStatus.DUPLICATE: 200,  # had it already: the provider sent it again
    DeliveryStatus.IGNORED: 200,  # the saga is past waiting for it: nothing to do, ever
}


webhooks = APIRouter()


@webhooks.post("/webhooks/payments")
async def payment_webhook(request: Request, orchestrator: Orchestrator) -> JSONResponse:
    body = await request.body()  # the raw bytes: the signature is over them
    expected = hmac.new(request.app.state.secret, body, hashlib.sha256).hexdigest()
    given = request.headers.get("x-signature", "")
    if not hmac.compare_digest(given.encode(), f"sha256={expected}".encode()):
        return problem(401, "Invalid signature", "x-signature is not this body's HMAC")
    try:
        event = ProviderEvent.model_validate_json(body)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        return problem(400, "Malformed event", fields)
    try:
        delivery = await orchestrator.deliver_event(
            event.type,
            {"payment_id": event.data.payment_id, "amount": event.data.amount},
            # The provider's id, so that its retries are duplicates. Event ids are unique
            # across the store: a prefix keeps this provider's apart from other senders'.
            event_id=f"payments:{event.id}",
            correlation_id=f"order-{event.data.order_id}",
        )
    except SagaNotFoundError:
        return problem(404, "No such order", f"no order {event.data.order_id}")
    except InvalidEventError as exc:
        return problem(422, "Event not accepted", str(exc))
    if delivery.status is DeliveryStatus.IGNORED:
        logger.info("payment event %s ignored: the order is %s", event.id, delivery.saga_status)
    answer = {"status": delivery.status, "order": delivery.saga_status}
    return JSONResponse(answer, status_code=STATUS_CODES[delivery.status])


# --8<-- [end:webhook]


# --8<-- [start:lifespan]
async def wake_due_every(orchestrator: SagaOrchestrator, seconds: float) -> None:
    """The timer of a process without workers: timeouts, and events stored but not consumed."""
    while True:
        # A pass that has begun finishes, even at shutdown: it does not leave a step
        # interrupted half-way (which recover() would then run again).
        with anyio.CancelScope(shield=True):
            try:
                await orchestrator.wake_due()
            except Exception:
                logger.exception("wake_due failed; trying again in %s s", seconds)
        await anyio.sleep(seconds)


def create_app(database: str, secret: bytes, *, wake_every_seconds: float = 1.0) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with SQLiteSagaRepository(database) as repository:
            orchestrator = SagaOrchestrator(repository)
            orchestrator.register(OrderSaga.saga_type, OrderSaga)
            await orchestrator.recover()  # what a previous process left, parked sagas too
            app.state.orchestrator = orchestrator
            app.state.secret = secret
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(wake_due_every, orchestrator, wake_every_seconds)
                yield
                tasks.cancel_scope.cancel()

    app = FastAPI(lifespan=lifespan)
    app.include_router(orders)
    app.include_router(webhooks)
    return app


# --8<-- [end:lifespan]


# --8<-- [start:demo]
SECRET = b"whsec_demo"


def captured(event_id: str, order_id: str, amount: str) -> dict[str, Any]:
    """The provider's event: a payment of ``amount`` for the order was captured."""
    capture = {"order_id": order_id, "payment_id": f"pay_{event_id}", "amount": amount}
    return {"id": event_id, "type": "payment.captured", "data": capture}


async def send(client: httpx.AsyncClient, event: dict[str, Any], key: bytes = SECRET) -> str:
    """Post ``event`` as the provider does, signed with ``key``; the answer, in short."""
    body = ProviderEvent.model_validate(event).model_dump_json().encode()
    signature = "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()
    reply = await client.post(
        "/webhooks/payments", content=body, headers={"X-Signature": signature}
    )
    answer = reply.json()
    if "detail" in answer:  # a problem document
        return f"{reply.status_code} {answer['title']}: {answer['detail']}"
    return f"{reply.status_code} {answer['status']}, order {answer['order']}"


async def demo(folder: Path) -> None:
    # The timer's period is long here, so that it does not carry on a saga between two of
    # the demo's requests: the answers printed are always the same.
    app = create_app(str(folder / "shop.db"), SECRET, wake_every_seconds=3600)
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),  # what the server runs at start-up and shutdown
        httpx.AsyncClient(transport=transport, base_url="http://shop") as client,
    ):
        order = (await client.post("/orders", json={"amount": "25.00"})).json()
        print(f"order placed: {order['status']}, waiting for {order['waiting_for']}")
        paid = captured("evt_1", order["order_id"], "25.00")
        refunded = {**captured("evt_0", order["order_id"], "25.00"), "type": "payment.refunded"}
        sends = [
            ("payment.refunded", refunded, SECRET),
            ("evt_1, forged signature", paid, b"not the secret"),
            ("evt_1, 25.00 captured", paid, SECRET),
            ("evt_1 again (a retry)", paid, SECRET),
            ("evt_2, captured again", captured("evt_2", order["order_id"], "25.00"), SECRET),
            ("evt_3, no such order", captured("evt_3", str(UUID(int=0)), "9.00"), SECRET),
        ]
        for label, event, key in sends:
            print(f"{label + ':':25} {await send(client, event, key)}")
        order = (await client.post("/orders", json={"amount": "40.00"})).json()
        underpaid = captured("evt_4", order["order_id"], "4.00")
        print(f"{'evt_4, 4.00 of 40.00:':25} {await send(client, underpaid)}")


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp())
    anyio.run(demo, folder)


# --8<-- [end:demo]

if __name__ == "__main__":
    # Run this file as a module, not as __main__: stored sagas name their data class by
    # module (howto_webhooks:OrderData), and any process that reads them must import it.
    import_module(Path(__file__).stem).main()
