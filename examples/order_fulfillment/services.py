"""The four services the order saga calls, with real state in SQLite.

Each is defined first as a Protocol: that is exactly what you replace with a client of your
own service. The SQLite implementations below keep the invariants the demo checks:

- stock is conserved: ``initial = available + held (active) + shipped (committed)``;
- money balances: ``initial balance = balance + captured, not refunded``;
- every call that acts deduplicates on a key, so a retried call never acts twice.
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


class InventoryService(Protocol):
    async def reserve(
        self, *, order_id: UUID, items: list[dict[str, Any]], expires_in_minutes: int
    ) -> Reservation:
        """Hold every item, all or nothing. The same order gets the same reservation."""
        ...

    async def release(self, *, reservation_id: UUID, reason: str) -> None:
        """Return held stock. Releasing twice, or a released reservation, does nothing."""
        ...

    async def release_order(self, *, order_id: UUID, reason: str) -> None:
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
    ) -> Payment:
        """Charge once per key: a repeated key returns the first payment."""
        ...

    async def refund(self, *, payment_id: UUID, reason: str, idempotency_key: str) -> None:
        """Refund a payment in full, once."""
        ...

    async def find_by_idempotency_key(self, idempotency_key: str) -> Payment | None:
        """The payment a charge with this key made, if it made one."""
        ...


class ShippingService(Protocol):
    async def create(
        self, *, order_id: UUID, address: dict[str, Any], items: list[dict[str, Any]]
    ) -> Shipment:
        """Create the order's shipment (once per order), taking its reserved stock."""
        ...

    async def cancel(self, *, shipment_id: UUID, reason: str) -> None:
        """Cancel before dispatch; raises ShipmentAlreadyDispatchedError after it."""
        ...

    async def initiate_return(self, *, shipment_id: UUID) -> None:
        """Bring a dispatched shipment back; its stock returns to inventory."""
        ...

    async def find_by_order(self, order_id: UUID) -> Shipment | None: ...


class NotificationService(Protocol):
    async def send_email(
        self, *, user_id: UUID | None, template: str, data: dict[str, Any]
    ) -> None:
        """Send once per (template, order): a repeated call sends nothing more."""
        ...


# ---------------------------------------------------------------------------- SQLite


class _Service:
    def __init__(self, db: ShopDatabase, faults: Faults | None = None, clock: Clock = utcnow):
        self.db = db
        self.faults = faults or Faults()
        self.clock = clock

    async def _call(
        self, operation: str, fn: Callable[[sqlite3.Connection], Any], *, compensating: bool
    ) -> Any:
        await self.faults.before(operation, compensating=compensating)
        result = await self.db.transaction(fn)
        self.faults.after(operation)
        return result


class SQLiteInventory(_Service):
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
        self, *, order_id: UUID, items: list[dict[str, Any]], expires_in_minutes: int
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

        result: Reservation = await self._call("inventory.reserve", op, compensating=False)
        return result

    async def release(self, *, reservation_id: UUID, reason: str) -> None:
        await self._call(
            "inventory.release",
            lambda c: _release(c, "id", str(reservation_id), reason, self.clock()),
            compensating=True,
        )

    async def release_order(self, *, order_id: UUID, reason: str) -> None:
        await self._call(
            "inventory.release",
            lambda c: _release(c, "order_id", str(order_id), reason, self.clock()),
            compensating=True,
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

        result: Payment = await self._call("payment.charge", op, compensating=False)
        return result

    async def refund(self, *, payment_id: UUID, reason: str, idempotency_key: str) -> None:
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

        await self._call("payment.refund", op, compensating=True)

    async def find_by_idempotency_key(self, idempotency_key: str) -> Payment | None:
        await self.faults.before("payment.find", compensating=True)
        payment: Payment | None = await self.db.read(
            lambda c: _payment(c, "idempotency_key", idempotency_key)
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
        self, *, order_id: UUID, address: dict[str, Any], items: list[dict[str, Any]]
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

        result: Shipment = await self._call("shipping.create", op, compensating=False)
        return result

    async def cancel(self, *, shipment_id: UUID, reason: str) -> None:
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

        await self._call("shipping.cancel", op, compensating=True)

    async def initiate_return(self, *, shipment_id: UUID) -> None:
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

        await self._call("shipping.return", op, compensating=True)

    async def find_by_order(self, order_id: UUID) -> Shipment | None:
        await self.faults.before("shipping.find", compensating=True)
        shipment: Shipment | None = await self.db.read(
            lambda c: _shipment(c, "order_id", str(order_id))
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

    async def send_email(
        self, *, user_id: UUID | None, template: str, data: dict[str, Any]
    ) -> None:
        now = self.clock().isoformat()
        dedup_key = f"{template}:{data.get('order_id')}"

        def op(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO notifications (id, dedup_key, user_id, template, data, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (dedup_key) DO NOTHING",
                (str(uuid4()), dedup_key, str(user_id), template, json.dumps(data), now),
            )

        await self._call(f"notification.{template}", op, compensating=template != "order_confirmed")

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
