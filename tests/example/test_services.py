"""The example's SQLite services, one behaviour at a time, on a temporary file.

Inventory, payments, shipping and notifications each deduplicate on a key, so a retried call
never acts twice; the tests below pin that down, together with the all-or-nothing
reservation, expiry (driven by a fake clock), the shipping hand-over of reserved stock,
fencing (a call with a lower fencing token than one already seen for its order and saga is
refused and does nothing), and the fault injection the demo configures with ``FaultConfig``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from order_fulfillment.db import ShopDatabase
from order_fulfillment.errors import (
    InsufficientStockError,
    PaymentDeclinedError,
    ReservationExpiredError,
    ServiceRefusal,
    ServiceRejectedError,
    ServiceUnavailableError,
    ShipmentAlreadyDispatchedError,
    StaleCallError,
    UnknownProductError,
)
from order_fulfillment.faults import FaultConfig, Faults
from order_fulfillment.services import (
    SQLiteInventory,
    SQLiteNotifications,
    SQLitePayments,
    SQLiteShipping,
)

pytestmark = pytest.mark.anyio

ADDRESS = {
    "street": "1 Main St",
    "city": "Town",
    "state": "CA",
    "postal_code": "1",
    "country": "US",
}
ITEMS = [{"sku": "APPLE", "quantity": 2, "name": "Apple"}]


class FakeClock:
    """A clock that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass
class Services:
    db: ShopDatabase
    clock: FakeClock
    inventory: SQLiteInventory
    payments: SQLitePayments
    shipping: SQLiteShipping
    notifications: SQLiteNotifications

    async def rows(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        return await self.db.read(lambda c: c.execute(sql, params).fetchall())

    async def stock(self) -> dict[str, int]:
        return dict(await self.rows("SELECT sku, stock FROM products"))

    async def balance(self, customer: UUID) -> Decimal:
        rows = await self.rows("SELECT balance FROM accounts WHERE customer_id = ?", str(customer))
        return Decimal(rows[0][0])

    async def reservation_status(self, order_id: UUID) -> str | None:
        rows = await self.rows("SELECT status FROM reservations WHERE order_id = ?", str(order_id))
        return rows[0][0] if rows else None

    async def shipment_status(self, order_id: UUID) -> str | None:
        rows = await self.rows("SELECT status FROM shipments WHERE order_id = ?", str(order_id))
        return rows[0][0] if rows else None

    def faulty(self, config: FaultConfig) -> Services:
        """The same database and clock, behind services that inject `config`'s faults."""
        faults = Faults(config)
        return Services(
            self.db,
            self.clock,
            SQLiteInventory(self.db, faults, self.clock),
            SQLitePayments(self.db, faults, self.clock),
            SQLiteShipping(self.db, faults, self.clock),
            SQLiteNotifications(self.db, faults, self.clock),
        )


@pytest.fixture
async def svc(tmp_path: Path) -> AsyncIterator[Services]:
    """The four services on a fresh file, with a fake clock; APPLE x10 and PEAR x2 in stock."""
    db = ShopDatabase(tmp_path / "shop.db")
    clock = FakeClock()
    services = Services(
        db,
        clock,
        SQLiteInventory(db, clock=clock),
        SQLitePayments(db, clock=clock),
        SQLiteShipping(db, clock=clock),
        SQLiteNotifications(db, clock=clock),
    )
    await db.open()
    await services.inventory.add_product("APPLE", "Apple", Decimal("1.50"), 10)
    await services.inventory.add_product("PEAR", "Pear", Decimal("2.00"), 2)
    try:
        yield services
    finally:
        await db.close()


async def reserve(svc: Services, order_id: UUID, minutes: int = 30, **quantities: int) -> Any:
    items = [{"sku": sku, "quantity": n} for sku, n in quantities.items()]
    return await svc.inventory.reserve(order_id=order_id, items=items, expires_in_minutes=minutes)


async def customer(svc: Services, balance: str = "100.00") -> UUID:
    customer_id = uuid4()
    await svc.payments.open_account(customer_id, Decimal(balance))
    return customer_id


async def charge(svc: Services, customer_id: UUID, amount: str, key: str = "k1") -> Any:
    return await svc.payments.charge(
        customer_id=customer_id,
        amount=Decimal(amount),
        currency="USD",
        order_id=uuid4(),
        idempotency_key=key,
    )


async def shipped_order(svc: Services) -> tuple[UUID, Any]:
    """An order whose two apples are reserved and handed to shipping."""
    order_id = uuid4()
    await reserve(svc, order_id, APPLE=2)
    shipment = await svc.shipping.create(order_id=order_id, address=ADDRESS, items=ITEMS)
    return order_id, shipment


async def fencing_log(svc: Services) -> list[tuple[Any, ...]]:
    """(service, operation, token, highest, outcome) of every fenced call, in order."""
    return await svc.rows(
        "SELECT service, operation, token, highest, outcome FROM fencing_log ORDER BY id"
    )


# ---------------------------------------------------------------------------- inventory


async def test_reserve_holds_every_item(svc: Services) -> None:
    """A reservation takes each item's quantity out of available stock."""
    reservation = await reserve(svc, uuid4(), APPLE=3, PEAR=2)
    assert reservation.status == "active"
    assert await svc.stock() == {"APPLE": 7, "PEAR": 0}


async def test_reserve_is_all_or_nothing(svc: Services) -> None:
    """When the second SKU is short, nothing is held and no stock moves."""
    order_id = uuid4()
    with pytest.raises(InsufficientStockError):
        await reserve(svc, order_id, APPLE=3, PEAR=5)
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}
    assert await svc.reservation_status(order_id) is None
    assert await svc.rows("SELECT * FROM reservation_items") == []


