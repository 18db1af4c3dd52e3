"""`create_app`: the FastAPI application over a `Shop`."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ..observability import SagaMetrics
from ..shop import Shop
from .health import health_router
from .idempotency import IdempotencyKeys
from .metrics import metrics_router
from .models import Problem
from .orders import orders_router
from .problems import MAX_BODY_BYTES, BodySizeLimit, add_problem_handlers

logger = logging.getLogger("order_fulfillment.api")


def create_app(shop: Shop) -> FastAPI:
    """The HTTP API over ``shop``, which the app opens (and recovers) at start-up."""

    metrics = SagaMetrics(shop.repository)
    shop.orchestrator.listeners.append(metrics.listener)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with shop:
            recovered = await shop.recover()
            if recovered:
                logger.info("api.recovered %d unfinished orders", len(recovered))
            yield {
                "shop": shop,
                "idempotency_keys": IdempotencyKeys(shop.db),
                "metrics": metrics,
            }

    app = FastAPI(
        title="Order fulfilment",
        version="1.0.0",
        summary="The order saga of saga-orchestrator's worked example.",
        lifespan=lifespan,
    )
    app.include_router(orders_router())
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
