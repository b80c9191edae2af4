"""File mode: one age v1 file whose payload is a ScanFort header and chaos ciphertext."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, BinaryIO

from cipher._common import ProtectInfo, UnprotectInfo


def looks_like_file_mode(src: BinaryIO) -> bool:
    raise NotImplementedError


def protect_file(src: BinaryIO, dst: BinaryIO, recipients: Sequence[str]) -> ProtectInfo:
    raise NotImplementedError


def unprotect_file(src: BinaryIO, dst: BinaryIO, identities: Sequence[str]) -> UnprotectInfo:
    raise NotImplementedError


def inspect_file(src: BinaryIO) -> dict[str, Any]:
    raise NotImplementedError
