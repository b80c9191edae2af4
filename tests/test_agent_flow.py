"""End to end in one process: watched folder → protected copies → folder / central."""

from __future__ import annotations

import json
import os
from io import BytesIO
from pathlib import Path

import cipher
from tests.helpers import (
    TOKEN,
    Receiver,
    ct_slice,
    decrypt,
    drop,
    running,
    wait_until,
    write_config,
)


def test_folder_destination_file_mode_and_after_ack_delete(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}},
                          folder={"after_ack": "delete"})
    inbox = config.folders[0].path
    (inbox / "sub").mkdir()
    originals = {f"sub/scan{i}.bin": os.urandom(5000 + i) for i in range(5)}
    (inbox / ".hidden").write_bytes(b"x")
    (inbox / "ignored.tmp").write_bytes(b"y")
    (inbox / "empty").write_bytes(b"")
    with running(config) as agent:
        for rel, data in originals.items():
            drop(inbox / rel, data)
        wait_until(lambda: all(not (inbox / rel).exists() for rel in originals))
        # the plaintext goes first, then the item is marked done
        wait_until(lambda: agent.journal.state_counts().get("done") == 5)
        counts = agent.journal.state_counts()
    for rel, data in originals.items():
        assert decrypt((outbox / (rel + ".age")).read_bytes(), identity) == data
    assert counts == {"done": 5}
    # hidden, .tmp and empty files are never taken (nor deleted)
    assert (inbox / ".hidden").exists() and (inbox / "ignored.tmp").exists()
    assert (inbox / "empty").exists()
    assert not list((config.spool_dir).glob("*.file"))  # spool drained


def test_file_mode_only_folder_takes_dicom_without_the_image_parse(
        tmp_path: Path, site_keys, monkeypatch) -> None:
    """No destination depends on "is a DICOM image": the full parse is skipped."""
    identity, recipient = site_keys
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}},
                          folder={"after_ack": "delete"})

    def no_parse(src: object) -> bool:
        raise AssertionError("is_dicom_with_pixels called for a file-mode-only folder")

    monkeypatch.setattr(cipher, "is_dicom_with_pixels", no_parse)
    inbox = config.folders[0].path
    data = ct_slice()
    with running(config) as agent:
        drop(inbox / "ct.dcm", data)
        wait_until(lambda: not (inbox / "ct.dcm").exists())
        counts = agent.journal.state_counts()
    assert counts == {"done": 1}
    assert decrypt((outbox / "ct.dcm.age").read_bytes(), identity) == data


