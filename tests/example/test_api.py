"""The order API, against a real uvicorn process on a real SQLite file.

Each server is `python -m tests.example.api_server` (the example's own `serve`, with faults
chosen per server) on a free port; the tests talk HTTP to it and read the SQLite file directly,
read-only, to check what the API did, or did not, write. What must hold:

- an order completes (200) or every compensation path of the spec's diagram runs (400), and
  then nothing is charged net and the stock is back;
- every bad input is a 4xx `application/problem+json` naming the field, and writes nothing;
- one Idempotency-Key never makes two orders: replayed, refused when reused with another body,
  409 while in flight, and finished (not restarted) after the server was killed mid-order.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import httpx
import pytest

from order_fulfillment.api import CreateOrderRequest, request_fingerprint

pytestmark = pytest.mark.slow

T = TypeVar("T")
ROOT = Path(__file__).resolve().parents[2]
POOR = UUID("00000000-0000-4000-8000-00000000b0b0")
"""A customer the test server opens with 5.00: any order's payment is declined."""
STOCK = 100
STEPS = ["reserve_inventory", "process_payment", "create_shipment", "send_confirmation"]
ADDRESS = {
    "street": "123 Main St",
    "city": "Anytown",
    "state": "CA",
    "postal_code": "12345",
    "country": "US",
}
START_TIMEOUT = 60.0
PROBLEM_JSON = "application/problem+json"
_logs = itertools.count()


# ---------------------------------------------------------------------------- the server


