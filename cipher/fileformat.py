"""File mode: one age v1 file whose payload is a ScanFort header and chaos ciphertext.

Layout of the age payload (``cipher/SPEC.md``, "File mode"): a 64-byte header
(``SCANFORT``, version 1, kind ``F``, chunk size, image key, base nonce) then the content
cut into chunks of ``chunk_size`` bytes, each enciphered by the chaos cipher as a uint8
array under its own derived nonce. age authenticates everything (header, chunk order,
end of stream); the chaos layer adds the image-level cipher. Memory is bounded by the
chunk size: the input is read, enciphered and handed to age one chunk at a time.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from cipher import _common, chaos
from cipher._common import FILE_MODE, ProtectInfo, UnprotectInfo
from cipher.errors import FormatError, VerifyError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "inspect_file",
    "looks_like_file_mode",
    "protect_file",
    "unprotect_file",
]

FORMAT_VERSION = 1
KIND_FILE = 0x46  # "F"
HEADER_SIZE = 64
_HEADER = struct.Struct(">8sBBHI32s16s")  # magic, version, kind, reserved, chunk, key, nonce
assert _HEADER.size == HEADER_SIZE

DEFAULT_CHUNK_SIZE = 1 << 20  # 1 MiB: peak memory is a small multiple of this
MAX_CHUNK_SIZE = 64 << 20  # decryptors refuse larger chunks (bounded memory on hostile input)

#: Label of the per-chunk nonce derivation (see :func:`cipher._common.derive_nonce`).
LABEL_CHUNK_NONCE = b"scanfort file v1 chunk"


def _encode_header(chunk_size: int, key: bytes, nonce: bytes) -> bytes:
    return _HEADER.pack(
        _common.SCANFORT_MAGIC, FORMAT_VERSION, KIND_FILE, 0, chunk_size, key, nonce
    )


def _decode_header(raw: bytes) -> tuple[int, bytes, bytes]:
    magic, version, kind, reserved, chunk_size, key, nonce = _HEADER.unpack(raw)
    if magic != _common.SCANFORT_MAGIC or kind != KIND_FILE:
        # A valid age file that is not ours (the age layer already authenticated it).
        raise FormatError("an age file, but not a scanfort protected file")
    if version != FORMAT_VERSION:
        raise FormatError(f"unsupported scanfort file format version {version}")
    if reserved != 0 or not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise FormatError("invalid scanfort file header")
    return chunk_size, key, nonce


#: Inputs up to this size are enciphered in memory and sealed by age in one call: same
#: bytes as the stream, without age pulling the payload through Python callbacks 64 KiB
#: at a time. Larger inputs are streamed (memory bounded by the chunk size).
IN_MEMORY_MAX = 8 << 20


def _seal_chunk(plain: bytes | memoryview, key: bytes, chunk_nonce: bytes) -> bytes:
    """The chaos ciphertext of one chunk, proven to decipher back (verify before commit).

    The check costs one more pass of the cipher; it catches a faulty kernel or memory
    error before the ciphertext is sealed by age and the original possibly deleted.
    """
    ct = bytes(chaos.encrypt_bytes(plain, key, chunk_nonce))
    if chaos.decrypt_bytes(ct, key, chunk_nonce) != plain:  # byte buffers: a memcmp
        raise VerifyError("chunk does not decipher to its plaintext")
    return ct


def _encipher(plain: memoryview, key: bytes, nonce: bytes, chunk_size: int,
              first_index: int = 0) -> bytes:
    """The chaos ciphertext of ``plain`` cut into chunks, numbered from ``first_index``."""
    out: list[bytes] = []
    for index, start in enumerate(range(0, len(plain), chunk_size), first_index):
        chunk_nonce = _common.derive_nonce(LABEL_CHUNK_NONCE, nonce, index)
        out.append(_seal_chunk(plain[start:start + chunk_size], key, chunk_nonce))
    return b"".join(out)


class _Prefixed:
    """``prefix`` (already read from ``src``), then the rest of ``src``."""

    def __init__(self, prefix: bytes, src: BinaryIO) -> None:
        self._prefix = memoryview(prefix)
        self._src = src

    def read(self, n: int = -1) -> bytes:
        if self._prefix:
            take = len(self._prefix) if n < 0 else n
            part = bytes(self._prefix[:take])
            self._prefix = self._prefix[take:]
            return part
        return self._src.read(n)


class _EncryptingReader(io.RawIOBase):
    """Raw stream that yields the age payload: header, then enciphered chunks of ``src``."""

    def __init__(
        self, src: _common.Readable, key: bytes, nonce: bytes, chunk_size: int,
        header: bytes
    ) -> None:
        super().__init__()
        self._src = src
        self._key = key
        self._nonce = nonce
        self._chunk_size = chunk_size
        self._pending = memoryview(header)
        self._index = 0
        self._eof = False
        self.bytes_in = 0

    def readable(self) -> bool:
        return True

    def _refill(self) -> None:
        plain = _common.read_exact(self._src, self._chunk_size, allow_short=True)
        if not plain:
            self._eof = True
            return
        self.bytes_in += len(plain)
        chunk_nonce = _common.derive_nonce(LABEL_CHUNK_NONCE, self._nonce, self._index)
        self._index += 1
        self._pending = memoryview(_seal_chunk(plain, self._key, chunk_nonce))

    def readinto(self, b: Any) -> int:
        while not self._pending and not self._eof:
            self._refill()
        n = min(len(b), len(self._pending))
        b[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


class _DecryptingWriter(io.RawIOBase):
    """Raw stream that receives the authenticated age payload and writes the plaintext."""

    def __init__(self, dst: BinaryIO) -> None:
        super().__init__()
        self._dst = dst
        self._buf = bytearray()
        self._header: tuple[int, bytes, bytes] | None = None
        self._index = 0
        self.bytes_out = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._buf += b
        if self._header is None:
            if len(self._buf) < HEADER_SIZE:
                return len(b)
            self._header = _decode_header(bytes(self._buf[:HEADER_SIZE]))
            del self._buf[:HEADER_SIZE]
        chunk_size = self._header[0]
        while len(self._buf) >= chunk_size:
            self._emit(bytes(self._buf[:chunk_size]))
            del self._buf[:chunk_size]
        return len(b)

    def _emit(self, ct: bytes) -> None:
        assert self._header is not None
        _, key, nonce = self._header
        chunk_nonce = _common.derive_nonce(LABEL_CHUNK_NONCE, nonce, self._index)
        self._index += 1
        self._dst.write(chaos.decrypt_bytes(ct, key, chunk_nonce))
        self.bytes_out += len(ct)

    def finish(self) -> None:
        """Called once age has authenticated the end of the stream."""
        if self._header is None:
            raise FormatError("an age file, but not a scanfort protected file")
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()


def looks_like_file_mode(src: BinaryIO) -> bool:
    """True if ``src`` starts with the age v1 marker (position restored)."""
    return _common.peek(src, len(_common.AGE_MAGIC)) == _common.AGE_MAGIC


def protect_file(
    src: BinaryIO,
    dst: BinaryIO,
    recipients: Sequence[str],
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    randbytes: Callable[[int], bytes] | None = None,
) -> ProtectInfo:
    """Write the file-mode protection of ``src`` (any bytes, streamed) to ``dst``."""
    if not 0 < chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_SIZE}")
    parsed = [str(r) for r in _common.keys.parse_recipients(recipients)]
    key, nonce = _common.fresh_key_and_nonce(randbytes)
    header = _encode_header(chunk_size, key, nonce)
    head = _common.read_exact(src, IN_MEMORY_MAX + 1, allow_short=True)
    if len(head) <= IN_MEMORY_MAX:  # the whole input is in memory
        payload = header + _encipher(memoryview(head), key, nonce, chunk_size)
        written = _common.write_all(dst, _common.age_encrypt_bytes(payload, parsed))
        bytes_in = len(head)
    else:
        reader = _EncryptingReader(_Prefixed(head, src), key, nonce, chunk_size, header)
        written = _common.age_encrypt(reader, dst, parsed)
        bytes_in = reader.bytes_in
    return ProtectInfo(
        mode=FILE_MODE,
        bytes_in=bytes_in,
        bytes_out=written,
        format_version=FORMAT_VERSION,
        recipients=len(parsed),
        verified=True,
    )


def unprotect_file(src: BinaryIO, dst: BinaryIO, identities: Sequence[str]) -> UnprotectInfo:
    """Remove both layers of a file-mode input; see :func:`cipher.unprotect`."""
    start = src.tell()
    writer = _DecryptingWriter(dst)
    _common.age_decrypt(src, writer, identities)
    writer.finish()
    return UnprotectInfo(
        mode=FILE_MODE,
        bytes_in=src.tell() - start,
        bytes_out=writer.bytes_out,
        format_version=FORMAT_VERSION,
    )


def inspect_file(src: BinaryIO) -> dict[str, Any]:
    """Describe a file-mode input without a key (position restored).

    The ScanFort header (version, chunk size, key) is inside the age payload, so the
    keyless view is the envelope: recipients, sizes. ``content_bytes`` is exact because
    age's chunking and the fixed-size ScanFort header are public.
    """
    start = src.tell()
    header = _common.parse_age_header(src)
    try:
        total = src.seek(0, io.SEEK_END) - start
    finally:
        src.seek(start)
    payload = total - header.length
    plaintext = _common.age_payload_plaintext_size(payload)
    return {
        "mode": FILE_MODE,
        "envelope": "age-encryption.org/v1",
        "format_version": FORMAT_VERSION,
        "format_version_source": "envelope (the payload header version is read by decrypt)",
        "recipients": header.x25519_recipients,
        "file_bytes": total,
        "age_header_bytes": header.length,
        "content_bytes": max(plaintext - HEADER_SIZE, 0),
    }
