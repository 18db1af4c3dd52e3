"""Orders paid asynchronously: the provider authorises, captures later, and says so by webhook.

The API runs in this process (httpx's ASGI transport, with the app's lifespan run around it,
as a server would) over a `Shop` on a real SQLite file whose orchestrator and services share a
`ManualClock`: a test moves time past the capture timeout and drives the timer itself
(`wake_due`), so nothing sleeps. What must hold:

- an order placed with ``?payment=async`` answers ``202`` and waits at ``confirm_capture``;
- a correctly signed webhook is consumed (the order completes, charged once); sent again,
  it is a duplicate;
- a missing or wrong signature is a ``401`` problem and changes nothing: the saga still
  waits and nothing is kept in its inbox;
- a webhook after the timeout is ignored: the timer compensated the order, refunding the
  capture;
- a failed capture compensates the order;
- a webhook that comes before the saga reaches its wait is kept, and consumed when it does;
- the books (`Shop.check_invariants`) hold after every test.
"""

from __future__ import annotations

import hmac
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import anyio
import httpx
import pytest
from fastapi import FastAPI

from order_fulfillment.api import create_app
from order_fulfillment.async_payments import AsyncPayment, PaymentStatus
from order_fulfillment.async_saga import (
    AsyncPaymentOrderSaga,
    CaptureFailedError,
    CaptureMismatchError,
    accept_capture,
)
from order_fulfillment.domain import OrderData, ShippingAddress
from order_fulfillment.shop import OrderLine, Shop
from order_fulfillment.webhooks import (
    DEFAULT_WEBHOOK_SECRET,
    CaptureNotice,
    CaptureStatus,
    InvalidWebhookError,
    sign,
    signature_matches,
)
from saga_orchestrator import RetryPolicy, SagaContext, SagaResult, SagaStatus, StepStatus
from saga_orchestrator.testing import ManualClock

SKU, PRICE, STOCK = "SKU-1", Decimal("12.50"), 10
RICH = Decimal("1000.00")
TIMEOUT = 60.0
"""The capture timeout of these shops, in (manual) seconds."""
ADDRESS = {
    "street": "1 Main St",
    "city": "Town",
    "state": "CA",
    "postal_code": "12345",
    "country": "US",
}
QUICK = {"initial_backoff_seconds": 0.001, "max_backoff_seconds": 0.01, "jitter_ratio": 0}
WEBHOOK = "/api/v1/webhooks/payments"
PROBLEM_JSON = "application/problem+json"
DEMO = [sys.executable, "-m", "order_fulfillment"]

pytestmark = pytest.mark.anyio


# ---------------------------------------------------------------------------- the API


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The app's lifespan around an HTTP client for it; each request gets the lifespan's
    state, as uvicorn passes it."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            await app({**scope, "state": dict(state or {})}, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://shop") as client:
            yield client


