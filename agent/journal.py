"""The durable journal (SQLite, WAL): where every file is, at every moment.

States of an item (one source file version)::

    protected ──► (every delivery done | skipped) ──► done
        └──► quarantined (reason; a reason file in the quarantine dir)

An item is inserted already ``protected``, together with its artifacts and deliveries,
once a protect worker has written the spool copies; a file whose protection never
finished has no item and is found again by the start-up scan. ``discovered`` is only the
short-lived state of an item created to be quarantined (and of journals written by
earlier versions, which are resumed). ``duplicate``, ``superseded`` and ``vanished``
mark versions that need nothing sent.

Each item has one spool artifact per protection mode its destinations need, and one
delivery row per destination. A delivery is ``pending`` until its destination
acknowledged (``done``) or cannot take that kind of object (``skipped``). The plaintext is
only touched once every delivery of its item is resolved.

One connection is shared by the agent's threads behind a lock; ``agent status`` opens
its own read-only connection, which WAL allows while the agent writes.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from agent.errors import JournalError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT, folder INTEGER NOT NULL, file_id TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT,
    discovered_at REAL NOT NULL, settled_at REAL, updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS items_version ON items(path, size, mtime_ns);
CREATE INDEX IF NOT EXISTS items_state ON items(state);
CREATE TABLE IF NOT EXISTS artifacts (
    item_id INTEGER NOT NULL, mode TEXT NOT NULL, name TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, sop_instance_uid TEXT,
    PRIMARY KEY (item_id, mode)
);
CREATE TABLE IF NOT EXISTS deliveries (
    item_id INTEGER NOT NULL, dest TEXT NOT NULL, mode TEXT NOT NULL,
    state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0, last_error TEXT, done_at REAL,
    PRIMARY KEY (item_id, dest)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(dest, state, next_at);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    event_id TEXT PRIMARY KEY, at REAL NOT NULL, body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_at ON outbox(at);
"""
OUTBOX_LIMIT = 10_000
OUTBOX_TRIM_EVERY = 64


@dataclass(frozen=True)
class Item:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    folder: int
    file_id: str
    state: str
    discovered_at: float
    settled_at: float | None


@dataclass(frozen=True)
class Artifact:
    item_id: int
    mode: str
    name: str  # file name inside the spool dir
    sha256: str
    size: int
    sop_instance_uid: str | None


@dataclass(frozen=True)
class Delivery:
    item_id: int
    dest: str
    mode: str
    attempts: int


_ITEM_COLS = "id, path, size, mtime_ns, sha256, folder, file_id, state, discovered_at, settled_at"


