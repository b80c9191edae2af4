"""Frames of a large instance, taken from its stream: never the whole plaintext in memory.

A :class:`~gateway.restore.Streamed` instance (above ``stream_above_bytes``) has had its
enciphered value staged in a temporary file and checked against its digest before it is
opened; its original comes out piece by piece, one deciphered frame at a time. For a
native (uncompressed) transfer syntax the original's header (up to the Pixel Data value)
says where each frame lies, so :func:`pick_frames` keeps only the bytes of the requested
frames as the pieces go by and drops the rest. It reads to the last piece, so the
original's SHA-256 is checked before anything is returned (a mismatch raises
:class:`~gateway.errors.RefusedInstance`).

Memory: the requested frames plus one deciphered frame. What the header cannot place
(a deflated original, an encapsulated transfer syntax, an instance ScanFort did not
protect) is joined whole as before (:func:`whole`).

With the stage cache (:mod:`gateway.stagecache`) the staged value outlives the request:
:func:`held` gives a request the instance's entry (fetching it once), and
:func:`from_stage` takes the frames from it. The first pass over an entry is the whole
restore above, which checks the original's SHA-256, and it records the SHA-256 of every
unit of the value it read. Later requests decipher only their frames, from staged bytes
that still hash to what that pass read.

Why that is enough (SPEC §2.4, "Reading one frame again"): the blob is authenticated by
age, and it holds ``D``, the key, the nonce and the layout; the staged value hashed to
``D`` and the whole restore from it matched the original's SHA-256, which is in the blob
too. Deciphering is deterministic: the unit of frame ``n`` with the same bytes, key and
nonce gives the same bytes it gave in that verified pass, i.e. frame ``n`` of the
original. The only thing that could differ is the staged bytes themselves (the file is on
a disk, and unlinked, but a disk can fail), so each unit is compared with the digest the
verified pass recorded, kept in memory only, before it is deciphered; a mismatch is a
refusal, never noise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset

from cipher import dicomframes
from gateway import dicomdata
from gateway.errors import RefusedInstance
from gateway.restore import Restored, Streamed
from gateway.stagecache import Stage, StageCache


@dataclass
class Picked:
    """The requested frames of a large instance and its data set: the header's (no Pixel
    Data), or the whole instance's when it was joined whole (``complete``)."""

    ds: Dataset
    frames: list[bytes]
    complete: bool = False


def _header_dataset(item: Streamed) -> Dataset | None:
    """The original's data set up to Pixel Data, when frames can be placed from it (a
    native transfer syntax)."""
    ds = header_dataset(item)
    if ds is None:
        return None
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None or ts.is_encapsulated:
        return None
    return ds


