"""Pieces shared by file mode and DICOM mode: result types, the age layer, nonce derivation."""

from __future__ import annotations

from dataclasses import dataclass

FILE_MODE = "file"
DICOM_MODE = "dicom"


@dataclass(frozen=True)
class ProtectInfo:
    """What :func:`cipher.protect` did (no key material, no patient attributes)."""

    mode: str
    bytes_in: int
    bytes_out: int
    sop_instance_uid: str | None = None
    format_version: int = 1
    recipients: int = 1


@dataclass(frozen=True)
class UnprotectInfo:
    """What :func:`cipher.unprotect` did (no key material, no patient attributes)."""

    mode: str
    bytes_in: int
    bytes_out: int
    sop_instance_uid: str | None = None
    format_version: int = 1