def wait_for(condition: Callable[[], T | None], *, timeout: float, what: str) -> T:
    """Poll ``condition`` until it returns something truthy, at most ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.02)


@dataclass
class ApiServer:
    """One `api_server` process, its SQLite file and an HTTP client for it."""

    db: Path
    log: Path
    process: subprocess.Popen[bytes]
    base_url: str
    curl: str
    client: httpx.Client

    @classmethod
    def start(cls, workdir: Path, *options: str, db: Path | None = None) -> ApiServer:
        db = db or workdir / "orders.db"
        log = workdir / f"server-{next(_logs)}.log"
        command = [sys.executable, "-m", "tests.example.api_server", "--db", str(db)]
        command += ["--stock", str(STOCK), "--poor-customer", str(POOR), *options]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

        def banner() -> re.Match[str] | None:
            if process.poll() is not None:
                raise AssertionError(f"the server exited:\n{log.read_text()}")
            return re.search(r"OpenAPI docs: (\S+)/docs", log.read_text())

        try:
            base_url = wait_for(banner, timeout=START_TIMEOUT, what="the server").group(1)
            curl = re.search(r"^\s*(curl .*)$", log.read_text(), re.MULTILINE)
            assert curl is not None, log.read_text()
            client = httpx.Client(base_url=base_url, timeout=30)
        except BaseException:
            process.kill()
            process.wait()
            raise
        server = cls(db, log, process, base_url, curl.group(1), client)
        try:
            wait_for(server.healthy, timeout=START_TIMEOUT, what="/healthz")
        except BaseException:
            server.stop(crash=True)
            raise
        return server

    def healthy(self) -> bool:
        try:
            return self.client.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, *, crash: bool = False) -> None:
        """SIGTERM and wait for a clean shutdown, or SIGKILL (``crash``): no goodbye at all."""
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if crash else signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the server ignored SIGTERM:\n{self.log.read_text()}") from None

    # ------------------------------------------------------------------ talking to it

    def post(self, body: Any, key: str | None = None, **options: Any) -> httpx.Response:
        headers = {"Idempotency-Key": key} if key is not None else {}
        return self.client.post("/api/v1/orders", json=body, headers=headers, **options)

    def status(self, order_id: str) -> httpx.Response:
        return self.client.get(f"/api/v1/orders/{order_id}/status")

    # ------------------------------------------------------------------ reading its file

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        """Run a read-only query on the server's SQLite file."""
        with closing(sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=30)) as c:
            return c.execute(sql, params).fetchall()

    def snapshot(self) -> dict[str, Any]:
        """Row counts of every table, the stock and the balances: what a refusal must not move."""
        tables = [r[0] for r in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")]
        state: dict[str, Any] = {t: self.query(f'SELECT count(*) FROM "{t}"')[0][0] for t in tables}
        state["stock"] = self.query("SELECT sku, stock FROM products ORDER BY sku")
        state["balances"] = self.query("SELECT customer_id, balance FROM accounts ORDER BY 1")
        return state

    def customers(self) -> list[str]:
        """Customers who can pay for any order these tests place."""
        rows = self.query("SELECT customer_id, balance FROM accounts ORDER BY rowid")
        return [c for c, balance in rows if Decimal(balance) >= 1000]

    def stock(self, sku: str = "SKU-001") -> int:
        return int(self.query("SELECT stock FROM products WHERE sku = ?", sku)[0][0])

    def balance(self, customer_id: str) -> Decimal:
        rows = self.query("SELECT balance FROM accounts WHERE customer_id = ?", customer_id)
        return Decimal(rows[0][0])

    def sagas_of(self, order_id: str) -> int:
        """How many sagas run this order (the API must never start a second)."""
        sql = "SELECT count(*) FROM sagas WHERE correlation_id = ?"
        return int(self.query(sql, f"order-{order_id}")[0][0])

    def effects(self, order_id: str) -> dict[str, list[Any]]:
        """What each service holds for an order."""

        def column(sql: str, *params: Any) -> list[Any]:
            return [row[0] for row in self.query(sql, *params)]

        return {
            "reservations": column("SELECT status FROM reservations WHERE order_id = ?", order_id),
            "payments": self.query(
                "SELECT amount, status FROM payments WHERE order_id = ?", order_id
            ),
            "shipments": column("SELECT status FROM shipments WHERE order_id = ?", order_id),
            "emails": sorted(
                column("SELECT template FROM notifications WHERE dedup_key LIKE ?", f"%:{order_id}")
            ),
        }


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server with no faults, shared by the module: most tests only read or add orders."""
    running = ApiServer.start(tmp_path_factory.mktemp("api"))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def shipping_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server whose shipping service refuses every shipment."""
    running = ApiServer.start(tmp_path_factory.mktemp("api"), "--fail", "shipping.create")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def email_down(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server whose notification service refuses every confirmation email."""
    running = ApiServer.start(
        tmp_path_factory.mktemp("api"), "--fail", "notification.order_confirmed"
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """A server whose services take up to 0.3 s a call, so that an order stays in flight."""
    running = ApiServer.start(tmp_path_factory.mktemp("api"), "--latency", "0.3")
    yield running
    running.stop()


def order(customer_id: str | UUID, quantity: int = 2, **item: Any) -> dict[str, Any]:
    """A valid order body: SKU-001 (29.99) x ``quantity``."""
    return {
        "customer_id": str(customer_id),
        "items": [{"sku": "SKU-001", "quantity": quantity, **item}],
        "shipping_address": dict(ADDRESS),
    }


def new_key() -> str:
    return f"test-{uuid4()}"


def assert_problem(response: httpx.Response, status: int, field: str | None = None) -> Any:
    """An RFC 9457 problem document with this status, naming ``field`` among its errors."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem = response.json()
    assert problem["status"] == status
    assert all(problem[member] for member in ("type", "title", "detail"))
    assert "Traceback" not in response.text
    if field is not None:
        fields = [e["field"] for e in problem["errors"]]
        assert field in fields, problem
    return problem


# ---------------------------------------------------------------------------- orders


def test_an_order_completes_with_a_tracking_number(server: ApiServer) -> None:
    """200 with the spec's body; the order is charged the catalog price exactly."""
    customer = server.customers()[0]
    balance = server.balance(customer)
    response = server.post(order(customer), key=new_key())
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"order_id", "status", "tracking_number"}
    assert body["status"] == "completed"
    assert body["tracking_number"].startswith("TRK-")
    assert server.effects(body["order_id"]) == {
        "reservations": ["committed"],
        "payments": [("59.98", "captured")],
        "shipments": ["created"],
        "emails": ["order_confirmed"],
    }
    assert server.balance(customer) == balance - Decimal("59.98")


def test_the_status_of_a_completed_order(server: ApiServer) -> None:
    """The spec's status body: completed, every step done, the last one current."""
    order_id = server.post(order(server.customers()[0])).json()["order_id"]
    response = server.status(order_id)
    assert response.status_code == 200
    assert response.json() == {
        "order_id": order_id,
        "saga_status": "completed",
        "current_step": "send_confirmation",
        "completed_steps": STEPS,
        "error": None,
    }


def test_a_unit_price_and_name_that_match_the_catalog_are_accepted(server: ApiServer) -> None:
    """The client may echo the price (as a string) and name it saw."""
    body = order(server.customers()[0], unit_price="29.99", name="Widget")
    assert server.post(body).json()["status"] == "completed"


def test_several_lines_are_priced_from_the_catalog(server: ApiServer) -> None:
    """The total is computed on the server: 29.99 x 1 + 4.50 x 3."""
    body = order(server.customers()[1], quantity=1)
    body["items"].append({"sku": "SKU-003", "quantity": 3})
    order_id = server.post(body).json()["order_id"]
    assert server.effects(order_id)["payments"] == [("43.49", "captured")]


def test_orders_without_a_key_are_not_deduplicated(server: ApiServer) -> None:
    """The header is optional: two identical requests without it are two orders."""
    before = server.snapshot()["api_requests"]
    body = order(server.customers()[0])
    first, second = server.post(body), server.post(body)
    assert first.status_code == second.status_code == 200
    assert first.json()["order_id"] != second.json()["order_id"]
    assert server.snapshot()["api_requests"] == before


# ---------------------------------------------------------------------------- compensations


def assert_failed(response: httpx.Response, step: str, error: str) -> str:
    """The spec's 400 body (plus the order id), for a saga that failed at ``step``."""
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert set(detail) == {"error", "reason", "order_id"}
    assert detail["error"] == "Order processing failed"
    assert detail["reason"].startswith(f"{step}: {error}")
    return str(detail["order_id"])


def assert_compensated(server: ApiServer, order_id: str, step: str) -> None:
    status = server.status(order_id).json()
    assert status["saga_status"] == "compensated"
    assert status["error"].startswith(step)
    assert status["completed_steps"] == []


def test_reserve_fails_the_order_is_rejected(server: ApiServer) -> None:
    """More than the stock: nothing held, nothing charged."""
    customer = server.customers()[0]
    stock, balance = server.stock(), server.balance(customer)
    order_id = assert_failed(
        server.post(order(customer, quantity=STOCK + 1)),
        "reserve_inventory",
        "InsufficientStockError",
    )
    assert_compensated(server, order_id, "reserve_inventory")
    assert server.effects(order_id) == {
        "reservations": [],
        "payments": [],
        "shipments": [],
        "emails": [],
    }
    assert (server.stock(), server.balance(customer)) == (stock, balance)


def test_payment_fails_the_stock_is_released(server: ApiServer) -> None:
    """A customer who cannot pay: the reservation is released, no money moves."""
    stock, balance = server.stock(), server.balance(str(POOR))
    order_id = assert_failed(server.post(order(POOR)), "process_payment", "PaymentDeclinedError")
    assert_compensated(server, order_id, "process_payment")
    assert server.effects(order_id) == {
        "reservations": ["released"],
        "payments": [],
        "shipments": [],
        "emails": [],
    }
    assert (server.stock(), server.balance(str(POOR))) == (stock, balance)


def test_shipment_fails_refund_and_release(shipping_down: ApiServer) -> None:
    """Shipping refuses: the payment is refunded and the stock released."""
    server = shipping_down
    customer = server.customers()[0]
    stock, balance = server.stock(), server.balance(customer)
    order_id = assert_failed(server.post(order(customer)), "create_shipment", "ServiceRejected")
    assert_compensated(server, order_id, "create_shipment")
    assert server.effects(order_id) == {
        "reservations": ["released"],
        "payments": [("59.98", "refunded")],
        "shipments": [],
        "emails": [],
    }
    assert (server.stock(), server.balance(customer)) == (stock, balance)


def test_confirmation_fails_cancel_refund_and_release(email_down: ApiServer) -> None:
    """The confirmation email is refused: shipment cancelled, payment refunded, stock back."""
    server = email_down
    customer = server.customers()[0]
    stock, balance = server.stock(), server.balance(customer)
    order_id = assert_failed(server.post(order(customer)), "send_confirmation", "ServiceRejected")
    assert_compensated(server, order_id, "send_confirmation")
    assert server.effects(order_id) == {
        "reservations": ["released"],
        "payments": [("59.98", "refunded")],
        "shipments": ["cancelled"],
        "emails": [],
    }
    assert (server.stock(), server.balance(customer)) == (stock, balance)


# ---------------------------------------------------------------------------- bad input

_MISSING = object()
_LINE = {"sku": "SKU-001", "quantity": 1}

BAD_FIELDS = [
    # id, path in the body, value (_MISSING: removed), the field the problem must name
    ("quantity-true", "items.0.quantity", True, "items[0].quantity"),
    ("quantity-float", "items.0.quantity", 2.0, "items[0].quantity"),
    ("quantity-string", "items.0.quantity", "2", "items[0].quantity"),
    ("quantity-null", "items.0.quantity", None, "items[0].quantity"),
    ("quantity-negative", "items.0.quantity", -1, "items[0].quantity"),
    ("quantity-zero", "items.0.quantity", 0, "items[0].quantity"),
    ("quantity-huge", "items.0.quantity", 10**12, "items[0].quantity"),
    ("quantity-fraction", "items.0.quantity", 1.5, "items[0].quantity"),
    ("quantity-over-max", "items.0.quantity", 1001, "items[0].quantity"),
    ("quantity-missing", "items.0.quantity", _MISSING, "items[0].quantity"),
    ("items-empty", "items", [], "items"),
    ("items-too-many", "items", [dict(_LINE, sku=f"S{i}") for i in range(101)], "items"),
    ("items-not-a-list", "items", _LINE, "items"),
    ("items-missing", "items", _MISSING, "items"),
    ("sku-empty", "items.0.sku", "", "items[0].sku"),
    ("sku-too-long", "items.0.sku", "S" * 65, "items[0].sku"),
    ("sku-number", "items.0.sku", 1, "items[0].sku"),
    ("sku-unknown", "items.0.sku", "SKU-999", "items[0].sku"),
    ("sku-twice", "items", [_LINE, _LINE], "items[1].sku"),
    ("price-json-number", "items.0.unit_price", 29.99, "items[0].unit_price"),
    ("price-not-catalog", "items.0.unit_price", "0.01", "items[0].unit_price"),
    ("price-nan", "items.0.unit_price", "NaN", "items[0].unit_price"),
    ("price-infinity", "items.0.unit_price", "Infinity", "items[0].unit_price"),
    ("price-exponent", "items.0.unit_price", "1e400", "items[0].unit_price"),
    ("price-garbage", "items.0.unit_price", "29.99 USD", "items[0].unit_price"),
    ("price-empty", "items.0.unit_price", "", "items[0].unit_price"),
    ("price-boolean", "items.0.unit_price", True, "items[0].unit_price"),
    ("name-not-catalog", "items.0.name", "Gadget", "items[0].name"),
    ("name-number", "items.0.name", 5, "items[0].name"),
    ("extra-total", "total", "0.01", "total"),
    ("extra-status", "status", "completed", "status"),
    ("extra-order-id", "order_id", str(uuid4()), "order_id"),
    ("extra-item-price", "items.0.price", "0.01", "items[0].price"),
    ("extra-address-field", "shipping_address.zip", "12345", "shipping_address.zip"),
    ("customer-malformed", "customer_id", "not-a-uuid", "customer_id"),
    ("customer-number", "customer_id", 12, "customer_id"),
    ("customer-unknown", "customer_id", str(uuid4()), "customer_id"),
    ("customer-missing", "customer_id", _MISSING, "customer_id"),
    ("street-missing", "shipping_address.street", _MISSING, "shipping_address.street"),
    ("street-empty", "shipping_address.street", "", "shipping_address.street"),
    ("street-blank", "shipping_address.street", "   ", "shipping_address.street"),
    ("street-too-long", "shipping_address.street", "x" * 201, "shipping_address.street"),
    ("city-number", "shipping_address.city", 5, "shipping_address.city"),
    ("postal-code-long", "shipping_address.postal_code", "1" * 21, "shipping_address.postal_code"),
    ("country-three-letters", "shipping_address.country", "USA", "shipping_address.country"),
    ("country-lower-case", "shipping_address.country", "us", "shipping_address.country"),
    ("address-missing", "shipping_address", _MISSING, "shipping_address"),
    ("address-a-string", "shipping_address", "123 Main St", "shipping_address"),
]


def with_value(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """``body`` with the value at a dotted ``path`` replaced (or removed: ``_MISSING``)."""
    body = json.loads(json.dumps(body))
    *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
    target: Any = body
    for part in parents:
        target = target[part]
    if value is _MISSING:
        del target[last]
    else:
        target[last] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [pytest.param(p, v, f, id=i) for i, p, v, f in BAD_FIELDS],
)
def test_a_bad_field_is_a_422_problem_naming_it_and_writes_nothing(
    server: ApiServer, path: str, value: Any, field: str
) -> None:
    """Each bad field: 422 problem+json with the field named; no row written or changed."""
    body = with_value(order(server.customers()[0]), path, value)
    before = server.snapshot()
    assert_problem(server.post(body, key=new_key()), 422, field)
    assert server.snapshot() == before


def test_a_price_that_is_not_the_catalog_price_is_refused_with_the_price(
    server: ApiServer,
) -> None:
    """The problem states the catalog price, so the client can correct its cart."""
    response = server.post(order(server.customers()[0], unit_price="19.99"))
    problem = assert_problem(response, 422, "items[0].unit_price")
    assert "29.99" in problem["detail"]
    assert "29.99" in problem["errors"][0]["message"]


def test_a_refused_order_stores_no_key_so_a_corrected_retry_goes_through(
    server: ApiServer,
) -> None:
    """Validation failures store nothing: the same key then works with a valid body."""
    key = new_key()
    customer = server.customers()[0]
    assert_problem(server.post(order(customer, quantity=0), key=key), 422)
    assert_problem(server.post(order(str(uuid4())), key=key), 422, "customer_id")
    response = server.post(order(customer), key=key)
    assert response.status_code == 200
    assert "idempotent-replayed" not in response.headers


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        pytest.param(b'{"customer_id": ', "application/json", 400, id="malformed-json"),
        pytest.param(b"[]", "application/json", 422, id="json-array"),
        pytest.param(b'"order"', "application/json", 422, id="json-string"),
        pytest.param(b"", "application/json", 422, id="empty-body"),
        pytest.param(b"[" * 30_000 + b"]" * 30_000, "application/json", 400, id="deep-nesting"),
        pytest.param(b"{}", "text/plain", 415, id="not-json"),
        pytest.param(b"{}", None, 415, id="no-content-type"),
    ],
)
def test_a_bad_body_is_a_problem_and_writes_nothing(
    server: ApiServer, content: bytes, content_type: str | None, status: int
) -> None:
    """Bodies that are not a JSON order object are refused before anything else."""
    before = server.snapshot()
    headers = {"Idempotency-Key": new_key()}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = server.client.post("/api/v1/orders", content=content, headers=headers)
    assert_problem(response, status)
    assert server.snapshot() == before


