"""DICOM mode, version 2: protecting a file (the reading side is :mod:`cipher.dicomfile`).

The source is parsed once (pydicom), its Pixel Data enciphered unit by unit, the blob built
and sealed for the recipients, the visible object written with the policy's attributes,
and then verified before anything reaches ``dst``: the visible bytes are read back the
way the streaming reader reads them (:mod:`cipher.dicomstream`, element headers only),
deciphered, and the rebuilt original compared with the source. ``cipher/SPEC.md`` §2.4 is
the byte-level definition.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable, Sequence
from typing import BinaryIO

from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from cipher import _common, dicomstream
from cipher import dicomfile as _f
from cipher._common import DICOM_MODE, ProtectInfo
from cipher.errors import (
    AuthenticationError,
    CipherError,
    FormatError,
    UnsupportedDicomError,
    VerifyError,
)
from cipher.profile import DicomPolicy, apply_policy, mark

__all__ = ["protect_dicom"]


def protect_dicom(
    src: BinaryIO,
    dst: BinaryIO,
    recipients: Sequence[str],
    policy: DicomPolicy,
    randbytes: Callable[[int], bytes] | None = None,
) -> ProtectInfo:
    """Write the DICOM-mode (v2) protection of ``src`` to ``dst``; see :func:`cipher.protect`.

    Raise :class:`NotDicomError` (not DICOM), :class:`UnsupportedDicomError` (DICOM that
    this mode cannot carry: use file mode), :class:`VerifyError` (the output does not
    restore). Nothing is written to ``dst`` unless the output restored to the input.
    """
    parsed = [str(r) for r in _common.keys.parse_recipients(recipients)]
    draw = randbytes or os.urandom
    raw = src.read()
    try:
        return _protect(raw, dst, parsed, policy, draw)
    except (CipherError, OSError):
        raise
    except Exception as exc:  # an odd dataset must be a typed refusal, never a traceback
        raise UnsupportedDicomError(
            f"DICOM mode cannot carry this file ({type(exc).__name__})") from None


def _protect(raw: bytes, dst: BinaryIO, parsed: list[str], policy: DicomPolicy,
             draw: Callable[[int], bytes]) -> ProtectInfo:
    ds, source = _f._read_source(raw)
    try:
        study_keys = _study_keys(ds, policy)
        big_endian = ds.original_encoding[1] is False
        vr = str(ds[_f.PIXEL_DATA].VR)
        layout = _f._layout(ds, source.length, vr, big_endian)
        key, nonce = _common.fresh_key_and_nonce(draw)
        pixel = memoryview(source.stream)[source.offset:source.offset + source.length]
        try:
            enciphered = _f._transform(pixel, layout, key, nonce, forward=True)
        except ValueError as exc:
            raise UnsupportedDicomError(str(exc)) from None
        if layout.kind == _f.LAYOUT_FRAGMENTS:
            layout = _f._Layout(_f.LAYOUT_FRAGMENTS, _f.UNIT_U8, len(_f._units(pixel, layout)),
                                0, len(pixel))
        original_sha256 = hashlib.sha256(raw).digest()
        blob = _f._Blob(key, nonce, original_sha256, hashlib.sha256(enciphered).digest(),
                         layout, source, _f._Blob.skeleton_of(source))

        sealed = _common.age_encrypt_bytes(blob.encode(), parsed)
        visible = _visible_file(ds, policy, enciphered, sealed, draw, big_endian)
        sop_instance_uid = str(ds.SOPInstanceUID)  # as the visible file has it
        stored_uids = _verify(visible, raw, sealed, blob)
        dst.write(visible)
    finally:
        # pydicom's datasets hold reference cycles (a private block and its dataset, a
        # multi-value and its element): emptied here, their values (the enciphered Pixel
        # Data among them) are freed now instead of at a later cyclic collection, which
        # let a worker hold a dozen files' buffers at once.
        ds.clear()
    return ProtectInfo(
        mode=DICOM_MODE,
        bytes_in=len(raw),
        bytes_out=len(visible),
        sop_instance_uid=sop_instance_uid,
        format_version=_f.FORMAT_VERSION,
        recipients=len(parsed),
        verified=True,
        policy=policy.describe(),
        study_keys=study_keys,
        source_sha256=original_sha256.hex(),
        stored_uids=stored_uids,
    )


def _study_keys(ds: Dataset, policy: DicomPolicy) -> tuple[str, ...]:
    """Keyed hashes of the study's AccessionNumber and StudyInstanceUID (none without a
    secret): what the central may learn of a study."""
    secret = policy.pseudonym_secret
    if secret is None:
        return ()
    values = (str(ds.get(k, "") or "").strip(" \x00") for k in ("AccessionNumber",
                                                                "StudyInstanceUID"))
    return tuple(secret.study_key(v) for v in values if v)


def _verify(visible: bytes, raw: bytes, sealed: bytes, blob: _f._Blob) -> tuple[str, str, str]:
    """Verify before commit: the restore a reader runs, on the bytes about to be handed
    out, with the blob still in memory; raise :class:`VerifyError` unless it gives back
    ``raw`` exactly. Returns the Study, Series and SOP Instance UIDs the visible file
    stores (read on the way).

    The visible file is read the way the gateway reads it (element headers only,
    :func:`cipher.dicomstream.scan_head`, and the value located and checked by
    :func:`cipher.dicomstream.take_value`): its block must hold this ``sealed`` blob; the
    value found there is deciphered and the original rebuilt from the skeleton, compared
    with ``raw`` piece by piece (the blob's original digest is that of ``raw``). A value
    other than the one enciphered cannot pass: each unit's decipherment is a bijection.
    """
    try:
        head = dicomstream.scan_head(io.BytesIO(visible), keep=False)
        if head.marker != _f.FORMAT_MARKER or head.sealed != sealed:
            raise AuthenticationError()
        # whole: nothing is used unless the original comes back, so the value's own
        # digest pass is left out as a whole in-memory reader may (SPEC §2.4)
        opened = dicomstream.take_value(head, blob, lambda n: io.BytesIO(), whole=True)
        try:
            for _ in opened.pieces(expected=raw):
                pass
        finally:
            opened.close()
    except (AuthenticationError, FormatError) as exc:
        raise VerifyError(type(exc).__name__) from None
    return head.study_uid, head.series_uid, head.sop_uid


def _visible_file(ds: Dataset, policy: DicomPolicy, enciphered: bytes, sealed: bytes,
                  draw: Callable[[int], bytes], big_endian: bool) -> bytes:
    result = apply_policy(ds, policy, draw)
    mark(ds, policy, result)
    # Group lengths of the source would be wrong after the changes (they are in the blob).
    for elem in list(ds):
        if elem.tag.element == 0 and elem.tag.group != 0x0002:
            del ds[elem.tag]
    ds[_f.PIXEL_DATA].value = enciphered
    meta = ds.file_meta
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian:
        # The PACS gets the same dataset inflated: deflating ciphertext gains nothing, and
        # tools that must seek in the dataset (dciodvfy) cannot in a deflated stream.
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
    block = ds.private_block(_f.PRIVATE_GROUP, _f.PRIVATE_CREATOR, create=True)
    block.add_new(_f.ELEM_MARKER, "LO", _f.FORMAT_MARKER)
    block.add_new(_f.ELEM_BLOB, "OB", sealed)
    block.add_new(_f.ELEM_BLOB_LENGTH, "UL", len(sealed))
    block.add_new(_f.ELEM_POLICY, "LO", policy.describe()[:64])
    out = io.BytesIO()
    ts = meta.TransferSyntaxUID
    ds.save_as(out, implicit_vr=ts.is_implicit_VR, little_endian=not big_endian,
               enforce_file_format=False)
    return out.getvalue()
