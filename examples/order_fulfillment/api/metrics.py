"""`GET /metrics`: the saga metrics in Prometheus' text format."""

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..observability import SagaMetrics


def metrics_router() -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/metrics", response_class=Response, summary="Prometheus metrics")
    async def metrics(request: Request) -> Response:
        saga_metrics: SagaMetrics = request.state.metrics
        return Response(await saga_metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return router
