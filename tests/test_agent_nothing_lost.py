"""Nothing lost, nothing stuck, nothing overwritten (issue 10): one regression test per
defect, each through the real agent (worker processes, journal, real forwarders)."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pydicom

from agent.config import load_config
from agent.journal import Journal
from agent.status import Reporter
from scanfort.cli import main
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


def test_a_reused_name_never_destroys_an_earlier_scan(tmp_path: Path, site_keys) -> None:
    """after_ack = delete, folder destination, the modality writes scan.bin three times
    with new content: all three stay recoverable on the share."""
    identity, recipient = site_keys
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}},
                          folder={"after_ack": "delete"})
    inbox = config.folders[0].path
    versions = [f"scan version {i} ".encode() * 200 for i in range(3)]
    with running(config) as agent:
        for n, data in enumerate(versions, start=1):
            drop(inbox / "scan.bin", data)

            def taken(n: int = n) -> bool:
                return agent.journal.state_counts().get("done") == n and \
                    not (inbox / "scan.bin").exists()
            wait_until(taken)
    restored = sorted(decrypt(p.read_bytes(), identity) for p in outbox.iterdir())
    assert restored == sorted(versions)


def test_folders_are_keyed_by_identity_not_position(tmp_path: Path, site_keys) -> None:
    """Reordering [[folders]] while items are pending applies each folder's own after_ack;
    an item whose folder left the config is held, never handled by another's policy."""
    _, recipient = site_keys
    keep_dir, delete_dir, gone_dir = tmp_path / "keep", tmp_path / "delete", tmp_path / "gone"
    for d in (keep_dir, delete_dir, gone_dir):
        d.mkdir()
    with Receiver() as rx:
        rx.fail_with = 503  # everything stays pending
        dest = {"central": {"kind": "central"}}
        central = {"url": rx.url, "token": TOKEN, "heartbeat_seconds": 1}
        folders = [{"path": str(keep_dir), "destinations": ["central"], "after_ack": "keep"},
                   {"path": str(delete_dir), "destinations": ["central"],
                    "after_ack": "delete"},
                   {"path": str(gone_dir), "destinations": ["central"], "after_ack": "delete"}]
        config = write_config(tmp_path, [recipient], dest, central=central,
                              folder={"path": str(tmp_path / "inbox"), "destinations": ["central"]},
                              extra_folders=folders)
        with running(config) as agent:
            for d in (keep_dir, delete_dir, gone_dir):
                drop(d / "x.raw", os.urandom(500))
            wait_until(lambda: agent.journal.state_counts().get("protected") == 3)
        # the operator reorders the folders (delete first) and removes one
        config = write_config(tmp_path, [recipient], dest, central=central,
                              folder={"path": str(tmp_path / "inbox"), "destinations": ["central"]},
                              extra_folders=[folders[1], folders[0]])
        rx.fail_with = None
        with running(config) as agent:
            wait_until(lambda: agent.journal.state_counts().get("done") == 2
                       and agent.journal.state_counts().get("held") == 1)
            [held] = agent.journal.items_in("held")
        assert held.path == str(gone_dir / "x.raw") and "no longer in the config" in str(held.reason)
        assert (keep_dir / "x.raw").exists()  # keep stayed keep
        assert not (delete_dir / "x.raw").exists()  # delete stayed delete
        assert (gone_dir / "x.raw").exists()  # its folder left: nothing touched
        # the folder comes back: its own policy applies
        config = write_config(tmp_path, [recipient], dest, central=central,
                              folder={"path": str(tmp_path / "inbox"), "destinations": ["central"]},
                              extra_folders=[folders[2], folders[1], folders[0]])
        with running(config) as agent:
            wait_until(lambda: agent.journal.state_counts() == {"done": 3})
    assert not (gone_dir / "x.raw").exists()
    assert (keep_dir / "x.raw").exists()


