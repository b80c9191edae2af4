"""Settled file → protected spool artifacts + pending deliveries, and the final step.

The plaintext is read, never changed here: protection writes into the spool (temporary
file, fsync, rename) and records the artifacts and deliveries in one journal transaction.
Only :meth:`Pipeline.finalize`, once every destination acknowledged, applies the folder's
``after_ack`` to the plaintext.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import cipher
from agent import dicomcheck
from agent.config import AgentConfig, FolderConfig
from agent.guard import CipherGuard, CipherTimeout
from agent.journal import Artifact, Item, Journal, fsync_dir
from agent.status import Reporter
from agent.watch import Settled

log = logging.getLogger(__name__)

#: DICOM files up to this size are read into memory for the completeness walk.
_WALK_IN_MEMORY_MAX = 8 << 20


class _HashingReader:
    """Wraps the source: hashes exactly the bytes the cipher consumed."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.hash, self.count = fh, hashlib.sha256(), 0
        self.seeked = False

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self.fh.seek(offset, whence)
        if pos != self.count:
            self.seeked = True  # not a plain front-to-back read: hash the file separately
        return pos

    def tell(self) -> int:
        return self.fh.tell()

    def read(self, n: int = -1) -> bytes:
        data = self.fh.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


class _HashingWriter:
    def __init__(self, fh: BinaryIO) -> None:
        self.fh, self.hash, self.count = fh, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        self.hash.update(data)
        self.count += len(data)
        return self.fh.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.fh, name)


