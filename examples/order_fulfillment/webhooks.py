"""The payment provider's capture webhooks: the signed notice on the wire, and its receiver.

The asynchronous provider (`async_payments.py`) authorises a payment at once and captures it
later; then it POSTs a *capture notice* to the shop, signed with a secret both share:

    X-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the secret>

`PaymentWebhooks.receive(body, signature)` is what the shop does with one, with no web
framework involved (the HTTP endpoint, `api/webhooks.py`, and the demo both call it): check the
signature over the raw bytes, parse the notice, and deliver it to the order's saga with
`orchestrator.deliver_event`, the provider's event id as the event id (so a notice sent twice
is consumed once). Nothing is delivered unless the signature matches.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any
from uuid import UUID

from saga_orchestrator import SagaOrchestrator
from saga_orchestrator.inbox import Delivery

CAPTURE_EVENT = "payment.captured"
"""The saga event a capture notice is delivered as (whether the capture succeeded or not)."""
SIGNATURE_HEADER = "X-Signature"
"""The header that carries a notice's signature, ``sha256=<hex>``."""
DEFAULT_WEBHOOK_SECRET = "order-fulfillment-demo-webhook-secret"
"""The demo's shared secret: the default of ``Shop(webhook_secret=...)`` and of the CLI's
``--webhook-secret`` (or the ``ORDER_WEBHOOK_SECRET`` environment variable). Never use it for
anything real."""
EVENT_ID_LIMIT = 200
"""The longest provider event id accepted, in characters."""
REASON_LIMIT = 500
"""The longest failure reason accepted, in characters."""

_MONEY = re.compile(r"^\d{1,15}(?:\.\d{1,15})?$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")


class CaptureStatus(StrEnum):
    """What the provider says became of a capture."""

    CAPTURED = "captured"
    """The money moved: the amount was taken from the customer."""
    FAILED = "failed"
    """Nothing moved: the provider could not capture the authorised payment."""


class WebhookSignatureError(Exception):
    """The signature is missing or does not match the body: nothing was delivered."""


