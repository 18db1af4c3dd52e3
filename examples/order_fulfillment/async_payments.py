"""An asynchronous payment provider: it authorises a payment at once, captures it later, and
says how the capture went by a signed webhook (`webhooks.py`).

`AsyncPaymentProvider` is the part the second saga (`async_saga.py`) calls: `authorize`, and
`void_or_refund` to undo it. `SQLiteAsyncPayments` implements it on the shop's database, with
the same accounts and books as the synchronous `SQLitePayments`: an authorisation moves no
money; a capture takes the amount from the customer's balance and records a payment
(``payments`` table, status ``captured``) and a ledger entry, exactly as a charge does, so the
demo's books check counts it; a refund gives it back.

`SQLiteAsyncPayments.capture` plays the provider's side: what the provider does later, on
its own, and the webhook it then sends. The demo and the tests call it; so does the command
line, for a server started with ``--serve``::

    python -m order_fulfillment.async_payments --db orders.db capture ORDER_ID

captures the order's payment and prints a ``curl`` line that POSTs the signed notice to
``/api/v1/webhooks/payments``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sqlite3
import sys
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Protocol
from uuid import UUID, uuid4

import anyio

from .db import ShopDatabase
from .errors import PaymentDeclinedError
from .services import Payment, _fence, _ledger, _order, _order_of, _Service
from .webhooks import (
    DEFAULT_WEBHOOK_SECRET,
    SIGNATURE_HEADER,
    CaptureNotice,
    CaptureStatus,
    sign,
)


class PaymentStatus(StrEnum):
    """Where a payment stands at the asynchronous provider."""

    AUTHORIZED = "authorized"
    """Authorised, not captured yet: no money moved."""
    CAPTURED = "captured"
    """Captured: the amount was taken from the customer."""
    FAILED = "failed"
    """The capture failed: no money moved, and none will."""
    VOIDED = "voided"
    """Voided before any capture: no money moved, and none will."""
    REFUNDED = "refunded"
    """Captured, then refunded in full."""


@dataclass(frozen=True, slots=True)
class AsyncPayment:
    """A payment at the asynchronous provider."""

    id: UUID
    order_id: UUID
    customer_id: UUID
    amount: Decimal
    currency: str
    status: PaymentStatus
    event_id: str | None
    """The id of the webhook notice that told the capture's outcome (once there is one)."""
    reason: str | None
    """Why the capture failed, or the payment was voided."""