def test_a_body_over_64_kib_is_a_413_before_it_is_parsed(server: ApiServer) -> None:
    """Declared by Content-Length, or streamed in chunks: both refused with 413."""
    before = server.snapshot()
    body = order(server.customers()[0])
    body["shipping_address"]["street"] = "x" * (64 * 1024)
    content = json.dumps(body).encode()
    assert_problem(server.post(body, key=new_key()), 413)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(content), 4096):
            yield content[start : start + 4096]

    response = server.client.post(
        "/api/v1/orders", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in response.request.headers  # it was sent chunked
    assert_problem(response, 413)
    assert server.snapshot() == before


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"k" * 256, id="too-long"),
        pytest.param("clé".encode(), id="not-ascii"),
        pytest.param(b"a\x7fb", id="control-character"),
    ],
)
def test_a_malformed_idempotency_key_is_a_400_problem(server: ApiServer, key: bytes) -> None:
    """1 to 255 printable ASCII characters, else 400 naming the header; nothing written."""
    before = server.snapshot()
    response = server.client.post(
        "/api/v1/orders", json=order(server.customers()[0]), headers={b"Idempotency-Key": key}
    )
    assert_problem(response, 400, "Idempotency-Key")
    assert server.snapshot() == before


# ---------------------------------------------------------------------------- idempotency