def _quarantine(config_path: Path, capsys, *words: str) -> object:
    assert main(["agent", "quarantine", *words, "--json", "--config", str(config_path)]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_refused_delivery_is_quarantined_alone_then_retried_or_released(
        tmp_path: Path, site_keys, capsys) -> None:
    """A permanent refusal by one destination parks that delivery, with the peer's own
    reason; the other destination completes; ``agent quarantine`` lists it, retries it
    once the peer is fixed, or releases it, all while the agent runs."""
    identity, recipient = site_keys
    outbox = tmp_path / "outbox"
    with Receiver() as rx:
        rx.fail_with = 400
        config = write_config(
            tmp_path, [recipient],
            {"share": {"kind": "folder", "path": str(outbox)}, "central": {"kind": "central"}},
            folder={"after_ack": "delete"},
            central={"url": rx.url, "token": TOKEN, "heartbeat_seconds": 1})
        assert config.source is not None
        inbox = config.folders[0].path
        with running(config) as agent:
            drop(inbox / "a.raw", b"A" * 3000)
            drop(inbox / "b.raw", b"B" * 3000)
            wait_until(lambda: agent.journal.state_counts().get("quarantined") == 2)
            assert (inbox / "a.raw").exists() and (inbox / "b.raw").exists()  # kept
            assert {p.name for p in outbox.iterdir()} == {"a.raw.age", "b.raw.age"}
            listed = _quarantine(config.source, capsys, "list")
            assert isinstance(listed, list) and len(listed) == 2
            by_name = {os.path.basename(e["path"]): e for e in listed}
            entry = by_name["a.raw"]
            assert entry["destinations"] == ["central"]
            refused = next(d for d in entry["deliveries"] if d["destination"] == "central")
            assert refused["error"] == "central upload: HTTP 400: injected"  # the peer's words
            assert {d["destination"]: d["state"] for d in entry["deliveries"]} == \
                {"central": "quarantined", "share": "done"}
            shown = _quarantine(config.source, capsys, "show", str(entry["id"]))
            assert isinstance(shown, dict) and shown["id"] == entry["id"]
            assert main(["agent", "quarantine", "list", "--config", str(config.source)]) == 0
            table = capsys.readouterr().out
            assert table.splitlines()[0].split() == ["ID", "AGE", "STATE", "DESTINATION",
                                                     "REASON"]
            assert f"{entry['id']}" in table and "refused by central" in table
            rx.fail_with = None  # the operator fixed the central
            _quarantine(config.source, capsys, "retry", str(entry["id"]))
            wait_until(lambda: not (inbox / "a.raw").exists())
            _quarantine(config.source, capsys, "release", str(by_name["b.raw"]["id"]))
            wait_until(lambda: not (inbox / "b.raw").exists())
            wait_until(lambda: agent.journal.state_counts() == {"done": 2})
            assert _quarantine(config.source, capsys, "list") == []
        assert [decrypt(o, identity) for o in rx.objects.values()] == [b"A" * 3000]


def test_a_permanent_protection_error_is_tried_a_bounded_number_of_times(
        tmp_path: Path, site_keys) -> None:
    """Empty Pixel Data fails the same way every time: a few attempts, then quarantine
    (plaintext kept), not an error event every two seconds forever."""
    _, recipient = site_keys
    config = write_config(tmp_path, [recipient],
                          {"pacs": {"kind": "folder", "path": str(tmp_path / "out"),
                                    "mode": "dicom"}},
                          folder={"after_ack": "delete"})
    ds = pydicom.dcmread(io.BytesIO(ct_slice()))
    ds.PixelData = b""
    buf = io.BytesIO()
    ds.save_as(buf)
    inbox = config.folders[0].path
    with running(config) as agent:
        drop(inbox / "empty.dcm", buf.getvalue())
        wait_until(lambda: agent.journal.state_counts().get("quarantined") == 1)
        errors = agent.journal.outbox_size()
        wait_until(lambda: agent.reconcile() == 0)  # found again: no new attempt
    assert (inbox / "empty.dcm").exists()
    assert errors <= 6  # started, a few attempts, quarantined
    assert len(list((config.quarantine_dir).glob("*.reason.txt"))) == 1


def test_links_are_not_followed_by_default(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "private.bin").write_bytes(b"not for the inbox")
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}})
    inbox = config.folders[0].path
    with running(config) as agent:
        (inbox / "link.bin").symlink_to(outside / "private.bin")
        drop(inbox / "real.bin", b"real scan")
        wait_until(lambda: agent.journal.state_counts().get("done") == 1)
        assert agent.reconcile() == 0  # the link is not a candidate either
    assert sorted(p.name for p in outbox.iterdir()) == ["real.bin.age"]
    # allowed by the folder: only to a file inside a watched folder
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}},
                          folder={"follow_symlinks": True})
    (inbox / "inner.bin").symlink_to(inbox / "real.bin")
    with running(config) as agent:
        wait_until(lambda: (outbox / "inner.bin.age").exists())
        assert not (outbox / "link.bin.age").exists()
    assert decrypt((outbox / "inner.bin.age").read_bytes(), identity) == b"real scan"


