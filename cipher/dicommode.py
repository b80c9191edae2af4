"""DICOM mode: recognising protected DICOM files and reading either version.

Version 2 (:mod:`cipher.dicomfile`) is what ScanFort writes; version 1
(:mod:`cipher.dicom_v1`) files still decrypt. Readers funnel every failure into the
typed errors of :mod:`cipher.errors`: no input makes them raise anything else.
"""

from __future__ import annotations

import io
from typing import Any, BinaryIO

import pydicom

from cipher import dicomfile
from cipher._common import UnprotectInfo
from cipher.errors import AuthenticationError, CipherError, FormatError

__all__ = ["inspect_dicom", "is_dicom_with_pixels", "looks_like_dicom_mode", "unprotect_dicom"]

PIXEL_DATA = 0x7FE00010



def is_dicom_with_pixels(src: BinaryIO) -> bool:
    """True if ``src`` is a DICOM Part 10 file with ``(7FE0,0010) Pixel Data``.

    The Pixel Data value is not read (deferred); the stream position is restored. This
    is the ``auto`` decision: DICOM mode when True, file mode otherwise.
    """
    start = src.tell()
    try:
        ds = pydicom.dcmread(src, force=False, defer_size=256)
        meta = getattr(ds, "file_meta", None)
        return (meta is not None and "TransferSyntaxUID" in meta and "SOPClassUID" in ds
                and "SOPInstanceUID" in ds and PIXEL_DATA in ds)
    except Exception:  # anything pydicom cannot parse is simply "not DICOM"
        return False
    finally:
        src.seek(start)


def looks_like_dicom_mode(src: BinaryIO) -> bool:
    """True if ``src`` parses as DICOM and carries the ScanFort private block (position kept)."""
    start = src.tell()
    try:
        ds = pydicom.dcmread(src, force=False, stop_before_pixels=True, defer_size=256)
        return dicomfile._find_block(ds) is not None
    except Exception:
        return False
    finally:
        src.seek(start)


def unprotect_dicom(src: BinaryIO, dst: BinaryIO, identities: Any) -> UnprotectInfo:
    """Restore the original of a DICOM-mode input (v2: byte for byte; v1: as v1 did).

    Version 2 writes ``dst`` progressively and checks the SHA-256 at the end: keep
    ``dst`` only when this returns (as for file mode).
    """
    start = src.tell()
    size = src.seek(0, io.SEEK_END) - start
    src.seek(start)
    ds, marker, sealed = dicomfile._parse_visible(src)
    try:
        if marker == dicomfile.FORMAT_MARKER:
            return dicomfile.unprotect_v2(ds, sealed, size, dst, identities)
        from cipher import dicom_v1  # (with numpy) only for a file of the first version

        if marker == dicom_v1.FORMAT_MARKER:
            src.seek(start)
            return dicom_v1.unprotect_v1(src, dst, identities)
    except CipherError:
        raise
    except Exception:  # a hostile file must never escape as a library traceback
        raise AuthenticationError() from None
    raise AuthenticationError()


def inspect_dicom(src: BinaryIO) -> dict[str, Any]:
    """Describe a DICOM-mode input without a key (position restored)."""
    start = src.tell()
    try:
        raw = src.read()
    finally:
        src.seek(start)
    ds, marker, sealed = dicomfile._parse_visible(io.BytesIO(raw))
    try:
        if marker == dicomfile.FORMAT_MARKER:
            return dicomfile.inspect_v2(ds, sealed, len(raw))
        from cipher import dicom_v1  # (with numpy) only for a file of the first version

        if marker == dicom_v1.FORMAT_MARKER:
            return dicom_v1.inspect_v1(io.BytesIO(raw))
    except CipherError:
        raise
    except Exception:
        raise FormatError("a damaged scanfort protected file") from None
    raise FormatError(f"unsupported scanfort DICOM format {marker[:40]!r}")
