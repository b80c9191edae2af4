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
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset

from gateway import dicomdata
from gateway.restore import Streamed


@dataclass
class Picked:
    """The requested frames of a large instance and its data set: the header's (no Pixel
    Data), or the whole instance's when it was joined whole (``complete``)."""

    ds: Dataset
    frames: list[bytes]
    complete: bool = False


def _header_dataset(item: Streamed) -> Dataset | None:
    """The original's data set up to Pixel Data, when frames can be placed from it."""
    if item.header is None:
        return None
    try:
        ds = pydicom.dcmread(io.BytesIO(item.header), stop_before_pixels=True)
    except Exception:
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


def pick_frames(item: Streamed, numbers: list[int]) -> Picked | None:
    """The frames ``numbers`` (1-based, in that order) of ``item``; None when the header
    cannot place them (then use :func:`whole`). Raises FrameError for a frame the
    instance does not have (``item`` is closed) and RefusedInstance when the original does
    not authenticate. Consumes ``item``."""
    ds = _header_dataset(item)
    if ds is None:
        return None
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


def whole(item: Streamed) -> bytes:
    """All of ``item`` in one piece (what the header cannot place; memory: its size)."""
    return b"".join(item.pieces())


def single_frame(picked: Picked) -> Dataset:
    """A data set holding the header and the one picked frame (frame 1), for rendering."""
    ds = picked.ds
    ds.NumberOfFrames = 1
    ds.PixelData = picked.frames[0]
    ds["PixelData"].VR = "OW" if int(ds.BitsAllocated) > 8 else "OB"
    return ds
