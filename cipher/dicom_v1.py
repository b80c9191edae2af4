"""DICOM mode, version 1 (reading only): files written before version 2 still decrypt.

ScanFort no longer writes this version (:mod:`cipher.dicomfile` writes version 2); this
module keeps the v1 reader exactly as ``cipher/SPEC.md`` §2.3 defines it.

The output keeps its transfer syntax, length of ``(7FE0,0010) Pixel Data`` and VR, so
PACS (C-STORE, STOW-RS) and dumpers accept it; viewers show noise. Identifying attributes
are replaced by placeholders. The chaos image key and nonce, the original attributes and
a SHA-256 of the ciphered Pixel Data travel in one age file stored in private block
``SCANFORT 1`` of group ``0011`` (see ``cipher/SPEC.md``, "DICOM mode").

Only the Pixel Data and the blob are authenticated: the other attributes are left to the
PACS (which may coerce them) and are restored from the blob when they were replaced.
The dataset is processed in memory (DICOM instances, unlike arbitrary files, fit).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.tag import Tag

from cipher import _common, chaos
from cipher._common import DICOM_MODE, UnprotectInfo
from cipher.errors import AuthenticationError, FormatError

__all__ = ["FORMAT_MARKER", "inspect_v1", "unprotect_v1"]

FORMAT_VERSION = 1
#: Value of ``(0011,xx01)``: the DICOM-mode version marker.
FORMAT_MARKER = f"scanfort-dicom/{FORMAT_VERSION}"
PRIVATE_GROUP = 0x0011
PRIVATE_CREATOR = "SCANFORT 1"
ELEM_MARKER = 0x01  # (0011,xx01) LO  format marker
ELEM_BLOB = 0x02  # (0011,xx02) OB  age v1 file holding the blob (padded to even length)
ELEM_BLOB_LENGTH = 0x03  # (0011,xx03) UL  exact length of the age file in (0011,xx02)

KIND_DICOM = 0x44  # "D"
PIXEL_DATA = Tag(0x7FE0, 0x0010)
TRAILING_PADDING = Tag(0xFFFC, 0xFFFC)
_UNDEFINED_LENGTH = 0xFFFFFFFF

# Labels of the per-unit nonce derivations (see cipher._common.derive_nonce).
LABEL_FRAME_NONCE = b"scanfort dicom v1 frame"
LABEL_FRAGMENT_NONCE = b"scanfort dicom v1 fragment"
LABEL_WHOLE_NONCE = b"scanfort dicom v1 whole"

# Layout of the Pixel Data value, recorded in the blob so that decryption never trusts
# the (unauthenticated) Rows/Columns/... attributes of the protected file.
LAYOUT_FRAMES = 1  # native: NumberOfFrames frames of frame_length bytes, rest kept
LAYOUT_WHOLE = 2  # native, sizes inconsistent: the whole value is one unit
LAYOUT_FRAGMENTS = 3  # encapsulated: each fragment's bytes (Basic Offset Table kept)
UNIT_U8 = 1
UNIT_U16LE = 2
UNIT_U16BE = 3
_UNIT_DTYPE: dict[int, np.dtype[Any]] = {
    UNIT_U8: np.dtype(np.uint8),
    UNIT_U16LE: np.dtype("<u2"),
    UNIT_U16BE: np.dtype(">u2"),
}

# magic, version, kind, reserved, key, nonce, pixel sha256, padding sha256, layout, unit,
# reserved,
# unit count, frame length, originals length
_BLOB_HEADER = struct.Struct(">8sBBH32s16s32s32sBBHIII")
_U32 = struct.Struct(">I")

ROUTING_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

PLACEHOLDER_TEXT = "PROTECTED"
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
_MARKER_RE = re.compile(r"scanfort-dicom/(\d+)")


# --------------------------------------------------------------------------- reading


def _read(raw: bytes, **kwargs: Any) -> Dataset:
    return pydicom.dcmread(io.BytesIO(raw), force=False, **kwargs)


def _find_block(ds: Dataset) -> Any | None:
    try:
        return ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):  # implicit VR or UN: the private dictionary is unknown
        return value.decode("ascii", "replace").strip(" \x00")
    return str(value).strip(" \x00")


def _uint32(value: Any) -> int:
    if isinstance(value, (bytes, bytearray)):  # implicit VR: raw little endian UL
        if len(value) != 4:
            raise AuthenticationError()
        return int(struct.unpack("<I", value)[0])
    if isinstance(value, int):
        return value
    raise AuthenticationError()


def _bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise AuthenticationError()


def _serialize(ds: Dataset) -> bytes:
    """A dataset as explicit VR little endian elements (no preamble, no meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def _deserialize(raw: bytes) -> Dataset:
    fp = DicomBytesIO(raw)
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    return read_dataset(fp, is_implicit_VR=False, is_little_endian=True)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- pixel data


@dataclass(frozen=True)
class _Layout:
    kind: int
    unit: int
    count: int
    frame_length: int


def _unit_of(ds: Dataset, elem: DataElement) -> int:
    bits = int(ds.get("BitsAllocated", 8) or 8)
    little = ds.original_encoding[1] if ds.original_encoding[1] is not None else True
    if not little and elem.VR == "OW":
        return UNIT_U16BE
    if bits == 16:
        return UNIT_U16LE
    return UNIT_U8


def _native_layout(ds: Dataset, elem: DataElement, value_length: int) -> _Layout:
    unit = _unit_of(ds, elem)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.BitsAllocated)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return _whole(unit, value_length)
    frame_bits = rows * cols * samples * bits
    frame_length = frame_bits // 8
    if (
        frame_bits % 8 == 0
        and frame_length > 0
        and frames > 0
        and frames * frame_length <= value_length
        and frame_length % _UNIT_DTYPE[unit].itemsize == 0
    ):
        return _Layout(LAYOUT_FRAMES, unit, frames, frame_length)
    return _whole(unit, value_length)


