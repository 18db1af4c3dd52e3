"""The whole order saga through `Shop`: one SQLite file, real services, injected failures.

Every scenario ends with `shop.check_invariants() == []`: stock conserved, money balanced,
no double charge, net charged equal to the total for a completed order and to zero otherwise.
The last tests corrupt the file on purpose to show that the checker does catch a broken book.

The key promise: a COMPENSATED order leaves the customer charged nothing net and the stock as
it was, even when the charge acted but its reply never came back (lost, timed out in the
client, or cut off by the step's timeout). The saga then finds the payment by its idempotency
key and refunds it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from random import Random
from typing import Any
from uuid import UUID, uuid4

import anyio
import pytest

from order_fulfillment.domain import OrderData, ShippingAddress
from order_fulfillment.faults import FaultConfig, Faults
from order_fulfillment.saga import OrderFulfillmentSaga
from order_fulfillment.services import SQLitePayments
from order_fulfillment.shop import InvalidOrderError, OrderLine, Shop
from saga_orchestrator import RetryPolicy, SagaResult, SagaStatus, SagaStep, StepStatus

pytestmark = pytest.mark.anyio

ADDRESS = ShippingAddress("1 Main St", "Town", "CA", "12345", "US")
SKU, PRICE, STOCK = "SKU-1", Decimal("12.50"), 5
RICH, POOR = Decimal("1000.00"), Decimal("5.00")
QUICK = {"initial_backoff_seconds": 0.001, "max_backoff_seconds": 0.01, "jitter_ratio": 0}
RETRY = RetryPolicy(max_attempts=3, **QUICK)
COMPENSATION_RETRY = RetryPolicy(max_attempts=20, **QUICK)


class FaultsOn(Faults):
    """A FaultConfig's faults, injected into the named operations only."""

    def __init__(self, config: FaultConfig, *operations: str) -> None:
        super().__init__(config)
        self.operations = set(operations)

    async def before(self, operation: str, *, compensating: bool = False) -> None:
        if operation in self.operations:
            await super().before(operation, compensating=compensating)

    def after(self, operation: str) -> None:
        if operation in self.operations:
            super().after(operation)


class ChargeWithoutReply:
    """Payments whose charge takes the money, then `instead_of_reply()` rather than return."""

    def __init__(self, inner: SQLitePayments, instead_of_reply: Callable[[], Awaitable[Any]]):
        self.inner = inner
        self.instead_of_reply = instead_of_reply

    async def charge(self, **kwargs: Any) -> Any:
        await self.inner.charge(**kwargs)
        await self.instead_of_reply()
        raise AssertionError("unreachable")  # pragma: no cover

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class ShortPaymentTimeout(OrderFulfillmentSaga):
    """The example saga with a 0.2 s payment timeout instead of 60 s, to keep the test short."""

    def define_steps(self) -> list[SagaStep[OrderData]]:
        return [
            dataclasses.replace(s, timeout_seconds=0.2) if s.name == "process_payment" else s
            for s in super().define_steps()
        ]


@asynccontextmanager
async def open_shop(path: Path, **options: Any) -> AsyncIterator[Shop]:
    """A shop on `path` with quick retries and SKU-1 (5 in stock at 12.50)."""
    async with Shop(path, retry=RETRY, compensation_retry=COMPENSATION_RETRY, **options) as shop:
        await shop.inventory.add_product(SKU, "Widget", PRICE, STOCK)
        yield shop


@pytest.fixture
async def shop(tmp_path: Path) -> AsyncIterator[Shop]:
    """A fresh shop without faults; shipments leave the warehouse an hour after creation."""
    async with open_shop(tmp_path / "shop.db") as shop:
        yield shop
        assert await shop.check_invariants() == []


async def customer(shop: Shop, balance: Decimal = RICH) -> UUID:
    customer_id = uuid4()
    await shop.payments.open_account(customer_id, balance)
    return customer_id


async def order(shop: Shop, customer_id: UUID, quantity: int = 2) -> OrderData:
    return await shop.price_order(customer_id, [OrderLine(SKU, quantity)], ADDRESS)


async def place(shop: Shop, customer_id: UUID, quantity: int = 2) -> SagaResult[OrderData]:
    return await shop.place(await order(shop, customer_id, quantity))


