"""The spec's HTTP endpoints, served by FastAPI over a `Shop`.

    app = create_app(Shop("orders.db"))  # then uvicorn, or: python -m order_fulfillment --serve

- ``POST /api/v1/orders`` places an order and runs its saga to the end: ``200`` with the
  tracking number, or the spec's ``400`` body when the saga compensated. Prices come from the
  catalog, never from the client; an ``Idempotency-Key`` header makes the request safe to retry.
- ``GET /api/v1/orders/{order_id}/status`` reports the saga, as in the spec.
- ``GET /healthz`` answers once the database does; ``/docs`` is the OpenAPI UI.

Every other client error is an RFC 9457 ``application/problem+json`` document naming the
offending field, and a refused request writes nothing.

The modules: `models` (request and response bodies, money parsing), `problems` (problem
documents, exception handlers, the body-size limit), `idempotency` (the Idempotency-Key
store), `dependencies` (the shop and key store, from the lifespan state), `orders` and
`health` (the routers), `app` (`create_app`) and `server` (`serve`, `demo_curl`).
"""

from .app import create_app
from .idempotency import request_fingerprint, saga_id_for
from .models import CreateOrderRequest
from .server import demo_curl, serve

__all__ = [
    "CreateOrderRequest",
    "create_app",
    "demo_curl",
    "request_fingerprint",
    "saga_id_for",
    "serve",
]