async def test_reserve_same_order_returns_same_reservation(svc: Services) -> None:
    """A retried reservation for the same order returns the first one and takes nothing more."""
    order_id = uuid4()
    first = await reserve(svc, order_id, APPLE=3)
    again = await reserve(svc, order_id, APPLE=3)
    assert again.id == first.id
    assert await svc.stock() == {"APPLE": 7, "PEAR": 2}


async def test_reserve_unknown_sku_is_refused(svc: Services) -> None:
    """An unknown SKU raises UnknownProductError and holds nothing, not even the known items."""
    with pytest.raises(UnknownProductError, match="KIWI"):
        await reserve(svc, uuid4(), APPLE=1, KIWI=1)
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}
    assert await svc.rows("SELECT * FROM reservations") == []


async def test_release_twice_returns_stock_once(svc: Services) -> None:
    """Releasing is idempotent: the second release finds nothing held."""
    order_id = uuid4()
    reservation = await reserve(svc, order_id, APPLE=4)
    await svc.inventory.release(reservation_id=reservation.id, reason="test")
    await svc.inventory.release(reservation_id=reservation.id, reason="test")
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}
    assert await svc.reservation_status(order_id) == "released"


async def test_release_order_finds_the_reservation_by_order(svc: Services) -> None:
    """When the reservation id never reached the caller, releasing by order id still works."""
    order_id = uuid4()
    await reserve(svc, order_id, APPLE=4)
    await svc.inventory.release_order(order_id=order_id, reason="reply lost")
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}
    assert await svc.reservation_status(order_id) == "released"


async def test_release_order_without_reservation_does_nothing(svc: Services) -> None:
    """Releasing an order that never reserved anything is a no-op, not an error."""
    await svc.inventory.release_order(order_id=uuid4(), reason="never reserved")
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}


async def test_sweep_releases_only_expired_active_reservations(svc: Services) -> None:
    """sweep_expired returns expired holds to stock and leaves live and finished ones alone."""
    expired, live, released = uuid4(), uuid4(), uuid4()
    await reserve(svc, expired, minutes=10, APPLE=1)
    await reserve(svc, live, minutes=60, APPLE=2)
    gone = await reserve(svc, released, minutes=10, APPLE=3)
    await svc.inventory.release(reservation_id=gone.id, reason="test")
    svc.clock.advance(minutes=30)

    assert await svc.inventory.sweep_expired() == 1
    assert await svc.reservation_status(expired) == "released"
    assert await svc.reservation_status(live) == "active"
    assert await svc.stock() == {"APPLE": 8, "PEAR": 2}
    assert await svc.inventory.sweep_expired() == 0


async def test_shipping_an_expired_reservation_is_refused(svc: Services) -> None:
    """shipping.create raises ReservationExpiredError once the hold has expired."""
    order_id = uuid4()
    await reserve(svc, order_id, minutes=10, APPLE=2)
    svc.clock.advance(minutes=11)
    with pytest.raises(ReservationExpiredError):
        await svc.shipping.create(order_id=order_id, address=ADDRESS, items=ITEMS)
    assert await svc.shipment_status(order_id) is None
    assert await svc.reservation_status(order_id) == "active"


