"""The ASGI application of the central service.

``create_app(settings)`` is the one entry point (the CLI, the tests, the demo and uvicorn
all use it); it opens the database, creates missing tables and mounts the agent API, the
dashboard, ``/metrics``, ``/healthz`` and the OpenAPI document (``/openapi.json``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protocol import __version__
from service import api, commands, dashboard, dashboard_ops, objects_read, schemas, throttle
from service.context import AppContext, get_context
from service.metrics import render_metrics
from service.objects import ObjectBackend, open_backend
from service.security import tokens_equal
from service.settings import Settings
from service.store import Store

log = logging.getLogger("scanfort.central")

_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_PRUNE_PERIOD_S = 3600.0


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    store: Store | None = None,
    objects: ObjectBackend | None = None,
) -> FastAPI:
    """Build the application for ``settings`` (database tables are created if missing)."""
    store = store or Store(settings.database_url, clock=clock)
    store.create_schema()
    objects = objects or open_backend(settings)
    ctx = AppContext(settings=settings, store=store, objects=objects, clock=clock)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_prune_forever(ctx))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FastAPI(
        title="ScanFort central",
        version=__version__,
        description=(
            "Status service for ScanFort edge agents: enrollment, heartbeats, events and "
            "upload of protected (encrypted) objects. Agent endpoints take a bearer token."
        ),
        lifespan=lifespan,
        docs_url=None,  # Swagger UI would load scripts from a CDN; the schema is at /openapi.json
        redoc_url=None,
    )
    app.state.scanfort = ctx
    app.include_router(api.router)
    app.include_router(objects_read.router)
    app.include_router(dashboard.router)
    app.include_router(dashboard_ops.router)
    app.mount(
        "/static", StaticFiles(directory=str(Path(__file__).parent / "static")), name="static"
    )

    @app.get(
        "/healthz",
        tags=["ops"],
        summary="Liveness and readiness: database reachable, object store writable",
        response_class=JSONResponse,
        responses={
            200: {"description": "healthy", "content": {"application/json": {"schema": _HEALTH}}},
            503: {"description": "unhealthy", "content": {"application/json": {"schema": _HEALTH}}},
        },
    )
    async def healthz(request: Request) -> Response:
        ctx = get_context(request)
        problems: list[str] = []
        try:
            await run_in_threadpool(ctx.store.ping)
        except Exception as exc:  # any database failure makes the process unready
            problems.append(f"database: {type(exc).__name__}")
        if not await run_in_threadpool(ctx.objects.writable):
            problems.append("object store not writable")
        body = {"status": "ok" if not problems else "fail", "problems": problems}
        return JSONResponse(body, status_code=200 if not problems else 503)

    @app.get(
        "/metrics",
        tags=["ops"],
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        ctx = get_context(request)
        expected = ctx.settings.metrics_token
        if expected and not tokens_equal(api.bearer_token(request) or "", expected):
            return PlainTextResponse(
                "metrics need the bearer token\n",
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        text = await run_in_threadpool(render_metrics, ctx)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    app.add_middleware(_SecurityHeaders, hsts=settings.cookie_secure)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            from fastapi.openapi.utils import get_openapi

            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            components = schema.setdefault("components", {})
            components.setdefault("schemas", {}).update(schemas.component_schemas())
            components["securitySchemes"] = {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "agent token (enroll: one-time enrollment token)",
                }
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


_HEALTH: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["ok", "fail"]},
        "problems": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["status", "problems"],
}


class _SecurityHeaders:
    """Adds browser hardening headers to every response (plain ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        extra = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"same-origin"),
            (b"content-security-policy", _CSP.encode()),
        ]
        if hsts:
            extra.append((b"strict-transport-security", b"max-age=31536000"))
        self._extra = extra

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self._extra if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _prune_forever(ctx: AppContext) -> None:
    while True:
        try:
            retention_s = ctx.settings.event_retention_days * 86400
            await run_in_threadpool(ctx.store.prune, retention_s)
            await run_in_threadpool(
                throttle.prune, ctx.store, ctx.settings.login_window_s, retention_s
            )
            await run_in_threadpool(commands.expire_overdue, ctx.store, ctx.settings.command_ttl_s)
        except Exception:  # pruning is housekeeping; the next round retries
            log.warning("pruning old events failed", exc_info=True)
        await asyncio.sleep(_PRUNE_PERIOD_S)
