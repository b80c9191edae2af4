"""The durable journal (SQLite, WAL): where every file is, at every moment.

States of an item (one source file version)::

    protected ──► (every delivery done | skipped | released) ──► done
        │      └──► (a delivery quarantined, nothing pending) ──► quarantined
        └──► held (its folder left the config: nothing is touched until it is back)
    quarantined ──► retry ──► protected | requeued (protected again from the plaintext)
                └─► release ──► releasing ──► (after_ack applied) ──► done

An item is inserted already ``protected``, together with its artifacts and deliveries,
once a protect worker has written the spool copies; a file whose protection never
finished has no item and is found again by the start-up scan. A file that can never be
protected is inserted ``quarantined``. ``duplicate``, ``superseded`` and ``vanished``
mark versions that need nothing sent. ``requeued`` and ``releasing`` are requests
written by ``scanfort agent quarantine`` (possibly while the agent runs) that the agent
carries out.

Items name their folder by its stable key (the folder's resolved path), never by its
position in the config: reordering ``[[folders]]`` cannot apply another folder's policy.

Each item has one spool artifact per protection mode its destinations need, and one
delivery row per destination. A delivery is ``pending`` until its destination
acknowledged (``done``), cannot take that kind of object (``skipped``), refused it for
good (``quarantined``, with the peer's reason) or the operator accepted the loss
(``released``). The plaintext is only touched once no delivery of its item is pending
or quarantined.

One connection is shared by the agent's threads behind a lock; ``agent status`` and
``agent quarantine`` open their own connections, which WAL allows while the agent writes.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from agent import crashpoints
from agent.errors import JournalError
from agent.records import ITEM_COLS as _ITEM_COLS
from agent.records import SCHEMA as _SCHEMA
from agent.records import (
    SCHEMA_VERSION,
    Artifact,
    Delivery,
    DeliveryState,
    DueObject,
    Item,
)

__all__ = ["Artifact", "Delivery", "DeliveryState", "DueObject", "Item", "Journal",
           "same_version"]
#: An outbox row: (event id, time, JSON body), see ``Reporter.event_row``.
EventRow = tuple[str, float, str]

OUTBOX_LIMIT = 10_000
OUTBOX_TRIM_EVERY = 64
#: The WAL is cut back to this after each checkpoint (it would otherwise keep its peak).
WAL_SIZE_LIMIT = 1 << 20


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
                self._db.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
                self._db.executescript(_SCHEMA)
                self._migrate()
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal: {exc}") from exc
        self._commits = 0  # transactions committed by this connection
        self._synced = 0  # all commits up to this count are known durable
        self._sync_lock = threading.Lock()
        self._outbox_inserts = 0
        #: Called when a write fails because the volume is full (the agent gives back the
        #: spool's reserve); the caller retries.
        self.on_full: Callable[[], bool] | None = None
        if not readonly:
            self.salt = self._salt()

    def _migrate(self) -> None:
        """Journals of earlier versions: ``discovered`` items are resumed (``requeued``);
        integer folder indexes are not trusted (the config may have been reordered since)
        and are replaced by keys in :meth:`rekey_folders`; items get their study keys
        column and artifacts their UIDs column (empty for what was recorded before)."""
        (version,) = self._db.execute("PRAGMA user_version").fetchone()
        if version >= SCHEMA_VERSION:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(items)")}
            if "study_keys" not in columns:
                self._db.execute("ALTER TABLE items ADD COLUMN study_keys TEXT")
            if "uids" not in {r[1] for r in self._db.execute("PRAGMA table_info(artifacts)")}:
                self._db.execute("ALTER TABLE artifacts ADD COLUMN uids TEXT")
            self._db.execute("UPDATE items SET state='requeued' WHERE state='discovered'")
            self._db.execute("UPDATE items SET folder='?' || folder WHERE typeof(folder)<>'text'")
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self._db.execute("COMMIT")

    def rekey_folders(self, key_for: Callable[[str], str | None]) -> int:
        """Give items of a migrated journal their folder's key, found from their path
        (``key_for``); an item no configured folder contains keeps no key and is held."""
        with self._lock:
            rows = self._db.execute("SELECT id, path FROM items WHERE folder LIKE '?%'"
                                    ).fetchall()
        if not rows:
            return 0
        with self._tx() as db:
            db.executemany("UPDATE items SET folder=? WHERE id=?",
                           [(key_for(path) or "", item_id) for item_id, path in rows])
        return len(rows)

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
        """One write transaction. On a full volume the spool's reserve is given back
        (``on_full``) before the error is raised, so the caller's retry, which is usually
        what frees space (a delivery done, an item finalized), can commit."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                    self._db.execute("COMMIT")
                except BaseException:
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                    raise
            except sqlite3.OperationalError as exc:
                if _disk_full(exc) and self.on_full is not None:
                    self.on_full()
                raise
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
                "state<>'requeued' LIMIT 1", (path, size, mtime_ns)).fetchone()
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

    def add_quarantined(self, path: str, size: int, mtime_ns: int, folder: str,
                        reason: str, settled_at: float | None = None,
                        event: EventRow | None = None) -> Item:
        """Record a version that can never be protected as ``quarantined`` (plaintext kept)."""
        now = self.clock()
        settled = settled_at or now
        fid = self.file_id(path)
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO items(path, size, mtime_ns, folder, file_id, state, reason, "
                "discovered_at, settled_at, updated_at) VALUES (?,?,?,?,?,'quarantined',?,?,?,?)",
                (path, size, mtime_ns, folder, fid, reason, now, settled, now))
            self._bump(db, "seen")
            self._bump(db, "quarantined")
            if event is not None:
                self._outbox_insert(db, *event)
            item_id = int(cur.lastrowid or 0)
        return Item(item_id, path, size, mtime_ns, None, folder, fid, "quarantined", now,
                    settled, reason, now)

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

    def items_of(self, item_ids: Sequence[int]) -> list[Item]:
        """The items with these ids (in id order; unknown ids are left out)."""
        if not item_ids:
            return []
        marks = ",".join("?" * len(item_ids))
        with self._lock:
            rows = self._db.execute(f"SELECT {_ITEM_COLS} FROM items WHERE id IN ({marks}) "
                                    "ORDER BY id", list(item_ids)).fetchall()
        return [Item(*r) for r in rows]

    def items_in(self, state: str) -> list[Item]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_ITEM_COLS} FROM items WHERE state=? ORDER BY id",
                                    (state,)).fetchall()
        return [Item(*r) for r in rows]

    def record_protected(self, existing: int | None, path: str, size: int, mtime_ns: int,
                         folder: str, settled_at: float | None, sha256: str,
                         artifacts: list[Artifact], deliveries: Sequence[tuple[str, ...]],
                         event: EventRow | None = None,
                         study_keys: Sequence[str] = ()) -> int | None:
        """Record a protected file version in one transaction; return its item id.

        The item (``existing``, or a new one), its spool ``artifacts`` (their ``item_id``
        is filled in here), its ``(dest, mode, state[, reason])`` deliveries and the ``protected``
        event land together or not at all. If another item of the same path with the same
        content is already protected or done (only the mtime changed), this version is
        recorded as ``duplicate`` instead and None is returned: nothing is sent twice.
        """
        now = self.clock()
        keys = " ".join(study_keys) or None
        with self._tx() as db:
            dup = db.execute(
                "SELECT 1 FROM items WHERE path=? AND sha256=? AND id<>? AND state IN "
                "('protected','done') LIMIT 1", (path, sha256, existing or -1)).fetchone()
            state = "duplicate" if dup is not None else "protected"
            if existing is None:
                cur = db.execute(
                    "INSERT INTO items(path, size, mtime_ns, sha256, folder, file_id, state, "
                    "discovered_at, settled_at, updated_at, study_keys) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    (path, size, mtime_ns, sha256, folder, self.file_id(path), state, now,
                     settled_at or now, now, keys))
                item_id = int(cur.lastrowid or 0)
            else:
                db.execute("UPDATE items SET state=?, sha256=?, reason=NULL, updated_at=?, "
                           "study_keys=? WHERE id=?", (state, sha256, now, keys, existing))
                item_id = existing
            if dup is not None:
                if existing is None:
                    self._bump(db, "seen")
                return None
            db.executemany("INSERT OR REPLACE INTO artifacts VALUES (?,?,?,?,?,?,?)",
                           [(item_id, a.mode, a.name, a.sha256, a.size, a.sop_instance_uid,
                             a.uids) for a in artifacts])
            if existing is not None:  # a new item has none yet
                db.execute("DELETE FROM deliveries WHERE item_id=?", (item_id,))
            db.executemany("INSERT INTO deliveries(item_id, dest, mode, state, last_error, "
                           "next_at) VALUES (?,?,?,?,?,0)",
                           [(item_id, d[0], d[1], d[2], d[3] if len(d) > 3 else None)
                            for d in deliveries])
            self._bump_many(db, ("seen", "protected") if existing is None else ("protected",))
            if event is not None:
                self._outbox_insert(db, *event)
        return item_id

    def set_state(self, item_id: int, state: str, reason: str | None = None,
                  counter: str | None = None,
                  event: EventRow | None = None) -> None:
        """Move an item to ``state``. Leaving the in-flight states drops its artifacts and
        pending deliveries, except for ``quarantined`` and ``held`` items, whose copies
        wait in the spool for a retry."""
        with self._tx() as db:
            db.execute("UPDATE items SET state=?, reason=?, updated_at=? WHERE id=?",
                       (state, reason, self.clock(), item_id))
            if state not in ("protected", "quarantined", "held"):
                db.execute("DELETE FROM artifacts WHERE item_id=?", (item_id,))
                db.execute("UPDATE deliveries SET state='dropped' WHERE item_id=? AND "
                           "state='pending'", (item_id,))
            if counter:
                self._bump(db, counter)
            if event is not None:
                self._outbox_insert(db, *event)

    def set_done(self, item_ids: list[int]) -> None:
        """Mark finalized items done, in one transaction (a released item keeps its
        reason: the operator accepted a loss)."""
        if not item_ids:
            return
        now = self.clock()
        with self._tx() as db:
            db.executemany("UPDATE items SET state='done', reason=CASE WHEN state='releasing' "
                           "THEN reason ELSE NULL END, updated_at=? WHERE id=?",
                           [(now, i) for i in item_ids])
            db.executemany("DELETE FROM artifacts WHERE item_id=?", [(i,) for i in item_ids])
        crashpoints.reached("finalize.after_done")

    def artifacts(self, item_id: int) -> dict[str, Artifact]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM artifacts WHERE item_id=?",
                                    (item_id,)).fetchall()
        return {r[1]: Artifact(*r) for r in rows}

    def artifact_names_of(self, item_ids: Sequence[int]) -> list[str]:
        if not item_ids:
            return []
        marks = ",".join("?" * len(item_ids))
        with self._lock:
            return [str(r[0]) for r in self._db.execute(
                f"SELECT name FROM artifacts WHERE item_id IN ({marks})", list(item_ids))]

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

    def due_objects(self, dest: str, now: float, limit: int,
                    exclude: set[int]) -> list[DueObject]:
        """Like :meth:`due`, with the item and artifact fields sending needs."""
        with self._lock:
            rows = self._db.execute(
                "SELECT d.item_id, d.dest, d.mode, d.attempts, i.path, i.folder, i.file_id, "
                "i.state, a.name, a.sha256, a.size, a.sop_instance_uid, i.study_keys, a.uids "
                "FROM deliveries d JOIN items i ON i.id = d.item_id LEFT JOIN artifacts a "
                "ON a.item_id = d.item_id AND a.mode = d.mode WHERE d.dest=? AND "
                "d.state='pending' AND d.next_at<=? ORDER BY d.next_at, d.item_id LIMIT ?",
                (dest, now, limit + len(exclude))).fetchall()
        return [DueObject(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10],
                          r[11], tuple((r[12] or "").split()), _uids(r[13]))
                for r in rows if r[0] not in exclude][:limit]

    def next_due_at(self, dest: str) -> float | None:
        with self._lock:
            row = self._db.execute("SELECT MIN(next_at) FROM deliveries WHERE dest=? AND "
                                   "state='pending'", (dest,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def delivery_done(self, item_id: int, dest: str) -> bool:
        """Mark acknowledged; return True when no delivery of the item is pending."""
        return bool(self.deliveries_done(dest, [(item_id, None)]))

    def deliveries_done(self, dest: str,
                        acked: Sequence[tuple[int, EventRow | None]]) -> list[int]:
        """Mark these items' deliveries to ``dest`` acknowledged, each with its
        ``forwarded`` event, in one transaction; return the items with no delivery
        pending any more (in order)."""
        now = self.clock()
        ids = [item_id for item_id, _ in acked]
        with self._tx() as db:
            changed = 0
            for item_id, event in acked:
                cur = db.execute("UPDATE deliveries SET state='done', done_at=?, "
                                 "last_error=NULL WHERE item_id=? AND dest=? AND "
                                 "state='pending'", (now, item_id, dest))
                if cur.rowcount == 1:  # not already done (a resend): reported once
                    changed += 1
                    if event is not None:
                        self._outbox_insert(db, *event)
            if changed:
                self._bump(db, "forwarded", changed)
            marks = ",".join("?" * len(ids))
            pending = {r[0] for r in db.execute(
                f"SELECT DISTINCT item_id FROM deliveries WHERE item_id IN ({marks}) "
                "AND state='pending'", ids)}
        crashpoints.reached("journal.after_delivery")
        return [i for i in dict.fromkeys(ids) if i not in pending]

    def delivery_quarantine(self, item_id: int, dest: str, reason: str,
                            event: EventRow | None = None) -> bool:
        """This destination refused the object for good: park this delivery (the others
        go on); return True when no delivery of the item is pending any more."""
        with self._tx() as db:
            db.execute("UPDATE deliveries SET state='quarantined', last_error=?, attempts="
                       "attempts+1 WHERE item_id=? AND dest=? AND state='pending'",
                       (reason[:2000], item_id, dest))
            self._bump(db, "quarantined")
            if event is not None:
                self._outbox_insert(db, *event)
            left = db.execute("SELECT COUNT(*) FROM deliveries WHERE item_id=? AND "
                              "state='pending'", (item_id,)).fetchone()[0]
        return int(left) == 0

    def delivery_states(self, item_id: int) -> list[DeliveryState]:
        with self._lock:
            rows = self._db.execute("SELECT dest, mode, state, attempts, last_error FROM "
                                    "deliveries WHERE item_id=? ORDER BY dest",
                                    (item_id,)).fetchall()
        return [DeliveryState(*r) for r in rows]

    def delivery_states_of(self, item_ids: Sequence[int]) -> dict[int, list[DeliveryState]]:
        """:meth:`delivery_states` of several items in one query."""
        out: dict[int, list[DeliveryState]] = {i: [] for i in item_ids}
        if not item_ids:
            return out
        marks = ",".join("?" * len(item_ids))
        with self._lock:
            rows = self._db.execute(
                "SELECT item_id, dest, mode, state, attempts, last_error FROM deliveries "
                f"WHERE item_id IN ({marks}) ORDER BY item_id, dest", list(item_ids)).fetchall()
        for r in rows:
            out[int(r[0])].append(DeliveryState(*r[1:]))
        return out

    # -- the operator's requests (scanfort agent quarantine) ------------------------------
    def quarantined(self) -> list[Item]:
        with self._lock:
            rows = self._db.execute(f"SELECT {_ITEM_COLS} FROM items WHERE state IN "
                                    "('quarantined','held') ORDER BY id").fetchall()
        return [Item(*r) for r in rows]

    def request_retry(self, item_id: int, spool_has: Callable[[str], bool]) -> str:
        """Retry a quarantined item: its refused deliveries are sent again if their copies
        are still in the spool (``spool_has``), else the file is protected again. Returns
        what was done (``resent`` | ``requeued``)."""
        with self._tx() as db:
            row = db.execute("SELECT state FROM items WHERE id=?", (item_id,)).fetchone()
            if row is None or row[0] != "quarantined":
                raise JournalError(f"item {item_id} is not quarantined" + (
                    " (held: put its folder back in the config)" if row and row[0] == "held"
                    else ""))
            arts = {m: n for m, n in db.execute(
                "SELECT mode, name FROM artifacts WHERE item_id=?", (item_id,))}
            refused = [m for (m,) in db.execute(
                "SELECT mode FROM deliveries WHERE item_id=? AND state='quarantined'",
                (item_id,))]
            if refused and all(m in arts and spool_has(arts[m]) for m in refused):
                db.execute("UPDATE deliveries SET state='pending', attempts=0, next_at=0 "
                           "WHERE item_id=? AND state='quarantined'", (item_id,))
                db.execute("UPDATE items SET state='protected', updated_at=? WHERE id=?",
                           (self.clock(), item_id))
                return "resent"
            db.execute("DELETE FROM artifacts WHERE item_id=?", (item_id,))
            db.execute("UPDATE deliveries SET state='dropped' WHERE item_id=? AND state IN "
                       "('pending','quarantined')", (item_id,))
            db.execute("UPDATE items SET state='requeued', updated_at=? WHERE id=?",
                       (self.clock(), item_id))
            return "requeued"

    def request_release(self, item_id: int) -> None:
        """The operator accepts the loss: refused deliveries are released and the item's
        ``after_ack`` is applied (by the agent) as if every destination had taken it."""
        with self._tx() as db:
            row = db.execute("SELECT state, reason FROM items WHERE id=?", (item_id,)).fetchone()
            if row is None or row[0] != "quarantined":
                raise JournalError(f"item {item_id} is not quarantined")
            db.execute("UPDATE deliveries SET state='released' WHERE item_id=? AND state IN "
                       "('pending','quarantined')", (item_id,))
            db.execute("UPDATE items SET state='releasing', reason=?, updated_at=? WHERE id=?",
                       (f"released by the operator ({row[1] or 'quarantined'})",
                        self.clock(), item_id))

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
                                     "('protected','requeued','releasing')")
            else:
                q = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE dest=? AND "
                                     "state='pending'", (dest,))
            return int(q.fetchone()[0])

    def spool_stats(self) -> tuple[int, int, float | None]:
        """(items in flight, spool bytes, discovered_at of the oldest in flight)."""
        with self._lock:
            n, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(discovered_at) FROM items WHERE state IN "
                "('protected','requeued','releasing')").fetchone()
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

    @staticmethod
    def _bump_many(db: sqlite3.Connection, names: Sequence[str]) -> None:
        db.executemany("INSERT INTO counters(name, value) VALUES (?, 1) ON CONFLICT(name) "
                       "DO UPDATE SET value=value+1", [(n,) for n in names])

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


def uids_column(uids: Sequence[str] | None) -> str | None:
    """(study, series, SOP) UIDs as an artifact's ``uids`` column (a JSON list)."""
    return None if uids is None else json.dumps([str(u) for u in uids])


def _uids(stored: str | None) -> tuple[str, str, str] | None:
    """An artifact's ``uids`` column as (study, series, SOP); None when not recorded."""
    try:
        parts = json.loads(stored) if stored else None
    except ValueError:
        return None
    if not isinstance(parts, list) or len(parts) != 3 or \
            not all(isinstance(p, str) for p in parts):
        return None
    return parts[0], parts[1], parts[2]


def same_version(path: str, size: int, mtime_ns: int) -> bool:
    """The file at ``path`` is still the version a journal item records (size and mtime)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return (st.st_size, st.st_mtime_ns) == (size, mtime_ns)


def _disk_full(exc: sqlite3.Error) -> bool:
    return "full" in str(exc).lower()