def test_the_same_key_and_body_replay_the_first_answer(server: ApiServer) -> None:
    """Same status, same bytes, marked replayed; one order, one saga, one charge."""
    key, body = new_key(), order(server.customers()[0])
    first = server.post(body, key=key)
    assert first.status_code == 200
    before = server.snapshot()
    again = server.post(body, key=key)
    assert (again.status_code, again.content) == (first.status_code, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    # Key order and spacing do not make another request.
    reordered = json.dumps(dict(reversed(list(body.items()))), indent=2)
    third = server.client.post(
        "/api/v1/orders",
        content=reordered,
        headers={"Idempotency-Key": key, "Content-Type": "application/json"},
    )
    assert third.content == first.content
    assert server.snapshot() == before
    order_id = first.json()["order_id"]
    assert server.sagas_of(order_id) == 1
    assert server.effects(order_id)["payments"] == [("59.98", "captured")]


def test_a_failed_order_is_replayed_too(server: ApiServer) -> None:
    """A 400 is an answer: the retry gets it back rather than a second attempt."""
    key, body = new_key(), order(POOR)
    first = server.post(body, key=key)
    assert first.status_code == 400
    again = server.post(body, key=key)
    assert (again.status_code, again.content) == (400, first.content)
    assert again.headers["idempotent-replayed"] == "true"
    assert server.sagas_of(first.json()["detail"]["order_id"]) == 1


def test_the_same_key_with_another_body_is_a_422(server: ApiServer) -> None:
    """The key belongs to its first request: another body is refused, nothing is done."""
    key, customer = new_key(), server.customers()[0]
    assert server.post(order(customer), key=key).status_code == 200
    before = server.snapshot()
    problem = assert_problem(server.post(order(customer, quantity=3), key=key), 422)
    assert problem["type"].endswith("idempotency-key-reused")
    assert server.snapshot() == before


def test_concurrent_requests_with_one_key_make_one_order(slow: ApiServer) -> None:
    """Fired at once: one runs the order, the others get 409 with Retry-After."""
    key, body = new_key(), order(slow.customers()[0])
    sagas = slow.snapshot()["sagas"]
    barrier = threading.Barrier(4)

    def send() -> httpx.Response:
        with httpx.Client(base_url=slow.base_url, timeout=30) as client:
            barrier.wait()
            return client.post("/api/v1/orders", json=body, headers={"Idempotency-Key": key})

    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda _: send(), range(4)))
    assert sorted(r.status_code for r in responses) == [200, 409, 409, 409]
    for refused in (r for r in responses if r.status_code == 409):
        assert refused.headers["retry-after"] == "1"
        assert assert_problem(refused, 409)["type"].endswith("idempotency-key-in-use")
    assert slow.snapshot()["sagas"] == sagas + 1
    (done,) = (r for r in responses if r.status_code == 200)
    assert slow.post(body, key=key).content == done.content


