"""``/healthz``: answers once the service and saga databases do."""

import logging
from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import Response

from .dependencies import ShopDep
from .models import Health
from .problems import problem, problem_doc

logger = logging.getLogger("order_fulfillment.api")


def health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Health, responses={503: problem_doc("Unhealthy")})
    async def healthz(shop: ShopDep) -> Health | Response:
        """Whether the service and saga databases answer."""
        try:
            await shop.db.read(lambda c: c.execute("SELECT 1").fetchone())
            await shop.repository.get(UUID(int=0))
        except Exception:
            logger.exception("api.healthz: the database does not answer")
            return problem(503, "the database does not answer", kind="unhealthy")
        return Health(status="ok")

    return router