async def one(shop: Shop, sql: str, *params: Any) -> Any:
    row = await shop.db.read(lambda c: c.execute(sql, params).fetchone())
    return None if row is None else row[0]


async def balance(shop: Shop, customer_id: UUID) -> Decimal:
    return Decimal(
        await one(shop, "SELECT balance FROM accounts WHERE customer_id = ?", str(customer_id))
    )


async def stock(shop: Shop) -> int:
    value: int = await one(shop, "SELECT stock FROM products WHERE sku = ?", SKU)
    return value


async def status_of(shop: Shop, table: str, order_id: UUID) -> str | None:
    value: str | None = await one(
        shop, f"SELECT status FROM {table} WHERE order_id = ?", str(order_id)
    )
    return value


async def emails(shop: Shop) -> list[str]:
    return sorted(m["template"] for m in await shop.notifications.outbox())


def undone(result: SagaResult[Any]) -> list[str]:
    """The steps compensated, in the order their compensations finished."""
    finished = {s.name: s.compensated_at for s in result.steps if s.compensated_at is not None}
    return sorted(finished, key=finished.__getitem__)


async def assert_nothing_net(shop: Shop, result: SagaResult[OrderData], customer_id: UUID) -> None:
    """The order is COMPENSATED, the customer has their money and the stock is back."""
    assert result.status is SagaStatus.COMPENSATED
    assert await balance(shop, customer_id) == RICH
    assert await stock(shop) == STOCK
    assert await status_of(shop, "reservations", result.data.order_id) in (None, "released")
    assert await shop.check_invariants() == []


# ---------------------------------------------------------------------------- happy path


async def test_completed_order_charges_the_total_and_ships(shop: Shop) -> None:
    """A completed order is charged exactly its total, ships, and is confirmed by email."""
    alice = await customer(shop)
    result = await place(shop, alice, quantity=2)

    assert result.status is SagaStatus.COMPLETED
    assert result.data.total == 2 * PRICE
    assert await balance(shop, alice) == RICH - 2 * PRICE
    assert await stock(shop) == STOCK - 2
    assert await status_of(shop, "reservations", result.data.order_id) == "committed"
    assert await status_of(shop, "shipments", result.data.order_id) == "created"
    assert await status_of(shop, "payments", result.data.order_id) == "captured"
    assert result.data.tracking_number is not None
    assert await emails(shop) == ["order_confirmed"]
    assert await shop.check_invariants() == []


async def test_placing_the_same_order_twice_charges_once(shop: Shop) -> None:
    """A second saga for the same order id finds every effect by that id: nothing twice."""
    alice = await customer(shop)
    data = await order(shop, alice)
    first = await shop.place(data)
    second = await shop.place(dataclasses.replace(data))

    assert first.saga_id != second.saga_id
    assert first.status is second.status is SagaStatus.COMPLETED
    assert second.data.payment_id == first.data.payment_id
    assert second.data.tracking_number == first.data.tracking_number
    assert await balance(shop, alice) == RICH - data.total
    assert await stock(shop) == STOCK - 2
    assert await emails(shop) == ["order_confirmed"]


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([], "items"),
        ([OrderLine("NOPE", 1)], "items[0].sku"),
        ([OrderLine(SKU, 1), OrderLine(SKU, 1)], "items[1].sku"),
        ([OrderLine(SKU, 0)], "items[0].quantity"),
        ([OrderLine(SKU, 1001)], "items[0].quantity"),
        ([OrderLine(SKU, 1, unit_price=Decimal("0.01"))], "items[0].unit_price"),
    ],
    ids=["no items", "unknown SKU", "SKU twice", "zero", "too many", "wrong price"],
)
async def test_price_order_refuses_a_bad_order(
    shop: Shop, lines: list[OrderLine], field: str
) -> None:
    """An order the catalog cannot price is refused, naming the culprit, before any write."""
    with pytest.raises(InvalidOrderError) as refused:
        await shop.price_order(await customer(shop), lines, ADDRESS)
    assert refused.value.field == field
    assert await one(shop, "SELECT count(*) FROM reservations") == 0