def _whole(unit: int, value_length: int) -> _Layout:
    if value_length % _UNIT_DTYPE[unit].itemsize:
        unit = UNIT_U8
    return _Layout(LAYOUT_WHOLE, unit, 1, value_length)


_ITEM = struct.Struct("<HHI")


def _fragments(value: bytes | bytearray) -> Iterator[tuple[int, int]]:
    """(offset, length) of every fragment of an encapsulated value, Basic Offset Table excluded."""
    pos, index = 0, 0
    while pos + 8 <= len(value):
        group, element, length = _ITEM.unpack_from(value, pos)
        if (group, element) == (0xFFFE, 0xE0DD):
            return
        if (group, element) != (0xFFFE, 0xE000) or pos + 8 + length > len(value):
            raise ValueError("malformed encapsulated Pixel Data")
        if index > 0:
            yield pos + 8, length
        pos += 8 + length
        index += 1


def _units(value: bytearray, layout: _Layout) -> Iterator[tuple[slice, bytes]]:
    """Each enciphered unit of the Pixel Data value: (slice, nonce label)."""
    if layout.kind == LAYOUT_FRAGMENTS:
        for offset, length in _fragments(value):
            yield slice(offset, offset + length), LABEL_FRAGMENT_NONCE
    elif layout.kind == LAYOUT_FRAMES:
        for i in range(layout.count):
            yield slice(i * layout.frame_length, (i + 1) * layout.frame_length), LABEL_FRAME_NONCE
    else:
        yield slice(0, layout.frame_length), LABEL_WHOLE_NONCE


def _apply(
    value: bytearray,
    layout: _Layout,
    key: bytes,
    nonce: bytes,
    fn: Callable[[np.ndarray, bytes, bytes], np.ndarray],
) -> int:
    """Encipher/decipher every unit of ``value`` in place; return the number of units."""
    dtype = _UNIT_DTYPE[layout.unit] if layout.kind != LAYOUT_FRAGMENTS else _UNIT_DTYPE[UNIT_U8]
    count = 0
    for index, (sl, label) in enumerate(_units(value, layout)):
        unit_nonce = _common.derive_nonce(label, nonce, index)
        arr = np.frombuffer(bytes(value[sl]), dtype)
        value[sl] = fn(arr, key, unit_nonce).astype(dtype, copy=False).tobytes()
        count += 1
    return count