def test_central_destination_heartbeat_and_events(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    with Receiver() as rx:
        config = write_config(
            tmp_path, [recipient], {"central": {"kind": "central"}},
            central={"url": rx.url, "token": TOKEN, "agent_id": "a1", "heartbeat_seconds": 1})
        inbox = config.folders[0].path
        data = [ct_slice(seed=i) for i in range(3)]
        with running(config) as agent:
            for i, d in enumerate(data):
                drop(inbox / f"Doe^John_{i}.dcm", d)
            wait_until(lambda: agent.journal.state_counts().get("done") == 3)
            wait_until(lambda: any(h["counters"].get("forwarded") == 3 for h in rx.heartbeats))
        stored = sorted(decrypt(obj, identity) for obj in rx.objects.values())
        assert stored == sorted(data)
        # The central path defaults to file mode: objects are age files.
        assert all(obj.startswith(b"age-encryption.org/v1") for obj in rx.objects.values())
        kinds = {e["kind"] for e in rx.events}
        assert {"started", "protected"} <= kinds
        wire = json.dumps(rx.heartbeats + rx.events)
        # No file name and no patient attribute on the wire.
        assert "Doe" not in wire and "SYN0" not in wire and "Synthetic" not in wire
        logs = (config.log_dir).glob("*.log*")
        assert all("Doe" not in p.read_text() for p in logs)


def test_plaintext_kept_until_every_destination_acknowledged(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    outbox = tmp_path / "outbox"
    with Receiver() as rx:
        rx.fail_with = 503
        config = write_config(
            tmp_path, [recipient],
            {"share": {"kind": "folder", "path": str(outbox)}, "central": {"kind": "central"}},
            folder={"after_ack": "move", "move_to": str(tmp_path / "sent")},
            central={"url": rx.url, "token": TOKEN, "heartbeat_seconds": 1})
        inbox = config.folders[0].path
        payload = os.urandom(20000)
        with running(config) as agent:
            drop(inbox / "a.raw", payload)
            wait_until(lambda: (outbox / "a.raw.age").exists())
            # several retries against the failing central
            wait_until(lambda: agent.journal.counters().get("retries", 0) >= 2)
            assert (inbox / "a.raw").read_bytes() == payload  # still in place
            rx.fail_with = None
            wait_until(lambda: (tmp_path / "sent" / "a.raw").exists())
        assert not (inbox / "a.raw").exists()
        assert [decrypt(o, identity) for o in rx.objects.values()] == [payload]


def test_auth_failure_pauses_destination_without_dropping(tmp_path: Path, site_keys) -> None:
    _, recipient = site_keys
    with Receiver() as rx:
        config = write_config(
            tmp_path, [recipient], {"central": {"kind": "central"}},
            central={"url": rx.url, "token": "wrong-token", "heartbeat_seconds": 1})
        inbox = config.folders[0].path
        with running(config) as agent:
            drop(inbox / "a.raw", b"abc" * 100)
            wait_until(lambda: agent.reporter.destinations["central"].paused)
            agent.tick()
            status = json.loads((config.spool_dir / "status.json").read_text())
            assert status["destinations"][0]["paused"] is True
            assert agent.journal.pending_count("central") == 1
            assert agent.journal.state_counts() == {"protected": 1}
        assert rx.objects == {}


def test_rewritten_file_is_processed_again_and_touch_is_not(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient],
                          {"share": {"kind": "folder", "path": str(outbox)}})
    inbox = config.folders[0].path
    with running(config) as agent:
        drop(inbox / "a.raw", b"first" * 100)
        wait_until(lambda: agent.journal.state_counts().get("done") == 1)
        os.utime(inbox / "a.raw")  # same content, new mtime: not a new scan
        wait_until(lambda: agent.journal.state_counts().get("duplicate") == 1)
        drop(inbox / "a.raw", b"second" * 100)
        wait_until(lambda: agent.journal.state_counts().get("done") == 2)
        counts = agent.journal.state_counts()
    assert counts.get("duplicate") == 1
    # the first copy is never replaced by the second version
    assert decrypt((outbox / "a.raw.age").read_bytes(), identity) == b"first" * 100
    assert decrypt((outbox / "a (2).raw.age").read_bytes(), identity) == b"second" * 100


def test_each_acknowledgement_is_a_forwarded_event_with_the_exams_study_keys(
        tmp_path: Path, site_keys) -> None:
    """Issue 14's exam lookup: the central learns which destinations acknowledged an exam
    from ``forwarded`` events carrying the same keyed study hashes as ``protected``."""
    import pydicom

    from cipher.pseudonym import PseudonymSecret

    identity, recipient = site_keys
    secret = PseudonymSecret.generate()
    (tmp_path / "pseudonym.secret").write_text(secret.encode())
    outbox = tmp_path / "outbox"
    with Receiver() as rx:
        config = write_config(
            tmp_path, [recipient], {"central": {"kind": "central", "mode": "dicom"},
                                    "share": {"kind": "folder", "path": str(outbox)}},
            central={"url": rx.url, "token": TOKEN, "agent_id": "a1", "heartbeat_seconds": 1},
            pseudonym_secret_file=str(tmp_path / "pseudonym.secret"))
        inbox = config.folders[0].path
        scans = {f"ct{i}.dcm": ct_slice(seed=40 + i) for i in range(2)}
        with running(config) as agent:
            for name, data in scans.items():
                drop(inbox / name, data)
            wait_until(lambda: agent.journal.state_counts().get("done") == 2)
            wait_until(lambda: sum(e["kind"] == "forwarded" for e in rx.events) == 4)
            fids = {agent.journal.file_id(str(inbox / n)): n for n in scans}
    protected = {e["file_id"]: e for e in rx.events if e["kind"] == "protected"}
    forwarded = [e for e in rx.events if e["kind"] == "forwarded"]
    assert sorted((fids[e["file_id"]], e["destination"]) for e in forwarded) == sorted(
        (n, d) for n in scans for d in ("central", "share"))
    for e in forwarded:
        ds = pydicom.dcmread(BytesIO(scans[fids[e["file_id"]]]))
        keys = [secret.study_key(str(v)) for v in (ds.get("AccessionNumber", ""),
                                                   ds.StudyInstanceUID) if str(v)]
        assert e["study_keys"] == keys == protected[e["file_id"]]["study_keys"]
        assert e["severity"] == "info" and e["message"] == ""
    assert sorted(decrypt(o, identity) for o in rx.objects.values()) == sorted(scans.values())
    # The central indexes each copy by the UIDs it stores (told by the worker, sent as
    # headers): what a reading gateway asks it for.
    for sha, data in rx.objects.items():
        ds = pydicom.dcmread(BytesIO(data), stop_before_pixels=True)
        assert rx.uid_headers[sha] == (ds.StudyInstanceUID, ds.SeriesInstanceUID,
                                       ds.SOPInstanceUID)
