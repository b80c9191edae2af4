"""Finding new scans: watchdog observers, a periodic reconcile scan, and settle detection.

watchdog misses events on network shares and when its buffer overflows, so every watched
folder is also walked at start-up and every ``reconcile_seconds``. Whatever the source,
a path becomes a *candidate* in the :class:`Settler`, which only releases it once its size
and mtime stayed unchanged for the settle time (a debouncer: a storm of writes becomes one
decision). Time and ``stat`` are injected so tests can drive the settler directly.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from agent.config import FolderConfig

log = logging.getLogger(__name__)
IGNORED_SUFFIXES = (".partial", ".tmp")
#: The events that can announce a new or rewritten scan. Narrowing the inotify mask to
#: these keeps out the open/close-without-write and delete events that the agent's own
#: reads and ``after_ack`` deletes would otherwise raise (five per file in a burst), each
#: a trip through watchdog's threads in the agent process.
EVENTS = [FileCreatedEvent, FileMovedEvent, FileModifiedEvent, FileClosedEvent]


def wanted(folder: FolderConfig, path: str) -> bool:
    """Whether ``path`` (absolute, inside ``folder``) is a scan this folder should take."""
    name = os.path.basename(path)
    if not name or name.startswith(".") or name.lower().endswith(IGNORED_SUFFIXES):
        return False
    try:
        rel = os.path.relpath(path, folder.path)
    except ValueError:
        return False
    if rel.startswith(".."):
        return False
    parts = Path(rel).parts
    if any(p.startswith(".") for p in parts[:-1]):
        return False  # hidden directories (our own ``.scanfort`` temp files included)
    if not folder.recursive and len(parts) != 1:
        return False
    def match(pattern: str) -> bool:
        return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)
    if not any(match(p) for p in folder.include):
        return False
    return not any(match(p) for p in folder.exclude)


@dataclass(frozen=True)
class Settled:
    path: str
    folder: str  # FolderConfig.key
    size: int
    mtime_ns: int
    first_seen: float
    settled_at: float = 0.0  # wall-clock time the settler released it


@dataclass
class _Candidate:
    folder: str
    size: int
    mtime_ns: int
    stable_since: float
    first_seen: float
    not_before: float = 0.0


class Settler:
    """Releases a path once size and mtime have not changed for ``settle_s`` seconds."""

    def __init__(self, settle_s: float, clock: Callable[[], float] = time.monotonic,
                 stat: Callable[[str], os.stat_result] = os.stat,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.settle_s = settle_s
        self.clock = clock
        self.wall_clock = wall_clock
        self.stat = stat
        self._lock = threading.Lock()
        self._candidates: dict[str, _Candidate] = {}
        self.wakeup = threading.Event()

    def __contains__(self, path: str) -> bool:
        with self._lock:
            return path in self._candidates

    def __len__(self) -> int:
        with self._lock:
            return len(self._candidates)

    def offer(self, path: str, folder: str, delay: float = 0.0,
              first_seen: float | None = None) -> bool:
        """Add ``path``; return False if it was already a candidate."""
        now = self.clock()
        with self._lock:
            if path in self._candidates:
                return False
            first = not self._candidates
            self._candidates[path] = _Candidate(folder, -1, -1, now, first_seen or now,
                                                now + delay)
        if first:
            # Only the first candidate wakes the intake loop early; after that it polls on
            # its own period, so a burst of N offers costs O(N) stats per period, not O(N²).
            self.wakeup.set()
        return True

    def poll(self) -> list[Settled]:
        """Stat every candidate; return (and forget) those that have settled."""
        now = self.clock()
        ready: list[Settled] = []
        with self._lock:
            paths = list(self._candidates.items())
        for path, cand in paths:
            if cand.not_before > now:
                continue
            try:
                st = self.stat(path)
            except OSError:
                with self._lock:
                    self._candidates.pop(path, None)  # gone (moved away by the writer)
                continue
            if st.st_size != cand.size or st.st_mtime_ns != cand.mtime_ns:
                cand.size, cand.mtime_ns, cand.stable_since = st.st_size, st.st_mtime_ns, now
                if self.settle_s > 0:
                    continue
            if now - cand.stable_since < self.settle_s:
                continue
            if st.st_size == 0:
                # An empty file may be about to be written; it is never processed (nor
                # deleted) while empty, and the next event or reconcile offers it again.
                with self._lock:
                    self._candidates.pop(path, None)
                continue
            if os.name == "nt" and not _openable(path):
                continue  # still held open by the writer (sharing violation)
            with self._lock:
                self._candidates.pop(path, None)
            ready.append(Settled(path, cand.folder, st.st_size, st.st_mtime_ns, cand.first_seen,
                                 self.wall_clock()))
        return ready

    def next_check_in(self) -> float:
        """Seconds until a candidate could settle (bounded, for the intake loop)."""
        with self._lock:
            if not self._candidates:
                return 1.0
        return max(0.05, min(0.5, self.settle_s / 4))


def _openable(path: str) -> bool:
    try:
        with open(path, "r+b"):
            return True
    except PermissionError:
        return False
    except OSError:
        return True


def walk(folder: FolderConfig) -> Iterator[str]:
    """Every wanted file under ``folder`` (directory links are never followed, file links
    only with ``follow_symlinks``)."""
    stack = [str(folder.path)]
    while stack:
        top = stack.pop()
        files, dirs = _list_dir(folder, top)
        stack.extend(dirs)
        yield from files


def _list_dir(folder: FolderConfig, top: str) -> tuple[list[str], list[str]]:
    """The wanted files and the subdirectories to descend into, of one directory."""
    files: list[str] = []
    dirs: list[str] = []
    try:
        entries = list(os.scandir(top))
    except OSError:
        return files, dirs
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if folder.recursive and not entry.name.startswith("."):
                    dirs.append(entry.path)
            elif entry.is_file(follow_symlinks=folder.follow_symlinks) and \
                    wanted(folder, entry.path):
                files.append(entry.path)
        except OSError:
            continue
    return files, dirs


@dataclass
class _DirState:
    mtime_ns: int
    subdirs: list[str]


class Reconciler:
    """The periodic walk, at a cost that does not grow with what is already done.

    A directory is listed again only when its mtime changed (a file was created, renamed
    into or removed from it); the others cost one ``stat``. Where an mtime cannot be
    trusted (it is recent enough that a change within the same timestamp tick could hide
    behind it) the directory is listed every pass. A slow full pass lists ``full_share``
    of the known directories on every call, so everything is listed at least once per
    ``1 / full_share`` passes even where a file system does not update mtimes (some
    network shares). Time and ``stat`` are injected.
    """

    def __init__(self, folder: FolderConfig, clock: Callable[[], float] = time.time,
                 stat: Callable[[str], os.stat_result] = os.stat,
                 full_share: float = 1 / 60, trust_after_s: float = 2.0) -> None:
        self.folder, self.clock, self.stat = folder, clock, stat
        self.full_share, self.trust_after_s = full_share, trust_after_s
        self._dirs: dict[str, _DirState] = {}
        self._cursor = 0.0
        self.listed = 0  # directories listed in the last pass (for tests and the bench)

    def changed_files(self) -> Iterator[str]:
        """Files in directories that changed since the last pass (every file, the first
        time)."""
        now = self.clock()
        self._cursor += self.full_share * max(1, len(self._dirs))
        forced = int(self._cursor)
        self._cursor -= forced
        order = list(self._dirs)
        forced_dirs = set(order[:forced])
        if forced and order:
            # rotate so the next pass forces the next slice
            self._dirs = {k: self._dirs[k] for k in order[forced:] + order[:forced]}
        self.listed = 0
        seen: set[str] = set()
        stack = [str(self.folder.path)]
        while stack:
            top = stack.pop()
            seen.add(top)
            try:
                st = self.stat(top)
            except OSError:
                continue
            known = self._dirs.get(top)
            trusted = now - st.st_mtime_ns / 1e9 > self.trust_after_s
            if known is not None and known.mtime_ns == st.st_mtime_ns and trusted \
                    and top not in forced_dirs:
                stack.extend(known.subdirs)
                continue
            files, dirs = _list_dir(self.folder, top)
            self.listed += 1
            # An untrusted mtime is not remembered: the directory is listed again next time.
            self._dirs[top] = _DirState(st.st_mtime_ns if trusted else -1, dirs)
            stack.extend(dirs)
            yield from files
        for gone in set(self._dirs) - seen:
            del self._dirs[gone]


class _Handler(FileSystemEventHandler):
    def __init__(self, folder: FolderConfig, sink: Callable[[str, str], object]):
        self.folder, self.sink = folder, sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory or event.event_type in ("deleted", "opened", "closed_no_write"):
            return
        raw = event.dest_path if event.event_type == "moved" else event.src_path
        path = os.fsdecode(raw)
        if wanted(self.folder, path):
            self.sink(path, self.folder.key)


class Watcher:
    """watchdog observers for every folder; restarted if one dies (e.g. buffer overflow)."""

    def __init__(self, folders: tuple[FolderConfig, ...], sink: Callable[[str, str], object]):
        self.folders = folders
        self.sink = sink
        self.observers: list[BaseObserver | None] = [None] * len(folders)
        self.restarts = 0

    def _start(self, i: int) -> None:
        folder = self.folders[i]
        observer: BaseObserver = PollingObserver(timeout=2) if folder.polling else Observer()
        handler = _Handler(folder, self.sink)
        try:
            observer.schedule(handler, str(folder.path), recursive=folder.recursive,
                              event_filter=EVENTS)
        except TypeError:  # a watchdog without event filters: every event, filtered here
            observer.schedule(handler, str(folder.path), recursive=folder.recursive)
        observer.daemon = True
        observer.start()
        self.observers[i] = observer

    def start(self) -> None:
        for i, folder in enumerate(self.folders):
            folder.path.mkdir(parents=True, exist_ok=True)
            self._start(i)

    def check(self) -> int:
        """Restart dead observers; return how many are alive."""
        alive = 0
        for i, obs in enumerate(self.observers):
            if obs is not None and obs.is_alive():
                alive += 1
                continue
            self.restarts += 1
            log.warning("observer for folder %d stopped; restarting (reconcile covers the gap)", i)
            try:
                self._start(i)
                alive += 1
            except OSError as exc:
                log.error("cannot watch folder %d: %s", i, exc.strerror)
        return alive

    def stop(self) -> None:
        for obs in self.observers:
            if obs is not None:
                obs.stop()
        for obs in self.observers:
            if obs is not None:
                obs.join(timeout=5)
