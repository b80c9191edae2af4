"""The SQLite journal: states, deliveries, outbox, pruning, concurrent read-only access."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from agent.errors import JournalError
from agent.journal import Artifact, Journal, uids_column


def test_item_lifecycle_and_deliveries(tmp_path: Path) -> None:
    clock = [100.0]
    j = Journal(tmp_path / "j.sqlite3", clock=lambda: clock[0])
    assert not j.is_known("/in/a.dcm", 10, 5)
    art = Artifact(0, "file", "0000000001.file", "ab" * 32, 20, None)
    item_id = j.record_protected(None, "/in/a.dcm", 10, 5, "/in", None, "cd" * 32, [art],
                                 [("central", "file", "pending"), ("pacs", "-", "skipped")])
    assert item_id is not None
    item = j.item(item_id)
    art = Artifact(item.id, "file", "0000000001.file", "ab" * 32, 20, None)
    assert j.find("/in/a.dcm", 10, 5) == item
    assert j.is_known("/in/a.dcm", 10, 5)
    assert j.artifacts(item.id) == {"file": art}
    assert [d.item_id for d in j.due("central", 100.0, 10, set())] == [item.id]
    assert j.due("central", 100.0, 10, {item.id}) == []
    j.delivery_retry(item.id, "central", 130.0, "HTTP 503")
    assert j.due("central", 120.0, 10, set()) == []
    assert j.next_due_at("central") == 130.0
    assert j.pending_count("central") == 1
    assert j.delivery_done(item.id, "central") is True  # the skipped one does not block
    j.set_state(item.id, "done")
    assert j.artifacts(item.id) == {}
    assert j.counters() == {"seen": 1, "protected": 1, "retries": 1, "forwarded": 1}
    # another process (``agent status``) can read while this one holds the journal
    ro = sqlite3.connect(f"file:{tmp_path / 'j.sqlite3'}?mode=ro", uri=True)
    assert dict(ro.execute("SELECT state, COUNT(*) FROM items GROUP BY state")) == {"done": 1}
    ro.close()
    # the salted file id is stable across restarts and never the name
    fid = j.file_id("/in/a.dcm")
    j.close()
    j2 = Journal(tmp_path / "j.sqlite3")
    assert j2.file_id("/in/a.dcm") == fid and "a.dcm" not in fid
    # pruning forgets only finished items whose file version is gone
    clock[0] = 200.0
    assert j2.prune(older_than=10**12, exists=lambda p, s, m: True) == 0
    assert j2.prune(older_than=10**12, exists=lambda p, s, m: False) == 1
    assert j2.state_counts() == {}


def test_outbox_is_bounded_and_ordered(tmp_path: Path, monkeypatch) -> None:
    import agent.journal as journal_mod

    monkeypatch.setattr(journal_mod, "OUTBOX_LIMIT", 5)
    monkeypatch.setattr(journal_mod, "OUTBOX_TRIM_EVERY", 4)  # trimmed at inserts 1, 5, 9
    j = Journal(tmp_path / "j.sqlite3")
    for i in range(8):
        j.outbox_add(f"e{i}", float(i), f"{{\"n\": {i}}}")
    assert j.outbox_size() == 8  # between trims the bound overshoots by < OUTBOX_TRIM_EVERY
    j.outbox_add("e8", 8.0, '{"n": 8}')
    assert j.outbox_size() == 5
    peek = j.outbox_peek(3)
    assert [e for e, _ in peek] == ["e4", "e5", "e6"]  # the newest are kept, oldest first
    j.outbox_remove([e for e, _ in peek])
    assert [e for e, _ in j.outbox_peek(10)] == ["e7", "e8"]


def test_record_protected_new_item_event_and_duplicate(tmp_path: Path) -> None:
    """A new version lands with its artifacts, deliveries and event in one transaction; the
    same content under a new mtime is recorded as a duplicate and gets nothing to send."""
    j = Journal(tmp_path / "j.sqlite3")
    art = Artifact(0, "file", "abc.file", "ab" * 32, 20, None)
    item_id = j.record_protected(None, "/in/b.dcm", 10, 5, "/in", 99.0, "ef" * 32, [art],
                                 [("central", "file", "pending")],
                                 event=("ev1", 1.0, '{"kind": "protected"}'))
    assert item_id is not None
    item = j.item(item_id)
    assert (item.state, item.sha256, item.settled_at) == ("protected", "ef" * 32, 99.0)
    assert j.artifacts(item_id)["file"].item_id == item_id
    assert j.outbox_peek(10) == [("ev1", '{"kind": "protected"}')]
    assert j.counters() == {"seen": 1, "protected": 1}
    again = j.record_protected(None, "/in/b.dcm", 10, 6, "/in", None, "ef" * 32,
                               [Artifact(0, "file", "def.file", "12" * 32, 20, None)],
                               [("central", "file", "pending")])
    assert again is None
    assert j.state_counts() == {"protected": 1, "duplicate": 1}
    assert j.is_known("/in/b.dcm", 10, 6)  # not offered again by the reconcile scan
    assert j.pending_count("central") == 1 and j.artifact_names() == {"abc.file"}


def test_sync_fsyncs_once_for_commits_already_covered(tmp_path: Path, monkeypatch) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    calls = []
    monkeypatch.setattr(j, "_fsync_wal", lambda: calls.append(1))
    j.bump("seen")
    j.sync()
    j.sync()  # nothing committed since: no second fsync
    assert len(calls) == 1
    j.bump("seen")
    j.sync()
    assert len(calls) == 2


def test_a_refused_delivery_is_quarantined_alone_and_retry_or_release_it(tmp_path: Path) -> None:
    j = Journal(tmp_path / "j.sqlite3")
    art = Artifact(0, "dicom", "ab" * 10 + ".dicom", "ab" * 32, 20, "1.2.3")
    item_id = j.record_protected(None, "/in/c.dcm", 10, 5, "/in", None, "cd" * 32, [art],
                                 [("pacs", "dicom", "pending"), ("share", "dicom", "pending")])
    assert item_id is not None
    assert j.delivery_quarantine(item_id, "pacs", "stow-rs: HTTP 400: Bad file format") is False
    assert j.pending_count("share") == 1  # the other destination goes on
    assert j.delivery_done(item_id, "share") is True
    states = {d.dest: (d.state, d.last_error) for d in j.delivery_states(item_id)}
    assert states == {"pacs": ("quarantined", "stow-rs: HTTP 400: Bad file format"),
                      "share": ("done", None)}
    j.set_state(item_id, "quarantined", "refused by pacs")
    assert j.artifacts(item_id)  # its copy waits for a retry
    assert [it.id for it in j.quarantined()] == [item_id]
    # retry with the copy still in the spool: only the refused delivery goes out again
    assert j.request_retry(item_id, lambda name: True) == "resent"
    assert (j.item(item_id).state, j.pending_count("pacs"), j.pending_count("share")) == \
        ("protected", 1, 0)
    j.delivery_quarantine(item_id, "pacs", "again")
    j.set_state(item_id, "quarantined", "refused by pacs")
    # retry without the copy: the file is protected again from its plaintext
    assert j.request_retry(item_id, lambda name: False) == "requeued"
    assert j.item(item_id).state == "requeued" and not j.is_known("/in/c.dcm", 10, 5)
    j.set_state(item_id, "quarantined", "refused by pacs")
    j.request_release(item_id)
    item = j.item(item_id)
    assert item.state == "releasing" and item.reason is not None
    assert "released by the operator" in item.reason
    with pytest.raises(JournalError):
        j.request_release(item_id)  # no longer quarantined


def _earlier_journal(tmp_path: Path, script: str, *, folder_index: bool = False,
                     study_keys: bool = False) -> Path:
    """A journal as an earlier version wrote it, and its path: the ``items`` table (with
    ``folder`` a position in the config when ``folder_index``, a ``study_keys`` column when
    ``study_keys``), then whatever ``script`` adds."""
    folder = "INTEGER" if folder_index else "TEXT"
    keys = ", study_keys TEXT" if study_keys else ""
    path = tmp_path / "j.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(f"""
        CREATE TABLE items (id INTEGER PRIMARY KEY, path TEXT NOT NULL, size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL, sha256 TEXT, folder {folder} NOT NULL,
            file_id TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
            discovered_at REAL NOT NULL, settled_at REAL, updated_at REAL NOT NULL{keys});
        {script}""")
    db.commit()
    db.close()
    return path


def test_a_journal_of_folder_indexes_is_rekeyed_by_path_never_by_position(tmp_path: Path) -> None:
    """Journals written with ``folder INTEGER`` (a position in the config): the position
    is not trusted after an upgrade, the item's path decides; no folder, no key (held)."""
    path = _earlier_journal(tmp_path, folder_index=True, script="""
        INSERT INTO items VALUES (1, '/b/x.dcm', 1, 1, 'aa', 0, 'f1', 'protected', NULL, 0, 0, 0);
        INSERT INTO items VALUES (2, '/a/y.dcm', 1, 1, NULL, 1, 'f2', 'discovered', NULL, 0, 0, 0);
        INSERT INTO items VALUES (3, '/gone/z', 1, 1, 'bb', 0, 'f3', 'protected', NULL, 0, 0, 0);
    """)
    j = Journal(path)
    keys = {"/a": "/a", "/b": "/b"}
    assert j.rekey_folders(lambda p: keys.get(p.rsplit("/", 1)[0])) == 3
    assert [(j.item(i).folder, j.item(i).state) for i in (1, 2, 3)] == \
        [("/b", "protected"), ("/a", "requeued"), ("", "protected")]
    assert j.rekey_folders(lambda p: "/x") == 0  # once


