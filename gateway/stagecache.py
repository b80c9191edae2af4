"""The staged ciphertext of large instances, kept on disk between requests (never plaintext).

A large instance's frames, metadata or bulk data need its enciphered Pixel Data value:
fetching it from the archive again for every frame a viewer asks for costs the whole
instance each time (seconds for a few hundred MB). This cache keeps each such value in an
unlinked file of its own under ``stage_dir`` (ciphertext only: what the archive already
holds; nothing deciphered ever goes to a disk), with the opened blob (in memory) that
deciphers it.

- **Bounded**: at most ``cap`` bytes of staged values; the least recently used entry that
  no request holds is closed (and its space freed) to make room. A value larger than the
  whole cap is staged as before but not kept.
- **Reference counts**: every request holds its entry (:meth:`StageCache.acquire` …
  :meth:`StageCache.release`); an entry in use is never closed, an evicted one is closed
  when its last holder lets go.
- **One fetch**: the first request for an instance is its *owner* and fetches it; requests
  for the same instance that arrive meanwhile wait for it and then use what it staged.
- **Shared reads**: after staging, readers only ``pread`` (no shared file position), so
  any number of requests read one entry at once.
- **Proof**: an entry is ``verified`` once a whole restore from its staged value matched
  the original's SHA-256; that pass recorded the SHA-256 of every unit it read
  (:attr:`Stage.digests`, in memory), and a later frame is deciphered only from bytes that
  still match them (see :mod:`gateway.largeframes`, and SPEC §2.4).

The directory is emptied when the cache starts (files of an earlier process, should any be
left: staged files are unlinked at creation, so normally there are none).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from cipher.dicomstream import Opened

_PREFIX = "scanfort-stage-"
#: How long a request waits for another one fetching the same instance.
WAIT_S = 900.0


class StageFile:
    """One staged value: written once (by ``open_v2`` through :meth:`write`), then read by
    ``pread`` only. ``seek``/``read`` keep a position per thread (what
    :meth:`cipher.dicomstream.Opened.pieces` uses), so concurrent passes do not interfere;
    a thread that calls :meth:`record` gets the SHA-256 of each range it reads."""

    def __init__(self, directory: Path) -> None:
        self._file = tempfile.TemporaryFile(prefix=_PREFIX, dir=directory)
        self._fd = self._file.fileno()
        self._local = threading.local()
        self.written = 0

    # what open_v2 needs of a spool
    def write(self, data: bytes | memoryview) -> int:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.written)
            self.written += n
            view = view[n:]
        return len(data)

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0:
            raise ValueError("a staged value is read at absolute positions")
        self._local.pos = pos
        return pos

    def tell(self) -> int:
        return int(getattr(self._local, "pos", 0))

    def read(self, n: int = -1) -> bytes:
        pos = self.tell()
        data = self.pread(pos, self.written if n < 0 else min(pos + n, self.written))
        self._local.pos = pos + len(data)
        digests: dict[int, tuple[int, bytes]] | None = getattr(self._local, "digests", None)
        if digests is not None:
            digests[pos] = (pos + len(data), hashlib.sha256(data).digest())
        return data

    def close(self) -> None:
        """Nothing: the cache closes the file when the entry goes (``Opened.close`` calls
        this when a request is done with it)."""

    # what the cache and the frame reader use
    def pread(self, start: int, stop: int) -> bytes:
        parts: list[bytes] = []
        while start < stop:
            data = os.pread(self._fd, stop - start, start)
            if not data:
                break
            parts.append(data)
            start += len(data)
        return b"".join(parts)

    def record(self) -> dict[int, tuple[int, bytes]]:
        """From now on this thread's reads are hashed into the returned dict
        (start → (stop, SHA-256)) until :meth:`stop_recording`."""
        self._local.digests = {}
        return self._local.digests

    def stop_recording(self) -> None:
        self._local.digests = None

    def discard(self) -> None:
        self._file.close()


class Stage:
    """One instance's entry: pending while its owner fetches it, then staged (its value's
    digest ``D`` checked) and maybe verified (a whole restore from it matched)."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.refs = 0
        self.file: StageFile | None = None
        self.size = 0  # bytes reserved in the cache (0: not kept)
        self.done = threading.Event()
        self.lock = threading.Lock()  # held by the first whole pass over the value
        self.staged = False  # published by its owner, readable
        self.verified = False
        self.gone = False  # no longer in the cache (failed, evicted, cleared)
        self.opened: Opened | None = None
        #: what a served audit entry and the answer need: protected, uids, archive uids…
        self.info: Any = None
        #: start → (stop, SHA-256) of each range of the value the verified pass read
        self.digests: dict[int, tuple[int, bytes]] = {}