@dataclass
class Api:
    """The app's client, its shop and the shop's manual clock."""

    client: httpx.AsyncClient
    shop: Shop
    clock: ManualClock
    customer: UUID

    async def order(
        self, quantity: int = 2, *, payment: str | None = "async", **headers: str
    ) -> httpx.Response:
        query = f"?payment={payment}" if payment else ""
        body = {
            "customer_id": str(self.customer),
            "items": [{"sku": SKU, "quantity": quantity}],
            "shipping_address": ADDRESS,
        }
        return await self.client.post(f"/api/v1/orders{query}", json=body, headers=headers)

    async def parked_order(self, quantity: int = 2) -> UUID:
        """Place an order paid asynchronously; it must wait for its capture."""
        response = await self.order(quantity)
        assert response.status_code == 202, response.text
        return UUID(response.json()["order_id"])

    async def payment(self, order_id: UUID) -> AsyncPayment:
        payment = await self.shop.async_payments.find_by_order(order_id)
        assert payment is not None
        return payment

    async def capture(self, order_id: UUID, fail_reason: str | None = None) -> CaptureNotice:
        """The provider captures the order's payment; its notice (not sent yet)."""
        payment = await self.payment(order_id)
        return await self.shop.async_payments.capture(payment.id, fail_reason=fail_reason)

    async def send(self, body: bytes, signature: str | None = "sign") -> httpx.Response:
        """POST a webhook; ``"sign"`` signs it with the shop's secret."""
        headers = {"Content-Type": "application/json"}
        if signature == "sign":
            signature = sign(body, DEFAULT_WEBHOOK_SECRET)
        if signature is not None:
            headers["X-Signature"] = signature
        return await self.client.post(WEBHOOK, content=body, headers=headers)

    async def saga(self, order_id: UUID) -> SagaContext[Any]:
        context = await self.shop.repository.get_by_correlation_id(f"order-{order_id}")
        assert context is not None
        return context

    async def inbox(self, order_id: UUID) -> list[Any]:
        saga_id = (await self.saga(order_id)).saga_id
        events: list[Any] = await self.shop.repository.saga_events(saga_id)  # type: ignore[attr-defined]
        return events

    async def status(self, order_id: UUID) -> dict[str, Any]:
        response = await self.client.get(f"/api/v1/orders/{order_id}/status")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def one(self, sql: str, *params: Any) -> Any:
        row = await self.shop.db.read(lambda c: c.execute(sql, params).fetchone())
        return None if row is None else row[0]

    async def balance(self) -> Decimal:
        sql = "SELECT balance FROM accounts WHERE customer_id = ?"
        return Decimal(await self.one(sql, str(self.customer)))

    async def stock(self) -> int:
        value: int = await self.one("SELECT stock FROM products WHERE sku = ?", SKU)
        return value

    async def charges(self, order_id: UUID) -> list[tuple[str, str]]:
        rows: list[tuple[str, str]] = await self.shop.db.read(
            lambda c: c.execute(
                "SELECT amount, status FROM payments WHERE order_id = ?", (str(order_id),)
            ).fetchall()
        )
        return rows

    async def finish(self, order_id: UUID) -> None:
        """Let the order's wait time out (the books need every saga terminal)."""
        self.clock.advance(TIMEOUT + 1)
        await self.shop.orchestrator.wake_due()
        assert (await self.saga(order_id)).status is SagaStatus.COMPENSATED


def make_shop(path: Path, clock: ManualClock) -> Shop:
    return Shop(
        path,
        clock=clock,
        capture_timeout_seconds=TIMEOUT,
        retry=RetryPolicy(max_attempts=3, **QUICK),
        compensation_retry=RetryPolicy(max_attempts=20, **QUICK),
    )


async def seed(shop: Shop) -> UUID:
    """The catalog (SKU-1) and one customer who can pay (once per file)."""
    await shop.inventory.add_product(SKU, "Widget", PRICE, STOCK)
    customer = uuid4()
    await shop.payments.open_account(customer, RICH)
    return customer


@pytest.fixture
def clock() -> ManualClock:
    """Starts now, so the saga's deadline and the services' times agree with it."""
    return ManualClock(datetime.now(UTC))


@asynccontextmanager
async def open_api(
    path: Path, clock: ManualClock, *, check_books: bool = True, **options: Any
) -> AsyncIterator[Api]:
    """The app over a new shop on ``path``, served for the block; then the books must hold."""
    shop = make_shop(path, clock)
    async with serving(create_app(shop, **options)) as client:
        api = Api(client, shop, clock, await seed(shop))
        yield api
        if check_books:
            assert await shop.check_invariants() == []


@pytest.fixture
async def api(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Api]:
    """The API without its background timer: each test drives `wake_due` itself."""
    async with open_api(tmp_path / "orders.db", clock, wake_interval_seconds=None) as api:
        yield api


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"] == f"urn:order-fulfillment:problem:{kind}"
    return body


async def assert_waiting(api: Api, order_id: UUID) -> None:
    """The order's saga is parked at confirm_capture, nothing kept in its inbox."""
    saga = await api.saga(order_id)
    assert saga.status is SagaStatus.RUNNING
    step = saga.steps[saga.current_step_index]
    assert (step.name, step.status) == ("confirm_capture", StepStatus.WAITING)
    assert step.waiting_for == "payment.captured"
    assert await api.inbox(order_id) == []


# ---------------------------------------------------------------------------- placing


async def test_an_order_paid_asynchronously_answers_202_and_waits(api: Api) -> None:
    """?payment=async: authorised, nothing charged yet, the saga waits for the capture."""
    response = await api.order(2)

    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "awaiting_payment"
    assert body["tracking_number"] is None
    order_id = UUID(body["order_id"])
    await assert_waiting(api, order_id)
    assert await api.status(order_id) == {
        "order_id": str(order_id),
        "saga_status": "running",
        "current_step": "confirm_capture",
        "completed_steps": ["reserve_inventory", "authorize_payment"],
        "error": None,
    }
    assert (await api.saga(order_id)).saga_type == AsyncPaymentOrderSaga.saga_type
    payment = await api.payment(order_id)
    assert (payment.status, payment.amount) == (PaymentStatus.AUTHORIZED, 2 * PRICE)
    assert await api.balance() == RICH
    assert await api.stock() == STOCK - 2
    await api.finish(order_id)
    assert await api.stock() == STOCK
    assert (await api.payment(order_id)).status is PaymentStatus.VOIDED


