"""The filesystem object backend: protected objects under ``<data dir>/objects``.

Layout ``objects/ab/cd/abcd…`` (the SHA-256 of the bytes). Bytes go to a temporary file
first, are hashed while written, fsync'd, and renamed into place only when the hash matches
the name: a partial or forged upload never becomes visible. Reads hash the file again.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from protocol.durable import fsync_dir
from service.objects import StoredObject, hash_file, receive, verified_or_raise


class ObjectStore:
    """The ``filesystem`` backend (see :class:`service.objects.ObjectBackend`)."""

    name = "filesystem"

    def __init__(self, root: Path) -> None:
        self.root = root
        self._tmp = root / "tmp"

    def path_for(self, sha256: str) -> Path:
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def exists(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def size(self, sha256: str) -> int | None:
        try:
            return self.path_for(sha256).stat().st_size
        except FileNotFoundError:
            return None

    def open_verified(self, sha256: str) -> StoredObject | None:
        path = self.path_for(sha256)
        try:
            actual, size = hash_file(path)
        except FileNotFoundError:
            return None
        return verified_or_raise(sha256, actual, path, size)

    def writable(self) -> bool:
        try:
            self._tmp.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self._tmp):
                pass
        except OSError:
            return False
        return True

    async def put(
        self, sha256: str, chunks: AsyncIterator[bytes], max_bytes: int
    ) -> tuple[int, bool]:
        """Store the streamed bytes as ``sha256``: (size, created).

        Raises :class:`ObjectRejected` (413 too large, 422 hash mismatch).
        """
        final = self.path_for(sha256)
        self._tmp.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="up-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as fh:
                size, _ = await receive(sha256, chunks, max_bytes, fh)
                fh.flush()
                os.fsync(fh.fileno())
            if final.exists():
                return size, False
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
            fsync_dir(final.parent)
            return size, True
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

