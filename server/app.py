"""The application: the ASGI middlewares every request passes (request id and metrics,
body limit, auth), the lifespan that starts the runtime (server/runtime.py) in the
background, and the app factory `create_app(settings)`."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Mapping, Optional, Sequence

import fastapi.routing
from fastapi import Depends, FastAPI
from fastapi_offline import FastAPIOffline
from starlette.requests import ClientDisconnect
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .api import (
    edits,
    files,
    generations,
    health,
    interpolations,
    job_events,
    jobs,
    models,
    playground,
    text_diffs,
    variations,
)
from .api.auth import AuthMiddleware, bearer_scheme
from .api.background import ASYNC_RESPONSE, prefer_header
from .api.errors import error_response, install_handlers
from .claimer import Claimer
from .errors import CLIENT_CLOSED, APIError
from .logs import CURRENT_REQUEST
from .requests.schemas import ErrorResponse
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger(__name__)

ERROR_CODES = (400, 401, 404, 413, 429, 500, 503, 504)
ASYNC_GRACE_S = 2.0  # at shutdown: for async jobs' last results and webhooks


# ---- middlewares ----------------------------------------------------------------------

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def route_templates(routes: Sequence[BaseRoute]) -> dict[int, str]:
    """id of each route object that a request's scope["route"] may hold -> its full path
    template ("/v1/images/jobs/{job_id}"). FastAPI 0.16x keeps an included router's routes
    as declared, without the include prefix ("/images/jobs/{job_id}"); its route contexts
    know the full path. Older versions copy the routes with the prefix."""
    contexts = getattr(fastapi.routing, "iter_route_contexts", None)
    if contexts is None:
        return {id(route): route.path for route in routes if getattr(route, "path", None)}
    return {id(ctx.original_route): ctx.path for ctx in contexts(routes) if ctx.path}


class RequestContext:
    """x-request-id on every response (the client's, if sane, else a new one); request
    metrics by route template and status; unexpected errors as a bare 500.

    A client that goes away before its response starts (mid-body, or while its job runs)
    is counted as 499, nginx's "client closed request": the `outcome` label stays a status
    code, so `outcome=~"5.."` keeps meaning server errors. Nothing is sent to it and
    nothing is logged above INFO."""

    def __init__(self, app: ASGIApp, runtime: Runtime, templates: Mapping[int, str]):
        self.app, self.runtime, self.templates = app, runtime, templates

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        rid = given if REQUEST_ID.match(given) else f"req_{secrets.token_hex(16)}"
        scope.setdefault("state", {})["request_id"] = rid
        logged_as = CURRENT_REQUEST.set(rid)  # every log line of this request names it (server/logs.py)
        status, started, gone = [500, False], time.perf_counter(), [False]

        async def watching_receive() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not status[1]:
                gone[0] = True
            return message

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0], status[1] = message["status"], True
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, watching_receive, send_with_id)
        except ClientDisconnect:
            log.info("request %s: the client went away", rid)
        except Exception:  # noqa: BLE001 - last resort: no internals leave the server
            log.exception("request %s failed", rid)
            if not status[1]:
                err = APIError(500, "The server had an error while processing your request.", "server_error",
                               code="internal_error", headers={"x-request-id": rid})
                await error_response(err)(scope, receive, send)
        finally:
            self.observe(scope, CLIENT_CLOSED if gone[0] else status[0], time.perf_counter() - started)
            CURRENT_REQUEST.reset(logged_as)

    def observe(self, scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = self.templates.get(id(route)) or getattr(route, "path", None) or "unmatched"
        try:
            self.runtime.metrics.observe_request(template, str(status), seconds)
        except Exception:  # noqa: BLE001 - metrics never break a request
            log.debug("metrics failed", exc_info=True)


class BodyLimit:
    """413 for bodies over `limit` bytes: by Content-Length up front, else while reading."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.limit:
            return await error_response(self.too_large())(scope, receive, send)
        seen, over, started = [0], [False], [False]

        async def counting_receive() -> Message:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.limit:
                over[0] = True
                raise APIError(413, "Request body too large.")
            return message

        async def guarded_send(message: Message) -> None:
            if over[0] and not started[0]:  # replace whatever the app made of the error
                started[0] = True
                return await error_response(self.too_large())(scope, receive, send)
            if not over[0]:
                started[0] = True
                await send(message)

        await self.app(scope, counting_receive, guarded_send)

    def too_large(self) -> APIError:
        return APIError(413, f"Request body too large: the limit is {self.limit} bytes.", code="request_too_large")


# ---- the app ----------------------------------------------------------------------------

@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start loading in the background; stop the engine at shutdown."""
    rt: Runtime = app.state.runtime
    claimer = Claimer(rt)  # with Redis: runs jobs of the global queue here

    async def start() -> None:
        try:
            await rt.start()
            claimer.start()
        except Exception:  # noqa: BLE001 - reported by /health and /ready
            rt.state = "failed"
            log.exception("could not start the model from %s", rt.settings.model_dir)

    task = asyncio.create_task(start())
    try:
        yield
    finally:
        task.cancel()
        await claimer.close()
        await asyncio.to_thread(rt.stop)
        await rt.close(grace_s=ASYNC_GRACE_S)


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    """The FastAPI app serving the model of settings.model_dir (loaded after startup).
    Raises MissingWeightsError at once if the directory has no stack.json."""
    settings = settings or Settings()
    runtime = Runtime(settings)
    app = FastAPIOffline(title="unCLIP server", version="0.1.0", lifespan=lifespan,
                  description="OpenAI Images API compatible unCLIP (DALL-E 2) server, with extensions.")
    app.state.runtime = runtime
    install_handlers(app)
    secured = [Depends(bearer_scheme)] if settings.keys else []  # documents the scheme only when it is on
    errors = {code: {"model": ErrorResponse} for code in ERROR_CODES}
    accepts_async = [Depends(prefer_header)]  # documents `Prefer: respond-async`; serve reads it
    for module in (generations, edits, variations, interpolations, text_diffs):
        app.include_router(module.router, prefix="/v1", tags=["images"], dependencies=secured + accepts_async,
                           responses={**errors, **ASYNC_RESPONSE})
    app.include_router(jobs.router, prefix="/v1", tags=["jobs"], dependencies=secured, responses=errors)
    app.include_router(job_events.router, prefix="/v1", tags=["jobs"], dependencies=secured, responses=errors)
    app.include_router(models.router, prefix="/v1", tags=["models"], dependencies=secured, responses=errors)
    app.include_router(files.router, prefix="/v1", tags=["files"], responses={404: {"model": ErrorResponse}},
                       dependencies=secured if settings.files_require_key else [])
    app.include_router(health.router, tags=["operations"])
    app.include_router(playground.router, include_in_schema=False)
    app.add_middleware(AuthMiddleware, keys=settings.keys, files_require_key=settings.files_require_key)
    app.add_middleware(BodyLimit, limit=settings.max_request_body_bytes)
    app.add_middleware(RequestContext, runtime=runtime, templates=route_templates(app.routes))
    return app