def _pixel_digest(value: bytes | bytearray, unit: int, ds: Dataset) -> bytes:
    """SHA-256 of the Pixel Data value as a little endian transfer syntax encodes it,
    followed by the top-level elements after Pixel Data except Data Set Trailing Padding.

    Trailing padding has no meaning and PACS drop it (Orthanc does), so it has its own
    digest, checked only when the padding is still present (:func:`_padding_digest`).
    """
    if unit == UNIT_U16BE and len(value) % 2 == 0:
        value = np.frombuffer(bytes(value), ">u2").astype("<u2").tobytes()
    h = hashlib.sha256(value)
    for elem in ds:
        if elem.tag > PIXEL_DATA and elem.tag != TRAILING_PADDING:
            if isinstance(elem.value, (bytes, bytearray)):
                raw = bytes(elem.value)  # exact length: a cut pad byte still shows
            else:
                single = Dataset()
                single.add(elem)
                raw = _serialize(single)
            h.update(struct.pack(">II", int(elem.tag), len(raw)) + raw)
    return h.digest()


def _padding_digest(ds: Dataset) -> bytes:
    """SHA-256 of the Data Set Trailing Padding value, or 32 zero bytes without one."""
    if TRAILING_PADDING not in ds:
        return bytes(32)
    value = ds[TRAILING_PADDING].value
    return hashlib.sha256(value if isinstance(value, bytes) else b"").digest()


# --------------------------------------------------------------------------- blob


@dataclass(frozen=True)
class _Blob:
    key: bytes
    nonce: bytes
    pixel_sha256: bytes
    padding_sha256: bytes
    layout: _Layout
    originals: bytes
    meta_originals: bytes

    def encode(self) -> bytes:
        head = _BLOB_HEADER.pack(
            _common.SCANFORT_MAGIC,
            FORMAT_VERSION,
            KIND_DICOM,
            0,
            self.key,
            self.nonce,
            self.pixel_sha256,
            self.padding_sha256,
            self.layout.kind,
            self.layout.unit,
            0,
            self.layout.count,
            self.layout.frame_length,
            len(self.originals),
        )
        return head + self.originals + _U32.pack(len(self.meta_originals)) + self.meta_originals

    @classmethod
    def decode(cls, raw: bytes) -> _Blob:
        # The blob was authenticated by age: anything unexpected is still reported as
        # an authentication failure (one error whatever was touched).
        try:
            (
                magic,
                version,
                kind,
                reserved,
                key,
                nonce,
                digest,
                padding,
                lkind,
                unit,
                reserved2,
                count,
                frame_length,
                n_orig,
            ) = _BLOB_HEADER.unpack_from(raw, 0)
            pos = _BLOB_HEADER.size
            originals = raw[pos : pos + n_orig]
            pos += n_orig
            (n_meta,) = _U32.unpack_from(raw, pos)
            pos += _U32.size
            meta = raw[pos : pos + n_meta]
        except struct.error:
            raise AuthenticationError() from None
        if (
            magic != _common.SCANFORT_MAGIC
            or version != FORMAT_VERSION
            or kind != KIND_DICOM
            or reserved
            or reserved2
            or lkind not in (LAYOUT_FRAMES, LAYOUT_WHOLE, LAYOUT_FRAGMENTS)
            or unit not in _UNIT_DTYPE
            or len(originals) != n_orig
            or len(meta) != n_meta
            or pos + n_meta != len(raw)
        ):
            raise AuthenticationError()
        layout = _Layout(lkind, unit, count, frame_length)
        return cls(key, nonce, digest, padding, layout, originals, meta)


# --------------------------------------------------------------------------- unprotect


def _block_elements(ds: Dataset) -> tuple[Any, str, bytes]:
    block = _find_block(ds)
    if block is None:
        raise FormatError("not a scanfort protected file")
    try:
        marker = _text(block[ELEM_MARKER].value)
        sealed = _bytes(block[ELEM_BLOB].value)
        length = _uint32(block[ELEM_BLOB_LENGTH].value)
    except KeyError:
        raise AuthenticationError() from None
    # DICOM pads values to an even length; the age file is the first ``length`` bytes.
    if not len(sealed) - 1 <= length <= len(sealed):
        raise AuthenticationError()
    return block, marker, sealed[:length]