async def test_without_payment_the_order_runs_the_specification_saga(api: Api) -> None:
    """No query (or ?payment=sync): the spec's saga, charged at once, 200 as before."""
    for payment in (None, "sync"):
        response = await api.order(1, payment=payment)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "completed"
        order_id = UUID(response.json()["order_id"])
        assert (await api.saga(order_id)).saga_type == "order_fulfillment"
        assert await api.charges(order_id) == [(str(PRICE), "captured")]


async def test_an_unknown_payment_flow_is_a_422_and_writes_nothing(api: Api) -> None:
    """?payment=later names the query field, and no saga is stored."""
    body = assert_problem(await api.order(1, payment="later"), 422, "validation-error")

    assert body["errors"][0]["field"] == "payment"
    assert body["errors"][0]["location"] == "query"
    assert await api.one("SELECT count(*) FROM sagas") == 0


async def test_a_declined_authorisation_answers_the_spec_400(api: Api) -> None:
    """A customer who cannot pay: 400, nothing held, no payment authorised."""
    api.customer = uuid4()
    await api.shop.payments.open_account(api.customer, Decimal("5.00"))
    response = await api.order(1)

    assert response.status_code == 400
    assert "authorize_payment: PaymentDeclinedError" in response.json()["detail"]["reason"]
    assert await api.stock() == STOCK
    assert await api.one("SELECT count(*) FROM payment_intents") == 0
    assert await api.balance() == Decimal("5.00")


async def test_an_idempotency_key_replays_the_202_and_tells_the_flows_apart(api: Api) -> None:
    """The same key and body replay the 202; the same body without ?payment=async is
    another request (422)."""
    first = await api.order(1, **{"Idempotency-Key": "async-1"})
    again = await api.order(1, **{"Idempotency-Key": "async-1"})

    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert_problem(
        await api.order(1, payment=None, **{"Idempotency-Key": "async-1"}),
        422,
        "idempotency-key-reused",
    )
    assert await api.one("SELECT count(*) FROM sagas") == 1
    await api.finish(UUID(first.json()["order_id"]))


# ---------------------------------------------------------------------------- webhooks


async def test_a_signed_webhook_is_consumed_and_the_order_completes(api: Api) -> None:
    """The capture's notice, signed: consumed; the order ships, charged its total once."""
    order_id = await api.parked_order(2)
    notice = await api.capture(order_id)
    response = await api.send(notice.body())

    assert response.status_code == 200, response.text
    assert response.json() == {
        "event_id": notice.event_id,
        "order_id": str(order_id),
        "status": "consumed",
        "saga_status": "completed",
    }
    saga = await api.saga(order_id)
    assert saga.steps[2].event_id == notice.event_id
    assert saga.data.tracking_number is not None
    assert await api.charges(order_id) == [(str(2 * PRICE), "captured")]
    assert await api.balance() == RICH - 2 * PRICE
    sql = "SELECT status FROM shipments WHERE order_id = ?"
    assert await api.one(sql, str(order_id)) == "created"


async def test_a_duplicate_webhook_is_ignored(api: Api) -> None:
    """The same notice again (the provider retries): duplicate, charged and shipped once."""
    order_id = await api.parked_order(1)
    notice = await api.capture(order_id)
    assert (await api.send(notice.body())).json()["status"] == "consumed"
    again = await api.send(notice.body())

    assert again.status_code == 200
    assert again.json()["status"] == "duplicate"
    assert again.json()["saga_status"] == "completed"
    assert await api.charges(order_id) == [(str(PRICE), "captured")]
    assert await api.balance() == RICH - PRICE
    assert await api.one("SELECT count(*) FROM notifications") == 1


def forged(notice: CaptureNotice) -> bytes:
    """The notice's body with another amount (its signature no longer matches)."""
    return replace(notice, amount=Decimal("0.01")).body()


