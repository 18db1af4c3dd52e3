"""The four services the order saga calls, with real state in SQLite.

Each is defined first as a Protocol: that is exactly what you replace with a client of your
own service. The SQLite implementations below keep the invariants the demo checks:

- stock is conserved: ``initial = available + held (active) + shipped (committed)``;
- money balances: ``initial balance = balance + captured, not refunded``;
- every call that acts deduplicates on a key, so a retried call never acts twice;
- a call that carries a fencing token lower than one the service already saw for its order
  and saga is refused (`StaleCallError`) and does nothing: it comes from a process that lost
  the saga to another one (frozen past its lease, then woken up).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol
from uuid import UUID, uuid4

from .db import ShopDatabase, utcnow
from .errors import (
    InsufficientStockError,
    PaymentDeclinedError,
    ReservationExpiredError,
    ShipmentAlreadyDispatchedError,
    StaleCallError,
    UnknownProductError,
)
from .faults import Faults

Clock = Callable[[], datetime]


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    price: Decimal
    stock: int


@dataclass(frozen=True, slots=True)
class Reservation:
    id: UUID
    order_id: UUID
    status: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class Payment:
    id: UUID
    order_id: UUID
    customer_id: UUID
    amount: Decimal
    currency: str
    status: str


@dataclass(frozen=True, slots=True)
class Shipment:
    id: UUID
    order_id: UUID
    tracking_number: str
    status: str
    dispatch_at: datetime


# ---------------------------------------------------------------------------- protocols


# Every method also takes `fencing_token` and `saga_id` (both optional): the running step's
# `current_step().fencing_token` and the saga it belongs to. A call whose token is lower than
# one the service already saw for the same order and saga raises StaleCallError and does
# nothing. A call without a token is not fenced.


class InventoryService(Protocol):
    async def reserve(
        self,
        *,
        order_id: UUID,
        items: list[dict[str, Any]],
        expires_in_minutes: int,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Reservation:
        """Hold every item, all or nothing. The same order gets the same reservation."""
        ...

    async def release(
        self,
        *,
        reservation_id: UUID,
        reason: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        """Return held stock. Releasing twice, or a released reservation, does nothing."""
        ...

    async def release_order(
        self,
        *,
        order_id: UUID,
        reason: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        """Release the order's reservation, if any (its id may never have reached us)."""
        ...