def frame_length(ds: Dataset) -> int:
    """Bytes per frame of a native Pixel Data value (FrameError when not byte aligned)."""
    try:
        bits = int(ds.BitsAllocated) * int(ds.Rows) * int(ds.Columns) * int(
            ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        raise dicomdata.FrameError("instance has no usable pixel data attributes") from None
    if bits <= 0 or bits % 8:
        raise dicomdata.FrameError("frames of 1-bit pixel data are not byte aligned")
    return bits // 8


def pick_frames(item: Streamed, numbers: list[int]) -> Picked:
    """The frames ``numbers`` (1-based, in that order) of ``item``; when the header cannot
    place them (encapsulated, deflated, not ScanFort's) the instance is joined whole
    (``complete``). Raises FrameError for a frame the instance does not have (``item`` is
    closed) and RefusedInstance when the original does not authenticate. Consumes
    ``item``."""
    ds = _header_dataset(item)
    if ds is None:
        whole_ds = dicomdata.parse(whole(item))
        return Picked(whole_ds, dicomdata.frames(whole_ds, numbers), complete=True)
    assert item.header is not None
    try:
        size = frame_length(ds)
        count = dicomdata.number_of_frames(ds)
        bad = [n for n in numbers if not 1 <= n <= count]
        if bad:
            raise dicomdata.FrameError(f"frame {bad[0]} out of range 1..{count}")
    except dicomdata.FrameError:
        item.close()
        raise
    offset = len(item.header)
    # (start, stop, buffer) of each wanted frame in the file, in file order
    wanted = sorted(set(numbers))
    spans = [(offset + (n - 1) * size, offset + n * size, bytearray(size)) for n in wanted]
    i, pos = 0, 0
    for piece in item.pieces():  # to the end: the original's digest is checked last
        end = pos + len(piece)
        j = i
        while j < len(spans) and spans[j][0] < end:
            start, stop, buf = spans[j]
            lo, hi = max(start, pos), min(stop, end)
            if lo < hi:
                buf[lo - start:hi - start] = piece[lo - pos:hi - pos]
            if stop <= end:
                i = j + 1  # complete
            j += 1
        pos = end
    if pos < offset + count * size:
        raise dicomdata.FrameError("pixel data shorter than its frames")
    got = {n: bytes(buf) for n, (_, _, buf) in zip(wanted, spans, strict=True)}
    return Picked(ds, [got[n] for n in numbers])


def whole(item: Stage | Restored | Streamed) -> bytes:
    """All of ``item`` in one piece (what the header cannot place; memory: its size): a
    staged entry by a whole pass over it (:func:`reopen`)."""
    if isinstance(item, Restored):
        return item.data
    return b"".join((reopen(item) if isinstance(item, Stage) else item).pieces())


def single_frame(picked: Picked) -> Dataset:
    """A data set holding the header and the one picked frame (frame 1), for rendering."""
    ds = picked.ds
    ds.NumberOfFrames = 1
    ds.PixelData = picked.frames[0]
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    return ds


# --------------------------------------------------------------------------- stage cache

Fetch = Callable[[Callable[[int], BinaryIO] | None], Restored | Streamed]


@contextmanager
def held(cache: StageCache, sop: str,
         fetch: Fetch) -> Iterator[tuple[Stage | Restored | Streamed, bool]]:  # fmt: skip
    """The staged entry of instance ``sop`` while the block runs, and whether ``fetch``
    (which audits what it serves) ran for it. The first request for an instance fetches
    it with the cache's spool; one arriving meanwhile waits for that fetch. What is not
    staged (a small instance, one ScanFort did not protect, a failed fetch seen by a
    waiter) comes back as ``fetch`` gives it; ``fetch(None)`` uses no cache."""
    stage, owner = cache.acquire(sop)
    try:
        if owner:
            try:
                item = fetch(cache.spool(stage))
            except BaseException:
                cache.fail(stage)
                raise
            if not (isinstance(item, Streamed) and item.opened is not None
                    and stage.file is not None):  # fmt: skip
                cache.fail(stage)
                yield item, True
                return
            item.close()  # its value is staged and matched D; the archive's answer is done
            cache.publish(stage, item.opened, item)
            yield stage, True
        elif cache.wait(stage):
            yield stage, False
        else:
            yield fetch(None), True
    finally:
        cache.release(stage)


def reopen(stage: Stage) -> Streamed:
    """A whole pass over the staged value (deciphered as it is read; the original's SHA-256
    checked after the last piece)."""
    assert stage.opened is not None
    opened = stage.opened
    info: Streamed = stage.info
    return dataclasses.replace(info, _pieces=opened.pieces(), _close=lambda: None)


def _verified_pass(cache: StageCache, stage: Stage,
                   consume: Callable[[Streamed], Any]) -> Any:  # fmt: skip
    """``consume(a whole pass)``, recording the SHA-256 of each range read; once it ends
    normally the entry is verified. A refusal takes the entry out of the cache."""
    assert stage.file is not None
    digests = stage.file.record()
    try:
        result = consume(reopen(stage))
    except RefusedInstance:
        cache.fail(stage)
        raise
    finally:
        stage.file.stop_recording()
    cache.prove(stage, digests)
    return result


def _unit(stage: Stage, start: int, stop: int) -> bytes:
    """Bytes ``[start, stop)`` of the staged value, as the verified pass read them."""
    assert stage.file is not None
    data = stage.file.pread(start, stop)
    known = stage.digests.get(start)
    if known is None or known[0] != stop or not hmac.compare_digest(
            known[1], hashlib.sha256(data).digest()):
        raise RefusedInstance(stage.info.sop_uid, "staged ciphertext changed since it was verified")
    return data


def _frame_units(stage: Stage, ds: Dataset) -> dicomframes.FrameUnits | None:
    """The frame units of a verified entry when they are the header's frames."""
    assert stage.opened is not None
    units = dicomframes.frame_units(stage.opened)
    header = stage.info.header
    if units is None or header is None or units.value_offset != len(header):
        return None
    try:
        if (frame_length(ds) != units.frame_length
                or dicomdata.number_of_frames(ds) != units.count):  # fmt: skip
            return None
    except dicomdata.FrameError:
        return None
    return units


def from_stage(cache: StageCache, stage: Stage, numbers: list[int]) -> Picked:
    """Frames ``numbers`` of a staged instance. Verified with frame units: only those
    frames are read and deciphered. Otherwise a whole pass (and the entry is verified
    when it ends); what the header cannot place is joined whole. Raises FrameError and
    RefusedInstance (the entry is then dropped: the next request fetches it anew)."""
    try:
        return _from_stage(cache, stage, numbers)
    except RefusedInstance:
        cache.fail(stage)
        raise


def _from_stage(cache: StageCache, stage: Stage, numbers: list[int]) -> Picked:
    ds = _header_dataset(stage.info)
    with stage.lock:  # one first pass at a time: the others then take the short way
        if not stage.verified:
            return _verified_pass(cache, stage, lambda item: pick_frames(item, numbers))
    units = None if ds is None else _frame_units(stage, ds)
    if ds is None or units is None:  # no unit per frame: a whole pass again
        return pick_frames(reopen(stage), numbers)
    bad = [n for n in numbers if not 1 <= n <= units.count]
    if bad:
        raise dicomdata.FrameError(f"frame {bad[0]} out of range 1..{units.count}")
    assert stage.opened is not None
    got: dict[int, bytes] = {}
    for n in numbers:
        if n not in got:
            got[n] = dicomframes.decipher_frame(stage.opened, n, _unit(stage, *units.span(n)))
    return Picked(ds, [got[n] for n in numbers])


# --------------------------------------------------------------------------- metadata, bulk


def header_dataset(item: Streamed) -> Dataset | None:
    """The original's attributes up to Pixel Data (from the authenticated blob), or None
    when the original was deflated (then it has to be restored whole)."""
    if item.header is None:
        return None
    try:
        return pydicom.dcmread(io.BytesIO(item.header), stop_before_pixels=True)
    except Exception:
        return None


def attributes_dataset(item: Streamed) -> Dataset | None:
    """The original's attributes but its Pixel Data value: the header's and those stored
    after Pixel Data (both from the authenticated blob); None as :func:`header_dataset`."""
    ds = header_dataset(item)
    trailer = None if ds is None or item.opened is None else item.opened.trailer()
    if ds is None or not trailer:
        return ds
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is None:
        return ds
    little = ts.is_little_endian
    assert item.header is not None  # header_dataset read it
    if item.header[-4:] == b"\xff\xff\xff\xff":
        # an undefined-length value (the header ends with Pixel Data's element header):
        # its Sequence Delimitation Item comes first
        delimiter = (b"\xfe\xff\xdd\xe0" if little else b"\xff\xfe\xe0\xdd") + bytes(4)
        if not trailer.startswith(delimiter):
            return ds
        trailer = trailer[len(delimiter):]
    if not trailer:
        return ds
    try:
        after = read_dataset(io.BytesIO(trailer), ts.is_implicit_VR, little)
    except Exception:  # the header's attributes are still right; these could not be read
        return ds
    ds.update(after)
    return ds


def pixel_vr(item: Streamed, ds: Dataset) -> str:
    """The VR of the original's Pixel Data (read from its element header when explicit)."""
    assert item.header is not None
    ts = ds.file_meta.get("TransferSyntaxUID")
    if ts is not None and not ts.is_implicit_VR and len(item.header) >= 12:
        vr = item.header[-8:-6].decode("ascii", "replace")
        if vr in ("OB", "OW"):
            return vr
    if ts is not None and ts.is_encapsulated:
        return "OB"
    return "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"


def metadata(item: Streamed, url: str) -> dict[str, Any] | None:
    """DICOM JSON of a large instance without its pixels: its other attributes (before
    and after Pixel Data) and Pixel Data as a BulkDataURI, whatever its length (None:
    restore it whole instead)."""
    ds = attributes_dataset(item)
    if ds is None:
        return None
    meta = dicomdata.metadata_json(ds, url)
    meta["7FE00010"] = {"vr": pixel_vr(item, ds),
                        "BulkDataURI": f"{url}/bulkdata/{int(dicomdata.PIXEL_DATA):08X}"}
    return meta


def _value_pieces(item: Streamed, start: int, length: int) -> Iterator[bytes | memoryview]:
    """Bytes ``[start, start + length)`` of a whole pass (RefusedInstance after the last
    piece when the original does not match)."""
    pos, stop = 0, start + length
    for piece in item.pieces():
        end = pos + len(piece)
        lo, hi = max(start, pos), min(stop, end)
        if lo < hi:
            yield piece[lo - pos:hi - pos]
        pos = end


def _pixel_pieces(cache: StageCache, stage: Stage, start: int,
                  length: int) -> Iterator[bytes | memoryview]:
    """The Pixel Data value of a staged instance: frame by frame from a verified entry whose
    value is its frames, else from a whole pass."""
    assert stage.opened is not None
    ds = _header_dataset(stage.info)
    units = None if ds is None or not stage.verified else _frame_units(stage, ds)
    try:
        if units is not None and units.count * units.frame_length == length:
            for n in range(1, units.count + 1):
                yield dicomframes.decipher_frame(stage.opened, n, _unit(stage, *units.span(n)))
            return
        yield from _value_pieces(reopen(stage), start, length)
    except RefusedInstance:
        cache.fail(stage)
        raise


def bulkdata(cache: StageCache | None, item: Stage | Restored | Streamed,
             tag: str) -> bytes | tuple[int, Iterator[bytes | memoryview]]:  # fmt: skip
    """Bulk data ``tag`` of an instance: bytes, or for the Pixel Data of a large one its
    length and its pieces, deciphered as they are taken (memory: one frame). A large
    instance's other bulk data comes from the authenticated blob (its attributes before
    and after Pixel Data). Raises FrameError."""
    if isinstance(item, Restored):
        return dicomdata.bulkdata(dicomdata.parse(item.data), tag)
    large: Streamed = item.info if isinstance(item, Stage) else item
    pixel_data = tag.strip().upper() == f"{int(dicomdata.PIXEL_DATA):08X}"
    ds = header_dataset(large) if pixel_data else attributes_dataset(large)
    span = None if item.opened is None else dicomframes.value_span(item.opened)
    if ds is None or span is None:  # deflated, or not ScanFort's: joined whole
        return dicomdata.bulkdata(dicomdata.parse(whole(item)), tag)
    if not pixel_data:
        return dicomdata.bulkdata(ds, tag)
    start, length = span
    if isinstance(item, Stage):
        assert cache is not None
        return length, _pixel_pieces(cache, item, start, length)
    return length, _value_pieces(item, start, length)
