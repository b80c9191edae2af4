"""The object store of protected objects: one interface, a filesystem and an S3 backend.

An object is the encrypted file an agent uploads; its name is the SHA-256 of its bytes, so
a re-upload is a no-op and two agents sending the same bytes share one object. Every
backend verifies the hash before an upload becomes visible under its name, and again on
every read (:meth:`ObjectBackend.open_verified`), so neither a forged upload nor a stored
object that rotted or was tampered with is ever served as genuine.

``[objects] backend`` in ``central.toml`` picks the backend (:func:`open_backend`):
``filesystem`` (default; :mod:`service.objects_fs`) or ``s3`` (:mod:`service.objects_s3`).
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

from service.errors import ObjectCorrupt, ObjectRejected

if TYPE_CHECKING:
    from service.settings import Settings

#: uploads up to this size are buffered in memory before they are verified and stored
SPOOL_IN_MEMORY = 8 << 20
_READ_CHUNK = 1 << 20


@dataclass
class StoredObject:
    """A verified object ready to be sent: a file path and what to do once it is sent."""

    path: Path
    size: int
    cleanup: Callable[[], None] = field(default=lambda: None)


class ObjectBackend(Protocol):
    """What the API needs from an object store (blocking methods run in a worker thread)."""

    name: str

    async def put(
        self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[int, bool]:
        """Store the streamed bytes as ``sha256``: (size, created).

        Raises :class:`ObjectRejected` (413 too large, 422 hash mismatch) and
        :class:`~service.errors.ObjectStoreUnavailable` (store unreachable: retry later).
        """

    def size(self, sha256: str) -> int | None:
        """The stored size, or None when not stored."""

    def writable(self) -> bool:
        """Whether an upload could be stored now (``/healthz``)."""

    def open_verified(self, sha256: str) -> StoredObject | None:
        """The object, its hash checked; None when not stored; :class:`ObjectCorrupt` if bad."""


@dataclass
class Spooled:
    """An upload received and hashed: the bytes (memory or a temp file), size and digests."""

    file: tempfile.SpooledTemporaryFile[bytes]
    size: int
    sha256: bytes


async def receive(sha256: str, chunks: AsyncIterator[bytes], max_bytes: int,
                  fh: BinaryIO | tempfile.SpooledTemporaryFile[bytes]) -> tuple[int, bytes]:
    """Write ``chunks`` to ``fh``, hashing: (size, digest). Raises :class:`ObjectRejected`
    (413 past ``max_bytes``, 422 unless the bytes hash to ``sha256``); every backend's PUT."""
    digest = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > max_bytes:
            raise ObjectRejected(413, f"object larger than {max_bytes} bytes")
        digest.update(chunk)
        fh.write(chunk)
    if digest.hexdigest() != sha256:
        raise ObjectRejected(422, "content does not match its sha256")
    return size, digest.digest()


async def spool_upload(
    sha256: str, chunks: AsyncIterator[bytes], max_bytes: int, tmp_dir: Path
) -> Spooled:
    """Receive ``chunks`` into a spooled temp file, hashing; raise unless they hash to ``sha256``.

    The caller owns (and closes) the returned file.
    """
    tmp_dir.mkdir(parents=True, exist_ok=True)
    fh = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY, mode="w+b", dir=str(tmp_dir),
                                     prefix="up-")  # fmt: skip
    try:
        size, digest = await receive(sha256, chunks, max_bytes, fh)
        fh.seek(0)
        return Spooled(fh, size, digest)
    except BaseException:
        fh.close()
        raise


def hash_file(path: Path) -> tuple[str, int]:
    """(hex SHA-256, size) of a file, read in bounded chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_READ_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def verified_or_raise(sha256: str, actual: str, path: Path, size: int,
                      cleanup: Callable[[], None] = lambda: None) -> StoredObject:  # fmt: skip
    if actual != sha256:
        with contextlib.suppress(OSError):
            cleanup()
        raise ObjectCorrupt(sha256)
    return StoredObject(path, size, cleanup)


def open_backend(settings: Settings) -> ObjectBackend:
    """The backend ``settings.objects`` selects (credentials read here, never logged)."""
    if settings.objects.backend == "s3":
        from service.objects_s3 import S3Objects

        return S3Objects.from_settings(settings)
    from service.objects_fs import ObjectStore

    return ObjectStore(settings.objects_dir)