class PaymentService(Protocol):
    async def charge(
        self,
        *,
        customer_id: UUID | None,
        amount: Decimal,
        currency: str,
        order_id: UUID,
        idempotency_key: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Payment:
        """Charge once per key: a repeated key returns the first payment."""
        ...

    async def refund(
        self,
        *,
        payment_id: UUID,
        reason: str,
        idempotency_key: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        """Refund a payment in full, once."""
        ...

    async def find_by_idempotency_key(
        self,
        idempotency_key: str,
        *,
        order_id: UUID | None = None,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Payment | None:
        """The payment a charge with this key made, if it made one. With a token, the
        lookup is fenced like a charge (on `order_id` when no payment exists), so that a
        stale charge cannot land after a compensation found nothing to refund."""
        ...


class ShippingService(Protocol):
    async def create(
        self,
        *,
        order_id: UUID,
        address: dict[str, Any],
        items: list[dict[str, Any]],
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Shipment:
        """Create the order's shipment (once per order), taking its reserved stock."""
        ...

    async def cancel(
        self,
        *,
        shipment_id: UUID,
        reason: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        """Cancel before dispatch; raises ShipmentAlreadyDispatchedError after it."""
        ...

    async def initiate_return(
        self, *, shipment_id: UUID, fencing_token: int | None = None, saga_id: UUID | None = None
    ) -> None:
        """Bring a dispatched shipment back; its stock returns to inventory."""
        ...

    async def find_by_order(
        self, order_id: UUID, *, fencing_token: int | None = None, saga_id: UUID | None = None
    ) -> Shipment | None:
        """The order's shipment, if any (fenced like `create` when given a token)."""
        ...


class NotificationService(Protocol):
    async def send_email(
        self,
        *,
        user_id: UUID | None,
        template: str,
        data: dict[str, Any],
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        """Send once per (template, order): a repeated call sends nothing more."""
        ...


# ---------------------------------------------------------------------------- SQLite


class _Service:
    service = ""
    """The name the service's fences are kept under."""

    def __init__(self, db: ShopDatabase, faults: Faults | None = None, clock: Clock = utcnow):
        self.db = db
        self.faults = faults or Faults()
        self.clock = clock

    async def _call(
        self,
        operation: str,
        fn: Callable[[sqlite3.Connection], Any],
        *,
        compensating: bool,
        fence: Fence | None = None,
    ) -> Any:
        await self.faults.before(operation, compensating=compensating)
        result = await self._transaction(operation, fn, fence)
        self.faults.after(operation)
        return result

    async def _transaction(
        self, operation: str, fn: Callable[[sqlite3.Connection], Any], fence: Fence | None
    ) -> Any:
        """`fn` in one transaction; with a fence, checked and raised in that transaction."""
        if fence is None:
            return await self.db.transaction(fn)
        now = self.clock().isoformat()

        def fenced(c: sqlite3.Connection) -> Any:
            order_id = fence.order(c)
            if order_id is not None:  # None: nothing to act on, so nothing to fence
                highest = _check_fence(c, self.service, operation, order_id, fence, now)
                if highest is not None:
                    return _Raise(
                        StaleCallError(
                            f"{operation}: stale call for order {order_id} refused, nothing"
                            f" done (fencing token {fence.token} < {highest} already seen)"
                        )
                    )
            # The effect may still fail (no stock, declined): it alone is undone, the fence
            # stays raised, so a stale call cannot succeed where the current holder could not.
            c.execute("SAVEPOINT effect")
            try:
                result = fn(c)
            except Exception as exc:
                c.execute("ROLLBACK TO effect")
                c.execute("RELEASE effect")
                return _Raise(exc)
            c.execute("RELEASE effect")
            return result

        result = await self.db.transaction(fenced)
        if isinstance(result, _Raise):
            raise result.error
        return result


@dataclass(frozen=True, slots=True)
class Fence:
    """A call's fencing token, the saga it speaks for, and how to find its order."""

    token: int
    saga_id: UUID | None
    order: Callable[[sqlite3.Connection], str | None]
    """The order the call is about, looked up in the call's transaction."""


def _fence(
    token: int | None, saga_id: UUID | None, order: Callable[[sqlite3.Connection], str | None]
) -> Fence | None:
    return None if token is None else Fence(token, saga_id, order)


def _order(order_id: UUID | str | None) -> Callable[[sqlite3.Connection], str | None]:
    """For calls that name their order."""
    return lambda c: None if order_id is None else str(order_id)


def _order_of(table: str, entity_id: UUID) -> Callable[[sqlite3.Connection], str | None]:
    """For calls that name a reservation, payment or shipment: the order it belongs to."""

    def find(c: sqlite3.Connection) -> str | None:
        row = c.execute(f"SELECT order_id FROM {table} WHERE id = ?", (str(entity_id),)).fetchone()
        return None if row is None else str(row[0])

    return find


def _check_fence(
    c: sqlite3.Connection, service: str, operation: str, order_id: str, fence: Fence, now: str
) -> int | None:
    """Refuse a stale call, or raise the fence to its token; log the call either way.

    Returns the highest token already seen when the call is refused, else None. Tokens are
    one saga's versions, so they are compared per order *and saga* (a second saga for the
    same order has tokens of its own)."""
    saga = "" if fence.saga_id is None else str(fence.saga_id)
    row = c.execute(
        "SELECT token FROM fences WHERE service = ? AND order_id = ? AND saga_id = ?",
        (service, order_id, saga),
    ).fetchone()
    highest: int | None = None if row is None else int(row[0])
    refused = highest is not None and fence.token < highest
    c.execute(
        "INSERT INTO fencing_log (service, operation, order_id, saga_id, token, highest,"
        " outcome, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            service,
            operation,
            order_id,
            saga,
            fence.token,
            highest,
            "refused" if refused else "accepted",
            now,
        ),
    )
    if refused:
        return highest
    c.execute(
        "INSERT INTO fences (service, order_id, saga_id, token) VALUES (?, ?, ?, ?)"
        " ON CONFLICT DO UPDATE SET token = max(token, excluded.token)",
        (service, order_id, saga, fence.token),
    )
    return None


@dataclass(frozen=True, slots=True)
class _Raise:
    """An error to raise once the transaction that kept the fence (and its log) committed."""

    error: Exception


class SQLiteInventory(_Service):
    service = "inventory"

    async def seed_catalog(self, products: list[tuple[str, str, Decimal]], stock: int) -> bool:
        """Add `products` only if the catalog is empty, in one transaction; return whether
        it did (so two processes seeding a new file at once seed it once)."""

        def op(c: sqlite3.Connection) -> bool:
            if c.execute("SELECT 1 FROM products LIMIT 1").fetchone() is not None:
                return False
            c.executemany(
                "INSERT INTO products (sku, name, price, stock, initial_stock)"
                " VALUES (?, ?, ?, ?, ?)",
                [(sku, name, str(price), stock, stock) for sku, name, price in products],
            )
            return True

        seeded: bool = await self.db.transaction(op)
        return seeded

    async def add_product(self, sku: str, name: str, price: Decimal, stock: int) -> bool:
        """Add a product unless its SKU exists (then nothing changes); return whether added."""

        def op(c: sqlite3.Connection) -> bool:
            return bool(
                c.execute(
                    "INSERT INTO products (sku, name, price, stock, initial_stock)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (sku) DO NOTHING",
                    (sku, name, str(price), stock, stock),
                ).rowcount
            )

        added: bool = await self.db.transaction(op)
        return added

    async def products(self) -> dict[str, Product]:
        rows = await self.db.read(
            lambda c: c.execute("SELECT sku, name, price, stock FROM products").fetchall()
        )
        return {r[0]: Product(r[0], r[1], Decimal(r[2]), r[3]) for r in rows}

    async def reserve(
        self,
        *,
        order_id: UUID,
        items: list[dict[str, Any]],
        expires_in_minutes: int,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Reservation:
        now = self.clock()
        expires = now + timedelta(minutes=expires_in_minutes)

        def op(c: sqlite3.Connection) -> Reservation:
            existing = _reservation(c, "order_id", str(order_id))
            if existing is not None:
                return existing
            reservation_id = uuid4()
            c.execute(
                "INSERT INTO reservations (id, order_id, status, expires_at, created_at,"
                " updated_at) VALUES (?, ?, 'active', ?, ?, ?)",
                (
                    str(reservation_id),
                    str(order_id),
                    expires.isoformat(),
                    now.isoformat(),
                    now.isoformat(),
                ),
            )
            for item in items:
                sku, quantity = item["sku"], int(item["quantity"])
                taken = c.execute(
                    "UPDATE products SET stock = stock - ? WHERE sku = ? AND stock >= ?",
                    (quantity, sku, quantity),
                ).rowcount
                if not taken:
                    known = c.execute("SELECT 1 FROM products WHERE sku = ?", (sku,)).fetchone()
                    if known is None:
                        raise UnknownProductError(f"unknown SKU {sku!r}")
                    raise InsufficientStockError(f"not enough {sku} in stock for {quantity}")
                c.execute(
                    "INSERT INTO reservation_items (reservation_id, sku, quantity)"
                    " VALUES (?, ?, ?) ON CONFLICT DO UPDATE SET quantity = quantity + ?",
                    (str(reservation_id), sku, quantity, quantity),
                )
            return Reservation(reservation_id, order_id, "active", expires)

        result: Reservation = await self._call(
            "inventory.reserve",
            op,
            compensating=False,
            fence=_fence(fencing_token, saga_id, _order(order_id)),
        )
        return result

    async def release(
        self,
        *,
        reservation_id: UUID,
        reason: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        await self._call(
            "inventory.release",
            lambda c: _release(c, "id", str(reservation_id), reason, self.clock()),
            compensating=True,
            fence=_fence(fencing_token, saga_id, _order_of("reservations", reservation_id)),
        )

    async def release_order(
        self,
        *,
        order_id: UUID,
        reason: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        await self._call(
            "inventory.release",
            lambda c: _release(c, "order_id", str(order_id), reason, self.clock()),
            compensating=True,
            fence=_fence(fencing_token, saga_id, _order(order_id)),
        )

    async def sweep_expired(self) -> int:
        """Release every active reservation past its expiry; return how many."""
        now = self.clock()

        def op(c: sqlite3.Connection) -> int:
            rows = c.execute(
                "SELECT id FROM reservations WHERE status = 'active' AND expires_at <= ?",
                (now.isoformat(),),
            ).fetchall()
            for (reservation_id,) in rows:
                _release(c, "id", reservation_id, "expired", now)
            return len(rows)

        count: int = await self.db.transaction(op)
        return count


def _reservation(c: sqlite3.Connection, column: str, value: str) -> Reservation | None:
    row = c.execute(
        f"SELECT id, order_id, status, expires_at FROM reservations WHERE {column} = ?",
        (value,),
    ).fetchone()
    if row is None:
        return None
    return Reservation(UUID(row[0]), UUID(row[1]), row[2], datetime.fromisoformat(row[3]))


def _restock(c: sqlite3.Connection, reservation_id: str) -> None:
    c.execute(
        "UPDATE products SET stock = stock + (SELECT quantity FROM reservation_items"
        " WHERE reservation_id = ? AND reservation_items.sku = products.sku)"
        " WHERE sku IN (SELECT sku FROM reservation_items WHERE reservation_id = ?)",
        (reservation_id, reservation_id),
    )


def _release(c: sqlite3.Connection, column: str, value: str, reason: str, now: datetime) -> None:
    reservation = _reservation(c, column, value)
    if reservation is None or reservation.status != "active":
        return  # nothing held: never reserved, already released, or shipped (cancel first)
    _restock(c, str(reservation.id))
    c.execute(
        "UPDATE reservations SET status = 'released', reason = ?, updated_at = ? WHERE id = ?",
        (reason, now.isoformat(), str(reservation.id)),
    )


class SQLitePayments(_Service):
    service = "payment"

    async def open_account(self, customer_id: UUID, balance: Decimal) -> None:
        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO accounts (customer_id, balance, initial_balance) VALUES (?, ?, ?)",
                (str(customer_id), str(balance), str(balance)),
            )

        await self.db.transaction(op)

    async def open_accounts_up_to(self, count: int, balances: Callable[[], Decimal]) -> None:
        """Open accounts until there are `count`, in one transaction (safe to run twice)."""

        def op(c: sqlite3.Connection) -> None:
            existing = c.execute("SELECT count(*) FROM accounts").fetchone()[0]
            for _ in range(max(count - existing, 0)):
                balance = str(balances())
                c.execute(
                    "INSERT INTO accounts (customer_id, balance, initial_balance) VALUES (?, ?, ?)",
                    (str(uuid4()), balance, balance),
                )

        await self.db.transaction(op)

    async def has_account(self, customer_id: UUID) -> bool:
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT 1 FROM accounts WHERE customer_id = ?", (str(customer_id),)
            ).fetchone()
        )
        return row is not None

    async def charge(
        self,
        *,
        customer_id: UUID | None,
        amount: Decimal,
        currency: str,
        order_id: UUID,
        idempotency_key: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Payment:
        now = self.clock().isoformat()

        def op(c: sqlite3.Connection) -> Payment:
            existing = _payment(c, "idempotency_key", idempotency_key)
            if existing is not None:
                return existing
            row = c.execute(
                "SELECT balance FROM accounts WHERE customer_id = ?", (str(customer_id),)
            ).fetchone()
            if row is None:
                raise PaymentDeclinedError(f"no payment account for customer {customer_id}")
            balance = Decimal(row[0])
            if balance < amount:
                raise PaymentDeclinedError("Insufficient funds")
            payment = Payment(
                uuid4(), order_id, UUID(str(customer_id)), amount, currency, "captured"
            )
            c.execute(
                "UPDATE accounts SET balance = ? WHERE customer_id = ?",
                (str(balance - amount), str(customer_id)),
            )
            c.execute(
                "INSERT INTO payments (id, idempotency_key, order_id, customer_id, amount,"
                " currency, status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'captured', ?)",
                (
                    str(payment.id),
                    idempotency_key,
                    str(order_id),
                    str(customer_id),
                    str(amount),
                    currency,
                    now,
                ),
            )
            _ledger(c, payment, "charge", now)
            return payment

        result: Payment = await self._call(
            "payment.charge",
            op,
            compensating=False,
            fence=_fence(fencing_token, saga_id, _order(order_id)),
        )
        return result

    async def refund(
        self,
        *,
        payment_id: UUID,
        reason: str,
        idempotency_key: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        now = self.clock().isoformat()

        def op(c: sqlite3.Connection) -> None:
            payment = _payment(c, "id", str(payment_id))
            if payment is None or payment.status == "refunded":
                return  # nothing to refund
            row = c.execute(
                "SELECT balance FROM accounts WHERE customer_id = ?", (str(payment.customer_id),)
            ).fetchone()
            c.execute(
                "UPDATE accounts SET balance = ? WHERE customer_id = ?",
                (str(Decimal(row[0]) + payment.amount), str(payment.customer_id)),
            )
            c.execute("UPDATE payments SET status = 'refunded' WHERE id = ?", (str(payment.id),))
            _ledger(c, payment, "refund", now)

        await self._call(
            "payment.refund",
            op,
            compensating=True,
            fence=_fence(fencing_token, saga_id, _order_of("payments", payment_id)),
        )

    async def find_by_idempotency_key(
        self,
        idempotency_key: str,
        *,
        order_id: UUID | None = None,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Payment | None:
        await self.faults.before("payment.find", compensating=True)

        def find(c: sqlite3.Connection) -> Payment | None:
            return _payment(c, "idempotency_key", idempotency_key)

        def order(c: sqlite3.Connection) -> str | None:
            payment = find(c)
            if payment is not None:
                return str(payment.order_id)
            return None if order_id is None else str(order_id)

        fence = _fence(fencing_token, saga_id, order)
        payment: Payment | None = await (
            self.db.read(find) if fence is None else self._transaction("payment.find", find, fence)
        )
        return payment


def _payment(c: sqlite3.Connection, column: str, value: str) -> Payment | None:
    row = c.execute(
        "SELECT id, order_id, customer_id, amount, currency, status FROM payments"
        f" WHERE {column} = ?",
        (value,),
    ).fetchone()
    if row is None:
        return None
    return Payment(UUID(row[0]), UUID(row[1]), UUID(row[2]), Decimal(row[3]), row[4], row[5])


def _ledger(c: sqlite3.Connection, payment: Payment, kind: str, now: str) -> None:
    c.execute(
        "INSERT INTO ledger (payment_id, customer_id, kind, amount, entry_key, at)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        (
            str(payment.id),
            str(payment.customer_id),
            kind,
            str(payment.amount),
            f"{kind}:{payment.id}",
            now,
        ),
    )


class SQLiteShipping(_Service):
    service = "shipping"

    def __init__(
        self,
        db: ShopDatabase,
        faults: Faults | None = None,
        clock: Clock = utcnow,
        *,
        dispatch_delay_seconds: float = 3600.0,
    ) -> None:
        super().__init__(db, faults, clock)
        self.dispatch_delay_seconds = dispatch_delay_seconds

    async def create(
        self,
        *,
        order_id: UUID,
        address: dict[str, Any],
        items: list[dict[str, Any]],
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> Shipment:
        now = self.clock()
        dispatch_at = now + timedelta(seconds=self.dispatch_delay_seconds)

        def op(c: sqlite3.Connection) -> Shipment:
            existing = _shipment(c, "order_id", str(order_id))
            if existing is not None:
                return existing
            # The warehouse takes the reserved stock: held becomes shipped, atomically.
            taken = c.execute(
                "UPDATE reservations SET status = 'committed', updated_at = ?"
                " WHERE order_id = ? AND status = 'active' AND expires_at > ?",
                (now.isoformat(), str(order_id), now.isoformat()),
            ).rowcount
            if not taken:
                raise ReservationExpiredError(f"order {order_id} holds no live reservation")
            shipment_id = uuid4()
            shipment = Shipment(
                shipment_id, order_id, f"TRK-{shipment_id.hex[:12].upper()}", "created", dispatch_at
            )
            c.execute(
                "INSERT INTO shipments (id, order_id, tracking_number, status, address, items,"
                " dispatch_at, created_at, updated_at) VALUES (?, ?, ?, 'created', ?, ?, ?, ?, ?)",
                (
                    str(shipment_id),
                    str(order_id),
                    shipment.tracking_number,
                    json.dumps(address),
                    json.dumps(items),
                    dispatch_at.isoformat(),
                    now.isoformat(),
                    now.isoformat(),
                ),
            )
            return shipment

        result: Shipment = await self._call(
            "shipping.create",
            op,
            compensating=False,
            fence=_fence(fencing_token, saga_id, _order(order_id)),
        )
        return result

    async def cancel(
        self,
        *,
        shipment_id: UUID,
        reason: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        now = self.clock()

        def op(c: sqlite3.Connection) -> None:
            shipment = _shipment(c, "id", str(shipment_id))
            if shipment is None or shipment.status != "created":
                return  # never created, already cancelled or returned
            if now >= shipment.dispatch_at:
                raise ShipmentAlreadyDispatchedError(
                    f"shipment {shipment.tracking_number} was dispatched"
                )
            c.execute(
                "UPDATE shipments SET status = 'cancelled', updated_at = ? WHERE id = ?",
                (now.isoformat(), str(shipment_id)),
            )
            # The stock goes back to being held; releasing the reservation returns it.
            c.execute(
                "UPDATE reservations SET status = 'active', updated_at = ?"
                " WHERE order_id = ? AND status = 'committed'",
                (now.isoformat(), str(shipment.order_id)),
            )

        await self._call(
            "shipping.cancel",
            op,
            compensating=True,
            fence=_fence(fencing_token, saga_id, _order_of("shipments", shipment_id)),
        )

    async def initiate_return(
        self, *, shipment_id: UUID, fencing_token: int | None = None, saga_id: UUID | None = None
    ) -> None:
        now = self.clock().isoformat()

        def op(c: sqlite3.Connection) -> None:
            shipment = _shipment(c, "id", str(shipment_id))
            if shipment is None or shipment.status != "created":
                return
            c.execute(
                "UPDATE shipments SET status = 'returned', updated_at = ? WHERE id = ?",
                (now, str(shipment_id)),
            )
            # In this demo the parcel comes straight back: its stock is available again.
            reservation = _reservation(c, "order_id", str(shipment.order_id))
            if reservation is not None and reservation.status == "committed":
                _restock(c, str(reservation.id))
                c.execute(
                    "UPDATE reservations SET status = 'released', reason = 'returned',"
                    " updated_at = ? WHERE id = ?",
                    (now, str(reservation.id)),
                )

        await self._call(
            "shipping.return",
            op,
            compensating=True,
            fence=_fence(fencing_token, saga_id, _order_of("shipments", shipment_id)),
        )

    async def find_by_order(
        self, order_id: UUID, *, fencing_token: int | None = None, saga_id: UUID | None = None
    ) -> Shipment | None:
        await self.faults.before("shipping.find", compensating=True)

        def find(c: sqlite3.Connection) -> Shipment | None:
            return _shipment(c, "order_id", str(order_id))

        fence = _fence(fencing_token, saga_id, _order(order_id))
        shipment: Shipment | None = await (
            self.db.read(find) if fence is None else self._transaction("shipping.find", find, fence)
        )
        return shipment


def _shipment(c: sqlite3.Connection, column: str, value: str) -> Shipment | None:
    row = c.execute(
        "SELECT id, order_id, tracking_number, status, dispatch_at FROM shipments"
        f" WHERE {column} = ?",
        (value,),
    ).fetchone()
    if row is None:
        return None
    return Shipment(UUID(row[0]), UUID(row[1]), row[2], row[3], datetime.fromisoformat(row[4]))


class SQLiteNotifications(_Service):
    """Emails go to an outbox table (a real service would deliver them from there)."""

    service = "notification"

    async def send_email(
        self,
        *,
        user_id: UUID | None,
        template: str,
        data: dict[str, Any],
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        now = self.clock().isoformat()
        dedup_key = f"{template}:{data.get('order_id')}"

        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO notifications (id, dedup_key, user_id, template, data, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING",
                (str(uuid4()), dedup_key, str(user_id), template, json.dumps(data), now),
            )

        await self._call(
            f"notification.{template}",
            op,
            compensating=template != "order_confirmed",
            fence=_fence(fencing_token, saga_id, _order(data.get("order_id"))),
        )

    async def outbox(self, limit: int = 100) -> list[dict[str, Any]]:
        """The most recent emails, newest first."""
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT user_id, template, data, created_at FROM notifications"
                " ORDER BY created_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [
            {"user_id": r[0], "template": r[1], "data": json.loads(r[2]), "created_at": r[3]}
            for r in rows
        ]