def test_acknowledgements_and_their_forwarded_events_commit_together_once(
        tmp_path: Path) -> None:
    """The sender's batch: each delivery done with its event in one transaction; a resent
    acknowledgement adds no second event; a failed commit leaves neither."""
    j = Journal(tmp_path / "j.sqlite3")
    keys = ["ab" * 32, "cd" * 32]
    recorded = [j.record_protected(None, f"/in/{n}.dcm", 10, 5, "/in", None, f"{n:02d}" * 32,
                                   [Artifact(0, "dicom", f"{n}.dicom", "ee" * 32, 20, "1.2")],
                                   [("pacs", "dicom", "pending"),
                                    ("share", "dicom", "pending")],
                                   study_keys=keys if n == 1 else ())
                for n in (1, 2)]
    ids = [i for i in recorded if i is not None]
    assert len(ids) == 2
    due = j.due_objects("pacs", 0.0, 10, set())
    assert [(d.item_id, d.name, d.state, d.study_keys) for d in due] == [
        (ids[0], "1.dicom", "protected", tuple(keys)), (ids[1], "2.dicom", "protected", ())]
    assert j.deliveries_done("pacs", [(i, (f"ev{i}", 1.0, "{}")) for i in ids]) == []
    assert j.deliveries_done("share", [(ids[0], ("evs", 1.0, "{}"))]) == [ids[0]]
    assert j.deliveries_done("pacs", [(ids[0], ("again", 1.0, "{}"))]) == [ids[0]]  # resent
    assert sorted(e for e, _ in j.outbox_peek(10)) == sorted([f"ev{ids[0]}", f"ev{ids[1]}",
                                                              "evs"])
    assert j.counters()["forwarded"] == 3

    class Boom(Exception):
        pass

    real = j._outbox_insert

    def failing(*args):
        real(*args)
        raise Boom()

    j._outbox_insert = failing  # type: ignore[method-assign]
    with pytest.raises(Boom):
        j.deliveries_done("share", [(ids[1], ("lost", 1.0, "{}"))])
    j._outbox_insert = real  # type: ignore[method-assign]
    assert j.pending_count("share") == 1 and "lost" not in {e for e, _ in j.outbox_peek(10)}


