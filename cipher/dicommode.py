"""DICOM mode: a valid DICOM file with ciphered Pixel Data and an age blob in a private block."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

from cipher._common import ProtectInfo, UnprotectInfo

DEFAULT_PROTECTED_ATTRIBUTES: frozenset[str] = frozenset()


@dataclass(frozen=True)
class DicomPolicy:
    """Which attributes DICOM mode replaces by placeholders (keywords), and UID handling."""

    attributes: frozenset[str] = DEFAULT_PROTECTED_ATTRIBUTES
    keep_uids: bool = True


def is_dicom_with_pixels(src: BinaryIO) -> bool:
    raise NotImplementedError


def looks_like_dicom_mode(src: BinaryIO) -> bool:
    raise NotImplementedError


def protect_dicom(
    src: BinaryIO, dst: BinaryIO, recipients: Sequence[str], policy: DicomPolicy
) -> ProtectInfo:
    raise NotImplementedError


def unprotect_dicom(src: BinaryIO, dst: BinaryIO, identities: Sequence[str]) -> UnprotectInfo:
    raise NotImplementedError


def inspect_dicom(src: BinaryIO) -> dict[str, Any]:
    raise NotImplementedError