async def test_price_order_refuses_an_unknown_customer(shop: Shop) -> None:
    """A customer without an account cannot order."""
    with pytest.raises(InvalidOrderError) as refused:
        await shop.price_order(uuid4(), [OrderLine(SKU, 1)], ADDRESS)
    assert refused.value.field == "customer_id"


async def test_price_order_takes_the_price_from_the_catalog(shop: Shop) -> None:
    """The total is the catalog price times the quantity, whatever the client believed."""
    data = await shop.price_order(await customer(shop), [OrderLine(SKU, 3, PRICE)], ADDRESS)
    assert data.total == 3 * PRICE
    assert data.items[0].unit_price == PRICE


async def test_price_order_refuses_a_fractional_quantity(shop: Shop) -> None:
    """A quantity of 1.5 is an invalid order, not a crash."""
    with pytest.raises(InvalidOrderError):
        await shop.price_order(await customer(shop), [OrderLine(SKU, 1.5)], ADDRESS)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- compensation paths


async def test_out_of_stock_order_is_rejected_with_nothing_to_undo(shop: Shop) -> None:
    """Reserve fails (not enough stock): nothing was done, so nothing is undone."""
    alice = await customer(shop)
    result = await place(shop, alice, quantity=STOCK + 1)

    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert "InsufficientStockError" in result.error
    assert result.steps[0].status is StepStatus.FAILED
    assert undone(result) == []
    assert await one(shop, "SELECT count(*) FROM payments") == 0
    assert await emails(shop) == []
    await assert_nothing_net(shop, result, alice)


async def test_rejected_reservation_is_not_retried_or_undone(shop: Shop) -> None:
    """A permanent refusal from inventory ends the order at once, before any charge."""
    alice = await customer(shop)
    shop.inventory.faults = Faults(FaultConfig(permanent_rate=1.0))
    result = await place(shop, alice)

    assert result.status is SagaStatus.COMPENSATED
    assert result.steps[0].attempts == 1
    assert undone(result) == []
    await assert_nothing_net(shop, result, alice)


async def test_declined_payment_releases_the_stock(shop: Shop) -> None:
    """Payment declined: the reservation is released and nothing is charged."""
    bob = await customer(shop, POOR)
    result = await place(shop, bob)

    assert result.status is SagaStatus.COMPENSATED
    assert "PaymentDeclinedError" in (result.error or "")
    assert undone(result) == ["reserve_inventory"]
    assert await balance(shop, bob) == POOR
    assert await stock(shop) == STOCK
    assert await status_of(shop, "reservations", result.data.order_id) == "released"
    assert await one(shop, "SELECT count(*) FROM payments") == 0
    assert await shop.check_invariants() == []


async def test_failed_shipment_refunds_then_releases(shop: Shop) -> None:
    """Shipping refuses the order: the payment is refunded, then the stock released."""
    alice = await customer(shop)
    shop.shipping.faults = Faults(FaultConfig(permanent_rate=1.0))
    result = await place(shop, alice)

    assert "create_shipment" in (result.error or "")
    assert undone(result) == ["process_payment", "reserve_inventory"]
    assert await status_of(shop, "payments", result.data.order_id) == "refunded"
    assert await status_of(shop, "shipments", result.data.order_id) is None
    await assert_nothing_net(shop, result, alice)


async def test_failed_confirmation_cancels_refunds_and_releases(shop: Shop) -> None:
    """The confirmation is refused: shipment cancelled, payment refunded, stock released."""
    alice = await customer(shop)
    shop.notifications.faults = Faults(FaultConfig(permanent_rate=1.0))
    result = await place(shop, alice)

    assert "send_confirmation" in (result.error or "")
    assert undone(result) == ["create_shipment", "process_payment", "reserve_inventory"]
    assert await status_of(shop, "shipments", result.data.order_id) == "cancelled"
    assert await status_of(shop, "payments", result.data.order_id) == "refunded"
    # The confirmation was refused before it went out, so there is no cancellation to send.
    assert await emails(shop) == []
    await assert_nothing_net(shop, result, alice)