def test_another_body_while_the_key_is_in_flight_is_a_422(slow: ApiServer) -> None:
    """Reuse with a different body is refused even before the first answer exists."""
    key, customer = new_key(), slow.customers()[0]
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(slow.post, order(customer), key)
        wait_for(
            lambda: slow.query("SELECT 1 FROM api_requests WHERE idempotency_key = ?", key),
            timeout=10,
            what="the key to be claimed",
        )
        assert_problem(slow.post(order(customer, quantity=1), key=key), 422)
        assert first.result().status_code == 200


def test_a_claimed_key_whose_saga_never_started_starts_that_order(server: ApiServer) -> None:
    """A crash between claiming the key and starting the saga: the retry uses the claimed id."""
    key, body = new_key(), order(server.customers()[0])
    claimed = uuid4()
    fingerprint = request_fingerprint(CreateOrderRequest.model_validate(body))
    with closing(sqlite3.connect(server.db, timeout=30)) as c, c:
        c.execute(
            "INSERT INTO api_requests (idempotency_key, fingerprint, order_id, created_at)"
            " VALUES (?, ?, ?, '2026-01-01T00:00:00+00:00')",
            (key, fingerprint, str(claimed)),
        )
    response = server.post(body, key=key)
    assert response.status_code == 200
    assert response.json()["order_id"] == str(claimed)
    assert server.sagas_of(str(claimed)) == 1
    assert server.post(body, key=key).headers["idempotent-replayed"] == "true"


