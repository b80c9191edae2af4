"""WADO-RS: retrieve (study, series, instance), metadata, frames, bulk data, rendered.

Retrieves stream: the upstream multipart is read one instance at a time, each restored and
written out before the next is read, so memory is bounded by the largest instance (and the
restore slots), not by the study. Every instance served or refused gets an audit entry
before its bytes leave. A refused instance is left out of a study/series stream (its
entry says why) and answered 409 when asked for alone, never served as noise.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from concurrent.futures import Future
from contextlib import ExitStack, contextmanager
from typing import Any, BinaryIO, overload

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from gateway import dicomdata, largeframes
from gateway.audit import AuditEvent
from gateway.auth import require
from gateway.context import Gateway, client_of, get_gateway
from gateway.errors import RefusedInstance, UpstreamError, UpstreamNotFound
from gateway.index import metadata_of
from gateway.multipart import closing, new_boundary, part_bytes, part_head, part_pieces
from gateway.readahead import ReadAhead
from gateway.restore import Restored, Streamed
from gateway.stagecache import Stage
from gateway.store import Principal
from gateway.streaming import Piece, ahead
from gateway.upstream import first_value

router = APIRouter(prefix="/dicom-web")


def dicomweb_root(request: Request) -> str:
    """Base of RetrieveURL and BulkDataURI: ``public_url``, else from the Host header."""
    public = get_gateway(request).settings.public_url
    return (public or str(request.base_url)).rstrip("/") + "/dicom-web"


def _event(p: Principal, request: Request, op: str, outcome: str, study: str = "",
           series: str = "", instance: str = "", detail: str = "") -> AuditEvent:  # fmt: skip
    return AuditEvent(p.username, client_of(request), op, outcome, study, series, instance, detail)


def _served(p: Principal, request: Request, op: str, item: Restored | Streamed) -> AuditEvent:
    outcome = "ok" if item.protected else "passthrough"
    return _event(p, request, op, outcome, item.study_uid, item.series_uid, item.sop_uid)


def _refused(p: Principal, request: Request, op: str, exc: RefusedInstance, study: str = "",
             series: str = "") -> AuditEvent:  # fmt: skip
    return _event(p, request, op, "refused", study, series, exc.sop_instance_uid, exc.reason)


def _fail_upstream(gw: Gateway, p: Principal, request: Request, op: str, exc: Exception,
                   study: str, series: str = "", instance: str = "") -> HTTPException:  # fmt: skip
    if isinstance(exc, UpstreamNotFound):
        gw.audit([_event(p, request, op, "failed", study, series, instance, "not found")])
        return HTTPException(404, "no such study, series or instance in the archive")
    assert isinstance(exc, UpstreamError)
    gw.audit([_event(p, request, op, "failed", study, series, instance, str(exc))])
    return HTTPException(exc.status, str(exc))


# --------------------------------------------------------------------------- retrieve


def _stream_instances(
    gw: Gateway, p: Principal, request: Request, path: str, study: str, series: str = ""
) -> StreamingResponse:
    streams = gw.upstream.iter_streams(path)
    try:
        first = next(streams, None)
        if first is None:
            raise HTTPException(404, "no instances")
        opened = _take(gw, first)
    except (UpstreamError, UpstreamNotFound) as exc:
        raise _fail_upstream(gw, p, request, "retrieve", exc, study, series) from None
    boundary = new_boundary()
    # enough in flight that restores finish while earlier parts are sent, and that they go
    # out (and are audited) several at a time: one transaction and one write per batch
    window = max(2 * _BATCH, 4 * gw.settings.max_concurrent_restores)
    Ready = Restored | Streamed | RefusedInstance

    def restore(raw: bytes) -> Ready:
        try:
            return gw.restorer.restore(raw)
        except RefusedInstance as exc:
            return exc

    def queued(taken: Ready | bytes) -> Future[Ready] | Ready:
        return gw.pool.submit(restore, taken) if isinstance(taken, bytes) else taken

    def result(entry: Future[Ready] | Ready) -> Ready:
        return entry.result() if isinstance(entry, Future) else entry

    Entry = Future[Ready] | Ready

    def take(stream: BinaryIO) -> tuple[Entry, int, bool]:
        taken = _take(gw, stream)
        size = len(taken) if isinstance(taken, bytes) else 0
        return queued(taken), size, isinstance(taken, Streamed)

    def discard(entry: Entry) -> None:
        if isinstance(entry, Future):
            entry.cancel()
        elif isinstance(entry, Streamed):
            entry.close()

    def body() -> Generator[list[Piece], None, None]:
        # A thread of its own reads the archive's answer (ReadAhead); an instance that came
        # in whole is restored on the shared pool (the cipher releases the GIL) as soon as
        # it is read, up to ``window`` instances and _AHEAD_BYTES ahead, and parts leave in
        # the archive's order from this thread. A large instance (Streamed) goes out piece
        # by piece once those before it are out, before the archive's answer is read further.
        first_entry: Entry | None = queued(opened)
        reader = ReadAhead(streams, take, discard, count=window, limit=_AHEAD_BYTES,
                           hold=isinstance(opened, Streamed))  # fmt: skip
        served: list[Restored] = []
        sent = 0

        def next_entry() -> tuple[bool, Entry | None]:
            nonlocal first_entry
            if first_entry is not None:
                entry, first_entry = first_entry, None
                return True, entry
            return reader.get()

        try:
            while True:
                got, entry = next_entry()
                if not got:
                    break
                assert entry is not None
                # restores already finished go out together (after the first part, at least
                # _BATCH when that many are on the way): one audit transaction, one write
                ready = [result(entry)]
                while not isinstance(ready[-1], Streamed):
                    there, head = reader.peek()
                    if not there or not (not isinstance(head, Future) or head.done()
                                         or (sent and len(ready) < _BATCH)):
                        break
                    got, entry = reader.get()
                    assert got and entry is not None
                    ready.append(result(entry))
                sent += len(ready)
                events: list[AuditEvent] = []
                parts: list[Piece] = []
                large: Streamed | None = None
                for item in ready:
                    if isinstance(item, RefusedInstance):
                        events.append(_refused(p, request, "retrieve", item, study, series))
                    elif isinstance(item, Streamed):
                        events.append(_served(p, request, "retrieve", item))
                        large = item
                    else:
                        events.append(_served(p, request, "retrieve", item))
                        gw.restorer.cache.put(item)
                        served.append(item)
                        parts.extend(part_pieces(boundary, "application/dicom", item.pieces))
                gw.audit(events)  # before the bytes leave
                if parts:
                    yield _merged(parts)
                if large is not None:
                    whole = yield from _one_by_one(_stream_part(
                        gw, p, request, boundary, large, study, series))  # fmt: skip
                    if not whole:
                        return  # cut short: the missing closing boundary says so
                    reader.release()
                if len(served) >= 50:
                    gw.index.record(served, only_new=True)
                    served = []
        except (UpstreamError, UpstreamNotFound) as exc:
            gw.audit([_event(p, request, "retrieve", "failed", study, series, "", str(exc))])
            return  # the missing closing boundary tells the client the stream is incomplete
        finally:
            if first_entry is not None:
                discard(first_entry)
            reader.close()
        gw.index.record(served, only_new=True)
        yield [closing(boundary)]

    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return StreamingResponse(ahead(body()), media_type=ctype)


def _take(gw: Gateway, stream: BinaryIO) -> Restored | Streamed | RefusedInstance | bytes:
    """An instance from the archive: its bytes when it came in whole (restored on the pool),
    else opened as a stream (sent before the archive's answer is read further)."""
    try:
        return gw.restorer.take(stream)
    except RefusedInstance as exc:
        return exc


def _stream_part(gw: Gateway, p: Principal, request: Request, boundary: str, item: Streamed,
                 study: str, series: str) -> Generator[bytes | memoryview, None, bool]:  # fmt: skip
    """One large instance as a part, piece by piece; False when it had to be cut short."""
    head = part_head(boundary, "application/dicom", item.length)
    try:
        yield head
        yield from item.pieces()
        yield b"\r\n"
    except RefusedInstance as exc:
        gw.audit([_refused(p, request, "retrieve", exc, study, series)])
        return False
    except (UpstreamError, UpstreamNotFound) as exc:
        gw.audit([_event(p, request, "retrieve", "failed", study, series, item.sop_uid,
                         str(exc))])  # fmt: skip
        return False
    finally:
        item.close()
    return True


#: Pieces shorter than this are joined with their neighbours (part heads, CRLFs, small
#: instances): one write each costs more than the copy.
_JOIN_BELOW = 64 * 1024
#: Most bytes of whole instances read ahead of the client in one retrieve.
_AHEAD_BYTES = 64 * 1024 * 1024
_BATCH = 16


def _merged(pieces: Sequence[Piece]) -> list[Piece]:
    """A batch as written: runs of small pieces joined, a large one as it is (the server
    copies each piece once more into its chunk; joining large ones would add a copy)."""
    out: list[Piece] = []
    small: list[Piece] = []
    for piece in pieces:
        if len(piece) < _JOIN_BELOW:
            small.append(piece)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(piece)
    if small:
        out.append(b"".join(small))
    return out


def _one_by_one(pieces: Generator[Piece, None, bool]) -> Generator[list[Piece], None, bool]:
    """Each piece of a large part as a batch of its own (it is produced as it is sent)."""
    while True:
        try:
            piece = next(pieces)
        except StopIteration as stop:
            return bool(stop.value)
        yield [piece]


@router.get("/studies/{study}")
def retrieve_study(study: str, request: Request) -> Response:
    p = require(request, "reader", study=study)
    gw = get_gateway(request)
    return _stream_instances(gw, p, request, gw.index.archive_path(study), study)


@router.get("/studies/{study}/series/{series}")
def retrieve_series(study: str, series: str, request: Request) -> Response:
    p = require(request, "reader", study=study, series=series)
    gw = get_gateway(request)
    path = gw.index.archive_path(study, series)
    return _stream_instances(gw, p, request, path, study, series)


@overload
def _one(gw: Gateway, p: Principal, request: Request, op: str, study: str, series: str,
         sop: str) -> Restored: ...  # fmt: skip


@overload
def _one(gw: Gateway, p: Principal, request: Request, op: str, study: str, series: str,
         sop: str, large: bool, spool: Spool | None = None) -> Restored | Streamed: ...  # fmt: skip


def _one(gw: Gateway, p: Principal, request: Request, op: str, study: str, series: str,
         sop: str, large: bool = False, spool: Spool | None = None) -> Restored | Streamed:  # fmt: skip
    """One instance (cached, or from the archive); ``large``: one over STREAM_ABOVE comes
    back as a stream instead of whole (its enciphered value staged in ``spool``)."""
    hit = gw.restorer.cache.get(sop)
    if hit is not None:
        gw.audit([_served(p, request, op, hit)])
        return hit
    streams = gw.upstream.iter_streams(gw.index.archive_path(study, series, sop))
    try:
        stream = next(streams, None)
        if stream is None:
            raise UpstreamNotFound(sop)
        item = (gw.restorer.open_stream(stream, spool) if large
                else gw.restorer.restore(stream.read()))  # fmt: skip
        if sop not in (item.sop_uid, item.archive[2]):
            if isinstance(item, Streamed):
                item.close()
            raise RefusedInstance(sop, "the archive sent a different instance")
    except RefusedInstance as exc:
        streams.close()
        gw.audit([_refused(p, request, op, exc, study, series)])
        raise HTTPException(409, f"instance refused: {exc.reason}") from None
    except (UpstreamError, UpstreamNotFound) as exc:
        streams.close()
        raise _fail_upstream(gw, p, request, op, exc, study, series, sop) from None
    if isinstance(item, Restored):
        streams.close()
        gw.restorer.cache.put(item)
    else:  # the upstream answer stays open while a passed-through instance is read from it
        close = item._close

        def close_all() -> None:
            close()
            streams.close()

        item._close = close_all
    gw.audit([_served(p, request, op, item)])
    return item


Spool = Callable[[int], BinaryIO]


@contextmanager
def _held(gw: Gateway, p: Principal, request: Request, op: str, study: str, series: str,
          sop: str) -> Iterator[Restored | Streamed | Stage]:  # fmt: skip
    """A large instance through the stage cache (fetched once, audited on every use; see
    :func:`largeframes.held`), anything else as :func:`_one` gives it."""
    if gw.stages is None:
        yield _one(gw, p, request, op, study, series, sop, large=True)
        return

    def fetch(spool: Spool | None) -> Restored | Streamed:
        return _one(gw, p, request, op, study, series, sop, large=True, spool=spool)

    with largeframes.held(gw.stages, sop, fetch) as (item, audited):
        if not audited:  # served from the staged ciphertext: still a decryption
            gw.audit([_served(p, request, op, item.info if isinstance(item, Stage) else item)])
        yield item


def _refused_whole(gw: Gateway, p: Principal, request: Request, op: str,
                   item: Restored | Streamed | Stage, exc: RefusedInstance, study: str,
                   series: str) -> HTTPException:  # fmt: skip
    """A large instance joined whole did not restore: audited, its entry dropped, 409."""
    if isinstance(item, Stage) and gw.stages is not None:
        gw.stages.fail(item)
    gw.audit([_refused(p, request, op, exc, study, series)])
    return HTTPException(409, f"instance refused: {exc.reason}")


@router.get("/studies/{study}/series/{series}/instances/{sop}")
def retrieve_instance(study: str, series: str, sop: str, request: Request) -> Response:
    p = require(request, "reader", study=study, series=series, instance=sop)
    gw = get_gateway(request)
    item = _one(gw, p, request, "retrieve", study, series, sop, large=True)
    boundary = new_boundary()
    ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
    if isinstance(item, Streamed):
        # a large instance: piece by piece from the temporary ciphertext, never whole
        head, end = part_head(boundary, "application/dicom", item.length), closing(boundary)
        headers = {} if item.length is None else {
            "Content-Length": str(len(head) + item.length + 2 + len(end))}

        def body() -> Iterator[bytes | memoryview]:
            try:
                if (yield from _stream_part(gw, p, request, boundary, item, study, series)):
                    yield end
            finally:
                item.close()

        return StreamingResponse(body(), media_type=ctype, headers=headers)
    gw.index.record([item], only_new=True)
    pieces = _merged([*part_pieces(boundary, "application/dicom", item.pieces),
                      closing(boundary)])  # fmt: skip

    async def whole() -> AsyncIterator[Piece]:  # in memory: no worker-thread hop per piece
        for piece in pieces:
            yield piece

    return StreamingResponse(whole(), media_type=ctype,
                             headers={"Content-Length": str(sum(len(p) for p in pieces))})


# --------------------------------------------------------------------------- metadata


def _metadata_stream(gw: Gateway, p: Principal, request: Request, path: str, study: str,
                     series: str = "") -> StreamingResponse:  # fmt: skip
    instances = gw.upstream.iter_streams(path)
    try:
        first = next(instances, None)
    except (UpstreamError, UpstreamNotFound) as exc:
        raise _fail_upstream(gw, p, request, "metadata", exc, study, series) from None
    root = dicomweb_root(request)

    def body() -> Iterator[bytes]:
        stream = first
        sep = b"["
        served: list[Restored | Streamed] = []
        try:
            while stream is not None:
                try:
                    # a large instance is not held whole: its attributes come from the
                    # header in its authenticated blob, nothing is deciphered for them
                    item = gw.restorer.open_stream(stream)
                except RefusedInstance as exc:
                    gw.audit([_refused(p, request, "metadata", exc, study, series)])
                else:
                    gw.audit([_served(p, request, "metadata", item)])
                    served.append(item)
                    url = (f"{root}/studies/{item.study_uid}/series/{item.series_uid}"
                           f"/instances/{item.sop_uid}")  # fmt: skip
                    meta = _instance_metadata(gw, p, request, item, url, study, series)
                    if meta is not None:
                        yield sep + json.dumps(meta, separators=(",", ":")).encode()
                        sep = b","
                stream = next(instances, None)
        except (UpstreamError, UpstreamNotFound) as exc:
            gw.audit([_event(p, request, "metadata", "failed", study, series, "", str(exc))])
        gw.index.record(served, only_new=True)
        yield b"[]" if sep == b"[" else b"]"

    return StreamingResponse(body(), media_type="application/dicom+json")


def _instance_metadata(gw: Gateway, p: Principal, request: Request, item: Restored | Streamed,
                       url: str, study: str, series: str) -> dict[str, Any] | None:  # fmt: skip
    """DICOM JSON of one instance of a metadata stream (None: refused after all, audited)."""
    if isinstance(item, Restored):
        gw.restorer.cache.put(item)
        return dicomdata.metadata_json(dicomdata.parse(item.data), url)
    try:
        meta = largeframes.metadata(item, url)
        if meta is None:  # deflated, or not ScanFort's: joined whole, as before
            meta = dicomdata.metadata_json(dicomdata.parse(largeframes.whole(item)), url)
    except RefusedInstance as exc:
        gw.audit([_refused(p, request, "metadata", exc, study, series)])
        return None
    finally:
        item.close()
    return meta


def _metadata(request: Request, study: str, series: str | None) -> Response:
    """From the index when it holds the study (no pixel decrypted again), else streamed."""
    p = require(request, "reader", study=study, series=series or "")
    gw = get_gateway(request)
    try:
        gw.index.sync(only_study=gw.index.archive_study(study))
    except UpstreamError as exc:
        raise _fail_upstream(gw, p, request, "metadata", exc, study, series or "") from None
    rows = gw.index.series_rows(study, series)
    if not rows:
        path = gw.index.archive_path(study, series or "")
        return _metadata_stream(gw, p, request, path, study, series or "")
    root = dicomweb_root(request)
    out, events = [], []
    for row in rows:
        se, sop = first_value(row, "0020000E"), first_value(row, "00080018")
        out.append(metadata_of(row, f"{root}/studies/{study}/series/{se}/instances/{sop}"))
        events.append(_event(p, request, "metadata", "ok", study, se, sop, "index"))
    gw.audit(events)
    return Response(json.dumps(out, separators=(",", ":")), media_type="application/dicom+json")


@router.get("/studies/{study}/metadata")
def study_metadata(study: str, request: Request) -> Response:
    return _metadata(request, study, None)


@router.get("/studies/{study}/series/{series}/metadata")
def series_metadata(study: str, series: str, request: Request) -> Response:
    return _metadata(request, study, series)


@router.get("/studies/{study}/series/{series}/instances/{sop}/metadata")
def instance_metadata(study: str, series: str, sop: str, request: Request) -> Response:
    p = require(request, "reader", study=study, series=series, instance=sop)
    gw = get_gateway(request)
    url = f"{dicomweb_root(request)}/studies/{study}/series/{series}/instances/{sop}"
    with _held(gw, p, request, "metadata", study, series, sop) as item:
        # large: from the header of the authenticated blob, no pixel deciphered
        large = item.info if isinstance(item, Stage) else item
        meta = largeframes.metadata(large, url) if isinstance(large, Streamed) else None
        if meta is None:
            try:
                data = largeframes.whole(item)
            except RefusedInstance as exc:
                raise _refused_whole(gw, p, request, "metadata", item, exc, study,
                                     series) from None  # fmt: skip
            meta = dicomdata.metadata_json(dicomdata.parse(data), url)
    return Response(json.dumps([meta]), media_type="application/dicom+json")


# --------------------------------------------------------------------------- frames, bulk


def _frame_numbers(text: str) -> list[int]:
    try:
        numbers = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise HTTPException(400, "frame numbers must be integers") from None
    if not numbers or len(numbers) > 10_000:
        raise HTTPException(400, "give 1 to 10000 frame numbers")
    return numbers


def _single_part_wanted(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return bool(accept) and "multipart/related" not in accept and "*/*" not in accept


def _large(gw: Gateway, p: Principal, request: Request, op: str, item: Streamed | Stage,
           numbers: list[int], study: str, series: str) -> largeframes.Picked:  # fmt: skip
    """Frames ``numbers`` of a large instance, deciphered frame by frame from its staged
    ciphertext (only those kept; a held stage-cache entry: see
    :func:`largeframes.from_stage`); one the header cannot place is joined whole. A
    refusal (the original does not authenticate) is audited and answered 409."""
    if isinstance(item, Stage):
        assert gw.stages is not None
        try:
            return largeframes.from_stage(gw.stages, item, numbers)
        except RefusedInstance as exc:
            gw.audit([_refused(p, request, op, exc, study, series)])
            raise HTTPException(409, f"instance refused: {exc.reason}") from None
    try:
        picked = largeframes.pick_frames(item, numbers)
    except RefusedInstance as exc:
        gw.audit([_refused(p, request, op, exc, study, series)])
        raise HTTPException(409, f"instance refused: {exc.reason}") from None
    finally:
        item.close()
    return picked


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame_list}")
def retrieve_frames(study: str, series: str, sop: str, frame_list: str,
                    request: Request) -> Response:  # fmt: skip
    p = require(request, "reader", study=study, series=series, instance=sop)
    gw = get_gateway(request)
    numbers = _frame_numbers(frame_list)
    try:
        with _held(gw, p, request, "frames", study, series, sop) as item:
            if isinstance(item, (Stage, Streamed)):  # large: only the requested frames
                picked = _large(gw, p, request, "frames", item, numbers, study, series)
                ds, chunks = picked.ds, picked.frames
            else:
                ds = dicomdata.parse(item.data)
                chunks = dicomdata.frames(ds, numbers)
    except dicomdata.FrameError as exc:
        raise HTTPException(404, str(exc)) from None
    ts = dicomdata.transfer_syntax(ds)
    part_type = f"application/octet-stream; transfer-syntax={ts}"
    if _single_part_wanted(request) and len(chunks) == 1:
        return Response(chunks[0], media_type="application/octet-stream")
    boundary = new_boundary()
    body = b"".join(part_bytes(boundary, part_type, c) for c in chunks) + closing(boundary)
    ctype = (f'multipart/related; type="application/octet-stream"; '
             f"transfer-syntax={ts}; boundary={boundary}")  # fmt: skip
    return Response(body, media_type=ctype)


@router.get("/studies/{study}/series/{series}/instances/{sop}/bulkdata/{tag}")
def retrieve_bulkdata(study: str, series: str, sop: str, tag: str, request: Request) -> Response:
    p = require(request, "reader", study=study, series=series, instance=sop)
    gw = get_gateway(request)
    hold = ExitStack()  # a large instance's entry stays held while its value is sent
    try:
        item = hold.enter_context(_held(gw, p, request, "bulkdata", study, series, sop))
        got = largeframes.bulkdata(gw.stages, item, tag)
    except dicomdata.FrameError as exc:
        hold.close()
        raise HTTPException(404, str(exc)) from None
    except RefusedInstance as exc:  # joined whole (deflated), and it did not restore
        try:
            raise _refused_whole(gw, p, request, "bulkdata", item, exc, study, series) from None
        finally:
            hold.close()
    except BaseException:
        hold.close()
        raise
    if not isinstance(got, bytes):
        return _bulk_stream(gw, p, request, hold, got, study, series,
                            _single_part_wanted(request))  # fmt: skip
    hold.close()
    data = got
    if _single_part_wanted(request):
        return Response(data, media_type="application/octet-stream")
    boundary = new_boundary()
    body = part_bytes(boundary, "application/octet-stream", data) + closing(boundary)
    ctype = f'multipart/related; type="application/octet-stream"; boundary={boundary}'
    return Response(body, media_type=ctype)


def _bulk_stream(gw: Gateway, p: Principal, request: Request, hold: ExitStack,
                 got: tuple[int, Iterator[bytes | memoryview]], study: str, series: str,
                 single: bool) -> StreamingResponse:  # fmt: skip
    """The Pixel Data of a large instance as it is deciphered (cut short, and audited as
    refused, when the original does not match after its last byte)."""
    length, pieces = got
    boundary = new_boundary()
    ptype = "application/octet-stream"
    head, end = (b"", b"") if single else (part_head(boundary, ptype, length),
                                          b"\r\n" + closing(boundary))  # fmt: skip

    def body() -> Iterator[bytes | memoryview]:
        try:
            if head:
                yield head
            yield from pieces
            if end:
                yield end
        except RefusedInstance as exc:
            gw.audit([_refused(p, request, "bulkdata", exc, study, series)])
        finally:
            hold.close()

    ctype = ptype if single else f'multipart/related; type="{ptype}"; boundary={boundary}'
    return StreamingResponse(body(), media_type=ctype,
                             headers={"Content-Length": str(len(head) + length + len(end))})


# --------------------------------------------------------------------------- rendered


def _window(request: Request) -> tuple[float, float] | None:
    text = request.query_params.get("window")
    if not text:
        return None
    parts = text.split(",")
    try:
        return float(parts[0]), float(parts[1])
    except (ValueError, IndexError):
        raise HTTPException(400, "window is center,width[,function]") from None


def _format(request: Request) -> str:
    accept = request.headers.get("accept", "")
    return "png" if "image/png" in accept and "image/jpeg" not in accept else "jpeg"


def _rendered(request: Request, study: str, series: str, sop: str, frame: int,
              thumbnail: bool) -> Response:  # fmt: skip
    p = require(request, "reader", study=study, series=series, instance=sop)
    gw = get_gateway(request)
    fmt = _format(request)
    try:
        with _held(gw, p, request, "rendered", study, series, sop) as item:
            if isinstance(item, (Stage, Streamed)):  # large: only that frame is kept
                picked = _large(gw, p, request, "rendered", item, [frame], study, series)
                if not picked.complete:
                    ds, frame = largeframes.single_frame(picked), 1
                else:
                    ds = picked.ds
            else:
                ds = dicomdata.parse(item.data)
        image = dicomdata.render(ds, frame, window=_window(request), fmt=fmt,
                                 thumbnail=thumbnail)  # fmt: skip
    except dicomdata.FrameError as exc:
        raise HTTPException(406 if "render" in str(exc) else 404, str(exc)) from None
    return Response(image, media_type=f"image/{fmt}")


def _representative(gw: Gateway, study: str, series: str | None) -> tuple[str, str]:
    """(series, SOP) of the middle instance of a series (or the first series of a study)."""
    if series is None:
        found = gw.upstream.search(f"/studies/{study}/series")
        if not found:
            raise HTTPException(404, "no series")
        series = str(found[0].get("0020000E", {}).get("Value", [""])[0])
    instances = gw.upstream.search(f"/studies/{study}/series/{series}/instances")
    if not instances:
        raise HTTPException(404, "no instances")
    mid = instances[len(instances) // 2]
    return series, str(mid.get("00080018", {}).get("Value", [""])[0])


@router.get("/studies/{study}/series/{series}/instances/{sop}/rendered")
def rendered_instance(study: str, series: str, sop: str, request: Request) -> Response:
    return _rendered(request, study, series, sop, 1, False)


@router.get("/studies/{study}/series/{series}/instances/{sop}/frames/{frame}/rendered")
def rendered_frame(study: str, series: str, sop: str, frame: int, request: Request) -> Response:
    return _rendered(request, study, series, sop, frame, False)


@router.get("/studies/{study}/series/{series}/instances/{sop}/thumbnail")
def thumbnail_instance(study: str, series: str, sop: str, request: Request) -> Response:
    return _rendered(request, study, series, sop, 1, True)


@router.get("/studies/{study}/series/{series}/thumbnail")
def thumbnail_series(study: str, series: str, request: Request) -> Response:
    gw = get_gateway(request)
    require(request, "reader", study=study, series=series)
    try:
        se, sop = _representative(gw, study, series)
    except (UpstreamError, UpstreamNotFound):
        raise HTTPException(404, "no such series") from None
    return _rendered(request, study, se, sop, 1, True)


@router.get("/studies/{study}/thumbnail")
def thumbnail_study(study: str, request: Request) -> Response:
    gw = get_gateway(request)
    require(request, "reader", study=study)
    try:
        se, sop = _representative(gw, study, None)
    except (UpstreamError, UpstreamNotFound):
        raise HTTPException(404, "no such study") from None
    return _rendered(request, study, se, sop, 1, True)