async def test_failed_confirmation_after_dispatch_returns_the_parcel(tmp_path: Path) -> None:
    """When the parcel has already left, cancelling fails and the compensation returns it."""
    async with open_shop(tmp_path / "shop.db", dispatch_delay_seconds=0) as shop:
        alice = await customer(shop)
        shop.notifications.faults = Faults(FaultConfig(permanent_rate=1.0))
        result = await place(shop, alice)

        assert undone(result) == ["create_shipment", "process_payment", "reserve_inventory"]
        assert await status_of(shop, "shipments", result.data.order_id) == "returned"
        assert await status_of(shop, "payments", result.data.order_id) == "refunded"
        await assert_nothing_net(shop, result, alice)


async def test_confirmation_that_may_have_gone_out_is_followed_by_a_cancellation(
    shop: Shop,
) -> None:
    """A confirmation whose reply was lost may have been sent: the customer is told it's off."""
    alice = await customer(shop)
    shop.notifications.faults = FaultsOn(
        FaultConfig(reply_lost_rate=1.0), "notification.order_confirmed"
    )
    result = await place(shop, alice)

    assert undone(result) == [
        "send_confirmation",
        "create_shipment",
        "process_payment",
        "reserve_inventory",
    ]
    assert await emails(shop) == ["order_cancelled", "order_confirmed"]
    await assert_nothing_net(shop, result, alice)


# ---------------------------------------------------------------------------- lost replies


async def test_charge_retried_after_a_lost_reply_charges_once(shop: Shop) -> None:
    """A charge whose reply is lost once is retried with the same key: charged exactly once."""
    alice = await customer(shop)
    payments = FaultsOn(FaultConfig(reply_lost_rate=0.5, seed=1), "payment.charge")
    shop.payments.faults = payments
    results = [await place(shop, alice, quantity=1) for _ in range(STOCK)]

    assert payments.injected.get("reply_lost", 0) > 0
    completed = [r for r in results if r.status is SagaStatus.COMPLETED]
    assert completed
    spent = sum((r.data.total for r in completed), Decimal("0"))
    assert await balance(shop, alice) == RICH - spent
    assert await shop.check_invariants() == []


async def _charge_reply_lost(shop: Shop, data: OrderData) -> SagaResult[OrderData]:
    shop.payments.faults = FaultsOn(FaultConfig(reply_lost_rate=1.0), "payment.charge")
    return await shop.place(data)


async def _charge_client_timeout(shop: Shop, data: OrderData) -> SagaResult[OrderData]:
    async def timeout() -> None:
        raise TimeoutError("read timed out")

    shop.payments = ChargeWithoutReply(shop.payments, timeout)  # type: ignore[assignment]
    return await shop.place(data)


async def _charge_step_timeout(shop: Shop, data: OrderData) -> SagaResult[OrderData]:
    saga = ShortPaymentTimeout(
        data,
        inventory_service=shop.inventory,
        payment_service=ChargeWithoutReply(shop.payments, anyio.sleep_forever),
        shipping_service=shop.shipping,
        notification_service=shop.notifications,
    )
    return await shop.orchestrator.execute(saga)


@pytest.mark.parametrize(
    "lose_the_reply",
    [_charge_reply_lost, _charge_client_timeout, _charge_step_timeout],
    ids=["reply-lost", "client-timeout", "step-timeout"],
)
async def test_charge_without_reply_is_found_and_refunded(
    shop: Shop, lose_the_reply: Callable[[Shop, OrderData], Awaitable[SagaResult[OrderData]]]
) -> None:
    """The money moved but no reply came: the saga compensates and refunds it by its key."""
    alice = await customer(shop)
    data = await order(shop, alice)
    result = await lose_the_reply(shop, data)

    payment_step = result.steps[1]
    assert payment_step.effect_possible  # failed, yet it may have acted: so it is undone
    assert payment_step.status is StepStatus.COMPENSATED
    assert payment_step.attempts == RETRY.max_attempts
    assert result.data.payment_id is None  # the id never reached the saga
    assert undone(result) == ["process_payment", "reserve_inventory"]
    assert await status_of(shop, "payments", data.order_id) == "refunded"
    assert await one(shop, "SELECT count(*) FROM payments") == 1
    kinds = await shop.db.read(lambda c: c.execute("SELECT kind FROM ledger").fetchall())
    assert sorted(k for (k,) in kinds) == ["charge", "refund"]
    await assert_nothing_net(shop, result, alice)