@pytest.mark.parametrize(
    "signature",
    [None, "", "sha256=" + "0" * 64, "sha256=not-hex", "sha1=abc", "other-secret", "tampered"],
    ids=["missing", "empty", "zeros", "not-hex", "sha1", "other-secret", "tampered-body"],
)
async def test_a_bad_signature_is_a_401_and_changes_nothing(
    api: Api, signature: str | None
) -> None:
    """Nothing is delivered: the saga still waits, its inbox empty; the real one then works."""
    order_id = await api.parked_order(1)
    notice = await api.capture(order_id)
    body = notice.body()
    if signature == "other-secret":
        signature = sign(body, "not the shop's secret")
    elif signature == "tampered":
        signature, body = sign(body, DEFAULT_WEBHOOK_SECRET), forged(notice)
    response = await api.send(body, signature)

    problem = assert_problem(response, 401, "bad-signature")
    assert "X-Signature" in problem["detail"]
    assert response.headers["www-authenticate"] == 'HMAC-SHA256 header="X-Signature"'
    await assert_waiting(api, order_id)
    assert (await api.send(notice.body())).json()["status"] == "consumed"


async def test_a_late_webhook_is_ignored_after_the_timeout_compensated(api: Api) -> None:
    """Captured in time, told too late: the timer compensated (capture refunded, stock
    back), and the webhook is ignored."""
    order_id = await api.parked_order(2)
    notice = await api.capture(order_id)
    assert await api.balance() == RICH - 2 * PRICE  # the provider took the money

    api.clock.advance(TIMEOUT + 1)
    woken = await api.shop.orchestrator.wake_due()
    assert [r.status for r in woken] == [SagaStatus.COMPENSATED]
    assert "confirm_capture: TimeoutError" in (woken[0].error or "")
    response = await api.send(notice.body())

    assert response.status_code == 200
    assert response.json()["status"] == "ignored"
    assert response.json()["saga_status"] == "compensated"
    assert await api.inbox(order_id) == []
    assert (await api.payment(order_id)).status is PaymentStatus.REFUNDED
    assert await api.charges(order_id) == [(str(2 * PRICE), "refunded")]
    assert await api.balance() == RICH
    assert await api.stock() == STOCK


async def test_a_failed_capture_compensates_the_order(api: Api) -> None:
    """A notice that says failed is consumed, and rejected: the saga compensates."""
    order_id = await api.parked_order(2)
    notice = await api.capture(order_id, fail_reason="card expired")
    response = await api.send(notice.body())

    assert response.json()["status"] == "consumed"
    assert response.json()["saga_status"] == "compensated"
    error = (await api.status(order_id))["error"]
    assert error.startswith("confirm_capture: ")
    assert "CaptureFailedError" in error
    assert "card expired" in error
    assert (await api.payment(order_id)).status is PaymentStatus.FAILED
    assert await api.charges(order_id) == []
    assert await api.balance() == RICH
    assert await api.stock() == STOCK


async def test_a_notice_for_another_amount_compensates_and_refunds(api: Api) -> None:
    """A capture that does not match the order's total (signed by the provider) is rejected:
    the saga compensates and refunds what was captured."""
    order_id = await api.parked_order(2)
    notice = await api.capture(order_id)
    response = await api.send(forged(notice))

    assert response.json()["status"] == "consumed"
    assert response.json()["saga_status"] == "compensated"
    assert "CaptureMismatchError" in (await api.status(order_id))["error"]
    assert await api.balance() == RICH


class Held:
    """A payment service whose ``method`` acts, then holds its reply until the test
    releases it: the saga is stored and running that step meanwhile."""

    def __init__(self, inner: Any, method: str) -> None:
        self.inner = inner
        self.method = method
        self.called = anyio.Event()
        self.release = anyio.Event()

    def __getattr__(self, name: str) -> Any:
        if name != self.method:
            return getattr(self.inner, name)

        async def held(**kwargs: Any) -> Any:
            reply = await getattr(self.inner, name)(**kwargs)
            self.called.set()
            await self.release.wait()
            return reply

        return held


