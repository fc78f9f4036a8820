"""Probes and metrics, open without an API key.

/health: 200 while the process is sound (loading, or the engine thread alive); 503 when
loading failed or the engine thread died. /ready: 200 once the model is loaded and warmed
up, 503 while loading, while draining and while the shared store (Redis) is unreachable;
its body says which store (`memory` or `redis`) and whether it answers (`store_problem`:
why a Redis that answers is not used), and whether the
batch caps are still being measured (`batch_caps`: `measuring`, or `set`). /metrics:
Prometheus text format.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse

from ..runtime import AppRuntime

router = APIRouter()


@router.get("/health", summary="Liveness")
async def health(rt: AppRuntime) -> JSONResponse:
    return JSONResponse({"status": rt.state}, status_code=200 if rt.alive else 503)


@router.get("/ready", summary="Readiness")
async def ready(rt: AppRuntime) -> JSONResponse:
    body = {"status": rt.state, "model": rt.model_name, "store": rt.shared.kind, "store_up": rt.shared.up}
    if rt.shared.problem is not None:
        body["store_problem"] = rt.shared.problem
    if rt.engine is not None:
        body.update(queue_depth=rt.engine.queue_depth, running=rt.engine.running,
                    batch_caps="measuring" if rt.engine.calibrating else "set")
    return JSONResponse(body, status_code=200 if rt.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(rt: AppRuntime) -> Response:
    body, content_type = rt.metrics.render()
    return Response(body, media_type=content_type)
