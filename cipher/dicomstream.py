"""DICOM mode v2 restore from a stream: the visible file read once, front to back.

A reader that gets instances from an archive's answer as they arrive (the gateway) cannot
give pydicom the whole file, nor seek in it. This module finds what the restore needs in
one pass (the File Meta transfer syntax, block ``SCANFORT 1`` in group 0011, the top-level
``(7FE0,0010) Pixel Data`` element) by walking element headers only, copies the enciphered
value into a *spool* while hashing it, and deciphers only after that hash matched: the
steps of ``cipher/SPEC.md`` §2.4 "Reading", done by :mod:`cipher.dicomfile`'s own pieces
(:func:`~cipher.dicomfile._unit_pieces`, :func:`~cipher.dicomfile._original`). Memory: the
skeleton and one unit (frame) at a time; the spool holds ciphertext only, so a caller may
put it in a temporary file. A file already whole in memory, whose caller takes every piece
before it uses any, may leave out the digest of the enciphered value (``open_v2(...,
whole=True)``, as SPEC §2.4 allows such a reader): the original's SHA-256 covers it.

The original's SHA-256 is compared after its last piece was produced (as for
:func:`cipher.unprotect`): a consumer must treat the pieces as unusable unless the
iteration ended normally.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from cipher import _common, dicomfile
from cipher.errors import AuthenticationError, FormatError, NotDicomError, UnsupportedDicomError

try:  # the C walk over bytes in memory (cipher/csrc/dicomwalk.c)
    from cipher._native import walk as _walk
except ImportError:  # pragma: no cover - without the extension :func:`_scan` walks in Python
    _walk = None  # type: ignore[assignment]

__all__ = ["Opened", "VisibleHead", "open_v2", "scan_head"]


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


_UNDEFINED = 0xFFFFFFFF
_IMPLICIT_LE = "1.2.840.10008.1.2"
_EXPLICIT_BE = "1.2.840.10008.1.2.2"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR",
                       b"UT", b"SV", b"UV"})
_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD
_UID_TAGS = {(0x0020, 0x000D): 0, (0x0020, 0x000E): 1, (0x0008, 0x0018): 2}
_MAX_VALUE = 4 * dicomfile.MAX_BLOB  # largest element value kept (the sealed blob, a UID)
_MAX_DEPTH = 32
_CHUNK = 1 << 20
#: Bytes of a non-ScanFort file read before the decision (its first groups).
_NO_BLOCK_AFTER = 0x0020
#: What the C walk reports (``cipher/csrc/dicomwalk.c``), and the tags it returns besides
#: those of the private group.
_WALK_PIXELS, _WALK_STOPPED, _WALK_SHORT = 1, 2, -1
_WALK_KEEP = tuple(group << 16 | elem for group, elem in _UID_TAGS)


class _Short(Exception):
    """The stream ended inside an element."""


class _In:
    """Exact reads from a stream, counting them; optionally keeping what was read."""

    def __init__(self, src: _Readable, keep: bool) -> None:
        self.src = src
        self.pos = 0
        self.kept: list[bytes] | None = [] if keep else None
        self._back = b""

    def _raw(self, n: int) -> bytes:
        if self._back:
            data, self._back = self._back[:n], self._back[n:]
        else:
            data = self.src.read(n)
        while len(data) < n:
            more = self.src.read(n - len(data))
            if not more:
                break
            data += more
        return data

    def read(self, n: int, *, at_end_ok: bool = False) -> bytes:
        data = self._raw(n)
        if len(data) < n and not (at_end_ok and not data):
            raise _Short()
        self.pos += len(data)
        if self.kept is not None:
            self.kept.append(data)
        return data

    def unread(self, data: bytes) -> None:
        self._back = data + self._back
        self.pos -= len(data)
        if self.kept is not None:
            self.kept.pop()

    def skip(self, n: int) -> None:
        while n > 0:
            n -= len(self.read(min(n, _CHUNK)))

    def stop_keeping(self) -> None:
        self.kept = None


class _MemIn(_In):
    """:class:`_In` over bytes already in memory: reads are slices, the value a view."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        super().__init__(io.BytesIO(), False)
        self._data = data
        self._view = memoryview(data)
        self.pos = pos

    def read(self, n: int, *, at_end_ok: bool = False) -> bytes:
        data = self._data[self.pos:self.pos + n]
        if len(data) < n and not (at_end_ok and not data):
            raise _Short()
        self.pos += len(data)
        return data if isinstance(data, bytes) else bytes(data)

    def header(self, syn: _Syntax, at_end_ok: bool) -> tuple[int, int, bytes, int] | None:
        """:func:`_header` read in place (the loop every scan spends its time in)."""
        data, pos = self._data, self.pos
        if pos + 8 > len(data):
            if at_end_ok and pos == len(data):
                return None
            raise _Short()
        tag, implicit, explicit, u32 = _LE if syn.little else _BE
        group, elem = tag.unpack_from(data, pos)
        if group == 0xFFFE or not syn.explicit:
            self.pos = pos + 8
            return group, elem, b"", implicit.unpack_from(data, pos)[2]
        _, _, vr, length = explicit.unpack_from(data, pos)
        if vr in _LONG_VRS:
            if pos + 12 > len(data):
                raise _Short()
            self.pos = pos + 12
            return group, elem, vr, u32.unpack_from(data, pos + 8)[0]
        if not vr.isalpha():
            raise FormatError("not a DICOM data set")
        self.pos = pos + 8
        return group, elem, vr, length

    def unread(self, data: bytes) -> None:
        self.pos -= len(data)

    def skip(self, n: int) -> None:
        if self.pos + n > len(self._view):
            raise _Short()
        self.pos += n

    def view(self, n: int) -> memoryview:
        """The next ``n`` bytes without a copy."""
        if self.pos + n > len(self._view):
            raise _Short()
        self.pos += n
        return self._view[self.pos - n:self.pos]