async def test_an_early_webhook_is_kept_and_consumed_at_the_wait(api: Api) -> None:
    """A notice that comes while the saga is still authorising is stored; the saga
    consumes it as it reaches confirm_capture, and completes."""
    shop = api.shop
    held = Held(shop.async_payments, "authorize")
    shop.async_payments = held  # type: ignore[assignment]
    lines = [OrderLine(SKU, 1)]
    order = await shop.price_order(api.customer, lines, ShippingAddress(**ADDRESS))
    results: list[SagaResult[OrderData]] = []

    async def place() -> None:
        results.append(await shop.place(order, payment="async"))

    async with anyio.create_task_group() as tg:
        tg.start_soon(place)
        await held.called.wait()
        assert (await api.saga(order.order_id)).steps[1].status is StepStatus.RUNNING
        notice = await api.capture(order.order_id)
        early = await api.send(notice.body())
        assert early.status_code == 200
        assert early.json()["status"] == "stored"
        assert early.json()["saga_status"] == "running"
        assert [e.event_id for e in await api.inbox(order.order_id)] == [notice.event_id]
        held.release.set()

    [result] = results
    assert result.status is SagaStatus.COMPLETED
    assert result.steps[2].event_id == notice.event_id
    assert (await api.send(notice.body())).json()["status"] == "duplicate"
    assert await api.balance() == RICH - PRICE


async def test_a_webhook_for_an_unknown_order_is_a_404(api: Api) -> None:
    """A signed notice for an order nobody placed: 404 problem, nothing stored."""
    notice = CaptureNotice(
        "evt_1", uuid4(), uuid4(), Decimal("1.00"), "USD", CaptureStatus.CAPTURED
    )
    assert_problem(await api.send(notice.body()), 404, "unknown-order")
    assert await api.one("SELECT count(*) FROM saga_inbox") == 0


async def test_a_webhook_for_an_order_paid_synchronously_is_a_409_or_ignored(api: Api) -> None:
    """The spec's saga waits for no capture: while it runs, a notice for its order is a 409
    problem; once it is finished, ignored. Nothing is stored either way."""
    shop = api.shop
    held = Held(shop.payments, "charge")
    shop.payments = held  # type: ignore[assignment]
    lines = [OrderLine(SKU, 1)]
    order = await shop.price_order(api.customer, lines, ShippingAddress(**ADDRESS))
    notice = CaptureNotice("evt_2", order.order_id, uuid4(), PRICE, "USD", CaptureStatus.CAPTURED)

    async with anyio.create_task_group() as tg:
        tg.start_soon(shop.place, order)
        await held.called.wait()
        assert_problem(await api.send(notice.body()), 409, "no-capture-awaited")
        held.release.set()
    finished = await api.send(notice.body())

    assert finished.json()["status"] == "ignored"
    assert finished.json()["saga_status"] == "completed"
    assert await api.one("SELECT count(*) FROM saga_inbox") == 0


def valid_notice() -> dict[str, Any]:
    notice = CaptureNotice("evt_3", uuid4(), uuid4(), PRICE, "USD", CaptureStatus.CAPTURED)
    document: dict[str, Any] = json.loads(notice.body())
    return document


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount": 12.5}, "amount"),
        ({"amount": "1e3"}, "amount"),
        ({"amount": None}, "amount"),
        ({"status": "pending"}, "status"),
        ({"order_id": "not-a-uuid"}, "order_id"),
        ({"payment_id": 7}, "payment_id"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "e" * 201}, "event_id"),
        ({"currency": "usd"}, "currency"),
        ({"reason": 3}, "reason"),
    ],
)
async def test_a_signed_body_that_is_no_notice_is_a_422_naming_the_field(
    api: Api, change: dict[str, Any], field: str
) -> None:
    """Signed, but not a capture notice: 422 naming the field, nothing stored."""
    body = json.dumps({**valid_notice(), **change}).encode()
    problem = assert_problem(await api.send(body), 422, "validation-error")

    assert [e["field"] for e in problem["errors"]] == [field]
    assert problem["errors"][0]["location"] == "body"
    assert await api.one("SELECT count(*) FROM saga_inbox") == 0


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe", b""])
async def test_a_signed_body_that_is_not_json_is_a_400(api: Api, body: bytes) -> None:
    assert_problem(await api.send(body), 400, "malformed-json")


async def test_the_signature_is_checked_before_the_body(api: Api) -> None:
    """An unsigned body that is not even JSON is a 401, not a 400: nothing is parsed."""
    assert_problem(await api.send(b"{not json", None), 401, "bad-signature")


async def test_a_body_that_is_not_an_object_names_the_body(api: Api) -> None:
    problem = assert_problem(await api.send(b"[1, 2]"), 422, "validation-error")
    assert problem["errors"][0]["field"] == "body"


