"""The journal's tables and the rows read from them (see ``agent.journal`` for states)."""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    sha256 TEXT, folder TEXT NOT NULL, file_id TEXT NOT NULL,
    state TEXT NOT NULL, reason TEXT,
    discovered_at REAL NOT NULL, settled_at REAL, updated_at REAL NOT NULL,
    study_keys TEXT
);
CREATE INDEX IF NOT EXISTS items_version ON items(path, size, mtime_ns);
CREATE INDEX IF NOT EXISTS items_state ON items(state);
CREATE TABLE IF NOT EXISTS artifacts (
    item_id INTEGER NOT NULL, mode TEXT NOT NULL, name TEXT NOT NULL,
    sha256 TEXT NOT NULL, size INTEGER NOT NULL, sop_instance_uid TEXT,
    uids TEXT,
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
SCHEMA_VERSION = 4


@dataclass(frozen=True)
class Item:
    id: int
    path: str
    size: int
    mtime_ns: int
    sha256: str | None
    folder: str  # the folder's stable key (FolderConfig.key)
    file_id: str
    state: str
    discovered_at: float
    settled_at: float | None
    reason: str | None = None
    updated_at: float = 0.0


@dataclass(frozen=True)
class Artifact:
    item_id: int
    mode: str
    name: str  # file name inside the spool dir
    sha256: str
    size: int
    sop_instance_uid: str | None
    #: DICOM mode: the copy's Study, Series and SOP Instance UIDs as stored, a JSON list
    #: (what the protect worker read from it); None for file mode or when not recorded.
    uids: str | None = None


@dataclass(frozen=True)
class Delivery:
    item_id: int
    dest: str
    mode: str
    attempts: int


@dataclass(frozen=True)
class DueObject:
    """A pending delivery with what sending it needs (one query per claim, not three)."""

    item_id: int
    dest: str
    mode: str
    attempts: int
    path: str  # the source (for a folder destination's relative name)
    folder: str
    file_id: str
    state: str  # the item's
    name: str | None  # the spool artifact of ``mode`` (None: dropped meanwhile)
    sha256: str | None
    size: int | None
    sop_instance_uid: str | None
    study_keys: tuple[str, ...] = ()  # the item's keyed study hashes (DICOM mode)
    uids: tuple[str, str, str] | None = None  # the artifact's stored UIDs (DICOM mode)


@dataclass(frozen=True)
class DeliveryState:
    dest: str
    mode: str
    state: str
    attempts: int
    last_error: str | None


ITEM_COLS = ("id, path, size, mtime_ns, sha256, folder, file_id, state, discovered_at, "
              "settled_at, reason, updated_at")