async def test_shipping_without_reservation_is_refused(svc: Services) -> None:
    """An order that holds no stock cannot be shipped."""
    with pytest.raises(ReservationExpiredError):
        await svc.shipping.create(order_id=uuid4(), address=ADDRESS, items=ITEMS)


# ---------------------------------------------------------------------------- payments


async def test_charge_debits_the_balance_once_per_key(svc: Services) -> None:
    """A repeated idempotency key returns the first payment; the balance is debited once."""
    customer_id = await customer(svc, "100.00")
    first = await charge(svc, customer_id, "30.00", key="order-1")
    again = await charge(svc, customer_id, "30.00", key="order-1")
    assert again == first
    assert first.status == "captured"
    assert await svc.balance(customer_id) == Decimal("70.00")
    assert len(await svc.rows("SELECT * FROM payments")) == 1
    assert await svc.rows("SELECT kind, amount FROM ledger") == [("charge", "30.00")]


async def test_different_keys_are_different_charges(svc: Services) -> None:
    """Two keys are two payments."""
    customer_id = await customer(svc, "100.00")
    first = await charge(svc, customer_id, "30.00", key="a")
    second = await charge(svc, customer_id, "30.00", key="b")
    assert first.id != second.id
    assert await svc.balance(customer_id) == Decimal("40.00")


async def test_charge_declined_when_balance_is_short(svc: Services) -> None:
    """Insufficient funds raise PaymentDeclinedError and write nothing."""
    customer_id = await customer(svc, "5.00")
    with pytest.raises(PaymentDeclinedError):
        await charge(svc, customer_id, "5.01")
    assert await svc.balance(customer_id) == Decimal("5.00")
    assert await svc.rows("SELECT * FROM payments") == []
    assert await svc.rows("SELECT * FROM ledger") == []


async def test_charge_declined_for_unknown_customer(svc: Services) -> None:
    """A customer without an account is declined."""
    with pytest.raises(PaymentDeclinedError, match="no payment account"):
        await charge(svc, uuid4(), "1.00")


async def test_refund_twice_credits_once(svc: Services) -> None:
    """Refunding is idempotent: one refund entry, the balance restored exactly."""
    customer_id = await customer(svc, "100.00")
    payment = await charge(svc, customer_id, "30.00")
    for _ in range(2):
        await svc.payments.refund(payment_id=payment.id, reason="test", idempotency_key="r")
    assert await svc.balance(customer_id) == Decimal("100.00")
    assert await svc.rows("SELECT status FROM payments") == [("refunded",)]
    ledger = await svc.rows("SELECT kind, amount FROM ledger ORDER BY id")
    assert ledger == [("charge", "30.00"), ("refund", "30.00")]


async def test_refund_of_unknown_payment_does_nothing(svc: Services) -> None:
    """A refund for a payment that does not exist is a no-op."""
    await svc.payments.refund(payment_id=uuid4(), reason="test", idempotency_key="r")
    assert await svc.rows("SELECT * FROM ledger") == []


async def test_find_by_idempotency_key(svc: Services) -> None:
    """A charge can be found by its key (the way to recover a lost reply), else None."""
    customer_id = await customer(svc)
    payment = await charge(svc, customer_id, "1.00", key="order-9-payment")
    assert await svc.payments.find_by_idempotency_key("order-9-payment") == payment
    assert await svc.payments.find_by_idempotency_key("never-used") is None


async def test_ledger_sums_to_what_customers_paid(svc: Services) -> None:
    """Charges minus refunds in the ledger equal what left the customers' accounts."""
    alice, bob = await customer(svc, "100.00"), await customer(svc, "50.00")
    await charge(svc, alice, "10.25", key="a1")
    refunded = await charge(svc, alice, "20.00", key="a2")
    await charge(svc, bob, "7.75", key="b1")
    await svc.payments.refund(payment_id=refunded.id, reason="test", idempotency_key="r")

    entries = await svc.rows("SELECT kind, amount FROM ledger")
    net = sum(Decimal(a) if kind == "charge" else -Decimal(a) for kind, a in entries)
    paid = Decimal("150.00") - await svc.balance(alice) - await svc.balance(bob)
    assert net == paid == Decimal("18.00")


# ---------------------------------------------------------------------------- shipping


