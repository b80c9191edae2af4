"""``folder``: an atomic copy into a directory (a mounted share, a USB disk…)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from agent.config import DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Forwarder, Outgoing
from agent.journal import fsync_dir


class FolderForwarder(Forwarder):
    """Writes ``<relpath>`` (DICOM mode) or ``<relpath>.age`` (file mode) under the target.

    The copy is written to a hidden temporary name, fsync'd, then renamed, so a reader of
    the share never sees a partial file; re-sending replaces the copy with the same name.
    """

    def __init__(self, dest: DestinationConfig) -> None:
        assert dest.path is not None
        self.root = dest.path

    def target(self, obj: Outgoing) -> Path:
        rel = Path(obj.relpath)
        if rel.is_absolute() or ".." in rel.parts:
            rel = Path(rel.name)
        name = rel.name + (".age" if obj.mode == "file" else "")
        return self.root / rel.parent / name

    def send(self, obj: Outgoing) -> None:
        target = self.target(obj)
        tmp = target.parent / f".{target.name}.{obj.item_id}.scanfort-tmp"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(obj.path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            try:
                tmp.unlink()
            except OSError:
                pass
            # Share unreachable or full: may heal, so retry. Access denied is the share's
            # 401: pause the destination and say so in the status.
            raise DeliveryError(f"folder copy: {exc.strerror or type(exc).__name__}",
                                auth=isinstance(exc, PermissionError)) from exc