def _check_complete(ds: Dataset) -> None:
    """Raise if the last element is shorter than its declared length (a cut file).

    pydicom accepts a last value cut short; its raw element still knows the length.
    """
    tags = list(ds.keys())
    if not tags:
        raise AuthenticationError()
    last = ds.get_item(tags[-1])
    length = getattr(last, "length", None)
    value = getattr(last, "value", None)
    if (
        isinstance(length, int)
        and length != _UNDEFINED_LENGTH
        and isinstance(value, (bytes, bytearray))
        and len(value) != length
    ):
        raise AuthenticationError()


def unprotect_v1(src: BinaryIO, dst: BinaryIO, identities: Sequence[str]) -> UnprotectInfo:
    """Restore the original dataset of a DICOM-mode input; see :func:`cipher.unprotect`."""
    raw = src.read()
    try:
        ds = _read(raw)
        _check_complete(ds)
        pixel = ds[PIXEL_DATA]
        value = bytearray(pixel.value)
    except AuthenticationError:
        raise
    except Exception:
        raise AuthenticationError() from None
    block, marker, sealed = _block_elements(ds)
    if marker != FORMAT_MARKER:
        raise AuthenticationError()
    blob = _Blob.decode(_common.age_decrypt_bytes(sealed, identities))
    if not hmac.compare_digest(_pixel_digest(value, blob.layout.unit, ds), blob.pixel_sha256):
        raise AuthenticationError()
    # Trailing padding may have been dropped (PACS do); if it is still there, it is intact.
    if TRAILING_PADDING in ds and not hmac.compare_digest(_padding_digest(ds), blob.padding_sha256):
        raise AuthenticationError()
    try:
        if _apply(value, blob.layout, blob.key, blob.nonce, chaos.decrypt) != blob.layout.count:
            raise AuthenticationError()
    except ValueError:
        raise AuthenticationError() from None
    pixel.value = bytes(value)

    creator_tag = Tag(PRIVATE_GROUP, block.block_start >> 8)
    block_tags = (ELEM_MARKER, ELEM_BLOB, ELEM_BLOB_LENGTH)
    for t in (*(block.get_tag(e) for e in block_tags), creator_tag):
        if t in ds:
            del ds[t]
    try:
        if blob.originals:
            for elem in _deserialize(blob.originals):
                ds[elem.tag] = elem
        if blob.meta_originals:
            for elem in _deserialize(blob.meta_originals):
                ds.file_meta[elem.tag] = elem
    except Exception:
        raise AuthenticationError() from None

    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=False)
    data = out.getvalue()
    dst.write(data)
    return UnprotectInfo(
        mode=DICOM_MODE,
        bytes_in=len(raw),
        bytes_out=len(data),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")) or None,
        format_version=FORMAT_VERSION,
    )


# --------------------------------------------------------------------------- inspect


def inspect_v1(src: BinaryIO) -> dict[str, Any]:
    """Describe a DICOM-mode input without a key (position restored)."""
    start = src.tell()
    try:
        raw = src.read()
    finally:
        src.seek(start)
    try:
        ds = _read(raw, defer_size=1 << 16)
    except Exception as exc:
        raise FormatError("not a scanfort protected file") from exc
    _, marker, sealed = _block_elements(ds)
    match = _MARKER_RE.fullmatch(marker)
    try:
        header = _common.parse_age_header(io.BytesIO(sealed))
        recipients: int | None = header.x25519_recipients
    except FormatError:
        recipients = None
    pixel_length = None
    with_pixels = _read(raw)
    if PIXEL_DATA in with_pixels:
        pixel_length = len(with_pixels[PIXEL_DATA].value)
    kept = {k: str(ds[k].value) for k in ROUTING_UIDS if k in ds}
    return {
        "mode": DICOM_MODE,
        "format": marker,
        "format_version": int(match.group(1)) if match else None,
        "recipients": recipients,
        "file_bytes": len(raw),
        "pixel_data_bytes": pixel_length,
        "blob_bytes": len(sealed),
        "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
        "uids": kept,
        "protected_attributes": sorted(
            keyword_for_tag(e.tag) or str(e.tag)
            for e in ds
            if e.VR in _TEXT_VRS and e.value == PLACEHOLDER_TEXT
        ),
    }