async def test_create_shipment_commits_the_reservation(svc: Services) -> None:
    """Creating the shipment turns held stock into shipped stock; available stock is unchanged."""
    order_id, shipment = await shipped_order(svc)
    assert shipment.status == "created"
    assert shipment.tracking_number.startswith("TRK-")
    assert await svc.reservation_status(order_id) == "committed"
    assert await svc.stock() == {"APPLE": 8, "PEAR": 2}


async def test_create_shipment_once_per_order(svc: Services) -> None:
    """A retried create returns the order's existing shipment."""
    order_id, shipment = await shipped_order(svc)
    again = await svc.shipping.create(order_id=order_id, address=ADDRESS, items=ITEMS)
    assert again == shipment
    assert await svc.shipping.find_by_order(order_id) == shipment


async def test_cancel_before_dispatch_puts_stock_back_on_hold(svc: Services) -> None:
    """Cancelling before dispatch makes the stock held again; releasing then returns it."""
    order_id, shipment = await shipped_order(svc)
    await svc.shipping.cancel(shipment_id=shipment.id, reason="test")
    assert await svc.shipment_status(order_id) == "cancelled"
    assert await svc.reservation_status(order_id) == "active"
    assert await svc.stock() == {"APPLE": 8, "PEAR": 2}

    await svc.inventory.release_order(order_id=order_id, reason="test")
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}


async def test_cancel_twice_cancels_once(svc: Services) -> None:
    """A second cancel finds nothing to cancel and leaves the stock where it is."""
    order_id, shipment = await shipped_order(svc)
    await svc.shipping.cancel(shipment_id=shipment.id, reason="test")
    await svc.inventory.release_order(order_id=order_id, reason="test")
    await svc.shipping.cancel(shipment_id=shipment.id, reason="test")
    assert await svc.reservation_status(order_id) == "released"
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}


async def test_cancel_after_dispatch_is_refused(svc: Services) -> None:
    """Once dispatch_at has passed, cancel raises ShipmentAlreadyDispatchedError."""
    order_id, shipment = await shipped_order(svc)
    svc.clock.now = shipment.dispatch_at
    with pytest.raises(ShipmentAlreadyDispatchedError):
        await svc.shipping.cancel(shipment_id=shipment.id, reason="test")
    assert await svc.shipment_status(order_id) == "created"
    assert await svc.reservation_status(order_id) == "committed"


async def test_return_restocks_a_dispatched_shipment(svc: Services) -> None:
    """initiate_return brings the stock back (once) and releases the reservation."""
    order_id, shipment = await shipped_order(svc)
    svc.clock.now = shipment.dispatch_at + timedelta(hours=1)
    await svc.shipping.initiate_return(shipment_id=shipment.id)
    await svc.shipping.initiate_return(shipment_id=shipment.id)
    assert await svc.shipment_status(order_id) == "returned"
    assert await svc.reservation_status(order_id) == "released"
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}


# ---------------------------------------------------------------------------- notifications


async def test_emails_are_deduplicated_per_template_and_order(svc: Services) -> None:
    """The same template for the same order is sent once; another template is another email."""
    user, order = uuid4(), str(uuid4())
    for _ in range(3):
        await svc.notifications.send_email(
            user_id=user, template="order_confirmed", data={"order_id": order}
        )
    svc.clock.advance(seconds=1)
    await svc.notifications.send_email(
        user_id=user, template="order_cancelled", data={"order_id": order, "reason": "x"}
    )
    outbox = await svc.notifications.outbox()
    assert [(m["template"], m["data"]["order_id"]) for m in outbox] == [
        ("order_cancelled", order),
        ("order_confirmed", order),
    ]
    assert outbox[0]["user_id"] == str(user)
    assert outbox[0]["data"]["reason"] == "x"


async def test_outbox_is_newest_first_and_limited(svc: Services) -> None:
    """outbox(limit) returns the most recent emails first."""
    for n in range(5):
        svc.clock.advance(seconds=1)
        await svc.notifications.send_email(
            user_id=None, template="order_confirmed", data={"order_id": f"o{n}"}
        )
    outbox = await svc.notifications.outbox(limit=2)
    assert [m["data"]["order_id"] for m in outbox] == ["o4", "o3"]


# ---------------------------------------------------------------------------- faults