class Journal:
    """Thread-safe access to the journal database."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time,
                 readonly: bool = False) -> None:
        self.path = path
        self.clock = clock
        self._lock = threading.RLock()
        try:
            if readonly:
                self._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                           check_same_thread=False, timeout=10)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._db = sqlite3.connect(path, check_same_thread=False, timeout=30,
                                           isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: every commit survives a killed process; after a power
                # loss the last commits may be lost, which only means redoing idempotent
                # work (re-protect from the plaintext, re-send). The one irreversible step,
                # touching the plaintext, is preceded by sync().
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal: {exc}") from exc
        self._commits = 0  # transactions committed by this connection
        self._synced = 0  # all commits up to this count are known durable
        self._sync_lock = threading.Lock()
        self._outbox_inserts = 0
        if not readonly:
            self.salt = self._salt()

    def sync(self) -> None:
        """Make every transaction committed so far durable.

        In WAL mode a committed transaction is in the ``-wal`` file (written, maybe not
        yet on disk under ``synchronous=NORMAL``); fsync of that file is exactly what
        ``synchronous=FULL`` does at each commit, done here once, only before the
        irreversible step. It needs no journal lock, so the other threads keep committing
        meanwhile (a checkpoint under the lock stalled every thread for two fsyncs and a
        copy of the WAL into the database). SQLite only restarts the WAL after a
        checkpoint that synced the database, so the frames it overwrites are already
        durable. Where the WAL cannot be opened, fall back to a checkpoint, which syncs it.
        Callers that arrive while a sync is running wait for it and, if their commits
        were already counted by it, return without another fsync (one fsync for a burst).
        """
        wanted = self._commits
        with self._sync_lock:
            if self._synced >= wanted:
                return
            covered = self._commits  # every one of these is in the WAL file already
            self._fsync_wal()
            self._synced = covered

    def _fsync_wal(self) -> None:
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDWR | getattr(os, "O_BINARY", 0))
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                os.fsync(fd)
                return
            except OSError:
                pass
            finally:
                os.close(fd)
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            self._commits += 1

    def _salt(self) -> str:
        with self._tx() as db:
            row = db.execute("SELECT value FROM kv WHERE key='salt'").fetchone()
            if row:
                return str(row[0])
            salt = secrets.token_hex(16)
            db.execute("INSERT INTO kv(key, value) VALUES ('salt', ?)", (salt,))
            return salt

    def file_id(self, path: str) -> str:
        """A salted hash standing for a file name in events and logs (never the name)."""
        return hashlib.sha256(f"{self.salt}\0{path}".encode()).hexdigest()[:16]

    # -- items ---------------------------------------------------------------------------
    def is_known(self, path: str, size: int, mtime_ns: int) -> bool:
        """This exact file version was already taken (an index lookup, no set in memory)."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM items WHERE path=? AND size=? AND mtime_ns=? AND "
                "state<>'discovered' LIMIT 1", (path, size, mtime_ns)).fetchone()
        return row is not None

    def prune(self, older_than: float, exists: Callable[[str, int, int], bool]) -> int:
        """Forget finished items older than ``older_than`` whose file version is gone.

        Items whose file is still in place (``after_ack = "keep"``) are kept: they are what
        stops the reconcile scan from sending that file again.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, path, size, mtime_ns FROM items WHERE updated_at<? AND state IN "
                "('done','duplicate','superseded','vanished')", (older_than,)).fetchall()
        gone = [(r[0],) for r in rows if not exists(r[1], r[2], r[3])]
        with self._tx() as db:
            db.executemany("DELETE FROM deliveries WHERE item_id=?", gone)
            db.executemany("DELETE FROM items WHERE id=?", gone)
        return len(gone)

    def add_item(self, path: str, size: int, mtime_ns: int, folder: int,
                 settled_at: float | None = None) -> Item:
        now = self.clock()
        settled = settled_at or now
        fid = self.file_id(path)
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO items(path, size, mtime_ns, folder, file_id, state, discovered_at,"
                " settled_at, updated_at) VALUES (?,?,?,?,?, 'discovered', ?, ?, ?)",
                (path, size, mtime_ns, folder, fid, now, settled, now))
            self._bump(db, "seen")
            item_id = int(cur.lastrowid or 0)
        return Item(item_id, path, size, mtime_ns, None, folder, fid, "discovered", now, settled)

    def find(self, path: str, size: int, mtime_ns: int) -> Item | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_ITEM_COLS} FROM items WHERE path=? AND size=? AND mtime_ns=? "
                "ORDER BY id DESC LIMIT 1", (path, size, mtime_ns)).fetchone()
        return None if row is None else Item(*row)

    def item(self, item_id: int) -> Item:
        with self._lock:
            row = self._db.execute(f"SELECT {_ITEM_COLS} FROM items WHERE id=?",
                                   (item_id,)).fetchone()
        if row is None:
            raise JournalError(f"no item {item_id}")
        return Item(*row)

    def items_in(self, state: str) -> list[Item]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_ITEM_COLS} FROM items WHERE state=? ORDER BY id",
                                    (state,)).fetchall()
        return [Item(*r) for r in rows]

    def record_protected(self, existing: int | None, path: str, size: int, mtime_ns: int,
                         folder: int, settled_at: float | None, sha256: str,
                         artifacts: list[Artifact], deliveries: list[tuple[str, str, str]],
                         event: tuple[str, float, str] | None = None) -> int | None:
        """Record a protected file version in one transaction; return its item id.

        The item (``existing``, or a new one), its spool ``artifacts`` (their ``item_id``
        is filled in here), its ``(dest, mode, state)`` deliveries and the ``protected``
        event land together or not at all. If another item of the same path with the same
        content is already protected or done (only the mtime changed), this version is
        recorded as ``duplicate`` instead and None is returned: nothing is sent twice.
        """
        now = self.clock()
        with self._tx() as db:
            dup = db.execute(
                "SELECT 1 FROM items WHERE path=? AND sha256=? AND id<>? AND state IN "
                "('protected','done') LIMIT 1", (path, sha256, existing or -1)).fetchone()
            state = "duplicate" if dup is not None else "protected"
            if existing is None:
                cur = db.execute(
                    "INSERT INTO items(path, size, mtime_ns, sha256, folder, file_id, state, "
                    "discovered_at, settled_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (path, size, mtime_ns, sha256, folder, self.file_id(path), state, now,
                     settled_at or now, now))
                self._bump(db, "seen")
                item_id = int(cur.lastrowid or 0)
            else:
                db.execute("UPDATE items SET state=?, sha256=?, reason=NULL, updated_at=? "
                           "WHERE id=?", (state, sha256, now, existing))
                item_id = existing
            if dup is not None:
                return None
            db.executemany("INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?,?,?)",
                           [(item_id, a.mode, a.name, a.sha256, a.size, a.sop_instance_uid)
                            for a in artifacts])
            db.executemany("INSERT OR REPLACE INTO deliveries(item_id, dest, mode, state, "
                           "next_at) VALUES (?,?,?,?,0)",
                           [(item_id, dest, mode, st) for dest, mode, st in deliveries])
            self._bump(db, "protected")
            if event is not None:
                self._outbox_insert(db, *event)
        return item_id

    def set_state(self, item_id: int, state: str, reason: str | None = None,
                  counter: str | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE items SET state=?, reason=?, updated_at=? WHERE id=?",
                       (state, reason, self.clock(), item_id))
            if state != "protected":
                db.execute("DELETE FROM artifacts WHERE item_id=?", (item_id,))
                db.execute("UPDATE deliveries SET state='dropped' WHERE item_id=? AND "
                           "state='pending'", (item_id,))
            if counter:
                self._bump(db, counter)

    def set_done(self, item_ids: list[int]) -> None:
        """Mark finalized items done, in one transaction."""
        if not item_ids:
            return
        now = self.clock()
        with self._tx() as db:
            db.executemany("UPDATE items SET state='done', reason=NULL, updated_at=? WHERE id=?",
                           [(now, i) for i in item_ids])
            db.executemany("DELETE FROM artifacts WHERE item_id=?", [(i,) for i in item_ids])

    def artifacts(self, item_id: int) -> dict[str, Artifact]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM artifacts WHERE item_id=?",
                                    (item_id,)).fetchall()
        return {r[1]: Artifact(*r) for r in rows}

    def artifact_names(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self._db.execute("SELECT name FROM artifacts")}

    # -- deliveries ----------------------------------------------------------------------
    def due(self, dest: str, now: float, limit: int, exclude: set[int]) -> list[Delivery]:
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id, dest, mode, attempts FROM deliveries WHERE dest=? AND "
                "state='pending' AND next_at<=? ORDER BY next_at, item_id LIMIT ?",
                (dest, now, limit + len(exclude))).fetchall()
        return [Delivery(*r) for r in rows if r[0] not in exclude][:limit]

    def next_due_at(self, dest: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_at) FROM deliveries WHERE dest=? AND "
                                   "state='pending'", (dest,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def delivery_done(self, item_id: int, dest: str) -> bool:
        """Mark acknowledged; return True when every delivery of the item is resolved."""
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state='done', done_at=?, last_error=NULL "
                       "WHERE item_id=? AND dest=?", (self.clock(), item_id, dest))
            self._bump(db, "forwarded")
            left = db.execute("SELECT COUNT(*) FROM deliveries WHERE item_id=? AND "
                              "state='pending'", (item_id,)).fetchone()[0]
        return int(left) == 0

    def delivery_retry(self, item_id: int, dest: str, next_at: float, error: str) -> None:
        with self._tx() as db:
            db.execute("UPDATE deliveries SET attempts=attempts+1, next_at=?, last_error=? "
                       "WHERE item_id=? AND dest=?", (next_at, error, item_id, dest))
            self._bump(db, "retries")

    def has_pending(self, item_id: int) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM deliveries WHERE item_id=? AND "
                                   "state='pending' LIMIT 1", (item_id,)).fetchone()
        return row is not None

    def pending_count(self, dest: str | None = None) -> int:
        with self._lock:
            if dest is None:
                q = self._db.execute("SELECT COUNT(*) FROM items WHERE state IN "
                                     "('discovered','protected')")
            else:
                q = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE dest=? AND "
                                     "state='pending'", (dest,))
            return int(q.fetchone()[0])

    def spool_stats(self) -> tuple[int, int, float | None]:
        """(items in flight, spool bytes, discovered_at of the oldest in flight)."""
        with self._lock:
            n, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(discovered_at) FROM items WHERE state IN "
                "('discovered','protected')").fetchone()
            size = self._db.execute("SELECT COALESCE(SUM(size),0) FROM artifacts").fetchone()[0]
        return int(n), int(size), oldest

    def state_counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state")
            return {str(s): int(c) for s, c in rows}

    # -- counters and the event outbox ---------------------------------------------------
    @staticmethod
    def _bump(db: sqlite3.Connection, name: str, by: int = 1) -> None:
        db.execute("INSERT INTO counters(name, value) VALUES (?, ?) ON CONFLICT(name) "
                   "DO UPDATE SET value=value+excluded.value", (name, by))

    def bump(self, name: str, by: int = 1) -> None:
        with self._tx() as db:
            self._bump(db, name, by)

    def counters(self) -> dict[str, int]:
        with self._lock:
            return {str(n): int(v) for n, v in self._db.execute("SELECT * FROM counters")}

    def outbox_add(self, event_id: str, at: float, body: str) -> None:
        with self._tx() as db:
            self._outbox_insert(db, event_id, at, body)

    def _outbox_insert(self, db: sqlite3.Connection, event_id: str, at: float,
                       body: str) -> None:
        db.execute("INSERT OR IGNORE INTO outbox VALUES (?,?,?)", (event_id, at, body))
        # Bounded: while the central is unreachable for days, keep the newest events. The
        # trim walks the outbox, so it runs every OUTBOX_TRIM_EVERY inserts, not each one.
        self._outbox_inserts += 1
        if self._outbox_inserts % OUTBOX_TRIM_EVERY == 1:
            db.execute("DELETE FROM outbox WHERE event_id IN (SELECT event_id FROM outbox "
                       "ORDER BY at DESC LIMIT -1 OFFSET ?)", (OUTBOX_LIMIT,))

    def outbox_peek(self, limit: int) -> list[tuple[str, str]]:
        with self._lock:
            return [(str(a), str(b)) for a, b in self._db.execute(
                "SELECT event_id, body FROM outbox ORDER BY at LIMIT ?", (limit,))]

    def outbox_remove(self, event_ids: list[str]) -> None:
        with self._tx() as db:
            db.executemany("DELETE FROM outbox WHERE event_id=?", [(e,) for e in event_ids])

    def outbox_size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def same_version(path: str, size: int, mtime_ns: int) -> bool:
    """The file at ``path`` is still the version a journal item records (size and mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