# ---------------------------------------------------------------------------- the timer


async def test_the_apps_timer_compensates_an_order_whose_capture_never_comes(
    tmp_path: Path, clock: ManualClock
) -> None:
    """With its background timer, the app ends the wait once the (manual) time is up."""
    async with open_api(tmp_path / "orders.db", clock, wake_interval_seconds=0.01) as api:
        order_id = await api.parked_order(1)
        saga_id = (await api.saga(order_id)).saga_id
        assert (await api.status(order_id))["saga_status"] == "running"
        api.clock.advance(TIMEOUT + 1)

        # The timer's task does it: this only waits (polling the store) for the outcome.
        result = await api.shop.orchestrator.wait(saga_id, timeout_seconds=30, poll_seconds=0.01)
        assert result.status is SagaStatus.COMPENSATED
        assert await api.stock() == STOCK
        assert (await api.payment(order_id)).status is PaymentStatus.VOIDED


async def test_a_waiting_order_survives_a_restart_and_takes_its_webhook(
    tmp_path: Path, clock: ManualClock
) -> None:
    """Stop the app while an order waits; after a restart (recover) the webhook completes it."""
    path = tmp_path / "orders.db"
    async with open_api(path, clock, check_books=False, wake_interval_seconds=None) as api:
        order_id = await api.parked_order(1)
        notice = await api.capture(order_id)
    shop = make_shop(path, clock)
    async with serving(create_app(shop, wake_interval_seconds=None)) as client:
        response = await client.post(
            WEBHOOK,
            content=notice.body(),
            headers={"X-Signature": sign(notice.body(), DEFAULT_WEBHOOK_SECRET)},
        )
        assert response.json()["status"] == "consumed"
        assert response.json()["saga_status"] == "completed"
        assert await shop.check_invariants() == []


# ---------------------------------------------------------------------------- the parts


def test_accept_capture_checks_payment_status_amount_and_currency() -> None:
    """Only the order's payment, captured, for exactly its total, is accepted."""
    data = OrderData(total=Decimal("25.00"), payment_id=uuid4())
    good = {
        "payment_id": data.payment_id,
        "amount": Decimal("25.00"),
        "currency": "USD",
        "status": "captured",
        "reason": None,
    }
    assert accept_capture(data, good) == {}
    assert accept_capture(data, {**good, "amount": Decimal("25.000")}) == {}
    with pytest.raises(CaptureFailedError, match="no funds"):
        accept_capture(data, {**good, "status": "failed", "reason": "no funds"})
    for change in (
        {"payment_id": uuid4()},
        {"amount": Decimal("24.99")},
        {"currency": "EUR"},
        {"status": "pending"},
    ):
        with pytest.raises(CaptureMismatchError):
            accept_capture(data, {**good, **change})


def test_signatures_are_hmac_sha256_of_the_raw_body() -> None:
    """sha256=<hex>; any other body, secret or form does not match; an empty secret is
    refused."""
    body = b'{"a":1}'
    signature = sign(body, "s3cret")
    assert signature == "sha256=" + hmac.new(b"s3cret", body, "sha256").hexdigest()
    assert signature_matches(body, signature, "s3cret")
    assert signature_matches(body, f"  {signature} ", "s3cret")
    assert not signature_matches(body + b" ", signature, "s3cret")
    assert not signature_matches(body, signature, "other")
    assert not signature_matches(body, None, "s3cret")
    assert not signature_matches(body, signature.upper(), "s3cret")
    assert not signature_matches(body, "sha256=\u00e9", "s3cret")
    with pytest.raises(ValueError, match="empty"):
        sign(body, "")


def test_a_notice_round_trips_through_its_body() -> None:
    """What the provider sends parses back to the same notice; every missing field is named."""
    notice = CaptureNotice(
        "evt_9", uuid4(), uuid4(), Decimal("59.98"), "USD", CaptureStatus.FAILED, "expired"
    )
    assert CaptureNotice.parse(notice.body()) == notice
    with pytest.raises(InvalidWebhookError) as caught:
        CaptureNotice.parse(b"{}")
    assert [field for field, _, _ in caught.value.errors] == [
        "event_id",
        "order_id",
        "payment_id",
        "amount",
        "currency",
        "status",
    ]