@pytest.mark.parametrize("field", ["transient_rate", "reply_lost_rate", "permanent_rate"])
@pytest.mark.parametrize("value", [-0.01, 1.01, float("nan")])
def test_fault_rates_must_be_probabilities(field: str, value: float) -> None:
    """A rate outside [0, 1] is refused when the config is built."""
    with pytest.raises(ValueError, match=field):
        FaultConfig(**{field: value})


def test_fault_latency_must_not_be_negative() -> None:
    """A negative latency bound is refused."""
    with pytest.raises(ValueError, match="latency_seconds"):
        FaultConfig(latency_seconds=-1)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_fault_latency_must_be_finite(value: float) -> None:
    """A NaN or infinite latency bound is refused like a negative one."""
    with pytest.raises(ValueError, match="latency_seconds"):
        FaultConfig(latency_seconds=value)


async def test_default_config_injects_nothing(svc: Services) -> None:
    """With FaultConfig() every call simply acts."""
    faulty = svc.faulty(FaultConfig())
    for _ in range(10):
        await reserve(faulty, uuid4(), APPLE=1)
    assert await svc.stock() == {"APPLE": 0, "PEAR": 2}
    assert faulty.inventory.faults.injected == {}


async def test_transient_fault_fails_before_the_effect(svc: Services) -> None:
    """A transient fault raises ServiceUnavailableError (a ConnectionError) and writes nothing."""
    customer_id = await customer(svc, "100.00")
    faulty = svc.faulty(FaultConfig(transient_rate=1.0))
    with pytest.raises(ServiceUnavailableError) as raised:
        await charge(faulty, customer_id, "30.00", key="k")
    assert isinstance(raised.value, ConnectionError)
    assert await svc.balance(customer_id) == Decimal("100.00")
    assert await svc.payments.find_by_idempotency_key("k") is None
    assert faulty.payments.faults.injected == {"transient": 1}


async def test_lost_reply_fault_acts_then_fails(svc: Services) -> None:
    """A lost reply raises ServiceUnavailableError after the charge was written."""
    customer_id = await customer(svc, "100.00")
    faulty = svc.faulty(FaultConfig(reply_lost_rate=1.0))
    with pytest.raises(ServiceUnavailableError, match="reply lost"):
        await charge(faulty, customer_id, "30.00", key="k")
    assert await svc.balance(customer_id) == Decimal("70.00")
    assert await svc.payments.find_by_idempotency_key("k") is not None
    assert faulty.payments.faults.injected == {"reply_lost": 1}


async def test_lost_reply_retried_with_same_key_charges_once(svc: Services) -> None:
    """Retrying a charge whose reply was lost finds the first payment instead of paying twice."""
    customer_id = await customer(svc, "100.00")
    faulty = svc.faulty(FaultConfig(reply_lost_rate=1.0))
    with pytest.raises(ServiceUnavailableError):
        await charge(faulty, customer_id, "30.00", key="k")
    retried = await charge(svc, customer_id, "30.00", key="k")
    assert retried == await svc.payments.find_by_idempotency_key("k")
    assert await svc.balance(customer_id) == Decimal("70.00")


async def test_permanent_fault_refuses_forward_calls(svc: Services) -> None:
    """A permanent fault raises ServiceRejectedError on a forward call, before it acts."""
    customer_id = await customer(svc, "100.00")
    faulty = svc.faulty(FaultConfig(permanent_rate=1.0))
    order_id = uuid4()
    with pytest.raises(ServiceRejectedError):
        await reserve(faulty, order_id, APPLE=1)
    with pytest.raises(ServiceRejectedError):
        await charge(faulty, customer_id, "1.00")
    with pytest.raises(ServiceRejectedError):
        await faulty.shipping.create(order_id=order_id, address=ADDRESS, items=ITEMS)
    with pytest.raises(ServiceRejectedError):
        await faulty.notifications.send_email(
            user_id=customer_id, template="order_confirmed", data={"order_id": str(order_id)}
        )
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}
    assert await svc.balance(customer_id) == Decimal("100.00")
    assert await svc.rows("SELECT * FROM notifications") == []


