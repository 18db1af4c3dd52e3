"""The example's composition root: one SQLite file holds the sagas and the services' state.

async with Shop("orders.db") as shop:
    order = await shop.price_order(customer_id, [("SKU-001", 2, None)], address)
    result = await shop.place(order)                    # the specification's saga
    result = await shop.place(order, payment="async")   # parks until the capture's webhook
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn, Protocol, Self
from uuid import UUID, uuid4

import anyio

from saga_orchestrator import (
    Clock,
    RecoveryReport,
    RetryPolicy,
    SagaListener,
    SagaOrchestrator,
    SagaResult,
    SagaStatus,
    SQLiteSagaRepository,
)
from saga_orchestrator.protocols import SagaRepository, SagaStatusCounter, StepInterceptor

from .async_payments import SQLiteAsyncPayments
from .async_saga import CAPTURE_TIMEOUT_SECONDS, AsyncPaymentOrderSaga
from .db import ShopDatabase, utcnow
from .domain import OrderData, OrderItem, ShippingAddress
from .faults import FaultConfig, Faults
from .saga import OrderFulfillmentSaga
from .services import SQLiteInventory, SQLiteNotifications, SQLitePayments, SQLiteShipping
from .webhooks import DEFAULT_WEBHOOK_SECRET, PaymentWebhooks

logger = logging.getLogger("order_fulfillment")

PaymentFlow = Literal["sync", "async"]
"""How an order is paid: ``sync``, the specification's saga (one charge); ``async``,
`AsyncPaymentOrderSaga` (authorise, then wait for the capture's webhook)."""

DEMO_CATALOG: list[tuple[str, str, Decimal]] = [
    ("SKU-001", "Widget", Decimal("29.99")),
    ("SKU-002", "Gadget", Decimal("149.00")),
    ("SKU-003", "Gizmo", Decimal("4.50")),
    ("SKU-004", "Doohickey", Decimal("12.25")),
]

MAX_QUANTITY = 1000
MAX_LINES = 100


class InvalidOrderError(ValueError):
    """An order the shop refuses before anything is written; `field` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    quantity: int
    unit_price: Decimal | None = None
    """The price the client saw; refused if it disagrees with the catalog."""
    name: str | None = None
    """The product name the client saw; refused if it disagrees with the catalog."""


class Shop:
    """Services, saga store (unless `repository` is given) and orchestrator on one SQLite file.

    ``clock`` is the orchestrator's and the services' time (a ``ManualClock`` in tests);
    ``capture_timeout_seconds`` how long an order paid asynchronously waits for its capture's
    webhook; ``webhook_secret`` the secret the payment provider signs its webhooks with.
    """

    def __init__(
        self,
        db_path: str | Path,
        *,
        faults: FaultConfig | None = None,
        dispatch_delay_seconds: float = 3600.0,
        retry: RetryPolicy | None = None,
        compensation_retry: RetryPolicy | None = None,
        listeners: Iterable[SagaListener] = (),
        interceptors: Iterable[StepInterceptor] = (),
        repository: OpenableSagaRepository | None = None,
        clock: Clock | None = None,
        capture_timeout_seconds: float = CAPTURE_TIMEOUT_SECONDS,
        webhook_secret: str = DEFAULT_WEBHOOK_SECRET,
    ) -> None:
        self.db_path = Path(db_path)
        self.faults = Faults(faults)
        self.db = ShopDatabase(self.db_path)
        self.repository = repository if repository is not None else SQLiteSagaRepository(db_path)
        now = clock.now if clock is not None else utcnow
        self.inventory = SQLiteInventory(self.db, self.faults, now)
        self.payments = SQLitePayments(self.db, self.faults, now)
        self.async_payments = SQLiteAsyncPayments(self.db, self.faults, now)
        self.shipping = SQLiteShipping(
            self.db, self.faults, now, dispatch_delay_seconds=dispatch_delay_seconds
        )
        self.notifications = SQLiteNotifications(self.db, self.faults, now)
        self.capture_timeout_seconds = capture_timeout_seconds
        options: dict[str, Any] = {
            "retry": retry,
            "compensation_retry": compensation_retry,
            "clock": clock,
        }
        self.orchestrator = SagaOrchestrator(
            self.repository,
            listeners=listeners,
            interceptors=interceptors,
            **{name: value for name, value in options.items() if value is not None},
        )
        self.orchestrator.register(OrderFulfillmentSaga.saga_type, self.saga)
        self.orchestrator.register(AsyncPaymentOrderSaga.saga_type, self.async_saga)
        self.webhooks = PaymentWebhooks(self.orchestrator, webhook_secret)

    async def __aenter__(self) -> Self:
        await self.db.open()
        try:
            await self.repository.open()
        except BaseException:
            await self.db.close()  # the services' connection is not left open
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self.repository.close()
        finally:
            await self.db.close()

    # ------------------------------------------------------------------ orders

    def saga(self, order: OrderData) -> OrderFulfillmentSaga:
        """The order saga wired to this shop's services (also the recovery factory)."""
        return OrderFulfillmentSaga(
            order,
            inventory_service=self.inventory,
            payment_service=self.payments,
            shipping_service=self.shipping,
            notification_service=self.notifications,
        )

    def async_saga(self, order: OrderData) -> AsyncPaymentOrderSaga:
        """The order saga paid asynchronously, wired to this shop's services (also the
        recovery factory of its saga type)."""
        return AsyncPaymentOrderSaga(
            order,
            inventory_service=self.inventory,
            payment_service=self.async_payments,
            shipping_service=self.shipping,
            notification_service=self.notifications,
            capture_timeout_seconds=self.capture_timeout_seconds,
        )

    async def place(
        self, order: OrderData, *, saga_id: UUID | None = None, payment: PaymentFlow = "sync"
    ) -> SagaResult[OrderData]:
        """Run the order's saga (under `saga_id`, if given: the same id never runs twice).

        ``payment="async"`` runs `AsyncPaymentOrderSaga`: it returns ``running`` once the
        saga waits for the capture's webhook (``self.webhooks.receive`` delivers it; the
        timer, `run_timer`, ends the wait when its time is up)."""
        if payment not in ("sync", "async"):
            raise ValueError(f"payment must be 'sync' or 'async', got {payment!r}")
        saga = self.async_saga(order) if payment == "async" else self.saga(order)
        if saga_id is not None:
            saga.context.saga_id = saga_id
        return await self.orchestrator.execute(saga)

    async def recover(self) -> RecoveryReport:
        """Finish the orders a previous process left unfinished; release expired stock.

        Returns the orchestrator's `RecoveryReport`: the orders that still wait for their
        payment's capture are in its ``waiting``, not in the list."""
        results = await self.orchestrator.recover()
        await self.inventory.sweep_expired()
        return results

    async def run_timer(self, interval_seconds: float = 1.0) -> NoReturn:
        """Every ``interval_seconds``, carry on the sagas parked at a wait that are due (their
        webhook came, or their time is up): ``orchestrator.wake_due()``, until cancelled.

        The timer of a process without workers (SQLite): the API runs it in its lifespan, the
        demo while it has orders waiting. A pass that has begun finishes even if the task is
        cancelled meanwhile (shielded), so a saga is not left half-way through a step."""
        while True:
            with anyio.CancelScope(shield=True):
                try:
                    await self.orchestrator.wake_due()
                except Exception:  # the next pass tries again
                    logger.exception("shop.timer: wake_due failed")
            await anyio.sleep(interval_seconds)

    async def price_order(
        self,
        customer_id: UUID,
        lines: Sequence[OrderLine],
        address: ShippingAddress,
        *,
        order_id: UUID | None = None,
    ) -> OrderData:
        """An order priced from the catalog (never from the client), or InvalidOrderError."""
        if not 1 <= len(lines) <= MAX_LINES:
            raise InvalidOrderError("items", f"an order has 1 to {MAX_LINES} items")
        if not await self.payments.has_account(customer_id):
            raise InvalidOrderError("customer_id", f"unknown customer {customer_id}")
        catalog = await self.inventory.products()
        items: list[OrderItem] = []
        seen: set[str] = set()
        for index, line in enumerate(lines):
            where = f"items[{index}]"
            product = catalog.get(line.sku)
            if product is None:
                raise InvalidOrderError(f"{where}.sku", f"unknown SKU {line.sku!r}")
            if line.sku in seen:
                raise InvalidOrderError(f"{where}.sku", f"SKU {line.sku!r} appears twice")
            seen.add(line.sku)
            if type(line.quantity) is not int or not 1 <= line.quantity <= MAX_QUANTITY:
                raise InvalidOrderError(
                    f"{where}.quantity", f"quantity must be a whole number from 1 to {MAX_QUANTITY}"
                )
            if line.unit_price is not None and line.unit_price != product.price:
                raise InvalidOrderError(
                    f"{where}.unit_price",
                    f"unit_price {line.unit_price} does not match the catalog price "
                    f"{product.price} of {line.sku}",
                )
            if line.name is not None and line.name != product.name:
                raise InvalidOrderError(
                    f"{where}.name",
                    f"name {line.name!r} does not match the catalog name {product.name!r} "
                    f"of {line.sku}",
                )
            items.append(OrderItem(line.sku, line.quantity, product.price, product.name))
        return OrderData(
            order_id=order_id or uuid4(),
            customer_id=customer_id,
            items=items,
            shipping_address=address,
            total=sum((item.unit_price * item.quantity for item in items), Decimal("0")),
        )

    # ------------------------------------------------------------------ demo data

    async def seed_demo(self, *, customers: int, stock: int, rng: random.Random) -> list[UUID]:
        """Create the demo catalog and customers (once per file); return customer ids.

        Safe when several processes seed the same new file at once: the catalog is added
        only to an empty one, and accounts are topped up to `customers`, each in one
        transaction.
        """
        await self.inventory.seed_catalog(DEMO_CATALOG, stock)
        # One in ten customers is nearly broke, so some payments are declined.
        await self.payments.open_accounts_up_to(
            customers, lambda: Decimal(rng.choice(["5.00"] + ["5000.00"] * 9))
        )
        return await self.customers()

    async def customers(self, *, min_balance: Decimal | None = None) -> list[UUID]:
        """Customer ids in creation order; only those with at least `min_balance`, if given."""
        rows = await self.db.read(
            lambda c: c.execute(
                "SELECT customer_id, balance FROM accounts ORDER BY rowid"
            ).fetchall()
        )
        return [UUID(r[0]) for r in rows if min_balance is None or Decimal(r[1]) >= min_balance]

    # ------------------------------------------------------------------ invariants

    async def check_invariants(self) -> list[str]:
        """Every broken invariant, in words; an empty list when all hold.

        - every saga is terminal;
        - stock is conserved per SKU and never negative;
        - no compensated order still holds or took stock;
        - each customer's balance plus what they paid equals their opening balance;
        - each order is charged at most once, and net charged equals its total exactly when
          it completed, else zero (a FAILED saga, which needs an operator, is reported); an
          asynchronous payment's capture counts as its charge;
        - no asynchronous payment is left authorised once its order's saga is terminal;
        - at most one email per template and order.
        """
        problems: list[str] = []
        sagas = await self.repository.list_sagas(limit=10_000_000)
        status_of = {s.data.order_id: s.status for s in sagas}
        totals = {s.data.order_id: s.data.total for s in sagas}
        unfinished = [s for s in sagas if not s.is_terminal]
        if unfinished:
            problems.append(f"{len(unfinished)} sagas are not terminal")
        failed = [s for s in sagas if s.status is SagaStatus.FAILED]
        if failed:
            problems.append(f"{len(failed)} sagas FAILED and need an operator")

        def read(c: Any) -> dict[str, Any]:
            return {
                "products": c.execute("SELECT sku, stock, initial_stock FROM products").fetchall(),
                "held": dict(
                    c.execute(
                        "SELECT i.sku || ':' || r.status, sum(i.quantity) FROM reservations r"
                        " JOIN reservation_items i ON i.reservation_id = r.id"
                        " GROUP BY i.sku, r.status"
                    ).fetchall()
                ),
                "reservations": c.execute("SELECT order_id, status FROM reservations").fetchall(),
                "accounts": c.execute(
                    "SELECT customer_id, balance, initial_balance FROM accounts"
                ).fetchall(),
                "payments": c.execute(
                    "SELECT order_id, customer_id, amount, status FROM payments"
                ).fetchall(),
                "ledger": c.execute("SELECT kind, amount FROM ledger").fetchall(),
                "intents": c.execute("SELECT order_id, status FROM payment_intents").fetchall(),
                "confirmations": c.execute(
                    "SELECT dedup_key, count(*) FROM notifications GROUP BY dedup_key"
                    " HAVING count(*) > 1"
                ).fetchall(),
            }

        state = await self.db.read(read)
        held = state["held"]
        for sku, stock, initial in state["products"]:
            active = held.get(f"{sku}:active", 0)
            shipped = held.get(f"{sku}:committed", 0)
            if stock < 0:
                problems.append(f"stock of {sku} is negative: {stock}")
            if stock + active + shipped != initial:
                problems.append(
                    f"stock of {sku} not conserved: {stock} available + {active} held + "
                    f"{shipped} shipped != {initial}"
                )
        for order_id, status in state["reservations"]:
            if status_of.get(UUID(order_id)) is SagaStatus.COMPENSATED and status != "released":
                problems.append(f"order {order_id} is compensated but its stock is {status}")

        paid: dict[str, Decimal] = {}
        charged: dict[UUID, Decimal] = {}
        charges: dict[UUID, int] = {}
        for order_id, customer_id, amount, status in state["payments"]:
            oid = UUID(order_id)
            charges[oid] = charges.get(oid, 0) + 1
            if status == "captured":
                paid[customer_id] = paid.get(customer_id, Decimal("0")) + Decimal(amount)
                charged[oid] = charged.get(oid, Decimal("0")) + Decimal(amount)
        for customer_id, balance, initial in state["accounts"]:
            if Decimal(balance) + paid.get(customer_id, Decimal("0")) != Decimal(initial):
                problems.append(f"customer {customer_id}: balance and payments do not add up")
        ledger = sum(
            (Decimal(a) if kind == "charge" else -Decimal(a) for kind, a in state["ledger"]),
            Decimal("0"),
        )
        if ledger != sum(charged.values(), Decimal("0")):
            problems.append("the ledger does not balance against captured payments")
        for order_id, count in charges.items():
            if count > 1:
                problems.append(f"order {order_id} was charged {count} times")
        for order_id, status in status_of.items():
            net = charged.get(order_id, Decimal("0"))
            expected = totals[order_id] if status is SagaStatus.COMPLETED else Decimal("0")
            if status is not SagaStatus.FAILED and net != expected:
                problems.append(
                    f"order {order_id} ({status.value}): net charged {net} != {expected}"
                )
        for order_id, status in state["intents"]:
            saga_status = status_of.get(UUID(order_id))
            if status == "authorized" and saga_status is not None and saga_status.is_terminal:
                problems.append(
                    f"order {order_id} ({saga_status.value}): its payment is still authorised"
                )
        for key, count in state["confirmations"]:
            problems.append(f"notification {key} sent {count} times")
        return problems


class OpenableSagaRepository(SagaRepository, SagaStatusCounter, Protocol):
    """What ``Shop(..., repository=...)`` takes to hold the sagas instead of the file (a
    ``PostgresSagaRepository``, for ``SagaWorker`` processes to run them): a repository that
    counts by status, for the metrics, and that the shop opens and closes with itself. The
    SQLite and PostgreSQL repositories are such."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...
