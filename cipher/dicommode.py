"""DICOM mode: a valid DICOM file with ciphered Pixel Data and an age blob in a private block.

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

import copy
import hashlib
import hmac
import io
import re
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np
import pydicom
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import dcmwrite, write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import generate_uid

from cipher import _common, chaos
from cipher._common import DICOM_MODE, ProtectInfo, UnprotectInfo
from cipher.errors import AuthenticationError, FormatError, NotDicomError

__all__ = [
    "DEFAULT_PROTECTED_ATTRIBUTES",
    "FORMAT_MARKER",
    "FORMAT_VERSION",
    "PRIVATE_CREATOR",
    "PRIVATE_GROUP",
    "DicomPolicy",
    "inspect_dicom",
    "is_dicom_with_pixels",
    "looks_like_dicom_mode",
    "protect_dicom",
    "unprotect_dicom",
]

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

#: Attributes replaced by default (keywords): the PS3.15 Basic Profile's patient,
#: physician, operator and institution identifiers, dates of birth, and the request
#: identifiers (accession number, study ID) that lead back to a patient.
DEFAULT_PROTECTED_ATTRIBUTES: frozenset[str] = frozenset(
    {
        # patient
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientSex",
        "PatientAge",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "MedicalRecordLocator",
        "PatientInsurancePlanCodeSequence",
        "MilitaryRank",
        "BranchOfService",
        "CountryOfResidence",
        "RegionOfResidence",
        "EthnicGroup",
        "Occupation",
        "PatientReligiousPreference",
        "PatientComments",
        "AdditionalPatientHistory",
        "ResponsiblePerson",
        "ResponsibleOrganization",
        # physicians
        "ReferringPhysicianName",
        "ReferringPhysicianAddress",
        "ReferringPhysicianTelephoneNumbers",
        "ReferringPhysicianIdentificationSequence",
        "ConsultingPhysicianName",
        "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence",
        "NameOfPhysiciansReadingStudy",
        "PhysiciansReadingStudyIdentificationSequence",
        "PhysiciansOfRecord",
        "PhysiciansOfRecordIdentificationSequence",
        "RequestingPhysician",
        "ScheduledPerformingPhysicianName",
        # operators
        "OperatorsName",
        "OperatorIdentificationSequence",
        # institution
        "InstitutionName",
        "InstitutionAddress",
        "InstitutionalDepartmentName",
        "InstitutionCodeSequence",
        "StationName",
        # request identifiers
        "AccessionNumber",
        "StudyID",
        "RequestAttributesSequence",
        "AdmissionID",
    }
)

#: The UIDs replaced by fresh ones when a policy does not keep UIDs.
ROUTING_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")

PLACEHOLDER_TEXT = "PROTECTED"
_TEXT_VRS = frozenset({"PN", "LO", "SH", "LT", "ST", "UT", "UC"})
_MARKER_RE = re.compile(r"scanfort-dicom/(\d+)")


@dataclass(frozen=True)
class DicomPolicy:
    """What DICOM mode replaces by placeholders.

    ``attributes`` are DICOM keywords (top level and inside sequences); ``keep_uids``
    keeps Study, Series and SOP Instance UIDs (routing and de-duplication keep working);
    when False they are replaced by fresh UIDs and restored on decryption.
    """

    attributes: frozenset[str] = DEFAULT_PROTECTED_ATTRIBUTES
    keep_uids: bool = True
    _tags: frozenset[BaseTag] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        attributes = frozenset(self.attributes)
        unknown = sorted(a for a in attributes if tag_for_keyword(a) is None)
        if unknown:
            raise ValueError(f"unknown DICOM keywords in policy: {', '.join(unknown)}")
        forbidden = sorted(a for a in attributes if a in {"PixelData", "SpecificCharacterSet"})
        if forbidden:
            raise ValueError(f"attributes that cannot be replaced: {', '.join(forbidden)}")
        object.__setattr__(self, "attributes", attributes)
        tags = frozenset(Tag(tag_for_keyword(a) or 0) for a in attributes)
        object.__setattr__(self, "_tags", tags)

    @property
    def tags(self) -> frozenset[BaseTag]:
        """The replaced attributes as tags."""
        return self._tags


# --------------------------------------------------------------------------- reading


def _read(raw: bytes, **kwargs: Any) -> Dataset:
    return pydicom.dcmread(io.BytesIO(raw), force=False, **kwargs)


def _dicom_ok(ds: Dataset) -> bool:
    meta = getattr(ds, "file_meta", None)
    return (
        meta is not None
        and "TransferSyntaxUID" in meta
        and "SOPClassUID" in ds
        and "SOPInstanceUID" in ds
    )


def is_dicom_with_pixels(src: BinaryIO) -> bool:
    """True if ``src`` is a DICOM Part 10 file with ``(7FE0,0010) Pixel Data``.

    The Pixel Data value is not read (deferred); the stream position is restored. This
    is the ``auto`` decision: DICOM mode when True, file mode otherwise.
    """
    start = src.tell()
    try:
        ds = pydicom.dcmread(src, force=False, defer_size=256)
        return _dicom_ok(ds) and PIXEL_DATA in ds
    except Exception:  # anything pydicom cannot parse is simply "not DICOM"
        return False
    finally:
        src.seek(start)


def _find_block(ds: Dataset) -> Any | None:
    try:
        return ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
    except KeyError:
        return None


def looks_like_dicom_mode(src: BinaryIO) -> bool:
    """True if ``src`` parses as DICOM and carries the ScanFort private block (position kept)."""
    start = src.tell()
    try:
        ds = pydicom.dcmread(src, force=False, stop_before_pixels=True, defer_size=256)
        return _find_block(ds) is not None
    except Exception:
        return False
    finally:
        src.seek(start)


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


# --------------------------------------------------------------------------- placeholders


def _placeholder(elem: DataElement) -> Any:
    if elem.VR == "SQ":
        return DicomSequence([])
    if elem.VR in _TEXT_VRS:
        return PLACEHOLDER_TEXT
    if elem.VR in {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}:
        return b""
    return ""


def _is_empty(elem: DataElement) -> bool:
    return elem.is_empty


def _contains(ds: Dataset, tags: frozenset[BaseTag]) -> bool:
    for elem in ds:
        if elem.tag in tags and not _is_empty(elem):
            return True
        if elem.VR == "SQ" and any(_contains(item, tags) for item in elem.value):
            return True
    return False


def _replace_in(ds: Dataset, tags: frozenset[BaseTag]) -> None:
    for elem in list(ds):
        if elem.tag in tags and not _is_empty(elem):
            elem.value = _placeholder(elem)
        elif elem.VR == "SQ":
            for item in elem.value:
                _replace_in(item, tags)


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


# --------------------------------------------------------------------------- protect


def protect_dicom(
    src: BinaryIO,
    dst: BinaryIO,
    recipients: Sequence[str],
    policy: DicomPolicy,
    randbytes: Callable[[int], bytes] | None = None,
) -> ProtectInfo:
    """Write the DICOM-mode protection of ``src`` to ``dst``; see :func:`cipher.protect`."""
    parsed = [str(r) for r in _common.keys.parse_recipients(recipients)]
    raw = src.read()
    try:
        ds = _read(raw)
        ok = _dicom_ok(ds) and PIXEL_DATA in ds
    except Exception as exc:
        raise NotDicomError("not a DICOM file with pixel data") from exc
    if not ok:
        raise NotDicomError("not a DICOM file with pixel data")
    if _find_block(ds) is not None:
        raise FormatError("already a scanfort protected file")

    # 1. identifying attributes: keep the originals of every changed top-level element.
    originals = Dataset()
    if "SpecificCharacterSet" in ds:
        # Originals are serialized with the file's character set, so names round-trip.
        originals.add(copy.deepcopy(ds["SpecificCharacterSet"]))
    tags = policy.tags
    for elem in list(ds):
        if elem.tag == PIXEL_DATA or elem.tag.group == 0x0002:
            continue
        hit = (elem.tag in tags and not _is_empty(elem)) or (
            elem.VR == "SQ" and any(_contains(item, tags) for item in elem.value)
        )
        if hit:
            originals.add(copy.deepcopy(elem))
    meta_originals = Dataset()
    if not policy.keep_uids:
        for keyword in ROUTING_UIDS:
            if keyword in ds and ds[keyword].tag not in originals:
                originals.add(copy.deepcopy(ds[keyword]))
                setattr(ds, keyword, generate_uid())
        meta = ds.file_meta
        if "MediaStorageSOPInstanceUID" in meta:
            meta_originals.add(copy.deepcopy(meta["MediaStorageSOPInstanceUID"]))
            meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    _replace_in(ds, tags)

    # 2. pixel data: encipher in place, same length and VR.
    elem = ds[PIXEL_DATA]
    value = bytearray(elem.value)
    encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
    if encapsulated:
        try:
            count = sum(1 for _ in _fragments(value))
        except ValueError as exc:
            raise NotDicomError("malformed encapsulated pixel data") from exc
        layout = _Layout(LAYOUT_FRAGMENTS, UNIT_U8, count, 0)
    else:
        layout = _native_layout(ds, elem, len(value))
    key, nonce = _common.fresh_key_and_nonce(randbytes)
    _apply(value, layout, key, nonce, chaos.encrypt)
    elem.value = bytes(value)
    digest = _pixel_digest(value, layout.unit, ds)

    # 3. the blob, age-encrypted, in the private block.
    originals_raw = _serialize(originals) if len(originals) else b""
    meta_raw = _serialize(meta_originals) if len(meta_originals) else b""
    padding = _padding_digest(ds)
    blob = _Blob(key, nonce, digest, padding, layout, originals_raw, meta_raw).encode()
    sealed = _common.age_encrypt_bytes(blob, parsed)
    block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(ELEM_MARKER, "LO", FORMAT_MARKER)
    block.add_new(ELEM_BLOB, "OB", sealed)
    block.add_new(ELEM_BLOB_LENGTH, "UL", len(sealed))

    out = io.BytesIO()
    dcmwrite(out, ds, enforce_file_format=False)
    data = out.getvalue()
    dst.write(data)
    return ProtectInfo(
        mode=DICOM_MODE,
        bytes_in=len(raw),
        bytes_out=len(data),
        sop_instance_uid=str(ds.SOPInstanceUID),
        format_version=FORMAT_VERSION,
        recipients=len(parsed),
    )


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


def unprotect_dicom(src: BinaryIO, dst: BinaryIO, identities: Sequence[str]) -> UnprotectInfo:
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


def inspect_dicom(src: BinaryIO) -> dict[str, Any]:
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
