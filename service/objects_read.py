"""``GET /api/v1/reader/objects…`` for reading gateways (reader tokens; see :mod:`service.readers`)."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from protocol.wire import SHA256_RE
from service import readers
from service.context import Ctx
from service.errors import ObjectCorrupt, ObjectStoreUnavailable
from service.store import Store

log = logging.getLogger("scanfort.central.objects")
router = APIRouter(prefix="/api/v1/reader", tags=["objects (read side)"])
_UID_HEADERS = ("x-scanfort-study-uid", "x-scanfort-series-uid", "x-scanfort-sop-uid")


def reported_uids(request: Request, sha256: str) -> readers.ObjectUids | None:
    """The UIDs an agent sent with an upload, if all three are present and well-formed."""
    values = [request.headers.get(h) for h in _UID_HEADERS]
    if not all(readers.valid_uid(v) for v in values):
        return None
    study, series, sop = (str(v) for v in values)
    return readers.ObjectUids(sha256, study, series, sop)


async def _reader(request: Request, store: Store) -> bool:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip().startswith(readers.READER_TOKEN_PREFIX):
        return False
    return await run_in_threadpool(readers.authenticate_reader, store, token.strip())


def _unauthorized() -> JSONResponse:
    return JSONResponse({"detail": "reader token required"}, status_code=401,
                        headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


_READ_ERRORS: dict[int | str, dict[str, object]] = {
    401: {"description": "missing, unknown or revoked reader token"},
}


@router.get("/objects", summary="Objects by Study/Series/SOP Instance UID (reader token)",
            responses={200: {"description": "matching objects (UIDs and sha256 only)"},
                       **_READ_ERRORS},
            openapi_extra={"security": [{"bearer": []}]})  # fmt: skip
async def list_objects(
    request: Request, ctx: Ctx, study: Annotated[str | None, Query()] = None,
    series: Annotated[str | None, Query()] = None, sop: Annotated[str | None, Query()] = None,
) -> Response:  # fmt: skip
    if not await _reader(request, ctx.store):
        return _unauthorized()
    found = await run_in_threadpool(readers.find_objects, ctx.store, study, series, sop)
    return JSONResponse([
        {"sha256": o.sha256, "study_uid": o.study_uid, "series_uid": o.series_uid,
         "sop_uid": o.sop_uid} for o in found
    ])  # fmt: skip


@router.get("/objects/{sha256}", summary="The bytes of a stored (encrypted) object",
            response_class=Response,
            responses={200: {"description": "the object", "content": {
                           "application/octet-stream": {"schema": {"type": "string",
                                                                   "format": "binary"}}}},
                       404: {"description": "not stored"},
                       500: {"description": "the stored bytes failed their SHA-256 check"},
                       503: {"description": "object store unreachable, retry later"},
                       **_READ_ERRORS},
            openapi_extra={"security": [{"bearer": []}]})  # fmt: skip
async def get_object(request: Request, ctx: Ctx, sha256: str) -> Response:
    if not await _reader(request, ctx.store):
        return _unauthorized()
    if not SHA256_RE.match(sha256):
        return JSONResponse({"detail": "no such object"}, status_code=404)
    try:
        stored = await run_in_threadpool(ctx.objects.open_verified, sha256)
    except ObjectCorrupt as exc:
        ctx.counters.inc("objects_corrupt")
        log.error("object store: %s", exc)  # the hash only: it names no patient
        return JSONResponse({"detail": str(exc)}, status_code=500)
    except ObjectStoreUnavailable as exc:
        ctx.counters.inc("object_store_unavailable")
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "30"})
    if stored is None:
        return JSONResponse({"detail": "no such object"}, status_code=404)
    return FileResponse(stored.path, media_type="application/octet-stream",
                        background=BackgroundTask(stored.cleanup))  # fmt: skip
