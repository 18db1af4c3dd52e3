"""The ``Idempotency-Key`` store: request fingerprints, claims and replayed answers.

The first request with a key claims it, in one transaction, together with the id its order
will have, before the saga starts; the saga's id is derived from that order id
(`saga_id_for`). So one key never makes two orders, even across a crash: a retry after the
process died mid-order finishes that same order. The completed response is stored and
replayed to later requests with the same key and body; another body with the key is refused
(422). Keys are kept forever in this example (a real service would publish an expiry, e.g.
24 h, and purge older keys). Whether a key is still being processed is known to the process
that runs it: serve with a single worker process.
"""

import hashlib
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Annotated
from uuid import UUID, uuid5

from fastapi import Header
from fastapi.responses import Response

from ..db import ShopDatabase, utcnow
from .models import CreateOrderRequest, FieldError
from .problems import ApiProblem

MAX_KEY_LENGTH = 255
"""Longest accepted Idempotency-Key (Stripe's limit)."""

_KEY_PATTERN = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")
_SAGA_NAMESPACE = uuid5(uuid5(UUID(int=0), "saga-orchestrator"), "order_fulfillment")

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        description="Optional, 1-255 printable ASCII characters. The same key with the same "
        "body replays the first answer; with another body it is refused (422); while the "
        "first is still running, 409.",
    ),
]


def checked_key(key: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value, if any; 400 if it is not a valid key."""
    if key is None:
        return None
    if len(key) > MAX_KEY_LENGTH or not _KEY_PATTERN.fullmatch(key):
        raise ApiProblem(
            400,
            "invalid-idempotency-key",
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters",
            errors=[
                FieldError(
                    field="Idempotency-Key",
                    location="header",
                    message="1 to 255 printable ASCII characters",
                    type="idempotency_key",
                )
            ],
        )
    return key


def request_fingerprint(body: CreateOrderRequest, *, payment: str = "sync") -> str:
    """SHA-256 of the request's canonical JSON: key order and spacing do not count.

    ``payment="async"`` (``?payment=async``) is another request than the same body without it.
    """
    endpoint = "POST /api/v1/orders"
    if payment != "sync":
        endpoint += f"?payment={payment}"
    canonical = json.dumps(
        {"endpoint": endpoint, "body": body.model_dump(mode="json")},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def saga_id_for(order_id: UUID) -> UUID:
    """The saga id of an order: derived from it, so an order can never get a second saga."""
    return uuid5(_SAGA_NAMESPACE, f"order-{order_id}")


@dataclass(frozen=True, slots=True)
class Claim:
    """An ``api_requests`` row: a key, the request it belongs to and, once done, its answer."""

    key: str
    fingerprint: str
    order_id: UUID
    status_code: int | None
    response: str | None


def replayed(claim: Claim | None, fingerprint: str) -> Response | None:
    """The stored answer for this key, if there is one; 422 if the key was another request's."""
    if claim is None:
        return None
    if claim.fingerprint != fingerprint:
        raise key_reused(claim.key)
    if claim.status_code is None or claim.response is None:
        return None  # claimed, not answered yet
    return Response(
        claim.response,
        status_code=claim.status_code,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


def key_reused(key: str) -> ApiProblem:
    return ApiProblem(
        422,
        "idempotency-key-reused",
        f"Idempotency-Key {key!r} was already used with a different request body",
        title="Idempotency-Key reused",
    )


class IdempotencyKeys:
    """The ``Idempotency-Key`` records, in the shop's database, and the keys in flight here."""

    def __init__(self, db: ShopDatabase) -> None:
        self.db = db
        self._in_flight: dict[str, str] = {}

    @contextmanager
    def processing(self, key: str, fingerprint: str) -> Iterator[None]:
        """Mark ``key`` as being processed by this process; 409 (or 422) if it already is."""
        running = self._in_flight.get(key)
        if running is not None:
            if running != fingerprint:
                raise key_reused(key)
            raise ApiProblem(
                409,
                "idempotency-key-in-use",
                f"a request with Idempotency-Key {key!r} is still being processed; retry later",
                title="Request in progress",
                headers={"Retry-After": "1"},
            )
        self._in_flight[key] = fingerprint
        try:
            yield
        finally:
            del self._in_flight[key]

    async def find(self, key: str) -> Claim | None:
        row = await self.db.read(
            lambda c: c.execute(
                "SELECT idempotency_key, fingerprint, order_id, status_code, response"
                " FROM api_requests WHERE idempotency_key = ?",
                (key,),
            ).fetchone()
        )
        return None if row is None else Claim(row[0], row[1], UUID(row[2]), row[3], row[4])

    async def claim(self, key: str, fingerprint: str, order_id: UUID) -> bool:
        """Claim ``key`` for ``order_id``; False if another request holds it already."""
        now = utcnow().isoformat()

        def op(c: sqlite3.Connection) -> bool:
            inserted = c.execute(
                "INSERT INTO api_requests (idempotency_key, fingerprint, order_id, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (idempotency_key) DO NOTHING",
                (key, fingerprint, str(order_id), now),
            ).rowcount
            return bool(inserted)

        claimed: bool = await self.db.transaction(op)
        return claimed

    async def store(self, key: str, response: Response) -> None:
        """Record the answer, to be replayed to every later request with this key."""
        body = bytes(response.body).decode("utf-8")
        await self.db.transaction(
            lambda c: c.execute(
                "UPDATE api_requests SET status_code = ?, response = ? WHERE idempotency_key = ?",
                (response.status_code, body, key),
            )
        )

    async def release(self, key: str) -> None:
        """Forget an unanswered claim whose order never started (so nothing was done)."""
        await self.db.transaction(
            lambda c: c.execute(
                "DELETE FROM api_requests WHERE idempotency_key = ? AND response IS NULL", (key,)
            )
        )