class InvalidWebhookError(ValueError):
    """The body is not a capture notice: nothing was delivered.

    ``malformed`` is True when the body is not JSON at all (not UTF-8, or not parseable);
    otherwise ``errors`` lists each offending field as ``(field, message, type)``.
    """

    def __init__(
        self,
        message: str,
        *,
        malformed: bool = False,
        errors: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.malformed = malformed
        self.errors = list(errors)


# ---------------------------------------------------------------------------- signing


def _key(secret: str | bytes) -> bytes:
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if not key:
        raise ValueError("the webhook secret must not be empty")
    return key


def sign(body: bytes, secret: str | bytes) -> str:
    """The ``X-Signature`` value for ``body``: ``sha256=`` and the HMAC-SHA256 in hex."""
    return "sha256=" + hmac.new(_key(secret), body, hashlib.sha256).hexdigest()


def signature_matches(body: bytes, signature: str | None, secret: str | bytes) -> bool:
    """Whether ``signature`` (the header's value, or None) signs ``body`` with ``secret``.

    Compared in constant time (``hmac.compare_digest``) over the raw bytes, as received."""
    if signature is None:
        return False
    try:
        given = signature.strip().encode("ascii")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(given, sign(body, secret).encode("ascii"))


# ---------------------------------------------------------------------------- the notice


@dataclass(frozen=True, slots=True)
class CaptureNotice:
    """What the provider says about one capture: the body of its webhook.

    On the wire, a JSON object; money as a decimal string, ids as strings::

        {"event_id": "evt_...", "order_id": "...", "payment_id": "...", "amount": "59.98",
         "currency": "USD", "status": "captured", "reason": null}

    Other fields are ignored (providers add fields over time).
    """

    event_id: str
    """The provider's id for this notice: the same notice sent again has the same id."""
    order_id: UUID
    """The order the payment is for (its saga's correlation id is ``order-{order_id}``)."""
    payment_id: UUID
    """The provider's payment (the id ``authorize`` returned)."""
    amount: Decimal
    currency: str
    status: CaptureStatus
    reason: str | None = None
    """Why a capture failed (``None`` when it succeeded)."""

    def body(self) -> bytes:
        """The webhook's body, as the provider sends it."""
        document = {
            "event_id": self.event_id,
            "order_id": str(self.order_id),
            "payment_id": str(self.payment_id),
            "amount": str(self.amount),
            "currency": self.currency,
            "status": self.status.value,
            "reason": self.reason,
        }
        return json.dumps(document, separators=(",", ":")).encode("utf-8")

    def payload(self) -> dict[str, Any]:
        """What the order's saga receives (its wait step's ``accept`` checks it)."""
        return {
            "payment_id": self.payment_id,
            "amount": self.amount,
            "currency": self.currency,
            "status": self.status.value,
            "reason": self.reason,
        }

    @property
    def correlation_id(self) -> str:
        """The order saga's correlation id."""
        return f"order-{self.order_id}"

    @classmethod
    def parse(cls, body: bytes) -> CaptureNotice:
        """The notice in ``body``; `InvalidWebhookError` naming every bad field otherwise."""
        try:
            document = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidWebhookError(
                f"the body is not valid JSON: {exc}", malformed=True
            ) from None
        if not isinstance(document, dict):
            raise InvalidWebhookError(
                "the body must be a JSON object",
                errors=[("body", "the body must be a JSON object", "object_type")],
            )
        errors: list[tuple[str, str, str]] = []
        fields = _Fields(document, errors)
        event_id = fields.text("event_id", EVENT_ID_LIMIT)
        order_id = fields.uuid("order_id")
        payment_id = fields.uuid("payment_id")
        amount = fields.money("amount")
        currency = fields.currency("currency")
        status = fields.status("status")
        reason = fields.text("reason", REASON_LIMIT, optional=True)
        if errors:
            field, message, _ = errors[0]
            more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            raise InvalidWebhookError(f"{field}: {message}{more}", errors=errors)
        # Each reader recorded an error where it gave None: there is none left.
        assert event_id is not None
        assert order_id is not None
        assert payment_id is not None
        assert amount is not None
        assert currency is not None
        assert status is not None
        return cls(event_id, order_id, payment_id, amount, currency, status, reason)


class _Fields:
    """Reads a notice's fields, recording each bad one instead of stopping at the first."""

    def __init__(self, document: Mapping[str, Any], errors: list[tuple[str, str, str]]):
        self.document = document
        self.errors = errors

    def _get(self, name: str, *, optional: bool = False) -> Any:
        value = self.document.get(name)
        if value is None and not optional:
            self.errors.append((name, "Field required", "missing"))
        return value

    def _bad(self, name: str, message: str, kind: str) -> None:
        self.errors.append((name, message, kind))

    def text(self, name: str, limit: int, *, optional: bool = False) -> str | None:
        value = self._get(name, optional=optional)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > limit:
            self._bad(name, f"must be a non-empty string of at most {limit} characters", "string")
            return None
        return value

    def uuid(self, name: str) -> UUID | None:
        value = self._get(name)
        if value is None:
            return None
        if isinstance(value, str):
            try:
                return UUID(value)
            except ValueError:
                pass
        self._bad(name, "must be a UUID string", "uuid")
        return None

    def money(self, name: str) -> Decimal | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not _MONEY.match(value):
            self._bad(name, 'must be a decimal string such as "29.99"', "money")
            return None
        return Decimal(value)

    def currency(self, name: str) -> str | None:
        value = self._get(name)
        if value is None:
            return None
        if not isinstance(value, str) or not _CURRENCY.match(value):
            self._bad(name, "must be an ISO 4217 code such as USD", "currency")
            return None
        return value

    def status(self, name: str) -> CaptureStatus | None:
        value = self._get(name)
        if value is None:
            return None
        if value not in ("captured", "failed"):
            self._bad(name, "must be 'captured' or 'failed'", "enum")
            return None
        return CaptureStatus(value)


# ---------------------------------------------------------------------------- the receiver


class PaymentWebhooks:
    """Receives the provider's capture notices for the orders' sagas."""

    def __init__(self, orchestrator: SagaOrchestrator, secret: str | bytes) -> None:
        _key(secret)  # an empty secret is refused now, not at the first webhook
        self.orchestrator = orchestrator
        self.secret = secret

    async def receive(self, body: bytes, signature: str | None) -> tuple[CaptureNotice, Delivery]:
        """Check, parse and deliver one notice; return it with what the delivery did.

        Raises `WebhookSignatureError` (missing or wrong signature) or `InvalidWebhookError`
        (not a notice) before anything is delivered; ``SagaNotFoundError`` for an order that
        has no saga, and ``InvalidEventError`` for one whose saga is running but waits for no
        capture (an order paid synchronously, still in its request), with nothing stored
        either. A finished saga's notice is ``IGNORED``, whatever its saga.
        """
        if not signature_matches(body, signature, self.secret):
            raise WebhookSignatureError(
                f"missing or wrong {SIGNATURE_HEADER}: nothing was delivered"
            )
        notice = CaptureNotice.parse(body)
        delivery = await self.orchestrator.deliver_event(
            CAPTURE_EVENT,
            notice.payload(),
            event_id=notice.event_id,
            correlation_id=notice.correlation_id,
        )
        return notice, delivery