async def test_shipment_without_reply_is_found_and_cancelled(shop: Shop) -> None:
    """A shipment created but never acknowledged is found by order id and cancelled."""
    alice = await customer(shop)
    shop.shipping.faults = FaultsOn(FaultConfig(reply_lost_rate=1.0), "shipping.create")
    result = await place(shop, alice)

    assert result.data.shipment_id is None
    assert undone(result) == ["create_shipment", "process_payment", "reserve_inventory"]
    assert await status_of(shop, "shipments", result.data.order_id) == "cancelled"
    await assert_nothing_net(shop, result, alice)


async def test_reservation_without_reply_is_released_by_order(shop: Shop) -> None:
    """Stock held by a reservation whose reply was lost is released by the order id."""
    alice = await customer(shop)
    shop.inventory.faults = FaultsOn(FaultConfig(reply_lost_rate=1.0), "inventory.reserve")
    result = await place(shop, alice)

    assert result.data.reservation_id is None
    assert undone(result) == ["reserve_inventory"]
    assert await status_of(shop, "reservations", result.data.order_id) == "released"
    await assert_nothing_net(shop, result, alice)


async def test_every_reply_lost_stops_failed_until_an_operator_retries(tmp_path: Path) -> None:
    """If even compensations never get a reply, the saga stops FAILED; retry() finishes it."""
    async with open_shop(tmp_path / "shop.db", faults=FaultConfig(reply_lost_rate=1.0)) as shop:
        alice = await customer(shop)
        result = await place(shop, alice)

        assert result.status is SagaStatus.FAILED
        assert result.steps[0].status is StepStatus.COMPENSATION_FAILED
        assert await stock(shop) == STOCK  # the release did act; only its reply was lost
        assert any("FAILED" in p for p in await shop.check_invariants())

        shop.faults.config = FaultConfig()  # the outage is over
        retried = await shop.orchestrator.retry(result.saga_id)
        assert retried.status is SagaStatus.COMPENSATED
        await assert_nothing_net(shop, retried, alice)


