"""Is a DICOM file complete? Walk its element headers to the last byte.

pydicom reads truncated files leniently (a short Pixel Data value is not an error), so a
modality still writing a file, or a copy cut short, would look fine to it. This walker
reads only the element headers (tag, VR, length) and skips the values, following
undefined-length sequences and encapsulated Pixel Data item by item, and requires the
last element to end exactly at end of file. Values are never read, so nothing about the
patient is touched here.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                       b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ROWS = 0x00280010
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})  # Pixel, Float, Double Float
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
#: What DICOM mode needs at the top level: SOP Class UID, SOP Instance UID, Pixel Data.
_IMAGE_TAGS = frozenset({0x00080016, 0x00080018, 0x7FE00010})
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


class Truncated(Exception):
    """The file ends inside an element (or has bytes that are not an element)."""


def is_dicom(fh: BinaryIO) -> bool:
    fh.seek(128)
    return fh.read(4) == b"DICM"


@dataclass(frozen=True)
class Walked:
    """What the walk saw: the transfer syntax and the data set's top-level tags (``None``
    for a deflated data set, which is not walked)."""

    transfer_syntax: str
    top_tags: frozenset[int] | None

    @property
    def image(self) -> bool | None:
        """Whether DICOM mode can take the file (a transfer syntax, SOP Class and Instance
        UIDs, Pixel Data); ``None`` when the walk cannot tell (deflated)."""
        if self.top_tags is None:
            return None
        return bool(self.transfer_syntax) and _IMAGE_TAGS <= self.top_tags


def check_complete(fh: BinaryIO) -> Walked:
    """Raise :class:`Truncated` unless the Part 10 file in ``fh`` ends on an element boundary."""
    size = fh.seek(0, os.SEEK_END)
    fh.seek(132)
    ts = _walk_meta(fh, size)
    if ts in DEFLATED:
        return Walked(ts, None)  # a deflate stream; pydicom's decoder is the judge of that
    walker = _Walker(fh, size, implicit=ts == IMPLICIT_LE, big=ts == EXPLICIT_BE)
    walker.dataset(None)
    if fh.tell() != size:
        raise Truncated("data after the last element")
    # A cut that lands exactly between two elements still walks cleanly: an image (it has
    # (0028,0010) Rows) must at least reach its (7FE0,0010) Pixel Data, the last element.
    if _ROWS in walker.top_tags and not walker.top_tags & _PIXEL_TAGS:
        raise Truncated("image without pixel data")
    return Walked(ts, frozenset(walker.top_tags))


def _read(fh: BinaryIO, n: int) -> bytes:
    data = fh.read(n)
    if len(data) != n:
        raise Truncated("file ends inside an element header")
    return data


def _walk_meta(fh: BinaryIO, size: int) -> str:
    ts = ""
    while True:
        pos = fh.tell()
        head = fh.read(6)
        if len(head) < 6:
            raise Truncated("file ends in the file meta information")
        group, elem = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            fh.seek(pos)
            return ts
        vr = head[4:6]
        if vr in _LONG_VRS:
            _read(fh, 2)
            (length,) = struct.unpack("<I", _read(fh, 4))
        else:
            (length,) = struct.unpack("<H", _read(fh, 2))
        value = fh.read(length)
        if len(value) != length:
            raise Truncated("file ends in the file meta information")
        if elem == 0x0010:
            ts = value.rstrip(b"\0 ").decode("ascii", "replace")


class _Walker:
    def __init__(self, fh: BinaryIO, size: int, implicit: bool, big: bool) -> None:
        self.fh, self.size, self.implicit = fh, size, implicit
        self.end = ">" if big else "<"
        self.top_tags: set[int] = set()

    def _skip(self, length: int) -> None:
        pos = self.fh.tell() + length
        if pos > self.size:
            raise Truncated("file ends inside an element value")
        self.fh.seek(pos)

    def _tag(self) -> int:
        group, elem = struct.unpack(self.end + "HH", _read(self.fh, 4))
        return (group << 16) | elem

    def dataset(self, end_at: int | None) -> None:
        """Walk elements until ``end_at`` (an offset), an item delimiter, or end of file."""
        while True:
            pos = self.fh.tell()
            if end_at is not None and pos >= end_at:
                if pos != end_at:
                    raise Truncated("item length does not match its elements")
                return
            if end_at is None and pos == self.size:
                return
            tag = self._tag()
            if end_at is None:
                self.top_tags.add(tag)
            if tag == _ITEM_END:
                _read(self.fh, 4)
                return
            vr = b""
            if self.implicit or tag >> 16 == 0xFFFE:
                (length,) = struct.unpack(self.end + "I", _read(self.fh, 4))
            else:
                vr = _read(self.fh, 2)
                if vr in _LONG_VRS:
                    _read(self.fh, 2)
                    (length,) = struct.unpack(self.end + "I", _read(self.fh, 4))
                else:
                    (length,) = struct.unpack(self.end + "H", _read(self.fh, 2))
            if length != _UNDEFINED:
                self._skip(length)  # defined length: the value (or sequence) is opaque bytes
            elif vr == b"UN" and not self.implicit:
                # An undefined-length UN holds implicit VR little endian items (PS3.5 6.2.2).
                inner = _Walker(self.fh, self.size, implicit=True, big=False)
                inner.items(pixel=False)
            else:
                self.items(pixel=tag == 0x7FE00010)

    def items(self, pixel: bool) -> None:
        """Items of an undefined-length sequence or encapsulated Pixel Data, to (FFFE,E0DD)."""
        while True:
            tag = self._tag()
            (length,) = struct.unpack(self.end + "I", _read(self.fh, 4))
            if tag == _SEQ_END:
                return
            if tag != _ITEM:
                raise Truncated("expected a sequence item")
            if pixel or length != _UNDEFINED:
                self._skip(length)  # a fragment, or an item of known length
            else:
                self.dataset(_NEVER)


# An undefined-length item ends at its delimiter, which ``dataset`` handles; never reached.
_NEVER = 1 << 62