def test_a_retry_after_the_server_was_killed_mid_order_finishes_that_order(
    tmp_path: Path,
) -> None:
    """kill -9 while the order runs; after a restart the same key yields the same order."""
    first = ApiServer.start(tmp_path, "--latency", "1.0")
    key, body = new_key(), order(first.customers()[0])

    def send() -> None:
        try:
            first.post(body, key=key)
        except httpx.TransportError:
            pass  # the server dies under it

    sender = threading.Thread(target=send)
    sender.start()
    try:
        claim = wait_for(
            lambda: first.query(
                "SELECT order_id, response FROM api_requests WHERE idempotency_key = ?", key
            ),
            timeout=10,
            what="the key to be claimed",
        )
    finally:
        first.stop(crash=True)
        sender.join()
    order_id, stored = claim[0]
    assert stored is None  # killed before it could answer

    restarted = ApiServer.start(tmp_path, db=first.db)  # recovers the order at start-up
    try:
        response = restarted.post(body, key=key)
        assert response.status_code == 200, response.text
        assert response.json()["order_id"] == order_id
        assert restarted.sagas_of(order_id) == 1
        assert restarted.effects(order_id)["payments"] == [("59.98", "captured")]
        assert restarted.post(body, key=key).content == response.content
    finally:
        restarted.stop()


