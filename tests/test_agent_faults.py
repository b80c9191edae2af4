"""Fault tests: kill -9 during a burst, destination down then back, slow writer, full disk."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from tests.helpers import (
    TOKEN,
    Receiver,
    child_pids,
    ct_slice,
    decrypt,
    drop,
    free_port,
    running,
    wait_until,
    write_config,
)
from tests.peers import OrthancPeer

REPO = Path(__file__).resolve().parent.parent


def journal_states(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            return dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"))
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def start_agent(config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "scanfort", "agent", "run", "--config", str(config_path)],
            cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def all_gone(pids: list[int]) -> bool:
    """No process left running (a zombie waiting for its new parent to reap it is gone)."""
    for p in pids:
        try:
            state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            return False
    return True


@pytest.mark.slow
@pytest.mark.peer
def test_kill_9_during_burst_loses_nothing(tmp_path: Path, site_keys, orthanc: OrthancPeer) -> None:
    identity, recipient = site_keys
    orthanc.clear()
    config = write_config(tmp_path, [recipient],
                          {"pacs": {"kind": "dicomweb", "url": orthanc.dicomweb_url}},
                          folder={"after_ack": "delete"}, settle_seconds=0.2)
    assert config.source is not None
    inbox = config.folders[0].path
    scans = {f"burst{i:03d}.dcm": ct_slice(seed=1000 + i) for i in range(200)}
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    log = tmp_path / "agent-run.log"

    def writer() -> None:
        for name, data in scans.items():
            drop(inbox / name, data)
            time.sleep(0.01)

    proc = start_agent(config.source, log)
    t = threading.Thread(target=writer)
    t.start()
    kills = 0
    try:
        for _ in range(4):  # kill at random moments, during and after the burst
            time.sleep(rng.uniform(0.5, 2.5))
            workers = child_pids(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            # its protect workers see the end of their input and exit on their own
            wait_until(functools.partial(all_gone, workers), timeout=30)
            proc = start_agent(config.source, log)
        t.join()
        wait_until(lambda: journal_states(config.journal_path).get("done") == len(scans),
                   timeout=150, every=0.5)
    finally:
        t.join()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert kills == 4, f"seed {seed}"
    assert journal_states(config.journal_path) == {"done": len(scans)}, f"seed {seed}"
    assert list(inbox.iterdir()) == []  # plaintext deleted, but only after the ack
    # no protected copy left behind in the spool, not even one an orphaned worker made
    assert [p.name for p in config.spool_dir.iterdir() if p.suffix in (".file", ".dicom")] == []
    instances = orthanc.instances()
    assert len(instances) == len(scans), f"seed {seed}"  # exactly once each
    for data in scans.values():
        uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        oid = orthanc.find_instance(uid)
        assert oid is not None, f"seed {seed}: missing instance"
        restored = pydicom.dcmread(io.BytesIO(decrypt(orthanc.instance_file(oid), identity)))
        original = pydicom.dcmread(io.BytesIO(data))
        assert restored.PixelData == original.PixelData
        assert restored.PatientID == original.PatientID


def test_destination_down_then_back(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    port = free_port()
    config = write_config(
        tmp_path, [recipient], {"central": {"kind": "central"}},
        central={"url": f"http://127.0.0.1:{port}", "token": TOKEN, "heartbeat_seconds": 1})
    inbox = config.folders[0].path
    payloads = {f"f{i}.raw": os.urandom(3000 + i) for i in range(10)}
    with running(config) as agent:
        for name, data in payloads.items():
            drop(inbox / name, data)
        # every file protected and its delivery failed at least once (in any order: a
        # sender may retry the first files before the last ones are protected)
        wait_until(lambda: agent.journal.state_counts() == {"protected": 10}
                   and agent.journal.counters().get("retries", 0) >= 10)
        with Receiver(port=port) as rx:  # the central comes back
            wait_until(lambda: agent.journal.state_counts().get("done") == 10)
            # heartbeats and events buffered during the outage arrive too
            wait_until(lambda: any(e["kind"] == "started" for e in rx.events))
            assert rx.heartbeats
    assert sorted(decrypt(o, identity) for o in rx.objects.values()) == sorted(payloads.values())


def test_slow_writer_is_processed_once_and_complete(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    with Receiver() as rx:
        config = write_config(tmp_path, [recipient], {"central": {"kind": "central"}},
                              central={"url": rx.url, "token": TOKEN}, settle_seconds=1.0)
        data = ct_slice(128, 128, seed=5)
        pieces = [data[i:i + len(data) // 6 + 1] for i in range(0, len(data), len(data) // 6 + 1)]
        with running(config) as agent:
            with open(config.folders[0].path / "slow.dcm", "wb") as fh:
                for piece in pieces:  # no .partial name: the settle time must do the work
                    fh.write(piece)
                    fh.flush()
                    time.sleep(0.6)
            wait_until(lambda: agent.journal.state_counts().get("done") == 1)
            assert agent.reconcile() == 0  # the finished file is not taken again
            counts = agent.journal.state_counts()
        assert counts == {"done": 1}
        assert [decrypt(o, identity) for o in rx.objects.values()] == [data]


def test_disk_below_watermark_pauses_intake(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    free = {"bytes": 500_000}  # below the 1 MB low watermark
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}})
    inbox = config.folders[0].path
    payloads = {f"w{i}.raw": os.urandom(1000) for i in range(5)}
    with running(config, disk_free=lambda _: free["bytes"]) as agent:
        for name, data in payloads.items():
            drop(inbox / name, data)
        status = config.spool_dir / "status.json"
        wait_until(lambda: status.exists() and '"intake_paused": true' in status.read_text()
                   and len(agent.settler) == 5)
        assert agent.journal.state_counts() == {}  # nothing taken
        assert all((inbox / n).exists() for n in payloads)
        free["bytes"] = 1_500_000  # between the watermarks: still paused (hysteresis)
        wait_until(lambda: agent.reporter.free_disk == 1_500_000)
        assert agent.reporter.intake_paused and agent.journal.state_counts() == {}
        free["bytes"] = 10_000_000
        wait_until(lambda: agent.journal.state_counts().get("done") == 5)
    for name, data in payloads.items():
        assert decrypt((outbox / (name + ".age")).read_bytes(), identity) == data


def test_stuck_protection_is_killed_and_retried(tmp_path: Path, site_keys) -> None:
    """A protect worker that never answers (a stuck cipher call) is killed at its deadline
    and the file is protected again by a new worker; nothing else stalls meanwhile."""
    identity, recipient = site_keys
    marker = tmp_path / "hung-once"
    argv = [sys.executable, str(Path(__file__).with_name("stuck_worker.py")), str(marker)]
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}},
                          workers=1)
    with running(config, worker_argv=argv, protect_timeout_s=2.0) as agent:
        drop(config.folders[0].path / "a.raw", b"payload" * 1000)
        drop(config.folders[0].path / "b.raw", b"other" * 1000)
        wait_until(lambda: agent.journal.state_counts().get("done") == 2)
        assert marker.exists()
        assert agent.pool.killed == 1 and agent.pool.started == 2
    assert decrypt((outbox / "a.raw.age").read_bytes(), identity) == b"payload" * 1000
    assert decrypt((outbox / "b.raw.age").read_bytes(), identity) == b"other" * 1000


def test_a_recorded_spool_copy_that_is_gone_is_protected_again(tmp_path: Path, site_keys) -> None:
    """The worker does not fsync the spool directory: if a power cut loses the rename of a
    recorded copy, the next start protects the plaintext (still in place) again."""
    from agent.journal import Artifact, Journal
    from agent.protect import Protector

    identity, recipient = site_keys
    outbox = tmp_path / "outbox"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}})
    scan = config.folders[0].path / "a.raw"
    scan.write_bytes(b"plain" * 500)
    st = scan.stat()
    answer = Protector([recipient], config.spool_dir).handle(
        {"path": str(scan), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "modes": ["file"]})
    art = answer["artifacts"][0]
    journal = Journal(config.journal_path)
    item_id = journal.record_protected(
        None, str(scan), st.st_size, st.st_mtime_ns, config.folders[0].key, None,
        answer["sha256"],
        [Artifact(0, "file", art["name"], art["sha256"], art["size"], None)],
        [("share", "file", "pending")])
    journal.close()
    (config.spool_dir / art["name"]).unlink()  # the rename never reached the disk
    with running(config) as agent:
        wait_until(lambda: agent.journal.state_counts().get("done") == 1)
        item = agent.journal.item(item_id)
        assert item.state == "done"
    assert decrypt((outbox / "a.raw.age").read_bytes(), identity) == b"plain" * 500
    assert scan.exists()  # after_ack = keep


@contextlib.contextmanager
def small_volume(where: Path, size_mb: int) -> Iterator[Path]:
    """A size-limited file system the test creates (tmpfs with size=: root, or sudo without
    a password); skip outside CI when it cannot be made, fail under CI=true."""
    where.mkdir()
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    options = f"size={size_mb}m,mode=0755,uid={os.getuid()},gid={os.getgid()}"
    done = subprocess.run([*sudo, "mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True)
    if done.returncode != 0:
        if os.environ.get("CI") == "true":
            pytest.fail(f"cannot mount a small tmpfs: {done.stderr.decode().strip()}")
        pytest.skip("cannot mount a small tmpfs (needs root or sudo -n)")
    try:
        yield where
    finally:
        subprocess.run([*sudo, "umount", "-l", str(where)], check=False)


def test_a_full_volume_never_wedges_the_agent(tmp_path: Path, site_keys) -> None:
    """Inbox and spool on one small volume, the destination away: the volume fills,
    protection waits instead of failing, no thread dies, the journal stays small; once
    the destination is back everything drains without a restart."""
    identity, recipient = site_keys
    with small_volume(tmp_path / "vol", 32) as vol, Receiver() as rx:
        rx.fail_with = 503
        config = write_config(vol, [recipient], {"central": {"kind": "central"}},
                              folder={"after_ack": "delete"},
                              central={"url": rx.url, "token": TOKEN, "heartbeat_seconds": 1},
                              log_dir=str(tmp_path / "logs"))
        inbox = config.folders[0].path
        payloads = {f"s{i:02d}.raw": os.urandom(1 << 20) for i in range(20)}
        for name, data in payloads.items():
            drop(inbox / name, data)
        with running(config, reserve_bytes=2 << 20) as agent:
            # the volume fills up: some are protected, the rest wait in place
            wait_until(lambda: agent.journal.state_counts().get("protected", 0) >= 2
                       and agent.reporter.repeats_suppressed > 0, timeout=60)
            protected = agent.journal.state_counts()["protected"]
            assert protected < len(payloads)
            assert all((inbox / n).exists() for n in payloads)
            wal = Path(f"{config.journal_path}-wal")
            assert not wal.exists() or wal.stat().st_size <= 2 << 20
            rx.fail_with = None  # the destination comes back
            wait_until(lambda: agent.journal.state_counts() == {"done": len(payloads)},
                       timeout=120)
            assert agent.thread_restarts == 0
            assert all(t.is_alive() for _, t in agent.threads.values())
        assert list(inbox.iterdir()) == []
        assert sorted(decrypt(o, identity) for o in rx.objects.values()) == \
            sorted(payloads.values())


def test_the_reserve_lets_the_journal_commit_on_a_full_volume(tmp_path: Path) -> None:
    """The journal's volume is full: the first failed write gives back the spool's
    reserve, the retry (what frees space: a delivery done, an item finalized) commits."""
    from agent.journal import Journal
    from agent.spool import Reserve, Spool

    with small_volume(tmp_path / "vol", 4) as vol:
        spool = Spool(vol / "spool")
        spool.create()
        reserve = Reserve(spool, 1 << 20)
        assert reserve.restore(10 << 20)
        journal = Journal(spool.journal_path)
        journal.on_full = reserve.release
        with open(vol / "filler", "wb") as fh:  # the modality filled the rest
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        body = "x" * 20000
        failed = 0
        for i in range(200):
            try:
                journal.outbox_add(f"e{i}", float(i), body)
            except sqlite3.OperationalError:
                failed += 1
                break
        assert failed == 1 and not reserve.held  # given back at the first failure
        journal.outbox_add("retry", 1e9, "the retry commits")
        assert ("retry", "the retry commits") in journal.outbox_peek(10_000)
        journal.close()
