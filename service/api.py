"""Agent API under ``/api/v1``: enroll, heartbeat, events, protected-object upload.

Bodies are the ``protocol.wire`` messages; each is validated against the schema the
OpenAPI document publishes (``service.schemas``) before use. Every endpoint except enroll
needs a valid, unrevoked agent token; enroll needs a one-time enrollment token.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from protocol.wire import (
    API_PREFIX,
    SHA256_RE,
    Ack,
    EnrollRequest,
    EnrollResponse,
    EventBatch,
    Heartbeat,
    HeartbeatAck,
    ObjectReceipt,
    to_dict,
)
from service import commands, readers
from service.context import AppContext, Ctx, get_context
from service.errors import ObjectRejected, ObjectStoreUnavailable
from service.objects_read import reported_uids
from service.schemas import SchemaError, parse_body
from service.store import AgentAuth

MAX_JSON_BYTES = 8 * 1024 * 1024

router = APIRouter(prefix=API_PREFIX, tags=["agent"])


def _ref(name: str) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/components/schemas/{name}"}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": _ref("Error")}}


_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: _error("missing, unknown or revoked token"),
}
_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("body is not JSON"),
    413: _error("body too large"),
    422: _error("body does not match the schema"),
}


def _json_request(name: str) -> dict[str, Any]:
    return {
        "requestBody": {"required": True, "content": {"application/json": _ref(name)}},
        "security": [{"bearer": []}],
    }


def _ok(name: str, description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": _ref(name)}}


def _problem(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _unauthorized() -> JSONResponse:
    return _problem(401, "invalid token", {"WWW-Authenticate": "Bearer"})


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > 256:
        return None
    return token


async def _authenticate(request: Request, ctx: AppContext) -> AgentAuth | None:
    token = bearer_token(request)
    if token is None:
        ctx.counters.inc("auth_failures")
        return None
    auth = await run_in_threadpool(ctx.store.authenticate_agent, token)
    if auth is None:
        ctx.counters.inc("auth_failures")
    return auth


async def _read_raw(request: Request) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_JSON_BYTES:
        raise ObjectRejected(413, "body too large")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_JSON_BYTES:
            raise ObjectRejected(413, "body too large")
    return bytes(body)


def _parse(raw: bytes, message: type[Any]) -> Any:
    if not raw:
        raise ObjectRejected(400, "empty body")
    try:
        return parse_body(raw, message)
    except SchemaError as exc:
        status = 400 if str(exc).startswith("invalid JSON") else 422
        raise ObjectRejected(status, str(exc)) from exc


def _report(
    ctx: AppContext,
    token: str | None,
    raw: bytes,
    message: type[Any],
    record: Callable[[AgentAuth, Any], Any],
) -> tuple[Response | None, Any]:
    """Authenticate, validate and record an agent report in one worker-thread hop."""
    auth = ctx.store.authenticate_agent(token) if token is not None else None
    if auth is None:
        ctx.counters.inc("auth_failures")
        return _unauthorized(), 0
    try:
        body = _parse(raw, message)
    except ObjectRejected as exc:
        return _problem(exc.status, exc.reason), 0
    if body.agent_id != auth.agent_id:
        return _problem(403, "agent_id does not match the token"), 0
    return None, record(auth, body)


@router.post(
    "/enroll",
    summary="Enroll an agent with a one-time enrollment token",
    response_class=JSONResponse,
    responses={200: _ok("EnrollResponse", "enrolled"), **_AUTH_ERRORS, **_BODY_ERRORS},
    openapi_extra=_json_request("EnrollRequest"),
)
async def enroll(request: Request, ctx: Ctx) -> Response:
    token = bearer_token(request)
    if token is None:
        return _unauthorized()
    try:
        req: EnrollRequest = _parse(await _read_raw(request), EnrollRequest)
    except ObjectRejected as exc:
        return _problem(exc.status, exc.reason)
    result = await run_in_threadpool(ctx.store.enroll, token, req)
    if result is None:
        ctx.counters.inc("auth_failures")
        return _problem(
            401,
            "enrollment token unknown, used, revoked or expired",
            {"WWW-Authenticate": "Bearer"},
        )
    agent_id, agent_token = result
    ctx.counters.inc("enrollments")
    response = EnrollResponse(
        agent_id=agent_id,
        agent_token=agent_token,
        recipients=list(ctx.settings.recipients),
        heartbeat_interval_s=ctx.settings.heartbeat_interval_s,
        pseudonym_secret=ctx.settings.pseudonym_secret_text(),
    )
    return JSONResponse(to_dict(response))


@router.post(
    "/heartbeat",
    summary="Report the agent's current status; the response carries pending commands",
    response_class=JSONResponse,
    responses={
        200: _ok("HeartbeatAck"),
        **_AUTH_ERRORS,
        403: _error("agent_id does not belong to this token"),
        **_BODY_ERRORS,
    },
    openapi_extra=_json_request("Heartbeat"),
)
async def heartbeat(request: Request) -> Response:
    ctx = get_context(request)  # not a dependency: spares the hot path FastAPI's resolver
    try:
        raw = await _read_raw(request)
    except ObjectRejected as exc:
        return _problem(exc.status, exc.reason)

    response = await run_in_threadpool(_heartbeat, ctx, bearer_token(request), raw)
    if response.status_code == 200:
        ctx.counters.inc("heartbeats")
    return response


#: Bodies up to this size are parsed before the token is checked, so a valid heartbeat
#: costs one database statement (authentication is part of it); larger ones, which no
#: agent sends, are authenticated first so an unknown client cannot make us parse them.
PARSE_BEFORE_AUTH_MAX_BYTES = 64 * 1024


def _heartbeat(ctx: AppContext, token: str | None, raw: bytes) -> Response:
    """Authenticate, validate and record a heartbeat (in a worker thread)."""
    store = ctx.store
    if token is None or (
        len(raw) > PARSE_BEFORE_AUTH_MAX_BYTES and store.authenticate_agent(token) is None
    ):
        ctx.counters.inc("auth_failures")
        return _unauthorized()
    try:
        hb: Heartbeat = _parse(raw, Heartbeat)
    except ObjectRejected as exc:
        if store.authenticate_agent(token) is None:  # an unknown token hears 401 first
            ctx.counters.inc("auth_failures")
            return _unauthorized()
        return _problem(exc.status, exc.reason)
    recorded = store.record_heartbeat(token, hb)
    if recorded is None:  # nothing was written: tell a bad token from a wrong agent_id
        if store.authenticate_agent(token) is None:
            ctx.counters.inc("auth_failures")
            return _unauthorized()
        return _problem(403, "agent_id does not match the token")
    commands.record_report(store, recorded.agent_id, hb.command_acks, hb.command_results)
    pending = commands.pending_for(
        store, recorded.agent_id, recorded.commands_pending, ctx.settings.command_ttl_s
    )
    ack = HeartbeatAck(ok=True, server_time=float(recorded.server_time), commands=pending)
    return JSONResponse(to_dict(ack))


@router.post(
    "/events",
    summary="Send a batch of events (resent events are ignored by event_id)",
    response_class=JSONResponse,
    responses={
        200: _ok("Ack"),
        **_AUTH_ERRORS,
        403: _error("agent_id does not belong to this token"),
        **_BODY_ERRORS,
    },
    openapi_extra=_json_request("EventBatch"),
)
async def events(request: Request, ctx: Ctx) -> Response:
    try:
        raw = await _read_raw(request)
    except ObjectRejected as exc:
        return _problem(exc.status, exc.reason)

    def record(auth: AgentAuth, batch: EventBatch) -> int:
        return ctx.store.record_events(auth.agent_id, batch.events)

    error, added = await run_in_threadpool(
        _report, ctx, bearer_token(request), raw, EventBatch, record
    )
    if error is not None:
        return error
    ctx.counters.inc("events", int(added))
    return JSONResponse(to_dict(Ack(ok=True, server_time=ctx.clock())))


_SHA_PARAM = Path(
    description="lowercase hex SHA-256 of the object's bytes",
    json_schema_extra={"pattern": SHA256_RE.pattern},
)


@router.put(
    "/objects/{sha256}",
    summary="Upload a protected object, addressed by the SHA-256 of its bytes (idempotent)",
    response_class=JSONResponse,
    responses={
        200: _ok("ObjectReceipt", "already stored"),
        201: _ok("ObjectReceipt", "stored"),
        **_AUTH_ERRORS,
        413: _error("object larger than the configured limit"),
        422: _error("malformed sha256 or content does not match it"),
        503: _error("object store unreachable: nothing was stored, retry later"),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        "security": [{"bearer": []}],
    },
)
async def put_object(request: Request, ctx: Ctx, sha256: Annotated[str, _SHA_PARAM]) -> Response:
    auth = await _authenticate(request, ctx)
    if auth is None:
        return _unauthorized()
    if not SHA256_RE.match(sha256):
        return _problem(422, "sha256 must be 64 lowercase hex digits")
    limit = ctx.settings.max_object_bytes
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        return _problem(413, f"object larger than {limit} bytes")
    try:
        size, created = await ctx.objects.put(sha256, request.stream(), limit)
    except ObjectRejected as exc:
        return _problem(exc.status, exc.reason)
    except ObjectStoreUnavailable as exc:
        ctx.counters.inc("object_store_unavailable")
        return store_unavailable(exc)
    await run_in_threadpool(ctx.store.record_object, sha256, size, auth.agent_id)
    uids = reported_uids(request, sha256)
    if uids is not None:
        await run_in_threadpool(readers.record_uids, ctx.store, uids)
    if created:
        ctx.counters.inc("objects_stored")
        ctx.counters.inc("object_bytes_stored", size)
    receipt = ObjectReceipt(sha256=sha256, size=size, created=created)
    return JSONResponse(to_dict(receipt), status_code=201 if created else 200)


@router.head(
    "/objects/{sha256}",
    summary="Whether an object is stored",
    responses={
        200: {"description": "stored"},
        401: {"description": "missing, unknown or revoked token"},
        404: {"description": "not stored"},
        503: {"description": "object store unreachable, retry later"},
    },
    openapi_extra={"security": [{"bearer": []}]},
)
async def head_object(request: Request, ctx: Ctx, sha256: Annotated[str, _SHA_PARAM]) -> Response:
    auth = await _authenticate(request, ctx)
    if auth is None:
        return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if not SHA256_RE.match(sha256):
        return Response(status_code=404)
    try:
        size = await run_in_threadpool(ctx.objects.size, sha256)
    except ObjectStoreUnavailable:
        ctx.counters.inc("object_store_unavailable")
        return Response(status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    if size is None:
        return Response(status_code=404)
    return Response(status_code=200, headers={"Content-Length": str(size)})


#: what a 503 from the object store tells the agent to wait before it retries
RETRY_AFTER_S = 30


def store_unavailable(exc: ObjectStoreUnavailable) -> JSONResponse:
    """503 + Retry-After: the agent keeps its copy and retries (nothing was stored)."""
    return _problem(503, str(exc), {"Retry-After": str(RETRY_AFTER_S)})