def test_a_clean_stop_sends_a_final_stopped_heartbeat_and_flushes_events(
        tmp_path: Path, site_keys, capsys) -> None:
    from service.settings import Settings
    from service.status import STOPPED, agent_state
    from service.store import AgentRow

    _, recipient = site_keys
    with Receiver() as rx:
        config = write_config(tmp_path, [recipient], {"share": {"kind": "folder",
                                                                "path": str(tmp_path / "o")}},
                              central={"url": rx.url, "token": TOKEN, "agent_id": "a1",
                                       "heartbeat_seconds": 600})
        assert config.source is not None
        with running(config) as agent:
            drop(config.folders[0].path / "x.raw", b"x" * 100)
            wait_until(lambda: agent.journal.state_counts().get("done") == 1)
        assert rx.heartbeats[-1]["state"] == "stopped"
        kinds = [e["kind"] for e in rx.events]
        assert kinds[-1] == "stopped" and "protected" in kinds  # nothing left behind
        assert agent.journal is not None
        row = AgentRow("a1", "h", "os", "v", 0.0, None, 1.0, 1, 1.0, 0, 0, None, False, (),
                       None, None, None, rx.heartbeats[-1])

        settings = Settings(data_dir=tmp_path / "central")
        assert agent_state(row, settings, now=10_000.0) == STOPPED  # not "offline"
        # ``agent status`` does not claim workers run in a stopped agent
        assert main(["agent", "status", "--config", str(config.source)]) == 0
        out = capsys.readouterr().out
        assert out.startswith("agent:        stopped")
        assert "protect worker(s) running" not in out


def test_enroll_keeps_owner_group_and_mode_and_check_warns(tmp_path: Path, site_keys,
                                                           capsys) -> None:
    _, recipient = site_keys
    with Receiver() as rx:
        rx.recipients = [recipient]
        config = write_config(tmp_path, [recipient], {"share": {"kind": "folder",
                                                                "path": str(tmp_path / "o")}})
        path = config.source
        assert path is not None
        os.chmod(path, 0o640)
        os.chown(path, 0, 65534)  # root:nogroup, as a package installs root:scanfort
        assert main(["agent", "enroll", "--central", rx.url, "--token", "enroll-once",
                     "--config", str(path)]) == 0
        st = path.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o640, 0, 65534)
        assert load_config(path).central.agent_id == "agent-1"
        capsys.readouterr()
        os.chmod(path, 0o600)  # what enroll used to leave behind
        assert main(["agent", "check", "--service-user", "nobody", "--config", str(path)]) == 0
        err = capsys.readouterr().err
        # pytest's base temp dir (0700) already keeps "nobody" out; either way, it is named
        assert "scanfort: warning: the service user nobody cannot re" in err
        assert str(path) in err and "scanfort: hint: " in err
        assert main(["agent", "check", "--service-user", "root", "--config", str(path)]) == 0
        assert "warning" not in capsys.readouterr().err


def test_repeated_identical_errors_do_not_grow_the_journal(tmp_path: Path, site_keys) -> None:
    _, recipient = site_keys
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder",
                                                            "path": str(tmp_path / "o")}})
    journal = Journal(config.journal_path)
    reporter = Reporter(config, journal)
    for _ in range(200):
        reporter.event("error", "warning", "spool volume nearly full")
    reporter.event("error", "warning", "another error")
    assert journal.outbox_size() == 2 and reporter.repeats_suppressed == 199


def test_sigterm_stops_cleanly_within_the_stop_timeout(tmp_path: Path, site_keys) -> None:
    """``scanfort agent run`` under a service manager: SIGTERM ends it with exit 0 well
    inside TimeoutStopSec, after a final ``stopped`` heartbeat and every buffered event."""
    _, recipient = site_keys
    with Receiver() as rx:
        config = write_config(tmp_path, [recipient], {"central": {"kind": "central"}},
                              central={"url": rx.url, "token": TOKEN, "agent_id": "a1",
                                       "heartbeat_seconds": 600})
        assert config.source is not None
        repo = Path(__file__).resolve().parent.parent
        with open(tmp_path / "agent.out", "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "scanfort", "agent", "run",
                                     "--config", str(config.source)], cwd=repo, stdout=out,
                                    stderr=subprocess.STDOUT)
        try:
            drop(config.folders[0].path / "x.raw", b"x" * 1000)
            wait_until(lambda: len(rx.objects) == 1)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            assert time.monotonic() - started < 20  # TimeoutStopSec is 30
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert rx.heartbeats[-1]["state"] == "stopped"
        kinds = [e["kind"] for e in rx.events]
        assert kinds[0] == "started" and kinds[-1] == "stopped" and "protected" in kinds