class AsyncPaymentProvider(Protocol):
    """What `AsyncPaymentOrderSaga` calls. Like every service of the example, each method also
    takes the running step's `fencing_token` and `saga_id` (both optional)."""

    async def authorize(
        self,
        *,
        customer_id: UUID | None,
        amount: Decimal,
        currency: str,
        order_id: UUID,
        idempotency_key: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> AsyncPayment:
        """Authorise once per key (a repeated key returns the first payment); the capture
        comes later, told by webhook. Raises PaymentDeclinedError if the customer cannot pay."""
        ...

    async def void_or_refund(
        self,
        *,
        payment_id: UUID,
        reason: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        """Undo the payment: void it if it is only authorised (no capture can follow), refund
        it in full if the provider captured it already. Anything else does nothing."""
        ...

    async def find_by_idempotency_key(
        self,
        idempotency_key: str,
        *,
        order_id: UUID | None = None,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> AsyncPayment | None:
        """The payment an authorisation with this key made, if it made one (fenced like
        `authorize` when given a token)."""
        ...


class SQLiteAsyncPayments(_Service):
    """The asynchronous provider, on the shop's database (table ``payment_intents``)."""

    service = "payment"

    # ------------------------------------------------------------------ the shop's calls

    async def authorize(
        self,
        *,
        customer_id: UUID | None,
        amount: Decimal,
        currency: str,
        order_id: UUID,
        idempotency_key: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> AsyncPayment:
        now = self.clock().isoformat()

        def op(c: sqlite3.Connection) -> AsyncPayment:
            existing = _intent(c, "idempotency_key", idempotency_key)
            if existing is not None:
                return existing
            row = c.execute(
                "SELECT balance FROM accounts WHERE customer_id = ?", (str(customer_id),)
            ).fetchone()
            if row is None:
                raise PaymentDeclinedError(f"no payment account for customer {customer_id}")
            if Decimal(row[0]) < amount:
                raise PaymentDeclinedError("Insufficient funds")
            payment = AsyncPayment(
                uuid4(),
                order_id,
                UUID(str(customer_id)),
                amount,
                currency,
                PaymentStatus.AUTHORIZED,
                None,
                None,
            )
            c.execute(
                "INSERT INTO payment_intents (id, idempotency_key, order_id, customer_id, amount,"
                " currency, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    str(payment.id),
                    idempotency_key,
                    str(order_id),
                    str(customer_id),
                    str(amount),
                    currency,
                    payment.status.value,
                    now,
                    now,
                ),
            )
            return payment

        result: AsyncPayment = await self._call(
            "payment.authorize",
            op,
            compensating=False,
            fence=_fence(fencing_token, saga_id, _order(order_id)),
        )
        return result

    async def void_or_refund(
        self,
        *,
        payment_id: UUID,
        reason: str,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> None:
        now = self.clock().isoformat()

        def op(c: sqlite3.Connection) -> None:
            payment = _intent(c, "id", str(payment_id))
            if payment is None:
                return
            if payment.status is PaymentStatus.AUTHORIZED:
                _set_status(c, payment.id, PaymentStatus.VOIDED, now, reason=reason)
            elif payment.status is PaymentStatus.CAPTURED:
                _refund_capture(c, payment, now)
                _set_status(c, payment.id, PaymentStatus.REFUNDED, now)

        await self._call(
            "payment.void",
            op,
            compensating=True,
            fence=_fence(fencing_token, saga_id, _order_of("payment_intents", payment_id)),
        )

    async def find_by_idempotency_key(
        self,
        idempotency_key: str,
        *,
        order_id: UUID | None = None,
        fencing_token: int | None = None,
        saga_id: UUID | None = None,
    ) -> AsyncPayment | None:
        await self.faults.before("payment.find", compensating=True)

        def find(c: sqlite3.Connection) -> AsyncPayment | None:
            return _intent(c, "idempotency_key", idempotency_key)

        def order(c: sqlite3.Connection) -> str | None:
            payment = find(c)
            if payment is not None:
                return str(payment.order_id)
            return None if order_id is None else str(order_id)

        fence = _fence(fencing_token, saga_id, order)
        payment: AsyncPayment | None = await (
            self.db.read(find) if fence is None else self._transaction("payment.find", find, fence)
        )
        return payment

    async def find_by_order(self, order_id: UUID) -> AsyncPayment | None:
        """The order's payment, if it has one (read-only: for the demo, tests and CLI)."""
        payment: AsyncPayment | None = await self.db.read(
            lambda c: _intent(c, "order_id", str(order_id))
        )
        return payment

    # ------------------------------------------------------------------ the provider's side

    async def capture(self, payment_id: UUID, *, fail_reason: str | None = None) -> CaptureNotice:
        """Capture the payment, as the provider does on its own, some time after the
        authorisation; return the webhook notice it sends about it.

        An authorised payment is captured (the money moves, in one transaction), or fails if
        ``fail_reason`` is given or the balance no longer covers it. A voided payment cannot
        be captured: the notice says ``failed``. Capturing again returns the same notice,
        same event id, as a provider that sends a webhook again does. Raises ``LookupError``
        for an unknown payment.
        """
        now = self.clock().isoformat()

        def op(c: sqlite3.Connection) -> CaptureNotice:
            payment = _intent(c, "id", str(payment_id))
            if payment is None:
                raise LookupError(f"no payment {payment_id}")
            if payment.status is PaymentStatus.AUTHORIZED:
                balance = Decimal(
                    c.execute(
                        "SELECT balance FROM accounts WHERE customer_id = ?",
                        (str(payment.customer_id),),
                    ).fetchone()[0]
                )
                why = fail_reason
                if why is None and balance < payment.amount:
                    why = "insufficient funds at capture"
                event_id = f"evt_{uuid4().hex}"
                if why is None:
                    _capture(c, payment, balance, now)
                    status = PaymentStatus.CAPTURED
                else:
                    status = PaymentStatus.FAILED
                _set_status(c, payment.id, status, now, reason=why, event_id=event_id)
            elif payment.event_id is None:  # voided before the provider got to it
                event_id = f"evt_{uuid4().hex}"
                c.execute(
                    "UPDATE payment_intents SET event_id = ? WHERE id = ?",
                    (event_id, str(payment.id)),
                )
            payment = _intent(c, "id", str(payment_id))
            assert payment is not None
            assert payment.event_id is not None
            captured = payment.status in (PaymentStatus.CAPTURED, PaymentStatus.REFUNDED)
            if captured:
                reason = None
            elif payment.status is PaymentStatus.VOIDED:
                reason = "the payment was voided before its capture"
            else:
                reason = payment.reason or "not captured"
            return CaptureNotice(
                event_id=payment.event_id,
                order_id=payment.order_id,
                payment_id=payment.id,
                amount=payment.amount,
                currency=payment.currency,
                status=CaptureStatus.CAPTURED if captured else CaptureStatus.FAILED,
                reason=reason,
            )

        notice: CaptureNotice = await self.db.transaction(op)
        return notice


_COLUMNS = "id, order_id, customer_id, amount, currency, status, event_id, reason"


def _from_row(row: tuple[str, ...]) -> AsyncPayment:
    return AsyncPayment(
        UUID(row[0]),
        UUID(row[1]),
        UUID(row[2]),
        Decimal(row[3]),
        row[4],
        PaymentStatus(row[5]),
        row[6],
        row[7],
    )


def _intent(c: sqlite3.Connection, column: str, value: str) -> AsyncPayment | None:
    row = c.execute(
        f"SELECT {_COLUMNS} FROM payment_intents WHERE {column} = ? ORDER BY created_at LIMIT 1",
        (value,),
    ).fetchone()
    return None if row is None else _from_row(row)


def _set_status(
    c: sqlite3.Connection,
    payment_id: UUID,
    status: PaymentStatus,
    now: str,
    *,
    reason: str | None = None,
    event_id: str | None = None,
) -> None:
    c.execute(
        "UPDATE payment_intents SET status = ?, reason = coalesce(?, reason),"
        " event_id = coalesce(?, event_id), updated_at = ? WHERE id = ?",
        (status.value, reason, event_id, now, str(payment_id)),
    )


def _as_payment(payment: AsyncPayment, status: str) -> Payment:
    return Payment(
        payment.id, payment.order_id, payment.customer_id, payment.amount, payment.currency, status
    )


def _capture(c: sqlite3.Connection, payment: AsyncPayment, balance: Decimal, now: str) -> None:
    """Take the money: the balance, a captured payment and a ledger charge, as a charge does."""
    c.execute(
        "UPDATE accounts SET balance = ? WHERE customer_id = ?",
        (str(balance - payment.amount), str(payment.customer_id)),
    )
    c.execute(
        "INSERT INTO payments (id, idempotency_key, order_id, customer_id, amount, currency,"
        " status, created_at) VALUES (?, ?, ?, ?, ?, ?, 'captured', ?)",
        (
            str(payment.id),
            f"capture:{payment.id}",
            str(payment.order_id),
            str(payment.customer_id),
            str(payment.amount),
            payment.currency,
            now,
        ),
    )
    _ledger(c, _as_payment(payment, "captured"), "charge", now)


def _refund_capture(c: sqlite3.Connection, payment: AsyncPayment, now: str) -> None:
    """Give the captured money back: the balance, the payment refunded, a ledger refund."""
    row = c.execute(
        "SELECT balance FROM accounts WHERE customer_id = ?", (str(payment.customer_id),)
    ).fetchone()
    c.execute(
        "UPDATE accounts SET balance = ? WHERE customer_id = ?",
        (str(Decimal(row[0]) + payment.amount), str(payment.customer_id)),
    )
    c.execute("UPDATE payments SET status = 'refunded' WHERE id = ?", (str(payment.id),))
    _ledger(c, _as_payment(payment, "refunded"), "refund", now)


# ---------------------------------------------------------------------------- command line


def curl_line(base_url: str, notice: CaptureNotice, secret: str | bytes) -> str:
    """A curl command that POSTs ``notice``, signed, to the shop's webhook endpoint."""
    body = notice.body()
    return (
        f"curl -sS -X POST {base_url}/api/v1/webhooks/payments"
        " -H 'Content-Type: application/json'"
        f" -H '{SIGNATURE_HEADER}: {sign(body, secret)}'"
        f" -d {shlex.quote(body.decode('utf-8'))}"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m order_fulfillment.async_payments",
        description="Play the asynchronous payment provider for a shop served with --serve: "
        "capture an order's authorised payment (the money moves in the shop's database) and "
        "print the curl line that sends its signed webhook. Exit status 0, 1 when the order "
        "has no asynchronous payment, 2 for bad arguments.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--db", type=Path, default=Path("orders.db"), help="the shop's file")
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000", help="where the shop's API listens"
    )
    parser.add_argument(
        "--webhook-secret",
        default=argparse.SUPPRESS,
        help="the secret shared with the shop (default: $ORDER_WEBHOOK_SECRET, else the "
        "demo secret)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    capture = commands.add_parser(
        "capture", help="capture an order's payment and print its webhook as a curl line"
    )
    capture.add_argument("order_id", type=UUID, help="the order (as POST /api/v1/orders said)")
    capture.add_argument(
        "--fail", metavar="REASON", default=None, help="make the capture fail, for this reason"
    )
    args = parser.parse_args(argv)
    if not hasattr(args, "webhook_secret"):
        args.webhook_secret = os.environ.get("ORDER_WEBHOOK_SECRET") or DEFAULT_WEBHOOK_SECRET
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.db.is_file():
        print(f"no shop database at {args.db}; pass --db PATH", file=sys.stderr)
        return 1

    async def run() -> CaptureNotice | None:
        db = ShopDatabase(args.db)
        await db.open()
        try:
            provider = SQLiteAsyncPayments(db)
            payment = await provider.find_by_order(args.order_id)
            if payment is None:
                return None
            return await provider.capture(payment.id, fail_reason=args.fail)
        finally:
            await db.close()

    notice = anyio.run(run)
    if notice is None:
        print(f"order {args.order_id} has no asynchronous payment", file=sys.stderr)
        return 1
    print(f"payment {notice.payment_id}: {notice.status.value} {notice.amount} {notice.currency}")
    print("send its webhook:")
    print(f"  {curl_line(args.url.rstrip('/'), notice, args.webhook_secret)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "AsyncPayment",
    "AsyncPaymentProvider",
    "PaymentStatus",
    "SQLiteAsyncPayments",
]