@dataclass(frozen=True)
class Outcome:
    kind: str  # protected | known | changed | incomplete | retry | quarantined | vanished | duplicate
    item_id: int | None = None


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class Pipeline:
    def __init__(self, config: AgentConfig, journal: Journal, reporter: Reporter,
                 protect: Callable[..., Any] = cipher.protect,
                 clock: Callable[[], float] = time.monotonic,
                 guard: CipherGuard | None = None) -> None:
        self.config, self.journal, self.reporter = config, journal, reporter
        self.guard = guard or CipherGuard()
        self.protect_fn = protect
        self.clock = clock
        self.tmp_dir = config.spool_dir / "tmp"
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        config.quarantine_dir.mkdir(parents=True, exist_ok=True)

    # -- protection ------------------------------------------------------------------------
    def process(self, s: Settled) -> Outcome:
        try:
            st = os.stat(s.path)
        except OSError:
            return Outcome("vanished")
        if (st.st_size, st.st_mtime_ns) != (s.size, s.mtime_ns):
            return Outcome("changed")
        existing = self.journal.find(s.path, s.size, s.mtime_ns)
        if existing is not None and existing.state != "discovered":
            return Outcome("known", existing.id)
        folder = self.config.folders[s.folder]
        dicom_kind = self._dicom_kind(s.path, self._needs_image_check(folder))
        if dicom_kind == "incomplete":
            if self.clock() - s.first_seen < self.config.incomplete_grace_s:
                return Outcome("incomplete")
        item = existing or self.journal.add_item(s.path, s.size, s.mtime_ns, s.folder,
                                                 s.settled_at or None)
        if dicom_kind == "incomplete":
            return self._quarantine(item, "dicom file ends inside an element (truncated) and "
                                          "did not change during the grace period")
        plan = self._plan(folder, dicom_kind == "image")
        if not any(mode for _, mode in plan):
            reason = ("not a dicom image: no destination of this folder accepts other files"
                      if dicom_kind != "image" else "no destination")
            return self._quarantine(item, reason)
        artifacts: dict[str, Artifact] = {}
        source_sha: str | None = None
        try:
            for mode in sorted({m for _, m in plan if m}):
                art, sha = self._protect(item, mode)
                if source_sha is not None and sha != source_sha:
                    raise _Changed()
                source_sha = sha
                artifacts[mode] = art
        except _Changed:
            self._discard(artifacts)
            return Outcome("changed", item.id)
        except CipherTimeout as exc:
            self._discard(artifacts)  # the item stays "discovered": protected again later
            self.reporter.event("error", "warning", f"{exc}; retrying with a fresh key",
                                file_id=item.file_id)
            return Outcome("retry", item.id)
        except FileNotFoundError:
            self._discard(artifacts)
            self.journal.set_state(item.id, "vanished")
            return Outcome("vanished", item.id)
        except cipher.CipherError as exc:
            self._discard(artifacts)
            return self._quarantine(item, f"cannot protect: {type(exc).__name__}")
        assert source_sha is not None
        deliveries = [(name, mode or "-", "pending" if mode else "skipped")
                      for name, mode in plan]
        if not self.journal.set_protected(item.id, source_sha, list(artifacts.values()),
                                          deliveries, unless_done_as=s.path):
            self._discard(artifacts)  # only the mtime changed: same scan, already sent
            return Outcome("duplicate", item.id)
        self.reporter.event("protected", file_id=item.file_id)
        return Outcome("protected", item.id)

    def _needs_image_check(self, folder: FolderConfig) -> bool:
        """Whether any destination's protection mode depends on "is a DICOM image"."""
        return any(self.config.destination(name).mode in ("auto", "dicom")
                   for name in folder.destinations)

    def _dicom_kind(self, path: str, image_check: bool = True) -> str:
        """``image`` (complete DICOM with pixels), ``other``, or ``incomplete``.

        Without ``image_check`` (every destination takes file mode, the plan does not
        depend on it) a complete DICOM file is ``other``: the full parse is skipped.
        """
        try:
            with open(path, "rb") as raw:
                if not dicomcheck.is_dicom(raw):
                    return "other"
                # The walk seeks from element to element; on a file in memory (a slice is
                # well under the limit, and protection reads it next anyway) those seeks
                # are not system calls that each hand the GIL over.
                size = os.fstat(raw.fileno()).st_size
                raw.seek(0)
                fh: BinaryIO = io.BytesIO(raw.read()) if size <= _WALK_IN_MEMORY_MAX else raw
                try:
                    dicomcheck.check_complete(fh)
                except dicomcheck.Truncated:
                    return "incomplete"
                if not image_check:
                    return "other"
                fh.seek(0)
                return "image" if cipher.is_dicom_with_pixels(fh) else "other"
        except OSError:
            return "other"

    def _plan(self, folder: FolderConfig, is_image: bool) -> list[tuple[str, str | None]]:
        """(destination, protection mode or None when it cannot take this file)."""
        plan: list[tuple[str, str | None]] = []
        for name in folder.destinations:
            mode = self.config.destination(name).mode
            if mode == "auto":
                mode = "dicom" if is_image else "file"
            plan.append((name, None if mode == "dicom" and not is_image else mode))
        return plan

    def _protect(self, item: Item, mode: str) -> tuple[Artifact, str]:
        name = f"{item.id:010d}.{mode}"
        tmp = self.tmp_dir / f"{name}.tmp"
        with open(item.path, "rb") as raw, open(tmp, "wb") as out:
            src, dst = _HashingReader(raw), _HashingWriter(out)
            info = self.guard.call(item.size, lambda: self.protect_fn(
                src, dst, list(self.config.recipients), mode))
            out.flush()
            os.fsync(out.fileno())
        st = os.stat(item.path)
        if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
            raise _Changed()
        linear = not src.seeked and src.count == item.size
        sha = src.hash.hexdigest() if linear else file_sha256(item.path)
        final = self.config.spool_dir / name
        os.replace(tmp, final)
        fsync_dir(self.config.spool_dir)
        art = Artifact(item.id, mode, name, dst.hash.hexdigest(), dst.count,
                       getattr(info, "sop_instance_uid", None))
        return art, sha

    def _discard(self, artifacts: dict[str, Artifact]) -> None:
        for art in artifacts.values():
            try:
                (self.config.spool_dir / art.name).unlink()
            except OSError:
                pass

    def _quarantine(self, item: Item, reason: str) -> Outcome:
        """Park an item that can never be delivered; the plaintext stays where it is."""
        note = self.config.quarantine_dir / f"{item.id:010d}.reason.txt"
        # The reason file stays on this machine (like the plaintext it points to).
        text = (f"reason: {reason}\nfile_id: {item.file_id}\npath: {item.path}\n"
                f"at: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n")
        tmp = note.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, note)
        self.journal.set_state(item.id, "quarantined", reason, counter="quarantined")
        self.reporter.event("quarantined", severity="warning", message=reason,
                            file_id=item.file_id)
        return Outcome("quarantined", item.id)

    def quarantine(self, item_id: int, reason: str) -> None:
        item = self.journal.item(item_id)
        self._discard(self.journal.artifacts(item_id))
        self._quarantine(item, reason)

    # -- after every destination acknowledged ---------------------------------------------
    def finalize(self, item_id: int) -> None:
        item = self.journal.item(item_id)
        if item.state != "protected":
            return
        folder = self.config.folders[item.folder]
        try:
            st = os.stat(item.path)
            unchanged = (st.st_size, st.st_mtime_ns) == (item.size, item.mtime_ns)
        except OSError:
            unchanged = False  # already moved (a resumed finalize) or removed by someone
        if unchanged and item.size > 0 and folder.after_ack != "keep":
            self.journal.sync()  # every acknowledgement on disk before the irreversible step
            try:
                if folder.after_ack == "delete":
                    os.unlink(item.path)
                elif folder.move_to is not None:
                    rel = Path(os.path.relpath(item.path, folder.path))
                    target = folder.move_to / rel
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(item.path, target)
                    fsync_dir(target.parent)
            except OSError as exc:
                log.warning("cannot %s plaintext of %s: %s", folder.after_ack, item.file_id,
                            exc.strerror)
        self._discard(self.journal.artifacts(item_id))
        self.journal.set_state(item_id, "done")


class _Changed(Exception):
    """The source changed while it was being protected."""