async def test_permanent_fault_spares_compensations(svc: Services) -> None:
    """Compensating calls (release, refund, cancel, return, cancellation) always go through."""
    customer_id = await customer(svc, "100.00")
    payment = await charge(svc, customer_id, "30.00")
    cancelled_order, to_cancel = await shipped_order(svc)
    returned_order, to_return = await shipped_order(svc)
    held = uuid4()
    await reserve(svc, held, APPLE=1)
    faulty = svc.faulty(FaultConfig(permanent_rate=1.0))

    await faulty.payments.refund(payment_id=payment.id, reason="t", idempotency_key="r")
    assert await faulty.payments.find_by_idempotency_key("k1") is not None
    await faulty.shipping.cancel(shipment_id=to_cancel.id, reason="t")
    await faulty.inventory.release_order(order_id=cancelled_order, reason="t")
    await faulty.shipping.initiate_return(shipment_id=to_return.id)
    await faulty.inventory.release_order(order_id=held, reason="t")
    assert await faulty.shipping.find_by_order(returned_order) is not None
    await faulty.notifications.send_email(
        user_id=customer_id, template="order_cancelled", data={"order_id": str(held)}
    )

    assert await svc.balance(customer_id) == Decimal("100.00")
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}
    assert len(await svc.notifications.outbox()) == 1
    assert faulty.inventory.faults.injected == {}


def test_seeded_faults_are_reproducible() -> None:
    """Two Faults with the same seed draw the same faults in the same order."""

    def draws(seed: int) -> list[bool]:
        faults = Faults(FaultConfig(reply_lost_rate=0.5, seed=seed))
        out = []
        for _ in range(50):
            try:
                faults.after("op")
                out.append(False)
            except ServiceUnavailableError:
                out.append(True)
        return out

    first = draws(3)
    assert draws(3) == first
    assert True in first
    assert False in first


async def test_database_rejects_negative_stock(svc: Services) -> None:
    """The schema itself forbids negative stock, whatever the code above it does."""
    with pytest.raises(sqlite3.IntegrityError):
        await svc.db.transaction(lambda c: c.execute("UPDATE products SET stock = stock - 3"))
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}


# ---------------------------------------------------------------------------- fencing

SAGA = uuid4()


async def test_a_stale_call_is_refused_and_does_nothing(svc: Services) -> None:
    """Once a call with token 7 was seen for an order and saga, one with token 5 is refused
    (StaleCallError, in the same transaction as the effect it would have had): nothing held."""
    order_id = uuid4()
    items = [{"sku": "APPLE", "quantity": 2}]
    await svc.inventory.release_order(
        order_id=order_id, reason="undo", fencing_token=7, saga_id=SAGA
    )
    with pytest.raises(StaleCallError, match=r"fencing token 5 < 7"):
        await svc.inventory.reserve(
            order_id=order_id, items=items, expires_in_minutes=30, fencing_token=5, saga_id=SAGA
        )
    assert await svc.reservation_status(order_id) is None
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}
    assert await fencing_log(svc) == [
        ("inventory", "inventory.release", 7, None, "accepted"),
        ("inventory", "inventory.reserve", 5, 7, "refused"),
    ]
    # Not a refusal: the step it belongs to may have acted through the process that took over.
    assert not isinstance(StaleCallError("x"), ServiceRefusal)
    assert StaleCallError.retryable is False


async def test_equal_and_higher_tokens_pass_and_calls_without_one_are_not_fenced(
    svc: Services,
) -> None:
    """The same token again (a retry in the same process) and a higher one act; a call without
    a token is not fenced at all, nor logged."""
    order_id = uuid4()
    items = [{"sku": "APPLE", "quantity": 1}]
    for token in (3, 3, 4):
        await svc.inventory.reserve(
            order_id=order_id, items=items, expires_in_minutes=30, fencing_token=token, saga_id=SAGA
        )
    await svc.inventory.release_order(order_id=order_id, reason="undo")  # no token
    assert await svc.reservation_status(order_id) == "released"
    assert [row[-1] for row in await fencing_log(svc)] == ["accepted"] * 3
    assert await svc.rows("SELECT token FROM fences") == [(4,)]


async def test_tokens_of_another_saga_for_the_same_order_are_not_compared(svc: Services) -> None:
    """Tokens are one saga's versions: a second saga for the same order starts low again."""
    order_id = uuid4()
    items = [{"sku": "APPLE", "quantity": 1}]
    for saga, token in ((uuid4(), 9), (uuid4(), 2)):
        await svc.inventory.reserve(
            order_id=order_id, items=items, expires_in_minutes=30, fencing_token=token, saga_id=saga
        )
    assert [row[-1] for row in await fencing_log(svc)] == ["accepted", "accepted"]