@dataclass
class _Syntax:
    little: bool
    explicit: bool

    def u16(self, b: bytes, at: int = 0) -> int:
        return int.from_bytes(b[at:at + 2], "little" if self.little else "big")

    def u32(self, b: bytes, at: int = 0) -> int:
        return int.from_bytes(b[at:at + 4], "little" if self.little else "big")


_LE = (struct.Struct("<HH"), struct.Struct("<HHI"), struct.Struct("<HH2sH"), struct.Struct("<I"))
_BE = (struct.Struct(">HH"), struct.Struct(">HHI"), struct.Struct(">HH2sH"), struct.Struct(">I"))


def _header(inp: _In, syn: _Syntax, *, at_end_ok: bool = False,
            ) -> tuple[int, int, bytes, int] | None:
    """(group, element, VR or b"", length) of the next element; None at the stream's end."""
    if type(inp) is _MemIn:
        return inp.header(syn, at_end_ok)
    raw = inp.read(8, at_end_ok=at_end_ok)
    if not raw:
        return None
    tag, implicit, explicit, u32 = _LE if syn.little else _BE
    group, elem = tag.unpack_from(raw)
    if group == 0xFFFE or not syn.explicit:  # items and delimiters never carry a VR
        return group, elem, b"", implicit.unpack(raw)[2]
    _, _, vr, length = explicit.unpack(raw)
    if vr in _LONG_VRS:
        return group, elem, vr, u32.unpack(inp.read(4))[0]
    if not vr.isalpha():
        raise FormatError("not a DICOM data set")
    return group, elem, vr, length


