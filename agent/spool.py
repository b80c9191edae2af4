"""The spool: the one place that knows its layout, its names and how files enter and leave.

Layout under ``spool_dir``::

    journal.sqlite3 (+ -wal, -shm)  the journal (agent.journal)
    <20 hex>.file | <20 hex>.dicom  protected copies ("artifacts"), one per protection mode
    tmp/<name>.<pid>.tmp            a copy being written by protect worker <pid>
    quarantine/<item>.reason.txt    why an item waits for an operator (stays on this machine)
    status.json                     the last status snapshot (``agent status``)
    reserve                         space held back for the journal (see :class:`Reserve`)

The name ↔ mode rule: an artifact's suffix is its protection mode. Names are random, so a
protect worker orphaned by a killed agent can never overwrite a copy the journal knows;
what the journal does not know is swept (at start, and when older than a few minutes).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from protocol.durable import atomic_write, fsync_dir

MODES = ("file", "dicom")
_NAME_BYTES = 10
JOURNAL_NAME = "journal.sqlite3"
STATUS_NAME = "status.json"
RESERVE_NAME = "reserve"
#: Space held back on the spool volume so the journal can always commit the transactions
#: that free space (deliveries done, items finalized) when the volume is otherwise full.
RESERVE_BYTES = 8 << 20

__all__ = ["MODES", "Reserve", "Spool", "fsync_dir"]


class Spool:
    """Paths and file operations of one spool directory (safe to use from any process)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp_dir = root / "tmp"
        self.quarantine_dir = root / "quarantine"
        self.journal_path = root / JOURNAL_NAME
        self.status_path = root / STATUS_NAME

    def create(self) -> None:
        for d in (self.root, self.tmp_dir, self.quarantine_dir):
            d.mkdir(parents=True, exist_ok=True)

    # -- names -------------------------------------------------------------------------
    @staticmethod
    def new_name(mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"unknown protection mode {mode!r}")
        return f"{secrets.token_hex(_NAME_BYTES)}.{mode}"

    @staticmethod
    def mode_of(name: str) -> str | None:
        """The protection mode an artifact name stands for, or None if it is not one."""
        stem, dot, mode = name.rpartition(".")
        if not dot or mode not in MODES or len(stem) != 2 * _NAME_BYTES:
            return None
        try:
            int(stem, 16)
        except ValueError:
            return None
        return mode

    def path(self, name: str) -> Path:
        return self.root / name

    def tmp_for(self, name: str, pid: int | None = None) -> Path:
        """A temporary name that says which process writes it (see :meth:`discard_tmp_of`)."""
        return self.tmp_dir / f"{name}.{os.getpid() if pid is None else pid}.tmp"

    def discard_tmp_of(self, pid: int) -> int:
        """Remove what a protect worker that died (or was killed) was writing."""
        removed = 0
        for leftover in self.tmp_dir.glob(f"*.{pid}.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed += 1
        return removed

    # -- entering and leaving ----------------------------------------------------------
    def commit(self, tmp: Path, name: str) -> Path:
        """Move a finished (fsync'd) temporary copy to its artifact name.

        No fsync of the spool directory here: it cost the burst 10-30 % of its throughput.
        The copy's data is durable before the parent records it; if a power cut loses the
        rename, the next start finds the recorded copy missing and protects the plaintext
        again (it is never touched before every destination acknowledged).
        """
        final = self.path(name)
        os.replace(tmp, final)
        return final

    def exists(self, name: str) -> bool:
        return self.path(name).is_file()

    def discard(self, names: Iterable[str]) -> None:
        for name in names:
            with contextlib.suppress(OSError):
                self.path(name).unlink()

    def clear_tmp(self) -> int:
        """Remove every temporary copy (only at start: no worker is writing yet)."""
        removed = 0
        for leftover in self.tmp_dir.glob("*.tmp"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed += 1
        return removed

    def sweep(self, known: set[str], min_age_s: float = 0.0) -> int:
        """Remove artifacts the journal does not know (renamed into the spool just before a
        crash, or by an orphaned worker). ``min_age_s`` spares copies a running worker has
        just made and the journal is about to record."""
        now, removed = time.time(), 0
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return 0
        for entry in entries:
            if entry.name in known or self.mode_of(entry.name) is None:
                continue
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime >= min_age_s:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
        return removed

    def write_note(self, item_id: int, text: str) -> Path:
        """The quarantine note of an item (replaced atomically)."""
        note = self.quarantine_dir / f"{item_id:010d}.reason.txt"
        self.quarantine_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(note, text, mode=0o600)
        return note

    def remove_note(self, item_id: int) -> None:
        with contextlib.suppress(OSError):
            (self.quarantine_dir / f"{item_id:010d}.reason.txt").unlink()

    def write_status(self, text: str) -> None:
        # Not fsync'd: a snapshot rewritten every second; losing one costs nothing.
        atomic_write(self.status_path, text, mode=0o644, fsync=False)


class Reserve:
    """A file of ``size`` bytes that is given back when the volume is full.

    SQLite needs free pages to commit anything, including the transactions that free
    space. When a commit fails with "database or disk is full", :meth:`release` deletes the
    reserve so the retry can commit; :meth:`restore` recreates it once space is back.
    """

    def __init__(self, spool: Spool, size: int = RESERVE_BYTES) -> None:
        self.path = spool.root / RESERVE_NAME
        self.size = size

    @property
    def held(self) -> bool:
        try:
            return self.path.stat().st_size >= self.size
        except OSError:
            return False

    def restore(self, free_bytes: int) -> bool:
        """Recreate the reserve if it is missing and the volume has room for it twice."""
        if self.size <= 0 or self.held or free_bytes < 2 * self.size:
            return self.held
        tmp = self.path.with_suffix(".tmp")
        try:
            with open(tmp, "wb") as fh:
                chunk = b"\0" * (1 << 20)
                left = self.size
                while left > 0:
                    left -= fh.write(chunk[:min(left, len(chunk))])
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink()
            return False
        return True

    def release(self) -> bool:
        """Give the reserve back to the volume; True if there was one."""
        try:
            self.path.unlink()
        except OSError:
            return False
        return True
