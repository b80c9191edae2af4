"""DICOM mode, version 2: a PACS-ready protected object and a byte-exact restore.

The visible object is an ordinary DICOM file: the attributes follow the PS3.15 basic
profile (:mod:`cipher.profile`) with keyed patient pseudonyms, its Pixel Data is
enciphered by the chaos cipher unit by unit, and an age file in private block
``SCANFORT 1`` (group 0011) holds the *blob*: the image key and nonce, a SHA-256 of the
original file, a SHA-256 of the enciphered Pixel Data, and the original file without its
Pixel Data value (the *skeleton*, zlib-compressed).

The restore never reads the visible attributes: it takes the skeleton from the blob and
the Pixel Data from the file (checked against its digest), deciphers, splices and
compares the SHA-256 of the result with the original's. A PACS that coerces attributes,
or an attacker who edits them, cannot change what comes back; a change to what the
restore uses fails. Every protection runs the same restore on its own output before it
returns (verify before commit). ``cipher/SPEC.md`` §2.4 is the byte-level definition.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import pydicom
from pydicom.dataset import Dataset
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cipher import _common, chaos
from cipher._common import DICOM_MODE, UnprotectInfo
from cipher.errors import (
    AlreadyProtectedError,
    AuthenticationError,
    FormatError,
    NotDicomError,
    UnsupportedDicomError,
)

__all__ = [
    "FORMAT_MARKER",
    "FORMAT_VERSION",
    "PRIVATE_CREATOR",
    "dicom_mode_refusal",
    "inspect_v2",
    "unprotect_v2",
]

FORMAT_VERSION = 2
FORMAT_MARKER = f"scanfort-dicom/{FORMAT_VERSION}"
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "SCANFORT 1"
ELEM_MARKER = 0x01  # LO  format marker
ELEM_BLOB = 0x02  # OB  the age file of the blob (padded with one 0x00 to even length)
ELEM_BLOB_LENGTH = 0x03  # UL  exact length of that age file
ELEM_POLICY = 0x04  # LO  the policy applied (informational, not authenticated)

# pydicom's warnings and log records quote attribute values ("Invalid value for VR UI:
# '1.2.…'"), and nothing read from a dataset may reach a log: silenced for the whole
# process as soon as DICOM mode is loaded (the agent's workers, the CLI, the gateway).
warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
logging.getLogger("pydicom").disabled = True

KIND_DICOM = 0x44  # "D"
PIXEL_DATA = Tag(0x7FE0, 0x0010)
_UNDEFINED = 0xFFFFFFFF

LABEL_FRAME = b"scanfort dicom v2 frame"
LABEL_FRAGMENT = b"scanfort dicom v2 fragment"
LABEL_WHOLE = b"scanfort dicom v2 whole"
LABEL_TAIL = b"scanfort dicom v2 tail"

LAYOUT_FRAMES, LAYOUT_WHOLE, LAYOUT_FRAGMENTS = 1, 2, 3
UNIT_U8, UNIT_U16LE, UNIT_U16BE = 1, 2, 3
# The size of a unit's values in the original file (and in the visible file, which keeps
# the transfer syntax). The cipher works on values: a uint16 value is enciphered as its
# little-endian bytes, so big-endian units are byte-swapped on the way in and out.
_ITEMSIZE = {UNIT_U8: 1, UNIT_U16LE: 2, UNIT_U16BE: 2}

FLAG_DEFLATED = 0x01  # the source's dataset is deflated; rebuilt by recompressing
FLAG_DEFLATE_STORED = 0x02  # no zlib setting reproduced it: the stream itself is stored
_DEFAULT_LEVEL = 0xFF

# magic, version, kind, flags, key, nonce, original sha256, cipher sha256, layout, unit,
# deflate level, deflate memLevel, unit count, frame length, value length, pixel offset,
# skeleton length
_HEADER = struct.Struct(">8sBBH32s16s32s32sBBBBIIIQI")
_U32 = struct.Struct(">I")
_ITEM = struct.Struct("<HHI")
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR",
                       b"UT", b"SV", b"UV"})
MAX_BLOB = 64 << 20  # a skeleton larger than this is refused (bounded memory on hostile input)


# --------------------------------------------------------------------------- source


@dataclass(frozen=True)
class _Layout:
    kind: int
    unit: int
    count: int
    frame_length: int
    value_length: int


@dataclass(frozen=True)
class _Source:
    """The original file cut around its Pixel Data value."""

    prefix: bytes  # preamble + file meta when the dataset is deflated, else b""
    stream: bytes  # the byte stream holding Pixel Data: the file, or the inflated dataset
    tail: bytes  # bytes after a deflated stream
    offset: int  # Pixel Data value in ``stream``
    length: int
    flags: int
    level: int
    mem_level: int
    stored: bytes  # the deflated stream itself, when FLAG_DEFLATE_STORED


def _meta_end(raw: bytes) -> int:
    """Offset of the first byte after the File Meta group (explicit VR little endian)."""
    if len(raw) < 132 or raw[128:132] != b"DICM":
        raise NotDicomError("not a DICOM Part 10 file (no DICM preamble)")
    pos = 132
    while pos + 8 <= len(raw) and raw[pos:pos + 2] == b"\x02\x00":
        vr = raw[pos + 4:pos + 6]
        if vr in _LONG_VRS:
            if pos + 12 > len(raw):
                break
            length, head = struct.unpack_from("<I", raw, pos + 8)[0], 12
        else:
            length, head = raw[pos + 6] | raw[pos + 7] << 8, 8
        if length == _UNDEFINED or pos + head + length > len(raw):
            raise UnsupportedDicomError("the file meta information is cut or malformed")
        pos += head + length
    return pos


def _deflate(data: bytes, level: int, mem_level: int) -> bytes:
    comp = zlib.compressobj(-1 if level == _DEFAULT_LEVEL else level, zlib.DEFLATED,
                            -zlib.MAX_WBITS, mem_level)
    return comp.compress(data) + comp.flush()


def _inflate(raw: bytes, start: int) -> tuple[bytes, bytes, bytes]:
    """(inflated dataset, the deflated stream, bytes after it)."""
    d = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflated = d.decompress(raw[start:]) + d.flush()
    except zlib.error as exc:
        raise UnsupportedDicomError("the deflated dataset is corrupt") from exc
    if not d.eof:
        raise UnsupportedDicomError("the deflated dataset is cut")
    end = len(raw) - len(d.unused_data)
    return inflated, raw[start:end], raw[end:]


def _read_source(raw: bytes) -> tuple[Dataset, _Source]:
    meta_end = _meta_end(raw)
    try:
        with io.BytesIO(raw) as buf:  # closed: a dataset in a cycle cannot hold on to ``raw``
            ds = pydicom.dcmread(buf, force=False)
        meta = ds.file_meta
        ts = meta.TransferSyntaxUID
        ds.SOPClassUID, ds.SOPInstanceUID  # noqa: B018 - required attributes
    except Exception as exc:
        raise NotDicomError("not a DICOM file with pixel data") from exc
    if PIXEL_DATA not in ds:
        raise NotDicomError("not a DICOM file with pixel data")
    try:
        ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        protected = True
    except KeyError:
        protected = False
    except Exception as exc:
        raise UnsupportedDicomError("a malformed private block in group 0011") from exc
    if protected:
        raise AlreadyProtectedError("already a scanfort protected file")
    raw_elem = ds.get_item(PIXEL_DATA)
    vr = getattr(raw_elem, "VR", None)
    value = getattr(raw_elem, "value", None)
    tell = getattr(raw_elem, "value_tell", None)
    if vr == "SQ":
        raise UnsupportedDicomError("Pixel Data is a sequence")
    if not isinstance(value, (bytes, bytearray)) or not isinstance(tell, int):
        raise UnsupportedDicomError("Pixel Data cannot be read as bytes")
    if not value:
        raise UnsupportedDicomError("Pixel Data is empty")
    _check_not_cut(ds)
    flags, level, mem_level, prefix, tail, stored = 0, 0, 0, b"", b"", b""
    if ts == DeflatedExplicitVRLittleEndian:
        stream, deflated, tail = _inflate(raw, meta_end)
        prefix = raw[:meta_end]
        flags = FLAG_DEFLATED
        match = next(((lv, ml) for lv in (_DEFAULT_LEVEL, *range(10)) for ml in (8, 9)
                      if _deflate(stream, lv, ml) == deflated), None)
        if match is None:
            flags |= FLAG_DEFLATE_STORED
            stored = deflated
        else:
            level, mem_level = match
    else:
        stream = raw
    if not stream.startswith(value, tell):  # stream[tell:…] == value, without a copy
        raise UnsupportedDicomError("Pixel Data could not be located in the file")
    source = _Source(prefix, stream, tail, tell, len(value), flags, level, mem_level, stored)
    return ds, source


def _check_not_cut(ds: Dataset) -> None:
    """Refuse a file whose Pixel Data or last element is shorter than its declared length.

    pydicom accepts a value cut by the end of the file; its raw element keeps the
    declared length. Such a file is still protected, in file mode.
    """
    tags = list(ds.keys())
    for tag in {PIXEL_DATA, tags[-1]}:
        elem = ds.get_item(tag)
        length = getattr(elem, "length", None)
        value = getattr(elem, "value", None)
        if (isinstance(length, int) and length != _UNDEFINED
                and isinstance(value, (bytes, bytearray)) and len(value) != length):
            raise UnsupportedDicomError(
                f"the file is cut: an element declares {length} bytes, {len(value)} remain")


def _layout(ds: Dataset, value_length: int, vr: str, big_endian: bool) -> _Layout:
    if ds.file_meta.TransferSyntaxUID.is_encapsulated:
        return _Layout(LAYOUT_FRAGMENTS, UNIT_U8, 0, 0, value_length)
    try:
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except (TypeError, ValueError):
        bits = 8
    unit = UNIT_U16BE if big_endian and vr == "OW" else UNIT_U16LE if bits == 16 else UNIT_U8
    if big_endian and vr != "OW" and bits == 16:
        unit = UNIT_U8
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        frame_bits = rows * cols * samples * bits
    except (AttributeError, TypeError, ValueError):
        frame_bits, frames = 0, 0
    frame_length = frame_bits // 8
    itemsize = _ITEMSIZE[unit]
    if (frame_bits > 0 and frame_bits % 8 == 0 and frames > 0
            and frames * frame_length <= value_length and frame_length % itemsize == 0):
        return _Layout(LAYOUT_FRAMES, unit, frames, frame_length, value_length)
    if value_length % itemsize:
        unit = UNIT_U8
    return _Layout(LAYOUT_WHOLE, unit, 1, value_length, value_length)


def _fragments(value: bytes | memoryview) -> Iterator[tuple[int, int]]:
    """(offset, length) of each fragment after the Basic Offset Table."""
    pos, index = 0, 0
    while pos < len(value):
        if pos + 8 > len(value):
            raise ValueError("malformed encapsulated Pixel Data")
        group, element, length = _ITEM.unpack_from(value, pos)
        if (group, element) != (0xFFFE, 0xE000) or pos + 8 + length > len(value):
            raise ValueError("malformed encapsulated Pixel Data")
        if index:
            yield pos + 8, length
        pos += 8 + length
        index += 1


def _units(value: bytes | memoryview, layout: _Layout,
           fragments: Sequence[tuple[int, int]] | None = None) -> list[tuple[slice, bytes, int]]:
    """Every unit of the value: (slice, nonce label, unit type). ``fragments`` (offset,
    length) are those of the value when the caller found them already (a stream)."""
    if layout.kind == LAYOUT_FRAGMENTS:
        found = _fragments(value) if fragments is None else fragments
        return [(slice(o, o + n), LABEL_FRAGMENT, UNIT_U8) for o, n in found]
    if layout.kind == LAYOUT_WHOLE:
        return [(slice(0, layout.value_length), LABEL_WHOLE, layout.unit)]
    fl = layout.frame_length
    units = [(slice(i * fl, (i + 1) * fl), LABEL_FRAME, layout.unit) for i in range(layout.count)]
    if layout.count * fl < layout.value_length:  # bytes after the last frame: enciphered too
        units.append((slice(layout.count * fl, layout.value_length), LABEL_TAIL, UNIT_U8))
    return units


def _pieces(value: bytes | memoryview, layout: _Layout, key: bytes, nonce: bytes,
            forward: bool) -> Iterator[bytes | memoryview]:
    """The value transformed, in order: each unit enciphered (source → visible) or
    deciphered (visible → source), and the clear bytes between units (item headers)."""
    view = memoryview(value)
    yield from _unit_pieces(_units(view, layout), len(view), lambda a, b: view[a:b], key,
                            nonce, forward)


def _unit_pieces(units: Sequence[tuple[slice, bytes, int]], length: int,
                 get: Callable[[int, int], bytes | memoryview], key: bytes, nonce: bytes,
                 forward: bool) -> Iterator[bytes | memoryview]:
    """:func:`_pieces` over a value read through ``get(start, stop)`` (memory or a spool)."""
    counters: dict[bytes, int] = {}
    pos = 0
    for sl, label, unit in units:
        if sl.start > pos:
            yield get(pos, sl.start)
        index = counters.get(label, 0)
        counters[label] = index + 1
        unit_nonce = _common.derive_nonce(label, nonce, index)
        if (sl.stop - sl.start) % _ITEMSIZE[unit]:
            raise ValueError("unit length is not a multiple of its value size")
        data = get(sl.start, sl.stop)
        big = unit == UNIT_U16BE
        fn = chaos.encrypt_bytes if forward else chaos.decrypt_bytes
        out: bytes | memoryview = fn(_swap16(data) if big else data, key, unit_nonce)
        yield memoryview(_swap16(out)) if big else out
        pos = sl.stop
    if pos < length:
        yield get(pos, length)


def _swap16(data: bytes | memoryview) -> bytearray:
    """The bytes of 16-bit values in the other byte order."""
    src = bytes(data)
    out = bytearray(len(src))
    out[0::2], out[1::2] = src[1::2], src[0::2]
    return out


def _transform(value: bytes | memoryview, layout: _Layout, key: bytes, nonce: bytes, forward: bool) -> bytes:
    """The whole value transformed (see :func:`_pieces`)."""
    return b"".join(_pieces(value, layout, key, nonce, forward))


# --------------------------------------------------------------------------- blob


@dataclass(frozen=True)
class _Blob:
    key: bytes
    nonce: bytes
    original_sha256: bytes
    cipher_sha256: bytes
    layout: _Layout
    source: _Source
    skeleton: bytes  # zlib-compressed

    @staticmethod
    def skeleton_of(source: _Source) -> bytes:
        body = source.stored if source.flags & FLAG_DEFLATE_STORED else (
            source.stream[:source.offset] + source.stream[source.offset + source.length:])
        plain = (_U32.pack(len(source.prefix)) + source.prefix + _U32.pack(len(source.tail))
                 + source.tail + body)
        return zlib.compress(plain, 9)

    def encode(self) -> bytes:
        s, lay = self.source, self.layout
        head = _HEADER.pack(
            _common.SCANFORT_MAGIC, FORMAT_VERSION, KIND_DICOM, s.flags, self.key, self.nonce,
            self.original_sha256, self.cipher_sha256, lay.kind, lay.unit, s.level & 0xFF,
            s.mem_level, lay.count, lay.frame_length, lay.value_length, s.offset,
            len(self.skeleton))
        return head + self.skeleton

    @classmethod
    def decode(cls, raw: bytes) -> _Blob:
        try:
            (magic, version, kind, flags, key, nonce, orig, ciph, lkind, unit, level, mem,
             count, frame_length, value_length, offset, n) = _HEADER.unpack_from(raw, 0)
        except struct.error:
            raise AuthenticationError() from None
        skeleton = raw[_HEADER.size:]
        if (magic != _common.SCANFORT_MAGIC or version != FORMAT_VERSION or kind != KIND_DICOM
                or flags & ~(FLAG_DEFLATED | FLAG_DEFLATE_STORED)
                or lkind not in (LAYOUT_FRAMES, LAYOUT_WHOLE, LAYOUT_FRAGMENTS)
                or unit not in _ITEMSIZE or len(skeleton) != n or value_length == 0):
            raise AuthenticationError()
        layout = _Layout(lkind, unit, count, frame_length, value_length)
        source = _Source(b"", b"", b"", offset, value_length, flags, level, mem, b"")
        return cls(key, nonce, orig, ciph, layout, source, skeleton)

    def parts(self) -> tuple[bytes, bytes, bytes]:
        """(prefix, tail, body) of the skeleton (body: the source stream without the Pixel
        Data value, or the stored deflate stream)."""
        try:
            plain = zlib.decompressobj().decompress(self.skeleton, MAX_BLOB)
            n_prefix = _U32.unpack_from(plain, 0)[0]
            prefix = plain[4:4 + n_prefix]
            pos = 4 + n_prefix
            n_tail = _U32.unpack_from(plain, pos)[0]
            tail = plain[pos + 4:pos + 4 + n_tail]
            body = plain[pos + 4 + n_tail:]
        except (zlib.error, struct.error):
            raise AuthenticationError() from None
        if not self.source.flags & FLAG_DEFLATE_STORED and self.source.offset > len(body):
            raise AuthenticationError()
        return prefix, tail, body


# --------------------------------------------------------------------------- restore


def _find_block(ds: Dataset) -> Any | None:
    try:
        return ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except (KeyError, ValueError, TypeError):
        return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value).strip(" \x00")


def _sealed(block: Any) -> bytes:
    try:
        sealed = block[ELEM_BLOB].value
        length = block[ELEM_BLOB_LENGTH].value
    except Exception:  # pydicom raises many kinds on a damaged element; all are damage
        raise AuthenticationError() from None
    if isinstance(length, (bytes, bytearray)):  # implicit VR: raw little endian UL
        length = int.from_bytes(length, "little") if len(length) == 4 else -1
    if (not isinstance(sealed, (bytes, bytearray)) or not isinstance(length, int)
            or not len(sealed) - 1 <= length <= len(sealed)):
        raise AuthenticationError()
    return bytes(sealed[:length])


def _parse_visible(src: BinaryIO) -> tuple[Dataset, str, bytes]:
    """(dataset, marker, sealed blob) of a DICOM-mode file, or FormatError."""
    try:
        ds = pydicom.dcmread(src, force=False)
        block = _find_block(ds)
    except Exception:
        raise FormatError("not a scanfort protected file") from None
    if block is None:
        raise FormatError("not a scanfort protected file")
    try:
        marker = _text(block[ELEM_MARKER].value)
    except Exception:
        raise AuthenticationError() from None
    return ds, marker, _sealed(block)


def _visible_pixels(ds: Dataset) -> bytes:
    try:
        value = ds[PIXEL_DATA].value
    except Exception:
        raise AuthenticationError() from None
    if not isinstance(value, (bytes, bytearray)):
        raise AuthenticationError()
    return bytes(value)


def _restore(ds: Dataset, blob: _Blob, dst: BinaryIO | None) -> int:
    """Write the original file, rebuilt from the blob and the visible Pixel Data, to
    ``dst`` (None: only check it); return its length.

    The Pixel Data is checked against its digest before anything is deciphered; the
    original is then written piece by piece (skeleton, deciphered units, skeleton) with
    its SHA-256 computed on the way, so memory stays near one copy of the value. A
    mismatch raises after ``dst`` received bytes: callers keep ``dst`` only on return.
    """
    visible = memoryview(_visible_pixels(ds))
    n = blob.layout.value_length
    # An odd value is padded to even length by the writer; the pad byte is not used.
    if len(visible) not in (n, n + (n & 1)):
        raise AuthenticationError()
    enciphered = visible[:n]
    if not hmac.compare_digest(hashlib.sha256(enciphered).digest(), blob.cipher_sha256):
        raise AuthenticationError()
    written = 0
    pieces = _pieces(enciphered, blob.layout, blob.key, blob.nonce, forward=False)
    for data in _original(blob, pieces):
        written += len(data)
        if dst is not None:
            dst.write(data)
    return written


def _original(blob: _Blob, deciphered: Iterator[bytes | memoryview],
              parts: tuple[bytes, bytes, bytes] | None = None,
              expected: bytes | None = None) -> Iterator[bytes | memoryview]:
    """The original file, in pieces: the skeleton around the ``deciphered`` value (deflated
    again when the source was), its SHA-256 checked after the last piece. A mismatch raises
    :class:`AuthenticationError` after the other pieces were produced: a consumer keeps
    them only when the iteration ends normally. ``parts``: ``blob.parts()`` if known.

    ``expected``: the original itself (the protection's verify, which holds it): each
    piece is compared with it instead, the same proof (the blob's digest is that of
    ``expected``) for a memory comparison instead of a SHA-256."""
    prefix, tail, body = parts or blob.parts()
    digest = hashlib.sha256() if expected is None else None
    done = 0
    s = blob.source

    def out(data: bytes | memoryview) -> bytes | memoryview:
        nonlocal done
        if digest is not None:
            digest.update(data)
        elif not expected.startswith(data, done):  # type: ignore[union-attr]
            raise AuthenticationError()
        done += len(data)
        return data

    yield out(prefix)
    if s.flags & FLAG_DEFLATE_STORED:
        yield out(body)
    else:
        comp = (zlib.compressobj(-1 if s.level == _DEFAULT_LEVEL else s.level, zlib.DEFLATED,
                                 -zlib.MAX_WBITS, s.mem_level)
                if s.flags & FLAG_DEFLATED else None)

        def stream(data: bytes | memoryview) -> bytes | memoryview:
            return out(comp.compress(data) if comp is not None else data)

        yield stream(body[:s.offset])
        try:
            for piece in deciphered:
                yield stream(piece)
        except ValueError:
            raise AuthenticationError() from None
        yield stream(body[s.offset:])
        if comp is not None:
            yield out(comp.flush())
    yield out(tail)
    if digest is None:
        if done != len(expected):  # type: ignore[arg-type]
            raise AuthenticationError()
    elif not hmac.compare_digest(digest.digest(), blob.original_sha256):
        raise AuthenticationError()


# --------------------------------------------------------------------------- protect


def dicom_mode_refusal(src: BinaryIO) -> str | None:
    """Why DICOM mode would refuse ``src`` (None when it can carry it); position restored."""
    start = src.tell()
    try:
        _read_source(src.read())
        return None
    except (NotDicomError, FormatError) as exc:
        return str(exc)
    finally:
        src.seek(start)


# --------------------------------------------------------------------------- unprotect


def unprotect_v2(ds: Dataset, sealed: bytes, raw_len: int, dst: BinaryIO,
                 identities: Sequence[str]) -> UnprotectInfo:
    """Restore the exact original of a parsed v2 file; see :func:`cipher.unprotect`."""
    blob = _Blob.decode(_common.age_decrypt_bytes(sealed, identities))
    written = _restore(ds, blob, dst)
    return UnprotectInfo(mode=DICOM_MODE, bytes_in=raw_len, bytes_out=written,
                         sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
                         format_version=FORMAT_VERSION)


def inspect_v2(ds: Dataset, sealed: bytes, raw_len: int) -> dict[str, Any]:
    """The keyless description of a v2 file (no patient attributes)."""
    block = _find_block(ds)
    try:
        policy = _text(block[ELEM_POLICY].value) if block is not None else ""
    except Exception:  # informational only: a damaged value is simply not shown
        policy = ""
    try:
        recipients: int | None = _common.parse_age_header(io.BytesIO(sealed)).x25519_recipients
    except FormatError:
        recipients = None
    try:
        pixel_bytes: int | None = len(_visible_pixels(ds))
    except AuthenticationError:
        pixel_bytes = None
    return {
        "mode": DICOM_MODE,
        "format": FORMAT_MARKER,
        "format_version": FORMAT_VERSION,
        "recipients": recipients,
        "policy": policy or None,
        "file_bytes": raw_len,
        "pixel_data_bytes": pixel_bytes,
        "blob_bytes": len(sealed),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "uids": {k: str(ds[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                               "SOPInstanceUID") if k in ds},
        "patient_identity_removed": str(ds.get("PatientIdentityRemoved", "")) or None,
    }