def _skip_items(inp: _In, syn: _Syntax, depth: int) -> None:
    """Skip the items of an undefined-length value up to its sequence delimiter."""
    if depth > _MAX_DEPTH:
        raise FormatError("sequences nested too deep")
    while True:
        head = _header(inp, _Syntax(syn.little, False))
        assert head is not None
        group, elem, _, length = head
        if (group, elem) == (0xFFFE, _SEQ_END):
            return
        if (group, elem) != (0xFFFE, _ITEM):
            raise FormatError("a malformed sequence")
        if length != _UNDEFINED:
            inp.skip(length)
        else:
            _skip_dataset(inp, syn, depth + 1)


def _skip_dataset(inp: _In, syn: _Syntax, depth: int) -> None:
    """Skip the elements of an undefined-length item up to its item delimiter."""
    while True:
        head = _header(inp, syn)
        assert head is not None
        group, elem, vr, length = head
        if (group, elem) == (0xFFFE, _ITEM_END):
            return
        if length == _UNDEFINED:
            # an undefined-length UN holds an implicit VR little endian sequence (PS3.5 6.2.2)
            inner = _Syntax(True, False) if vr == b"UN" else syn
            _skip_items(inp, inner, depth + 1)
        else:
            inp.skip(length)


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip(" \x00")


@dataclass
class VisibleHead:
    """What one pass over a DICOM file's leading elements found."""

    syntax: _Syntax
    uids: list[str] = field(default_factory=lambda: ["", "", ""])  # study, series, SOP
    marker: str | None = None  # the ``SCANFORT 1`` block's marker; None without the block
    sealed: bytes = b""  # the block's age file (``xx02`` cut to ``xx03``)
    pixel_length: int | None = None  # declared length of the top-level Pixel Data, if reached
    read: bytes = b""  # the bytes read, when kept (not kept past a v2 block)
    _inp: _In | None = None
    _resume: int | None = None  # where the element the C walk stopped at starts

    @property
    def study_uid(self) -> str:
        return self.uids[0]

    @property
    def series_uid(self) -> str:
        return self.uids[1]

    @property
    def sop_uid(self) -> str:
        return self.uids[2]


def _meta(inp: _In) -> str:
    """Read preamble and File Meta (explicit VR little endian); return the transfer syntax."""
    pre = inp.read(132)
    if pre[128:] != b"DICM":
        raise NotDicomError("not a DICOM Part 10 file (no DICM preamble)")
    syn = _Syntax(True, True)
    ts = ""
    while True:
        tag = inp.read(4, at_end_ok=True)
        if not tag:
            return ts
        if syn.u16(tag) != 0x0002:
            inp.unread(tag)
            return ts
        inp.unread(tag)
        head = _header(inp, syn)
        assert head is not None
        _, elem, _, length = head
        if length == _UNDEFINED or length > _MAX_VALUE:
            raise NotDicomError("a malformed File Meta group")
        value = inp.read(length)
        if elem == 0x0010:
            ts = _text(value)


class _Found:
    """What a pass over the leading elements keeps: the UIDs (into ``head``) and the values
    of block ``SCANFORT 1``, once its private creator was seen."""

    __slots__ = ("block", "head", "values")

    def __init__(self, head: VisibleHead) -> None:
        self.head = head
        self.block = -1  # the block's element byte (``gggg,BBxx``), once found
        self.values: dict[int, tuple[bytes, bytes]] = {}

    def wanted(self, group: int, elem: int) -> bool:
        if (group, elem) in _UID_TAGS:
            return True
        if group != dicomfile.PRIVATE_GROUP:
            return False
        return 0x10 <= elem <= 0xFF if self.block < 0 else elem >> 8 == self.block

    def take(self, group: int, elem: int, vr: bytes, value: bytes) -> bool:
        """Keep a wanted element's value; True when it is the v2 format's marker."""
        head = self.head
        if (group, elem) in _UID_TAGS:
            head.uids[_UID_TAGS[group, elem]] = _text(value)
        elif self.block < 0:
            if _text(value) == dicomfile.PRIVATE_CREATOR:
                self.block = elem
                head.marker = ""  # the block exists: from here every failure is damage
        else:
            self.values[elem & 0xFF] = (vr, value)
            if elem & 0xFF == dicomfile.ELEM_MARKER:
                head.marker = _text(value)
                return head.marker == dicomfile.FORMAT_MARKER
        return False

    def finish(self) -> None:
        head = self.head
        if self.block >= 0:
            if not head.marker:
                raise AuthenticationError()
            if head.marker == dicomfile.FORMAT_MARKER:
                head.sealed = _sealed(self.values, head.syntax)


