"""The ASGI application of the gateway: ``create_app(settings)`` is the one entry point.

It reads the site identity, opens the store (creating missing tables) and mounts QIDO-RS,
WADO-RS, the pages and, when configured, the viewer. Security headers: a strict CSP on the
gateway's own pages, a CSP the OHIF bundle can run under on the viewer's files (it needs
``wasm-unsafe-eval`` for its image decoders and inline styles), ``nosniff`` everywhere,
and CORS only for the origins listed in ``cors_origins``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from fastapi import FastAPI, Request, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cipher.pseudonym import PseudonymSecret
from gateway import pages, searchapi, wado
from gateway.audit import AuditEvent, SyslogSender
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import RefusedInstance
from gateway.index import Index
from gateway.restore import Restorer
from gateway.security import IndexSeal
from gateway.stagecache import StageCache
from gateway.store import Store
from gateway.upstream import Upstream

_PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
_VIEWER_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' 'wasm-unsafe-eval' 'unsafe-eval'; "
    "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
    "worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; base-uri 'self'"
)
#: Largest instance the gateway accepts from an upstream (a 1 GB multi-frame fits).
MAX_INSTANCE_BYTES = 2 * 1024**3
#: The user name of the gateway's own decryptions in the audit log.
INDEXER = "(gateway index)"


def create_app(
    settings: Settings,
    *,
    store: Store | None = None,
    identities: Sequence[str] | None = None,
    pseudonyms: PseudonymSecret | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], None] = time.sleep,
) -> FastAPI:
    """Build the application (database tables are created if missing)."""
    ids = list(identities) if identities is not None else settings.read_identities()
    store = store or Store(settings.database_url, clock=clock)
    store.create_schema()
    upstream = Upstream(settings.upstreams, settings.upstream_timeout_s, MAX_INSTANCE_BYTES,
                        settings.read_central_token())
    restorer = Restorer(ids, settings.cache_bytes, settings.max_concurrent_restores,
                        settings.stream_above_bytes)
    def indexed(study: str, count: int, refused: list[RefusedInstance]) -> None:
        # the gateway's own decryptions (building the index) are audited like a reader's
        store.append_audit([
            AuditEvent(INDEXER, "-", "reindex", "ok", study, detail=f"{count} instances"),
            *(AuditEvent(INDEXER, "-", "reindex", "refused", study, "", r.sop_instance_uid,
                         r.reason) for r in refused),
        ])  # fmt: skip

    index = Index(store, IndexSeal(ids), upstream, restorer, indexed,
                  full_sync_interval_s=settings.index_sync_interval_s)
    secret = pseudonyms if pseudonyms is not None else settings.read_pseudonym_secret()
    # as many restore threads as restores may run at once: a thread more would only wait
    # for a slot (a wake-up and a context switch per instance for nothing)
    pool = ThreadPoolExecutor(settings.max_concurrent_restores, thread_name_prefix="gw-restore")
    gw = Gateway(settings, store, upstream, restorer, index, clock, sleep, secret, pool)
    gw.stages = StageCache(settings.stage_path, settings.stage_cache_bytes)
    if settings.syslog_address:
        store.on_audit = SyslogSender(settings.syslog_address).send
    app = FastAPI(title="ScanFort reading gateway", docs_url=None, redoc_url=None,
                  openapi_url=None)  # fmt: skip
    app.state.gateway = gw
    app.include_router(searchapi.router)
    app.include_router(wado.router)
    app.include_router(pages.router)

    @app.get("/{path:path}", include_in_schema=False)
    def viewer(path: str, request: Request) -> Response:
        return pages.viewer_response(request, path)

    app.add_middleware(SecurityHeaders, hsts=settings.cookie_secure)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_credentials=True,
            allow_methods=["GET"], allow_headers=["Authorization", "Accept"],
        )  # fmt: skip
    return app


class SecurityHeaders:
    """Pure ASGI middleware (BaseHTTPMiddleware would relay every streamed chunk)."""

    def __init__(self, app: ASGIApp, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts  # behind TLS: browsers must never fall back to http

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        own = path.startswith(("/dicom-web", "/login", "/logout", "/audit", "/healthz", "/admin"))
        extra = [
            (b"content-security-policy", (_PAGE_CSP if own else _VIEWER_CSP).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"same-origin"),
        ]
        if self.hsts:
            extra.append((b"strict-transport-security", b"max-age=31536000"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
