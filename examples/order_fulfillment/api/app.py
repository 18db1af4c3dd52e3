"""`create_app`: the FastAPI application over a `Shop`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from saga_orchestrator.protocols import LeasedSagaRepository

from ..observability import SagaMetrics
from ..shop import Shop
from .health import health_router
from .idempotency import IdempotencyKeys
from .metrics import metrics_router
from .models import Problem
from .orders import orders_router
from .problems import MAX_BODY_BYTES, BodySizeLimit, add_problem_handlers
from .webhooks import webhooks_router

logger = logging.getLogger("order_fulfillment.api")


def create_app(shop: Shop, *, wake_interval_seconds: float | None = 1.0) -> FastAPI:
    """The HTTP API over ``shop``, which the app opens (and recovers) at start-up.

    While it serves, a background task runs the shop's timer (`Shop.run_timer`) every
    ``wake_interval_seconds``: it ends the wait of an order whose payment's capture did not
    come in time. ``None`` runs no timer; neither does a shop whose sagas are held by workers
    (a leased repository, PostgreSQL), since the workers wake them.
    """

    metrics = SagaMetrics(shop.repository)
    shop.orchestrator.listeners.append(metrics.listener)
    timer = wake_interval_seconds is not None and not isinstance(
        shop.repository, LeasedSagaRepository
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with shop:
            recovered = await shop.recover()
            if recovered:
                logger.info("api.recovered %d unfinished orders", len(recovered))
            async with anyio.create_task_group() as background:
                if timer:
                    assert wake_interval_seconds is not None
                    background.start_soon(shop.run_timer, wake_interval_seconds)
                yield {
                    "shop": shop,
                    "idempotency_keys": IdempotencyKeys(shop.db),
                    "metrics": metrics,
                }
                background.cancel_scope.cancel()

    app = FastAPI(
        title="Order fulfilment",
        version="1.0.0",
        summary="The order saga of saga-orchestrator's worked example.",
        lifespan=lifespan,
    )
    app.include_router(orders_router())
    app.include_router(webhooks_router())
    app.include_router(health_router())
    app.include_router(metrics_router())
    app.add_middleware(BodySizeLimit, max_bytes=MAX_BODY_BYTES)
    add_problem_handlers(app)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            # The problem responses refer to Problem by $ref; publish it among the schemas.
            defined = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defined.pop("$defs", {}))
            schemas["Problem"] = defined
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