def _scan(inp: _In, head: VisibleHead, stop_after_group: int | None) -> None:
    if type(inp) is _MemIn and _walk is not None:
        _scan_walked(inp, head, stop_after_group)
        return
    syn = head.syntax
    found = _Found(head)
    while True:
        element = _header(inp, syn, at_end_ok=True)
        if element is None:
            break
        group, elem, vr, length = element
        if (group, elem) == (0x7FE0, 0x0010):
            head.pixel_length = length
            break
        if found.block < 0 and stop_after_group is not None and group > stop_after_group:
            break  # past the groups the decision needs: not ScanFort's
        if found.wanted(group, elem):
            if found.take(group, elem, vr, inp.read(_kept_length(length))):
                inp.stop_keeping()  # a v2 restore never needs the visible bytes again
        elif length == _UNDEFINED:
            _skip_items(inp, _Syntax(True, False) if vr == b"UN" else syn, 0)
        else:
            inp.skip(length)
    found.finish()


def _kept_length(length: int) -> int:
    """The length of a value :class:`_Found` keeps, checked."""
    if length == _UNDEFINED:
        raise FormatError("an undefined length where a value was expected")
    if length > _MAX_VALUE:
        raise FormatError("an element too long for its kind")
    return length


def _scan_walked(inp: _MemIn, head: VisibleHead, stop_after_group: int | None) -> None:
    """:func:`_scan` over bytes in memory, the elements found by the C walk: the same
    elements kept, the same stop, the same errors after the same elements."""
    assert _walk is not None
    syn = head.syntax
    found = _Found(head)
    stop = -1 if stop_after_group is None else stop_after_group
    while True:
        elements, status, end = _walk(inp._data, inp.pos, syn.little, syn.explicit, stop,
                                      dicomfile.PRIVATE_GROUP, _WALK_KEEP)  # fmt: skip
        last = elements.pop() if status in (_WALK_PIXELS, _WALK_STOPPED) else None
        for group, elem, vr, length, at in elements:
            if found.wanted(group, elem):
                inp.pos = at
                found.take(group, elem, vr, inp.read(_kept_length(length)))
        if status == _WALK_STOPPED and found.block >= 0:
            stop, inp.pos = -1, end  # the block is there: on to Pixel Data
            continue
        if status == _WALK_STOPPED:
            head._resume = end
        inp.pos = end if last is None else last[4]
        if status == _WALK_PIXELS:
            head.pixel_length = last[3]  # type: ignore[index]
        elif status == _WALK_SHORT:
            raise _Short()
        elif status < 0:
            raise FormatError("not a DICOM data set")
        break
    found.finish()


def _sealed(values: dict[int, tuple[bytes, bytes]], syn: _Syntax) -> bytes:
    try:
        sealed = values[dicomfile.ELEM_BLOB][1]
        vr, raw_length = values[dicomfile.ELEM_BLOB_LENGTH]
    except KeyError:
        raise AuthenticationError() from None
    if len(raw_length) != 4:
        raise AuthenticationError()
    # explicit VR: a UL in the data set's byte order; implicit VR: little endian
    length = syn.u32(raw_length) if vr else int.from_bytes(raw_length, "little")
    if not len(sealed) - 1 <= length <= len(sealed):
        raise AuthenticationError()
    return sealed[:length]