def test_library_warnings_reach_the_log_without_their_values(tmp_path: Path, site_keys,
                                                              capfd) -> None:
    import warnings

    from agent.logs import setup_logging, teardown_logging

    _, recipient = site_keys
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder",
                                                            "path": str(tmp_path / "o")}})
    previous = warnings.showwarning
    handler = setup_logging(config, foreground=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("Invalid value for VR UI: '1.2.840.PATIENT-UID'", UserWarning,
                          stacklevel=1)
    finally:
        teardown_logging(handler)
        warnings.showwarning = previous
    text = (config.log_dir / "agent.log").read_text()
    out, err = capfd.readouterr()
    assert "library warning (UserWarning" in text
    assert "PATIENT-UID" not in text + out + err


def test_a_sender_survives_a_journal_error_and_it_shows(tmp_path: Path, site_keys,
                                                        capsys) -> None:
    """``database or disk is full`` in recording a delivery done used to end both sender
    threads for good; now the thread goes on, the delivery completes, status and heartbeat
    say so."""
    import sqlite3

    identity, recipient = site_keys
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}})
    assert config.source is not None
    with running(config) as agent:
        real = agent.journal.deliveries_done
        failures = [3]

        def full(dest: str, acked):
            if failures[0] > 0:
                failures[0] -= 1
                raise sqlite3.OperationalError("database or disk is full")
            return real(dest, acked)

        agent.journal.deliveries_done = full
        drop(config.folders[0].path / "a.raw", b"a" * 1000)
        wait_until(lambda: agent.journal.state_counts().get("done") == 1)
        assert agent.senders["share"].alive() and agent.senders["share"].failures == 3
        assert agent.reporter.heartbeat().watcher["thread_failures"] == 3
        agent.tick()
        assert main(["agent", "status", "--config", str(config.source)]) == 0
        assert "threads:      send-share failed 3x" in capsys.readouterr().out
    assert [p.name for p in outbox.iterdir()] == ["a.raw.age"]  # re-sent, not duplicated
    assert decrypt((outbox / "a.raw.age").read_bytes(), identity) == b"a" * 1000


def test_an_unreadable_config_exits_78_naming_the_file_and_the_fix(tmp_path: Path, site_keys,
                                                                   capsys) -> None:
    """What the service sees when enroll (before this fix) left root:root 0600 behind."""
    from agent.oshost.host import EXIT_CONFIG

    _, recipient = site_keys
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder",
                                                            "path": str(tmp_path / "o")}})
    path = config.source
    assert path is not None
    os.chmod(path, 0)
    try:
        if os.access(path, os.R_OK):  # root reads anything: be the service user instead
            err_file = tmp_path / "stderr.txt"
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child
                with open(err_file, "w") as fh:
                    os.setgid(65534)
                    os.setuid(65534)
                    sys.stderr = fh
                    rc = main(["service", "run-host", "--config", str(path)])
                    fh.flush()
                os._exit(rc)
            _, status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(status)
            err = err_file.read_text()
        else:
            code = main(["service", "run-host", "--config", str(path)])
            err = capsys.readouterr().err
    finally:
        os.chmod(path, 0o600)
    assert code == EXIT_CONFIG
    assert f"the service user cannot read {path}" in err and f"chmod 0640 {path}" in err


def test_the_central_sees_quarantine_and_its_commands_reach_the_agent(
        tmp_path: Path, site_keys) -> None:
    """Heartbeats carry the name, per-destination folder counts and the quarantine (ids
    and destinations, never the peer's words); a retry command in a heartbeat answer is
    carried out once, acknowledged and its result reported."""
    _, recipient = site_keys
    outbox = tmp_path / "outbox"
    with Receiver() as rx:
        rx.fail_with = 400
        config = write_config(
            tmp_path, [recipient],
            {"share": {"kind": "folder", "path": str(outbox)}, "central": {"kind": "central"},
             "spare": {"kind": "folder", "path": str(tmp_path / "spare")}},
            folder={"after_ack": "delete", "destinations": ["share", "central"]},
            central={"url": rx.url, "token": TOKEN, "heartbeat_seconds": 1},
            name="CT room 2")
        inbox = config.folders[0].path
        with running(config) as agent:
            drop(inbox / "a.raw", b"A" * 3000)
            wait_until(lambda: agent.journal.state_counts().get("quarantined") == 1)
            rx.fail_with = None
            wait_until(lambda: any(hb.get("quarantine") for hb in rx.heartbeats))
            hb = next(hb for hb in rx.heartbeats if hb.get("quarantine"))
            assert hb["name"] == "CT room 2"
            assert {d["name"]: d["folders"] for d in hb["destinations"]} == \
                {"share": 1, "central": 1, "spare": 0}
            [q] = hb["quarantine"]
            assert q["destination"] == "central" and "injected" not in q["reason"]
            command = {"command_id": "cmd-1", "kind": "retry", "item_id": q["item_id"],
                       "destination": "central", "issued_at": time.time()}
            with rx.lock:
                rx.commands = [command, command]  # sent twice: carried out once
            wait_until(lambda: not (inbox / "a.raw").exists())  # delivered, after_ack applied
            wait_until(lambda: any(r["command_id"] == "cmd-1"
                                   for hb in rx.heartbeats for r in hb["command_results"]))
            results = [r for hb in rx.heartbeats for r in hb["command_results"]]
            assert [r["ok"] for r in results if r["command_id"] == "cmd-1"] == [True]
            assert any("cmd-1" in hb["command_acks"] for hb in rx.heartbeats)