# ---------------------------------------------------------------------------- the rest


def test_an_unknown_order_is_a_404_problem(server: ApiServer) -> None:
    """An order id nobody placed."""
    problem = assert_problem(server.status(str(uuid4())), 404)
    assert problem["detail"] == "Order not found"


def test_a_malformed_order_id_is_a_422_problem(server: ApiServer) -> None:
    """The path parameter must be a UUID."""
    assert_problem(server.status("not-an-id"), 422, "order_id")


def test_unknown_routes_and_methods_are_problems(server: ApiServer) -> None:
    """404 and 405 are problem documents too; 405 says what is allowed."""
    assert_problem(server.client.get("/api/v1/nothing"), 404)
    response = server.client.delete("/api/v1/orders")
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST"


def test_health_and_docs(server: ApiServer) -> None:
    """/healthz answers ok; the OpenAPI document and its UI are served."""
    assert server.client.get("/healthz").json() == {"status": "ok"}
    docs = server.client.get("/docs")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
    schema = server.client.get("/openapi.json").json()
    assert {"/api/v1/orders", "/api/v1/orders/{order_id}/status"} <= set(schema["paths"])
    assert "Problem" in schema["components"]["schemas"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_printed_curl_line_places_an_order(server: ApiServer) -> None:
    """`--serve` prints a curl line that works when pasted verbatim."""
    result = subprocess.run(
        shlex.split(server.curl), capture_output=True, text=True, timeout=30, check=True
    )
    assert json.loads(result.stdout)["status"] == "completed"