async def test_the_provider_captures_once_and_cannot_capture_a_voided_payment(
    tmp_path: Path,
) -> None:
    """Capturing again gives the same notice; a voided payment's notice says failed; undoing
    a capture refunds it, once."""
    async with Shop(tmp_path / "shop.db") as shop:
        customer = await seed(shop)
        provider = shop.async_payments

        async def authorize(key: str) -> AsyncPayment:
            return await provider.authorize(
                customer_id=customer,
                amount=PRICE,
                currency="USD",
                order_id=uuid4(),
                idempotency_key=key,
            )

        first = await authorize("a")
        assert await authorize("a") == first
        captured = await provider.capture(first.id)
        assert await provider.capture(first.id) == captured
        assert captured.status is CaptureStatus.CAPTURED
        await provider.void_or_refund(payment_id=first.id, reason="test")
        await provider.void_or_refund(payment_id=first.id, reason="test")
        refunded = await provider.find_by_order(first.order_id)
        assert refunded is not None
        assert refunded.status is PaymentStatus.REFUNDED

        second = await authorize("b")
        await provider.void_or_refund(payment_id=second.id, reason="test")
        notice = await provider.capture(second.id)
        assert notice.status is CaptureStatus.FAILED
        assert notice.reason == "the payment was voided before its capture"
        balance = await shop.db.read(
            lambda c: c.execute(
                "SELECT balance FROM accounts WHERE customer_id = ?", (str(customer),)
            ).fetchone()[0]
        )
        assert Decimal(balance) == RICH


# ---------------------------------------------------------------------------- the demo


@pytest.mark.slow
def test_the_demo_shows_webhooks_on_time_forged_failed_and_late(tmp_path: Path) -> None:
    """The demo's asynchronous part: each scenario answered as it must be, books OK."""
    db = tmp_path / "orders.db"
    run = subprocess.run(
        [*DEMO, "--orders", "12", "--async-share", "1", "--quiet", "--db", str(db)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "asynchronous payments: 12 orders" in out
    assert "every webhook answered as expected" in out
    assert "captured, webhook after the timeout" in out
    assert "ignored x" in out
    assert out.rstrip().endswith("verdict: OK")


@pytest.mark.slow
def test_a_rerun_ends_the_wait_of_orders_a_previous_run_left_waiting(tmp_path: Path) -> None:
    """An order left waiting for its capture (its process gone) is recovered by the next
    run, whose timer compensates it once its wait is up: the books hold."""
    db = tmp_path / "orders.db"

    async def leave_one_waiting() -> None:
        async with Shop(db, capture_timeout_seconds=3) as shop:
            customer = await seed(shop)
            lines = [OrderLine(SKU, 1)]
            order = await shop.price_order(customer, lines, ShippingAddress(**ADDRESS))
            assert (await shop.place(order, payment="async")).status is SagaStatus.RUNNING

    anyio.run(leave_one_waiting)
    run = subprocess.run(
        [*DEMO, "--orders", "0", "--quiet", "--db", str(db)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert run.returncode == 0, run.stdout + run.stderr
    assert "recovered 1 unfinished orders from an earlier run" in run.stdout
    assert "compensated          1" in run.stdout
    assert run.stdout.rstrip().endswith("verdict: OK")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--async-share", "-0.1"], "--async-share must be within [0, 1]"),
        (["--async-share", "1.5"], "--async-share must be within [0, 1]"),
        (["--async-share", "nan"], "--async-share must be within [0, 1]"),
        (["--capture-timeout", "0"], "--capture-timeout must be a finite number > 0"),
        (["--capture-timeout", "nan"], "--capture-timeout must be a finite number > 0"),
        (["--webhook-secret", ""], "--webhook-secret must not be empty"),
    ],
)
def test_bad_asynchronous_options_exit_2(args: list[str], message: str) -> None:
    run = subprocess.run([*DEMO, *args], capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert message in run.stderr


async def test_a_shop_refuses_an_unknown_payment_flow_and_an_empty_secret(tmp_path: Path) -> None:
    """Bad input is refused before anything is written."""
    with pytest.raises(ValueError, match="empty"):
        Shop(tmp_path / "shop.db", webhook_secret="")
    async with Shop(tmp_path / "shop.db") as shop:
        customer = await seed(shop)
        order = await shop.price_order(customer, [OrderLine(SKU, 1)], ShippingAddress(**ADDRESS))
        with pytest.raises(ValueError, match="'sync' or 'async'"):
            await shop.place(order, payment="later")  # type: ignore[arg-type]
        assert await shop.repository.list_sagas() == []
