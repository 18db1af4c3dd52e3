"""Demo services with state and fault injection (in memory).

Each keeps a ledger the demo checks at the end: stock is conserved, money balances, nobody is
charged twice. Calls deduplicate on their idempotency keys, as real payment providers do.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import anyio

from .errors import InsufficientStockError, PaymentDeclinedError, ShipmentAlreadyDispatchedError


@dataclass
class Faults:
    """What goes wrong, how often. Transient faults raise ConnectionError (retried)."""

    transient_rate: float = 0.0
    decline_rate: float = 0.0
    shipping_failure_rate: float = 0.0
    latency_seconds: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def maybe(self, what: str) -> None:
        if self.latency_seconds:
            await anyio.sleep(self.latency_seconds * self.rng.random())
        if self.rng.random() < self.transient_rate:
            raise ConnectionError(f"{what}: connection reset (injected)")


@dataclass
class Reservation:
    id: UUID
    order_id: UUID
    items: list[dict[str, Any]]
    active: bool = True


class InventoryService:
    def __init__(self, stock: dict[str, int], faults: Faults) -> None:
        self.initial = dict(stock)
        self.available = dict(stock)
        self.reservations: dict[UUID, Reservation] = {}
        self.by_order: dict[UUID, UUID] = {}
        self.faults = faults

    async def reserve(
        self, *, order_id: UUID, items: list[dict[str, Any]], expires_in_minutes: int
    ) -> Reservation:
        await self.faults.maybe("inventory.reserve")
        if order_id in self.by_order:  # same order again: same reservation
            return self.reservations[self.by_order[order_id]]
        for item in items:
            if self.available.get(item["sku"], 0) < item["quantity"]:
                raise InsufficientStockError(f"not enough {item['sku']}")
        for item in items:
            self.available[item["sku"]] -= item["quantity"]
        reservation = Reservation(uuid4(), order_id, items)
        self.reservations[reservation.id] = reservation
        self.by_order[order_id] = reservation.id
        return reservation

    async def release(self, *, reservation_id: UUID, reason: str) -> None:
        await self.faults.maybe("inventory.release")
        reservation = self.reservations.get(reservation_id)
        if reservation is None or not reservation.active:
            return  # nothing to undo
        reservation.active = False
        for item in reservation.items:
            self.available[item["sku"]] += item["quantity"]

    def held(self) -> Counter[str]:
        held: Counter[str] = Counter()
        for reservation in self.reservations.values():
            if reservation.active:
                for item in reservation.items:
                    held[item["sku"]] += item["quantity"]
        return held


@dataclass
class Payment:
    id: UUID
    order_id: UUID
    customer_id: UUID
    amount: Decimal
    refunded: bool = False


class PaymentService:
    def __init__(self, faults: Faults) -> None:
        self.payments: dict[UUID, Payment] = {}
        self.by_key: dict[str, UUID] = {}
        self.charge_calls = 0
        self.faults = faults

    async def charge(
        self,
        *,
        customer_id: UUID,
        amount: Decimal,
        currency: str,
        order_id: UUID,
        idempotency_key: str,
    ) -> Payment:
        self.charge_calls += 1
        await self.faults.maybe("payment.charge")
        if idempotency_key in self.by_key:
            return self.payments[self.by_key[idempotency_key]]
        if self.faults.rng.random() < self.faults.decline_rate:
            raise PaymentDeclinedError("Insufficient funds")
        payment = Payment(uuid4(), order_id, customer_id, amount)
        self.payments[payment.id] = payment
        self.by_key[idempotency_key] = payment.id
        return payment

    async def refund(self, *, payment_id: UUID, reason: str, idempotency_key: str) -> None:
        await self.faults.maybe("payment.refund")
        self.payments[payment_id].refunded = True

    def net_charged(self, order_id: UUID) -> Decimal:
        return sum(
            (p.amount for p in self.payments.values() if p.order_id == order_id and not p.refunded),
            Decimal("0"),
        )


@dataclass
class Shipment:
    id: UUID
    order_id: UUID
    tracking_number: str
    cancelled: bool = False


class ShippingService:
    def __init__(self, faults: Faults) -> None:
        self.shipments: dict[UUID, Shipment] = {}
        self.by_order: dict[UUID, UUID] = {}
        self.faults = faults

    async def create(
        self, *, order_id: UUID, address: dict[str, str], items: list[dict[str, Any]]
    ) -> Shipment:
        await self.faults.maybe("shipping.create")
        if self.faults.rng.random() < self.faults.shipping_failure_rate:
            raise ValueError(f"no carrier serves {address['postal_code']}")
        if order_id in self.by_order:
            return self.shipments[self.by_order[order_id]]
        shipment = Shipment(uuid4(), order_id, f"TRK{len(self.shipments) + 1:08d}")
        self.shipments[shipment.id] = shipment
        self.by_order[order_id] = shipment.id
        return shipment

    async def cancel(self, *, shipment_id: UUID, reason: str) -> None:
        await self.faults.maybe("shipping.cancel")
        self.shipments[shipment_id].cancelled = True

    async def initiate_return(self, *, shipment_id: UUID) -> None:  # pragma: no cover - demo
        raise ShipmentAlreadyDispatchedError("demo shipments are never dispatched")


class NotificationService:
    def __init__(self, faults: Faults) -> None:
        self.sent: list[tuple[UUID | None, str, dict[str, Any]]] = []
        self.faults = faults

    async def send_email(
        self, *, user_id: UUID | None, template: str, data: dict[str, Any]
    ) -> None:
        await self.faults.maybe("notification.send_email")
        self.sent.append((user_id, template, data))