async def test_a_business_refusal_keeps_the_fence_raised(svc: Services) -> None:
    """The current holder's call is refused for lack of stock (its effect rolled back): the
    fence still rises, so a stale call cannot reserve once stock is back."""
    order_id, other = uuid4(), uuid4()
    await reserve(svc, other, PEAR=2)
    pears = [{"sku": "PEAR", "quantity": 2}]
    with pytest.raises(InsufficientStockError):
        await svc.inventory.reserve(
            order_id=order_id, items=pears, expires_in_minutes=30, fencing_token=8, saga_id=SAGA
        )
    await svc.inventory.release_order(order_id=other, reason="test")
    with pytest.raises(StaleCallError):
        await svc.inventory.reserve(
            order_id=order_id, items=pears, expires_in_minutes=30, fencing_token=6, saga_id=SAGA
        )
    assert await svc.reservation_status(order_id) is None
    assert await svc.stock() == {"APPLE": 10, "PEAR": 2}


async def test_compensations_by_id_are_fenced_on_their_order(svc: Services) -> None:
    """A refund names a payment, a cancel a shipment: each is fenced on the order it belongs
    to."""
    customer_id = await customer(svc, "100.00")
    order_id = uuid4()
    payment = await svc.payments.charge(
        customer_id=customer_id,
        amount=Decimal("30.00"),
        currency="USD",
        order_id=order_id,
        idempotency_key="order-1-payment",
        fencing_token=5,
        saga_id=SAGA,
    )
    with pytest.raises(StaleCallError):
        await svc.payments.refund(
            payment_id=payment.id, reason="x", idempotency_key="r", fencing_token=4, saga_id=SAGA
        )
    assert await svc.balance(customer_id) == Decimal("70.00")
    await svc.payments.refund(
        payment_id=payment.id, reason="x", idempotency_key="r", fencing_token=6, saga_id=SAGA
    )
    assert await svc.balance(customer_id) == Decimal("100.00")

    shipped, shipment = await shipped_order(svc)
    await svc.shipping.find_by_order(shipped, fencing_token=3, saga_id=SAGA)
    with pytest.raises(StaleCallError):
        await svc.shipping.cancel(
            shipment_id=shipment.id, reason="x", fencing_token=2, saga_id=SAGA
        )
    with pytest.raises(StaleCallError):
        await svc.shipping.initiate_return(shipment_id=shipment.id, fencing_token=2, saga_id=SAGA)
    assert await svc.shipment_status(shipped) == "created"


async def test_a_lookup_that_finds_nothing_still_fences_a_late_action(svc: Services) -> None:
    """A compensation that finds no charge (nor shipment) raises the fence, so a stale charge
    (or shipment) that arrives afterwards cannot land on an order that was compensated."""
    customer_id = await customer(svc, "100.00")
    order_id = uuid4()
    key = f"order-{order_id}-payment"
    found = await svc.payments.find_by_idempotency_key(
        key, order_id=order_id, fencing_token=9, saga_id=SAGA
    )
    assert found is None
    with pytest.raises(StaleCallError):
        await svc.payments.charge(
            customer_id=customer_id,
            amount=Decimal("10.00"),
            currency="USD",
            order_id=order_id,
            idempotency_key=key,
            fencing_token=8,
            saga_id=SAGA,
        )
    assert await svc.balance(customer_id) == Decimal("100.00")
    assert await svc.rows("SELECT * FROM payments") == []

    await reserve(svc, order_id, APPLE=1)
    assert await svc.shipping.find_by_order(order_id, fencing_token=9, saga_id=SAGA) is None
    with pytest.raises(StaleCallError):
        await svc.shipping.create(
            order_id=order_id, address=ADDRESS, items=ITEMS, fencing_token=8, saga_id=SAGA
        )
    assert await svc.shipment_status(order_id) is None
    assert await svc.reservation_status(order_id) == "active"


async def test_emails_are_fenced_on_the_order_they_are_about(svc: Services) -> None:
    """send_email is fenced on ``data["order_id"]``."""
    order_id = str(uuid4())
    await svc.notifications.send_email(
        user_id=None,
        template="order_cancelled",
        data={"order_id": order_id},
        fencing_token=4,
        saga_id=SAGA,
    )
    with pytest.raises(StaleCallError):
        await svc.notifications.send_email(
            user_id=None,
            template="order_confirmed",
            data={"order_id": order_id},
            fencing_token=3,
            saga_id=SAGA,
        )
    assert await svc.rows("SELECT template FROM notifications") == [("order_cancelled",)]