def scan_head(src: _Readable, *, keep: bool = True,
              stop_after_group: int | None = _NO_BLOCK_AFTER) -> VisibleHead:
    """Read the leading elements of a DICOM Part 10 stream; see :class:`VisibleHead`.

    Stops after the top-level Pixel Data element's header (its value is the next byte of
    ``src``), at the end of the stream, or, in a file without block ``SCANFORT 1``, at the
    first element of a group after ``stop_after_group`` (the UIDs are known by then).
    ``keep``: keep the bytes read (for a file passed on unchanged). An ``io.BytesIO`` read
    without ``keep`` is read in place (its position does not move). Raise
    :class:`NotDicomError` (no preamble, or a deflated data set, which this reader does
    not inflate), :class:`FormatError` (malformed before the block), or
    :class:`AuthenticationError` (a damaged block).
    """
    if isinstance(src, io.BytesIO) and not keep:  # in memory already: slices, no copies
        inp: _In = _MemIn(src.getvalue(), src.tell())  # (getbuffer() would copy it)
    else:
        inp = _In(src, keep)
    try:
        ts = _meta(inp)
        if ts == _DEFLATED:
            raise UnsupportedDicomError("a deflated data set")
    except _Short:
        raise NotDicomError("the stream ends inside the File Meta group") from None
    head = VisibleHead(_Syntax(ts != _EXPLICIT_BE, ts != _IMPLICIT_LE))
    head._inp = inp
    try:
        _scan(inp, head, stop_after_group)
    except (_Short, FormatError):
        if head.marker is not None:  # after the block was found: the one error
            raise AuthenticationError() from None
        raise FormatError("a malformed or cut DICOM data set") from None
    if inp.kept is not None:
        head.read = b"".join(inp.kept)
        inp.kept = None
    return head


def pixel_value_at(head: VisibleHead) -> int | None:
    """Where the top-level Pixel Data value starts in a file :func:`scan_head` read from
    memory, walking on (in C) from where it stopped; None when that cannot be told (read
    from a stream, no C walk, no Pixel Data, a malformed or cut element on the way)."""
    inp = head._inp
    if type(inp) is not _MemIn or _walk is None:
        return None
    if head.pixel_length is not None:
        return inp.pos
    if head._resume is None:
        return None
    syn = head.syntax
    _, status, end = _walk(inp._data, head._resume, syn.little, syn.explicit, -1, -1, ())
    return end if status == _WALK_PIXELS else None


# --------------------------------------------------------------------------- restore


class Opened:
    """A v2 instance whose blob opened and whose enciphered value matched its digest."""

    def __init__(self, blob: dicomfile._Blob, spool: BinaryIO | memoryview,
                 fragments: list[tuple[int, int]] | None) -> None:  # fmt: skip
        self._blob = blob
        self._spool = spool
        self._fragments = fragments
        self._parts = blob.parts()
        flags = blob.source.flags
        prefix, tail, body = self._parts
        #: the original's length, when known before it is rebuilt (not deflated again)
        self.length: int | None = len(prefix) + len(body) + len(tail)
        if not flags & dicomfile.FLAG_DEFLATE_STORED:
            self.length = None if flags & dicomfile.FLAG_DEFLATED else (
                self.length + blob.layout.value_length)

    @functools.cached_property
    def uids(self) -> tuple[str, str, str]:
        """Study, Series and SOP Instance UIDs of the original ("" where absent)."""
        return _original_uids(self._blob, self._parts)

    def header(self) -> bytes | None:
        """The original file up to its Pixel Data value (None when it was deflated)."""
        if self._blob.source.flags & dicomfile.FLAG_DEFLATED:
            return None
        return self._parts[2][:self._blob.source.offset]

    def trailer(self) -> bytes | None:
        """The original file after its Pixel Data value (None when it was deflated): the
        Sequence Delimitation Item of an encapsulated value, then any elements stored
        after Pixel Data (e.g. ``(FFFC,FFFC) Data Set Trailing Padding``)."""
        if self._blob.source.flags & dicomfile.FLAG_DEFLATED:
            return None
        return self._parts[2][self._blob.source.offset:]

    def pieces(self, expected: bytes | None = None) -> Iterator[bytes | memoryview]:
        """The original file, piece by piece (raises AuthenticationError after the last
        piece when its SHA-256 differs). ``expected``: the original itself (a protection's
        verify, which holds it), compared with instead of the SHA-256."""
        blob, spool = self._blob, self._spool
        n = blob.layout.value_length
        if isinstance(spool, (io.BytesIO, memoryview)):
            view = memoryview(spool.getvalue()) if isinstance(spool, io.BytesIO) else spool

            def get(a: int, b: int) -> bytes | memoryview:
                return view[a:b]
        else:
            def get(a: int, b: int) -> bytes | memoryview:
                spool.seek(a)
                data = spool.read(b - a)
                if len(data) != b - a:
                    raise AuthenticationError()
                return data
        units = dicomfile._units(b"", blob.layout, self._fragments or [])
        deciphered = dicomfile._unit_pieces(units, n, get, blob.key, blob.nonce, False)
        yield from dicomfile._original(blob, deciphered, self._parts, expected)

    def close(self) -> None:
        if not isinstance(self._spool, memoryview):
            self._spool.close()


