"""Pieces shared by file mode and DICOM mode: result types, the age layer, nonce derivation.

Only this module and :mod:`cipher.keys` touch pyrage; only the format modules touch
:mod:`cipher.chaos`.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol

import pyrage

from cipher import keys
from cipher.errors import AuthenticationError, NoIdentityMatchError

FILE_MODE = "file"
DICOM_MODE = "dicom"

#: First bytes of every age v1 file (the age envelope's own version marker).
AGE_MAGIC = b"age-encryption.org/v1\n"
#: First bytes of every ScanFort payload header (file mode) and DICOM blob (DICOM mode).
SCANFORT_MAGIC = b"SCANFORT"

IMAGE_KEY_SIZE = 32
NONCE_SIZE = 16

# age's payload is a STREAM of 64 KiB chunks, each with a 16-byte Poly1305 tag, after a
# 16-byte nonce; inspect uses this to derive the payload size without a key.
AGE_CHUNK = 64 * 1024
AGE_TAG = 16
AGE_PAYLOAD_NONCE = 16

# pyrage reports "no identity could unwrap a stanza" with this text; everything else that
# goes wrong while decrypting is damage, reported as one AuthenticationError.
_NO_MATCH_TEXT = "no matching keys"


@dataclass(frozen=True)
class ProtectInfo:
    """What :func:`cipher.protect` did (no key material, no patient attributes)."""

    mode: str
    bytes_in: int
    bytes_out: int
    sop_instance_uid: str | None = None
    format_version: int = 1
    recipients: int = 1
    #: True once the protecting code proved the output restores to the input (verify
    #: before commit); :func:`cipher.protect` raises rather than return False.
    verified: bool = False
    #: DICOM mode: the policy and profile options that were applied.
    policy: str | None = None
    #: DICOM mode with a pseudonym secret: keyed hashes (``PseudonymSecret.study_key``) of
    #: the study's AccessionNumber and StudyInstanceUID, for "did this exam arrive?".
    study_keys: tuple[str, ...] = ()
    #: SHA-256 (hex) of the ``bytes_in`` bytes read from the source, when the protecting
    #: code hashed them anyway (DICOM mode: the blob's original digest), so that a caller
    #: needing it does not hash the source a second time; None when not computed.
    source_sha256: str | None = None
    #: DICOM mode: Study, Series and SOP Instance UIDs as the protected object stores them
    #: (pseudonymised unless the policy retains UIDs; "" where absent).
    stored_uids: tuple[str, str, str] | None = None


@dataclass(frozen=True)
class UnprotectInfo:
    """What :func:`cipher.unprotect` did (no key material, no patient attributes)."""

    mode: str
    bytes_in: int
    bytes_out: int
    sop_instance_uid: str | None = None
    format_version: int = 1


def fresh_key_and_nonce(
    randbytes: Callable[[int], bytes] | None = None,
) -> tuple[bytes, bytes]:
    """A fresh random image key and nonce for the chaos layer (one pair per protected file).

    The OS CSPRNG; tests pass ``randbytes`` for reproducible ciphertexts.
    """
    draw = randbytes or os.urandom
    return draw(IMAGE_KEY_SIZE), draw(NONCE_SIZE)


def derive_nonce(label: bytes, nonce: bytes, index: int) -> bytes:
    """Nonce of unit ``index`` (a chunk, a frame, a fragment) under the file's base nonce.

    ``SHA-256(label || base_nonce || uint64_be(index))[:16]``: each unit is enciphered
    separately because the chaos cipher diffuses over the whole array it is given, and
    every unit of a file must use a distinct nonce under the file's single image key.
    """
    digest = hashlib.sha256(label + nonce + struct.pack(">Q", index)).digest()
    return digest[:NONCE_SIZE]


def peek(src: BinaryIO, size: int, offset: int = 0) -> bytes:
    """Read ``size`` bytes at ``offset`` from the current position, restoring the position."""
    start = src.tell()
    try:
        if offset:
            src.seek(offset, io.SEEK_CUR)
        return read_exact(src, size, allow_short=True)
    finally:
        src.seek(start)


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def read_exact(src: Readable, size: int, allow_short: bool = False) -> bytes:
    """Read ``size`` bytes, looping over short reads; ``allow_short`` accepts EOF first."""
    parts: list[bytes] = []
    left = size
    while left > 0:
        part = src.read(left)
        if not part:
            break
        parts.append(part)
        left -= len(part)
    data = b"".join(parts)
    if left and not allow_short:
        raise AuthenticationError()
    return data


def write_all(dst: BinaryIO, data: bytes) -> int:
    """Write all of ``data`` (a raw stream may take it in several writes); return its size."""
    view = memoryview(data)
    while view:
        n = dst.write(view)
        view = view[len(view) if n is None else n:]
    return len(data)


class CountingWriter(io.RawIOBase):
    """A write-only raw stream forwarding to ``dst`` and counting bytes."""

    def __init__(self, dst: BinaryIO) -> None:
        super().__init__()
        self._dst = dst
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, b: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._dst.write(b)
        n = len(b) if n is None else n
        self.count += n
        return n


def age_encrypt(reader: io.RawIOBase, dst: BinaryIO, recipients: Sequence[str]) -> int:
    """Stream ``reader`` into an age v1 file on ``dst``; return the bytes written."""
    parsed = keys.parse_recipients(recipients)
    counter = CountingWriter(dst)
    pyrage.encrypt_io(reader, counter, parsed)
    return counter.count


def age_decrypt(src: BinaryIO, writer: io.RawIOBase, identities: Sequence[str]) -> None:
    """Stream the payload of the age file on ``src`` into ``writer``.

    Raise :class:`NoIdentityMatchError` when no identity unwraps a stanza and
    :class:`AuthenticationError` for any other failure of the age layer. Exceptions raised
    by ``writer`` itself (e.g. a bad inner header) propagate unchanged.
    """
    parsed = keys._parse_identity_list(identities)
    start = src.tell()
    try:
        pyrage.decrypt_io(src, writer, parsed)
    except (pyrage.DecryptError, OSError, ValueError) as exc:
        if _NO_MATCH_TEXT in str(exc).lower() and _has_x25519_stanza(src, start):
            raise NoIdentityMatchError() from None
        raise AuthenticationError() from None


def _has_x25519_stanza(src: BinaryIO, start: int) -> bool:
    """ScanFort writes X25519 stanzas only: a header without one was damaged.

    (A damaged stanza *body* stays indistinguishable from a stanza for someone else.)
    """
    from cipher.errors import FormatError

    try:
        src.seek(start)
        return parse_age_header(src).x25519_recipients > 0
    except (FormatError, OSError, ValueError):
        return False


def age_decrypt_bytes(blob: bytes, identities: Sequence[str]) -> bytes:
    """Decrypt a small in-memory age file (the DICOM-mode blob)."""
    out = io.BytesIO()
    age_decrypt(io.BytesIO(blob), out, identities)  # type: ignore[arg-type]
    return out.getvalue()


def age_encrypt_bytes(data: bytes, recipients: Sequence[str]) -> bytes:
    """Encrypt a small in-memory payload to an age file (the DICOM-mode blob)."""
    return bytes(pyrage.encrypt(data, keys.parse_recipients(recipients)))


@dataclass(frozen=True)
class AgeHeader:
    """The parts of an age v1 header that are visible without a key."""

    length: int  # bytes up to and including the MAC line's newline
    stanza_types: tuple[str, ...]

    @property
    def x25519_recipients(self) -> int:
        return sum(1 for t in self.stanza_types if t == "X25519")


_MAX_AGE_HEADER = 1 << 20


def parse_age_header(src: BinaryIO) -> AgeHeader:
    """Parse the textual age v1 header at the current position (position restored).

    Raise :class:`cipher.errors.FormatError` if it is not an age v1 header.
    """
    from cipher.errors import FormatError

    start = src.tell()
    try:
        first = src.readline(len(AGE_MAGIC) + 1)
        if first != AGE_MAGIC:
            raise FormatError("not an age v1 file")
        length = len(first)
        types: list[str] = []
        while length < _MAX_AGE_HEADER:
            line = src.readline(4096)
            if not line.endswith(b"\n"):
                raise FormatError("truncated age header")
            length += len(line)
            if line.startswith(b"--- "):
                return AgeHeader(length=length, stanza_types=tuple(types))
            if line.startswith(b"-> "):
                args = line[3:].split()
                types.append(args[0].decode("ascii", "replace") if args else "")
        raise FormatError("age header too long")
    finally:
        src.seek(start)


def age_payload_plaintext_size(payload_size: int) -> int:
    """Plaintext size of an age payload of ``payload_size`` bytes (nonce + STREAM chunks)."""
    body = payload_size - AGE_PAYLOAD_NONCE
    if body < AGE_TAG:
        return 0
    chunks = -(-body // (AGE_CHUNK + AGE_TAG))
    return body - chunks * AGE_TAG