class StageCache:
    """LRU of staged values by SOP Instance UID, at most ``cap`` bytes on disk."""

    def __init__(self, directory: Path, cap: int) -> None:
        self.directory = directory
        self.cap = cap
        self.size = 0
        self._items: OrderedDict[str, Stage] = OrderedDict()
        self._lock = threading.Lock()
        self.fetches = 0  # owners that went to the archive (tests, bench)
        self.hits = 0
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for old in directory.glob(_PREFIX + "*"):
            old.unlink(missing_ok=True)

    def acquire(self, key: str) -> tuple[Stage, bool]:
        """The entry for ``key``, held, and whether the caller owns it (must fetch it and
        then :meth:`publish` or :meth:`fail` it). A non-owner calls :meth:`wait` first."""
        with self._lock:
            stage = self._items.get(key)
            if stage is not None:
                self._items.move_to_end(key)
                stage.refs += 1
                self.hits += 1
                return stage, False
            stage = Stage(key)
            stage.refs = 1
            self._items[key] = stage
            self.fetches += 1
            return stage, True

    def wait(self, stage: Stage, timeout: float = WAIT_S) -> bool:
        """Wait for the owner; True when the entry is staged and readable."""
        stage.done.wait(timeout)
        return stage.staged and stage.opened is not None

    def spool(self, stage: Stage) -> Callable[[int], BinaryIO]:
        """The ``spool`` the owner gives the restore: a staged file under the cache's
        directory, with ``n`` bytes reserved (older entries evicted) when they fit."""

        def make(n: int) -> BinaryIO:
            to_close: list[StageFile] = []
            with self._lock:
                if n <= self.cap and not stage.gone:
                    to_close = self._evict_for(n)
                    if self.size + n <= self.cap:
                        stage.size = n
                        self.size += n
            for old in to_close:
                old.discard()
            stage.file = StageFile(self.directory)
            return stage.file  # type: ignore[return-value]

        return make

    def _evict_for(self, n: int) -> list[StageFile]:
        """Drop least recently used entries nobody holds until ``n`` more bytes fit."""
        closing: list[StageFile] = []
        for key in list(self._items):
            if self.size + n <= self.cap:
                break
            old = self._items[key]
            if old.refs or not old.done.is_set():
                continue
            del self._items[key]
            closing.extend(self._drop(old))
        return closing

    def _drop(self, stage: Stage) -> list[StageFile]:
        """Mark ``stage`` gone (lock held); its file, when nobody holds it any more."""
        stage.gone = True
        self.size -= stage.size
        stage.size = 0
        if stage.refs == 0 and stage.file is not None:
            file, stage.file, stage.opened = stage.file, None, None
            return [file]
        return []

    def publish(self, stage: Stage, opened: Opened, info: Any) -> None:
        """The owner staged ``stage`` (its value matched ``D``; not verified yet)."""
        stage.opened, stage.info = opened, info
        stage.staged = True
        if stage.size == 0:  # did not fit: used by this request (and its waiters) only
            self.fail(stage)
        stage.done.set()

    def prove(self, stage: Stage, digests: dict[int, tuple[int, bytes]]) -> None:
        """Record that a whole restore from ``stage`` matched (with what it read)."""
        if not stage.verified:
            stage.digests = digests
            stage.verified = True

    def fail(self, stage: Stage) -> None:
        """Take ``stage`` out of the cache (its owner failed, or it did not fit)."""
        with self._lock:
            if self._items.get(stage.key) is stage:
                del self._items[stage.key]
            if not stage.gone:
                closing = self._drop(stage)
            else:
                closing = []
        stage.done.set()
        for file in closing:
            file.discard()

    def release(self, stage: Stage) -> None:
        """The caller is done with ``stage``."""
        with self._lock:
            stage.refs -= 1
            file = None
            if stage.refs == 0 and stage.gone and stage.file is not None:
                file, stage.file, stage.opened = stage.file, None, None
        if file is not None:
            file.discard()

    def clear(self) -> None:
        """Drop every entry nobody is fetching (those in use close when released)."""
        with self._lock:
            closing: list[StageFile] = []
            for key, stage in list(self._items.items()):
                if stage.done.is_set():
                    del self._items[key]
                    closing.extend(self._drop(stage))
        for file in closing:
            file.discard()