def open_v2(head: VisibleHead, identities: list[str],
            spool: Callable[[int], BinaryIO], *, whole: bool = False) -> Opened:
    """Open the blob of a v2 ``head`` and take its Pixel Data from the rest of the stream.

    ``spool(n)`` gives a writable, seekable file for ``n`` bytes of ciphertext (memory or a
    temporary file). The stream is left just after the Pixel Data value. Raise
    :class:`NoIdentityMatchError` or :class:`AuthenticationError` (any damage).

    ``whole``: the caller takes every piece of :meth:`Opened.pieces` before it uses any
    (a whole in-memory restore). For a file read from memory the digest ``D`` of its
    enciphered value is then not computed (SPEC §2.4, "Reading"): the original's SHA-256,
    compared after the last piece, authenticates the value as well. A file read from a
    stream is always checked against ``D`` first.
    """
    if head.marker != dicomfile.FORMAT_MARKER or head._inp is None:
        raise FormatError("not a scanfort-dicom/2 file")
    blob = dicomfile._Blob.decode(_common.age_decrypt_bytes(head.sealed, identities))
    return take_value(head, blob, spool, whole=whole)


def take_value(head: VisibleHead, blob: dicomfile._Blob, spool: Callable[[int], BinaryIO],
               *, whole: bool = False) -> Opened:
    """:func:`open_v2` with the blob already open (a protection verifying its own output
    holds it): the Pixel Data value of ``head``'s stream, located and checked as a reader
    does. Raise :class:`AuthenticationError` (any damage)."""
    if head.marker != dicomfile.FORMAT_MARKER or head._inp is None:
        raise FormatError("not a scanfort-dicom/2 file")
    if head.pixel_length is None:
        raise AuthenticationError()
    inp, n = head._inp, blob.layout.value_length
    if isinstance(inp, _MemIn) and head.pixel_length != _UNDEFINED:
        # the file is in memory already: its value is hashed and deciphered where it lies
        if head.pixel_length not in (n, n + (n & 1)):
            raise AuthenticationError()
        try:
            value = inp.view(n)
            inp.skip(head.pixel_length - n)
        except _Short:
            raise AuthenticationError() from None
        # Deciphering is a bijection of each unit under the blob's key and nonce, and the
        # clear bytes between units are copied as they are: a changed value gives another
        # original, which its recorded SHA-256 refuses. Only a caller that uses nothing
        # before that comparison (``whole``) may leave out this pass over the value.
        if not whole and not hmac.compare_digest(hashlib.sha256(value).digest(),
                                                 blob.cipher_sha256):  # fmt: skip
            raise AuthenticationError()
        return Opened(blob, value, None)
    out = spool(n)
    try:
        digest = hashlib.sha256()
        fragments: list[tuple[int, int]] | None = None
        try:
            if head.pixel_length == _UNDEFINED:
                fragments = _copy_items(inp, head.syntax, n, out, digest)
            else:
                if head.pixel_length not in (n, n + (n & 1)):
                    raise AuthenticationError()
                _copy(inp, n, out, digest)
                inp.skip(head.pixel_length - n)
        except _Short:
            raise AuthenticationError() from None
        if not hmac.compare_digest(digest.digest(), blob.cipher_sha256):
            raise AuthenticationError()
        if blob.layout.kind != dicomfile.LAYOUT_FRAGMENTS:
            fragments = None
        elif fragments is None:
            raise AuthenticationError()
        return Opened(blob, out, fragments)
    except BaseException:
        out.close()
        raise


