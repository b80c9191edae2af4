"""``folder``: an atomic copy into a directory (a mounted share, a USB disk…)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path

from agent.config import DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Forwarder, Outgoing
from protocol.durable import fsync_dir

#: How many names ``scan.bin.age``, ``scan.bin (2).age``, … are tried for one object.
MAX_NAMES = 1000


def _sha256(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


class FolderForwarder(Forwarder):
    """Writes ``<relpath>`` (DICOM mode) or ``<relpath>.age`` (file mode) under the target.

    A protected copy already there is never replaced: modalities reuse names
    (``IMG0001.dcm`` in every export), so a name that holds *different* content gets the
    next free ``name (2).age``, ``name (3).age``…; the *same* content (a re-send after a
    crash before the acknowledgement was recorded) is acknowledged again, idempotently.
    The copy is written to a hidden temporary name, fsync'd, then linked to its final
    name, which fails instead of replacing when the name is taken; a reader of the share
    never sees a partial file.
    """

    def __init__(self, dest: DestinationConfig) -> None:
        assert dest.path is not None
        self.root = dest.path

    def target(self, obj: Outgoing, n: int = 1) -> Path:
        rel = Path(obj.relpath)
        if rel.is_absolute() or ".." in rel.parts:
            rel = Path(rel.name)
        name = rel.name if n == 1 else _numbered(rel.name, n)
        return self.root / rel.parent / (name + (".age" if obj.mode == "file" else ""))

    def send(self, obj: Outgoing) -> None:
        first = self.target(obj)
        tmp = first.parent / f".{first.name}.{obj.item_id}.scanfort-tmp"
        try:
            first.parent.mkdir(parents=True, exist_ok=True)
            with open(obj.path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            for n in range(1, MAX_NAMES + 1):
                target = self.target(obj, n)
                if self._place(tmp, target, obj.sha256):
                    fsync_dir(target.parent)
                    return
            raise DeliveryError(f"folder copy: {MAX_NAMES} names taken by other content",
                                permanent=True)
        except OSError as exc:
            # Share unreachable or full: may heal, so retry. Access denied is the share's
            # 401: pause the destination and say so in the status.
            raise DeliveryError(f"folder copy: {exc.strerror or type(exc).__name__}",
                                auth=isinstance(exc, PermissionError)) from exc
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    @staticmethod
    def _place(tmp: Path, target: Path, sha256: str) -> bool:
        """Give ``tmp`` the name ``target`` unless another file has it; True when
        ``target`` now holds this content (placed now, or earlier)."""
        try:
            os.link(tmp, target)  # atomic, and never replaces
            return True
        except FileExistsError:
            return _sha256(target) == sha256
        except OSError:
            # No hard links on this file system (some shares): check, then rename. A
            # writer racing us on the same share between the two is not one we have.
            if target.exists():
                return _sha256(target) == sha256
            os.replace(tmp, target)
            return True


def _numbered(name: str, n: int) -> str:
    """``scan.dcm`` → ``scan (2).dcm``; ``IMG0001`` → ``IMG0001 (2)``."""
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        return f"{name} ({n})"
    return f"{stem} ({n}).{ext}"
