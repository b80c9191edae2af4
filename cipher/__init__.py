"""Protected scans: the chaos cipher inside a standard age envelope.

The public API is small (streams in, streams out; no paths, network, logging or config):

- :func:`protect` / :func:`unprotect` — file mode (an age v1 file) or DICOM mode (a valid
  DICOM file with ciphered Pixel Data, placeholder patient attributes and an age blob in a
  private block); :func:`unprotect` recognises the mode by itself.
- :func:`inspect` — what a protected file is, without any key.
- :func:`is_dicom_with_pixels` — the ``auto`` mode decision.
- :mod:`cipher.keys` — age X25519 identities and recipients.
- :mod:`cipher.errors` — the error hierarchy.

``cipher/SPEC.md`` ("Protected formats") is the byte-level definition.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO

from cipher import fileformat, keys
from cipher._common import DICOM_MODE, FILE_MODE, ProtectInfo, UnprotectInfo
from cipher.errors import (
    AuthenticationError,
    CipherError,
    FormatError,
    InvalidIdentityError,
    InvalidRecipientError,
    NoIdentityMatchError,
    NotDicomError,
    UnsupportedDicomError,
    VerifyError,
)

if TYPE_CHECKING:
    from cipher.profile import DicomPolicy

# DICOM mode (and with it pydicom, ~20 MB of a process) is imported on first use: the
# agent's protect workers for file-mode destinations never load it.
_DICOM_NAMES = {"DicomPolicy": "cipher.profile", "dicom_mode_refusal": "cipher.dicomfile"}


def __getattr__(name: str) -> Any:
    if name in _DICOM_NAMES:
        import importlib

        return getattr(importlib.import_module(_DICOM_NAMES[name]), name)
    raise AttributeError(f"module 'cipher' has no attribute {name!r}")


__all__ = [
    "DICOM_MODE",
    "FILE_MODE",
    "AuthenticationError",
    "CipherError",
    "DicomPolicy",
    "FormatError",
    "InvalidIdentityError",
    "InvalidRecipientError",
    "NoIdentityMatchError",
    "NotDicomError",
    "ProtectInfo",
    "UnprotectInfo",
    "UnsupportedDicomError",
    "VerifyError",
    "detect_mode",
    "dicom_mode_refusal",
    "inspect",
    "is_dicom_with_pixels",
    "keys",
    "protect",
    "unprotect",
]


def protect(
    src: BinaryIO,
    dst: BinaryIO,
    recipients: Sequence[str],
    mode: str = FILE_MODE,
    policy: DicomPolicy | None = None,
) -> ProtectInfo:
    """Protect ``src`` for ``recipients`` (``age1…`` strings), writing to ``dst``.

    ``mode`` is ``"file"`` (any bytes, streamed) or ``"dicom"`` (a DICOM file with Pixel
    Data; raises :class:`NotDicomError` otherwise, :class:`UnsupportedDicomError` for DICOM
    that DICOM mode cannot carry). ``policy`` applies to DICOM mode only. Callers wanting
    "auto" call :func:`is_dicom_with_pixels` first and fall back to file mode on
    :class:`NotDicomError`. Every protection proves its output restores to the input
    before returning (``ProtectInfo.verified``; :class:`VerifyError` otherwise). ``dst``
    receives output progressively: write it to a temporary file and rename on success.
    """
    if mode == FILE_MODE:
        return fileformat.protect_file(src, dst, recipients)
    if mode == DICOM_MODE:
        from cipher import dicomprotect, profile

        return dicomprotect.protect_dicom(src, dst, recipients, policy or profile.DicomPolicy())
    raise ValueError(f"mode must be {FILE_MODE!r} or {DICOM_MODE!r}, not {mode!r}")


def is_dicom_with_pixels(src: BinaryIO) -> bool:
    """Whether ``src`` is a DICOM file with Pixel Data (the ``auto`` mode decision)."""
    from cipher import dicommode

    return dicommode.is_dicom_with_pixels(src)


def detect_mode(src: BinaryIO) -> str:
    """Return ``"file"`` or ``"dicom"`` for a protected input (stream position restored).

    Raise :class:`FormatError` if the input is neither.
    """
    if fileformat.looks_like_file_mode(src):
        return FILE_MODE
    from cipher import dicommode

    if dicommode.looks_like_dicom_mode(src):
        return DICOM_MODE
    raise FormatError("not a scanfort protected file")


def unprotect(src: BinaryIO, dst: BinaryIO, identities: Sequence[str]) -> UnprotectInfo:
    """Remove both layers of a protected file, writing the original to ``dst``.

    ``identities`` are ``AGE-SECRET-KEY-1…`` strings. Raise :class:`NoIdentityMatchError`,
    :class:`AuthenticationError` (any damage, same message) or :class:`FormatError`.
    In file mode ``dst`` may have received a prefix of the output before a truncation or
    tamper is detected at the end: never use ``dst`` unless this function returned.
    """
    mode = detect_mode(src)
    if mode == FILE_MODE:
        return fileformat.unprotect_file(src, dst, identities)
    from cipher import dicommode

    return dicommode.unprotect_dicom(src, dst, identities)


def inspect(src: BinaryIO) -> dict[str, Any]:
    """Describe a protected file without any key (a JSON-ready dict).

    Keys: ``mode``, ``format_version``, ``recipients``, sizes, and for DICOM mode the
    kept UIDs. Raise :class:`FormatError` if the input is not a protected file.
    """
    mode = detect_mode(src)
    if mode == FILE_MODE:
        return fileformat.inspect_file(src)
    from cipher import dicommode

    return dicommode.inspect_dicom(src)