def _copy(inp: _In, n: int, out: BinaryIO, digest: Any) -> None:
    """Copy ``n`` bytes from ``inp`` to ``out`` in chunks, hashing them on the way."""
    while n:
        data = inp.read(min(n, _CHUNK))
        digest.update(data)
        out.write(data)
        n -= len(data)


def _copy_items(inp: _In, syn: _Syntax, n: int, out: BinaryIO,
                digest: Any) -> list[tuple[int, int]]:  # fmt: skip
    """Copy an encapsulated value (its items, without the delimiter) of ``n`` bytes; return
    the (offset, length) of each fragment after the Basic Offset Table."""
    fragments: list[tuple[int, int]] = []
    pos, index = 0, 0
    item_syntax = _Syntax(syn.little, False)
    while True:
        raw = inp.read(8)
        group, elem, length = item_syntax.u16(raw), item_syntax.u16(raw, 2), item_syntax.u32(raw, 4)
        if (group, elem) == (0xFFFE, _SEQ_END):
            break
        if (group, elem) != (0xFFFE, _ITEM) or length == _UNDEFINED or pos + 8 + length > n:
            raise AuthenticationError()
        digest.update(raw)
        out.write(raw)
        _copy(inp, length, out, digest)
        if index:
            fragments.append((pos + 8, length))
        pos += 8 + length
        index += 1
    if pos != n:
        raise AuthenticationError()
    return fragments


class _Inflating:
    """``read(n)`` of a raw deflate stream's inflated bytes (a stored skeleton)."""

    def __init__(self, data: bytes) -> None:
        self._d = zlib.decompressobj(-zlib.MAX_WBITS)
        self._data = data
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        out = b""
        while len(out) < n and (self._pos < len(self._data) or self._d.unconsumed_tail):
            src = self._d.unconsumed_tail or self._data[self._pos:self._pos + _CHUNK]
            if not self._d.unconsumed_tail:
                self._pos += len(src)
            out += self._d.decompress(src, n - len(out))
        return out


def _original_uids(blob: dicomfile._Blob, parts: tuple[bytes, bytes, bytes],
                   ) -> tuple[str, str, str]:
    """Study, series and SOP Instance UIDs of the original, read from the skeleton."""
    prefix, _, body = parts
    s = blob.source
    try:
        if not s.flags & dicomfile.FLAG_DEFLATED:
            head = scan_head(io.BytesIO(body), keep=False)  # in memory: no copy
        else:
            _meta(_In(io.BytesIO(prefix), False))
            head = VisibleHead(_Syntax(True, True))
            inp = (_In(_Inflating(body), False) if s.flags & dicomfile.FLAG_DEFLATE_STORED
                   else _MemIn(body))  # fmt: skip
            _scan(inp, head, _NO_BLOCK_AFTER)
    except (_Short, FormatError, NotDicomError):
        return "", "", ""
    return head.study_uid, head.series_uid, head.sop_uid