async def test_random_faults_keep_the_books(tmp_path: Path) -> None:
    """Forty orders under every kind of fault: all terminal, none FAILED, the books balance."""
    faults = FaultConfig(transient_rate=0.1, reply_lost_rate=0.1, permanent_rate=0.05, seed=11)
    async with open_shop(tmp_path / "shop.db", faults=faults, dispatch_delay_seconds=0) as shop:
        await shop.inventory.add_product("SKU-2", "Gadget", Decimal("3.00"), 100)
        await shop.inventory.add_product("SKU-3", "Gizmo", Decimal("0.75"), 100)
        customers = [await customer(shop) for _ in range(5)] + [await customer(shop, POOR)]
        orders = [
            await shop.price_order(
                customers[n % len(customers)],
                [OrderLine("SKU-2", 1 + n % 3), OrderLine("SKU-3", 1)],
                ADDRESS,
            )
            for n in range(40)
        ]
        results: list[SagaResult[OrderData]] = []

        async def run(data: OrderData) -> None:
            results.append(await shop.place(data))

        async with anyio.create_task_group() as tg:
            for data in orders:
                tg.start_soon(run, data)

        statuses = {r.status for r in results}
        assert statuses <= {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
        assert statuses == {SagaStatus.COMPLETED, SagaStatus.COMPENSATED}
        assert set(shop.faults.injected) == {"transient", "reply_lost", "permanent"}
        assert await shop.check_invariants() == []


# ---------------------------------------------------------------------------- recovery


async def test_recover_finishes_an_order_its_process_abandoned(tmp_path: Path) -> None:
    """An order cut off mid-charge is finished by the next Shop's recover(), charged once."""
    path = tmp_path / "shop.db"
    charged = anyio.Event()

    async def hang() -> None:
        charged.set()
        await anyio.sleep_forever()

    async with open_shop(path) as shop:
        alice = await customer(shop)
        data = await order(shop, alice)
        shop.payments = ChargeWithoutReply(shop.payments, hang)  # type: ignore[assignment]
        async with anyio.create_task_group() as tg:
            tg.start_soon(shop.place, data)
            await charged.wait()
            tg.cancel_scope.cancel()  # the process "dies" with the charge in flight
        [stored] = await shop.repository.list_sagas()
        assert stored.status is SagaStatus.RUNNING
        assert stored.step("process_payment").status is StepStatus.RUNNING

    async with Shop(path, retry=RETRY, compensation_retry=COMPENSATION_RETRY) as restarted:
        [result] = await restarted.recover()
        assert result.status is SagaStatus.COMPLETED
        assert result.steps[1].attempts == 2  # the interrupted attempt, then the retry
        assert await balance(restarted, alice) == RICH - data.total
        assert await one(restarted, "SELECT count(*) FROM payments") == 1
        assert await restarted.recover() == []
        assert await restarted.check_invariants() == []


async def test_seed_demo_seeds_a_file_once(shop: Shop) -> None:
    """seed_demo adds the catalog only to an empty one and tops customers up to the count."""
    rng = Random(1)
    first = await shop.seed_demo(customers=3, stock=7, rng=rng)
    again = await shop.seed_demo(customers=5, stock=99, rng=rng)

    assert again[:3] == first
    assert len(again) == 5
    assert await shop.customers() == again
    assert set(await shop.inventory.products()) == {SKU}  # the catalog was not empty


def test_saga_needs_each_service_in_one_spelling() -> None:
    """The saga takes inventory_service= or inventory=, but not neither and not both."""
    services = {"payment": 1, "shipping": 1, "notification": 1}
    with pytest.raises(TypeError, match="needs inventory_service"):
        OrderFulfillmentSaga(OrderData(), **services)
    with pytest.raises(TypeError, match="either inventory_service= or inventory="):
        OrderFulfillmentSaga(OrderData(), inventory_service=1, inventory=1, **services)
    saga = OrderFulfillmentSaga(OrderData(), inventory=1, **services)
    assert [s.name for s in saga.steps] == [
        "reserve_inventory",
        "process_payment",
        "create_shipment",
        "send_confirmation",
    ]


# ---------------------------------------------------------------------------- the checker


CORRUPTIONS = {
    "stock below zero (past the schema's CHECK)": (
        "PRAGMA ignore_check_constraints = ON; UPDATE products SET stock = -1;"
        " PRAGMA ignore_check_constraints = OFF",
        "stock of SKU-1 is negative: -1",
    ),
    "stock appears from nowhere": (
        "UPDATE products SET stock = stock + 1",
        "not conserved",
    ),
    "money vanishes from an account": (
        "UPDATE accounts SET balance = '0.00'",
        "do not add up",
    ),
    "a ledger entry without a payment": (
        "INSERT INTO ledger (payment_id, customer_id, kind, amount, entry_key, at)"
        " SELECT id, customer_id, 'charge', amount, 'forged', created_at FROM payments",
        "ledger does not balance",
    ),
    "a second charge for the same order": (
        "INSERT INTO payments SELECT id || '-2', idempotency_key || '-2', order_id,"
        " customer_id, amount, currency, status, created_at FROM payments",
        "charged 2 times",
    ),
    "a completed order refunded behind the saga's back": (
        "UPDATE payments SET status = 'refunded'",
        "net charged 0",
    ),
    "a compensated order still holding stock": (
        "UPDATE reservations SET status = 'active' WHERE status = 'released'",
        "is compensated but its stock is active",
    ),
    "a saga left running": (
        "UPDATE sagas SET state = json_set(state, '$.status', 'running'),"
        " status = 'running' WHERE rowid = 1",
        "1 sagas are not terminal",
    ),
}


@pytest.mark.parametrize(("sql", "expected"), CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
async def test_check_invariants_catches_a_corrupted_book(
    tmp_path: Path, sql: str, expected: str
) -> None:
    """The checker is not vacuous: each kind of corruption is reported."""
    async with open_shop(tmp_path / "shop.db") as shop:
        await place(shop, await customer(shop))  # completed
        await place(shop, await customer(shop, POOR))  # compensated
        assert await shop.check_invariants() == []

        await shop.db.transaction(lambda c: [c.execute(q) for q in sql.split(";")])
        problems = await shop.check_invariants()
        assert any(expected in p for p in problems), problems