def test_artifact_uids_round_trip_and_an_older_journal_gains_the_column(tmp_path: Path) -> None:
    """DICOM-mode artifacts carry their stored UIDs to the sender; a journal written before
    the column existed opens, and its artifacts are sent as before (UIDs unknown)."""
    path = _earlier_journal(tmp_path, study_keys=True, script="""
        CREATE TABLE artifacts (item_id INTEGER NOT NULL, mode TEXT NOT NULL,
            name TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
            sop_instance_uid TEXT, PRIMARY KEY (item_id, mode));
        CREATE TABLE deliveries (item_id INTEGER NOT NULL, dest TEXT NOT NULL,
            mode TEXT NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
            next_at REAL NOT NULL DEFAULT 0, last_error TEXT, done_at REAL,
            PRIMARY KEY (item_id, dest));
        INSERT INTO items VALUES (1, '/a/x.dcm', 1, 1, 'aa', '/a', 'f1', 'protected', NULL,
            0, 0, 0, NULL);
        INSERT INTO artifacts VALUES (1, 'dicom', 'old.dicom', 'bb', 9, '1.2.3');
        INSERT INTO deliveries(item_id, dest, mode, state) VALUES (1, 'c', 'dicom', 'pending');
        PRAGMA user_version=3;
    """)
    j = Journal(path)
    [old] = j.due_objects("c", 1e12, 10, set())
    assert (old.name, old.sop_instance_uid, old.uids) == ("old.dicom", "1.2.3", None)
    uids = ("1.2.840.1", "1.2.840.2", "1.2.840.3")
    new = j.record_protected(None, "/a/y.dcm", 2, 2, "/a", None, "cc" * 32,
                             [Artifact(0, "dicom", "new.dicom", "dd" * 32, 20, uids[2],
                                       uids_column(uids))],
                             [("c", "dicom", "pending")])
    assert new is not None
    due = {d.item_id: d for d in j.due_objects("c", 1e12, 10, set())}
    assert due[new].uids == uids and due[1].uids is None
    assert j.artifacts(new)["dicom"].uids == uids_column(uids)
    j.close()
