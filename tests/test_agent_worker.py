"""Protect workers: the child's answers, the wire format, deadlines and a light parent."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.pool import ProtectWorker, WorkerLost, WorkerPool, WorkerStartFailed
from agent.protect import Protector, plan_modes, read_frame, write_frame
from tests.helpers import ct_slice, decrypt, wait_until


def _status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def _no_signal_pending(pid: int) -> bool:
    st = _status(pid)
    return int(st.get("SigPnd", "0"), 16) == 0 and int(st.get("ShdPnd", "0"), 16) == 0


def _request(path: Path, modes: list[str]) -> dict[str, object]:
    st = os.stat(path)
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "modes": modes}


def test_frames_round_trip_and_end_of_stream() -> None:
    buf = io.BytesIO()
    write_frame(buf, {"a": 1, "name": "é"})
    write_frame(buf, {"b": [1, 2]})
    buf.seek(0)
    assert read_frame(buf) == {"a": 1, "name": "é"}
    assert read_frame(buf) == {"b": [1, 2]}
    assert read_frame(buf) is None
    torn = io.BytesIO(b"\x00\x00\x00\x10{")  # the writer died mid-frame
    assert read_frame(torn) is None


def test_plan_modes() -> None:
    assert plan_modes(["auto", "file", "dicom"], True) == ["dicom", "file", "dicom"]
    assert plan_modes(["auto", "file", "dicom"], False) == ["file", "file", None]


def test_protector_answers(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    spool = tmp_path / "spool"
    p = Protector([recipient], spool)
    scan = tmp_path / "ct.dcm"
    scan.write_bytes(ct_slice(32, 32, seed=1))
    answer = p.handle(_request(scan, ["auto", "file"]))
    assert answer["status"] == "protected"
    assert answer["plan"] == ["dicom", "file"]
    arts = {a["mode"]: a for a in answer["artifacts"]}
    assert set(arts) == {"dicom", "file"}
    for art in arts.values():
        data = (spool / art["name"]).read_bytes()
        assert len(data) == art["size"]
        assert decrypt(data, identity) == scan.read_bytes()
    assert list((spool / "tmp").iterdir()) == []  # nothing half-written left behind
    # a version that no longer matches, a vanished file, a truncated DICOM file, no taker
    assert p.handle({**_request(scan, ["file"]), "size": 1})["status"] == "changed"
    assert p.handle({**_request(scan, ["file"]), "path": str(tmp_path / "gone")}) == \
        {"status": "vanished"}
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(scan.read_bytes()[:-100])
    assert p.handle(_request(cut, ["file"]))["status"] == "incomplete"
    other = tmp_path / "notes.txt"
    other.write_bytes(b"not an image")
    answer = p.handle(_request(other, ["dicom"]))
    assert answer["status"] == "failed" and answer["permanent"]
    assert "not a dicom image" in answer["reason"]


def test_a_truncated_dicom_file_past_its_grace_is_protected_in_file_mode(
        tmp_path: Path, site_keys) -> None:
    """Nothing left behind unprotected: a cut DICOM file still goes, in file mode, where
    file mode is accepted; the DICOM-only destination is told why it gets nothing."""
    identity, recipient = site_keys
    p = Protector([recipient], tmp_path / "spool")
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(ct_slice(32, 32, seed=2)[:-100])
    answer = p.handle({**_request(cut, ["auto", "dicom", "file"]), "accept_truncated": True})
    assert answer["status"] == "protected"
    assert answer["plan"] == ["file", None, "file"]
    assert answer["flags"] == ["truncated"] and answer["dicom_file"] is True
    [art] = answer["artifacts"]
    assert decrypt((tmp_path / "spool" / art["name"]).read_bytes(), identity) == cut.read_bytes()


def test_library_warnings_are_counted_never_printed(tmp_path: Path, site_keys, capfd) -> None:
    """pydicom's warnings quote attribute values: a worker reports their category only."""
    import warnings

    _, recipient = site_keys
    p = Protector([recipient], tmp_path / "spool")
    scan = tmp_path / "a.bin"
    scan.write_bytes(b"x" * 100)

    real = p._cipher.protect

    def noisy(*args: object, **kwargs: object) -> object:
        warnings.warn("Invalid value for VR UI: '1.2.SECRET-UID'", UserWarning, stacklevel=1)
        return real(*args, **kwargs)

    p._cipher = type("C", (), {"protect": staticmethod(noisy),
                               "CipherError": p._cipher.CipherError,
                               "NotDicomError": p._cipher.NotDicomError})()
    answer = p.handle(_request(scan, ["file"]))
    assert answer["status"] == "protected" and answer["warnings"] == {"UserWarning": 1}
    out, err = capfd.readouterr()
    assert "SECRET" not in out + err


def test_worker_process_protects_and_is_killed_at_its_deadline(tmp_path: Path, site_keys) -> None:
    identity, recipient = site_keys
    spool = tmp_path / "spool"
    scan = tmp_path / "a.raw"
    scan.write_bytes(b"payload" * 100)
    worker = ProtectWorker([recipient], spool)
    try:
        answer = worker.call(_request(scan, ["file"]), timeout_s=60)
        assert answer["status"] == "protected"
        art = answer["artifacts"][0]
        assert decrypt((spool / art["name"]).read_bytes(), identity) == b"payload" * 100
        pid = worker.pid
        assert pid is not None and pid != os.getpid()
        # the health tick kills a worker past its deadline; the caller sees WorkerLost
        marker = tmp_path / "hung"
        stuck = ProtectWorker([recipient], spool, argv=[
            sys.executable, str(Path(__file__).with_name("stuck_worker.py")), str(marker)])
        try:
            import threading

            result: list[object] = []

            def call() -> None:
                try:
                    result.append(stuck.call(_request(scan, ["file"]), timeout_s=0.5))
                except WorkerLost as exc:
                    result.append(exc)

            t = threading.Thread(target=call)
            t.start()
            wait_until(lambda: stuck.kill_if_overdue(time.monotonic()))
            t.join(30)
            assert isinstance(result[0], WorkerLost) and stuck.killed == 1
            # the next call starts a new child, which behaves (the marker exists now)
            assert stuck.call(_request(scan, ["file"]), timeout_s=60)["status"] == "protected"
            assert stuck.started == 2
        finally:
            stuck.close()
    finally:
        worker.close()
    assert worker.pid is None


def test_a_worker_that_dies_is_replaced(tmp_path: Path, site_keys) -> None:
    _, recipient = site_keys
    scan = tmp_path / "a.raw"
    scan.write_bytes(b"x" * 1000)
    pool = WorkerPool(1, [recipient], tmp_path / "spool")
    try:
        assert pool.call(_request(scan, ["file"]), 60)["status"] == "protected"
        pid = pool.workers[0].pid
        assert pid is not None
        os.kill(pid, 9)  # e.g. the OOM killer
        child = pool.workers[0]._child
        assert child is not None
        wait_until(lambda: child.proc.poll() is not None)  # dead and reaped
        assert pool.call(_request(scan, ["file"]), 60)["status"] == "protected"
        assert pool.started == 2 and pool.workers[0].pid != pid
    finally:
        pool.close()


def test_scanfort_binary_starts_a_worker_without_its_command_modules(tmp_path: Path,
                                                                    site_keys) -> None:
    """The frozen binary's worker entry (``scanfort _protect-worker``) and the agent's
    parent stay light: the parent never imports the cipher, numpy or pydicom."""
    _, recipient = site_keys
    scan = tmp_path / "a.raw"
    scan.write_bytes(b"y" * 1000)
    worker = ProtectWorker([recipient], tmp_path / "spool",
                           argv=[sys.executable, "-m", "scanfort", "_protect-worker"])
    try:
        assert worker.call(_request(scan, ["file"]), 60)["status"] == "protected"
    finally:
        worker.close()
    code = ("import sys; from scanfort.cli import build_parser; build_parser('agent'); "
            "import agent.runner; "
            "print(sorted(m for m in ('cipher', 'numpy', 'pydicom') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_file_mode_worker_does_not_load_pydicom(tmp_path: Path, site_keys) -> None:
    mode = "file"
    _, recipient = site_keys
    scan = tmp_path / "ct.dcm"
    scan.write_bytes(ct_slice(16, 16, seed=2))
    code = (
        "import sys, os, json; from pathlib import Path; from agent.protect import Protector\n"
        f"p = Protector([{recipient!r}], Path({str(tmp_path / 'spool')!r}))\n"
        f"st = os.stat({str(scan)!r})\n"
        f"a = p.handle({{'path': {str(scan)!r}, 'size': st.st_size, 'mtime_ns': st.st_mtime_ns,"
        f" 'modes': [{mode!r}]}})\n"
        "print(a['status'], 'pydicom' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "protected False"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
def test_dicom_mode_worker_loads_neither_numpy_nor_pixel_codecs(tmp_path: Path,
                                                                  site_keys) -> None:
    """A worker protects DICOM with the C kernels on byte buffers: numpy, Pillow and the
    pylibjpeg codecs (imported by pydicom when installed) are never mapped into it, and
    its copies still restore byte for byte (the memory a worker holds: ``workerproc``)."""
    pytest.importorskip("cipher._native")
    identity, recipient = site_keys
    scans = [tmp_path / f"ct{i}.dcm" for i in range(3)]
    for i, scan in enumerate(scans):
        scan.write_bytes(ct_slice(64, 64 + i, seed=i))
    worker = ProtectWorker([recipient], tmp_path / "spool")
    try:
        answers = [worker.call(_request(scan, ["auto", "file"]), 60) for scan in scans]
        assert worker.pid is not None
        maps = Path(f"/proc/{worker.pid}/maps").read_text()
    finally:
        worker.close()
    for scan, answer in zip(scans, answers, strict=True):
        assert answer["status"] == "protected" and answer["plan"] == ["dicom", "file"]
        for art in answer["artifacts"]:
            data = (tmp_path / "spool" / art["name"]).read_bytes()
            assert decrypt(data, identity) == scan.read_bytes()
    for lib in ("numpy", "PIL", "openjpeg", "libjpeg"):
        assert f"/{lib}/" not in maps, lib


def test_a_worker_on_the_numpy_reference_kernel_lifts_the_numpy_block(tmp_path: Path,
                                                                      site_keys) -> None:
    """``cipher_kernel = "reference"`` (or a CPU no C kernel passes on): the worker blocks
    numpy before its imports like any other, then lifts the block for the reference, which
    needs it, and its copies restore byte for byte."""
    identity, recipient = site_keys
    scan = tmp_path / "ct.dcm"
    scan.write_bytes(ct_slice(32, 24, seed=5))
    worker = ProtectWorker([recipient], tmp_path / "spool", kernel="reference")
    try:
        answer = worker.call(_request(scan, ["auto", "file"]), 120)
        assert worker.kernel == "reference"
    finally:
        worker.close()
    assert answer["status"] == "protected" and answer["plan"] == ["dicom", "file"]
    for art in answer["artifacts"]:
        data = (tmp_path / "spool" / art["name"]).read_bytes()
        assert decrypt(data, identity) == scan.read_bytes()


def test_worker_ignores_interrupts_and_ends_with_its_input(tmp_path: Path, site_keys) -> None:
    """Ctrl-C or a service manager's SIGTERM to the process group must not cut a file off:
    the child keeps going and exits when the parent closes its input."""
    import signal

    _, recipient = site_keys
    scan = tmp_path / "a.raw"
    scan.write_bytes(b"z" * 1000)
    worker = ProtectWorker([recipient], tmp_path / "spool")
    assert worker.call(_request(scan, ["file"]), 60)["status"] == "protected"
    pid = worker.pid
    assert pid is not None
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: _no_signal_pending(pid))  # delivered (and ignored)
    assert worker.call(_request(scan, ["file"]), 60)["status"] == "protected"
    assert worker.started == 1 and worker.pid == pid
    worker.close()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_no_worker_can_start_files_wait_in_place(tmp_path: Path, site_keys) -> None:
    """A broken installation is not the files' fault: nothing is quarantined or moved."""
    from tests.helpers import drop, running, write_config

    _, recipient = site_keys
    config = write_config(tmp_path, [recipient],
                          {"share": {"kind": "folder", "path": str(tmp_path / "out")}})
    broken = [sys.executable, "-c", "import sys; sys.exit(3)"]
    with running(config, worker_argv=broken) as agent:
        drop(config.folders[0].path / "a.raw", b"data" * 100)
        wait_until(lambda: any("did not start" in body
                               for _, body in agent.journal.outbox_peek(100)), timeout=20)
        assert agent.journal.state_counts() == {}
        assert agent.pool.started == 0  # failed starts are not counted as started
    assert (config.folders[0].path / "a.raw").read_bytes() == b"data" * 100
    assert not list((tmp_path / "spool" / "quarantine").glob("*.reason.txt"))


def test_idle_workers_are_ended_and_started_again_on_demand(tmp_path: Path, site_keys) -> None:
    from tests.helpers import drop, running, write_config

    identity, recipient = site_keys
    outbox = tmp_path / "out"
    config = write_config(tmp_path, [recipient], {"share": {"kind": "folder", "path": str(outbox)}})
    with running(config, worker_idle_s=1.0) as agent:
        drop(config.folders[0].path / "a.raw", b"first" * 100)
        wait_until(lambda: agent.journal.state_counts().get("done") == 1)
        first = agent.pool.workers[0].pid
        assert first is not None
        wait_until(lambda: agent.pool.status()["running"] == 0, timeout=20)
        wait_until(lambda: not Path(f"/proc/{first}").exists(), timeout=20)  # and reaped
        drop(config.folders[0].path / "b.raw", b"second" * 100)
        wait_until(lambda: agent.journal.state_counts().get("done") == 2)
        assert agent.pool.started == 2 and agent.pool.killed == 0
    assert decrypt((outbox / "b.raw.age").read_bytes(), identity) == b"second" * 100


def test_a_copy_the_cipher_did_not_verify_never_counts(tmp_path: Path, site_keys) -> None:
    """Only a copy proven to restore to the original counts: an unverified one is
    discarded and the file is tried again (after_ack can never delete on its strength)."""
    import dataclasses

    _, recipient = site_keys
    p = Protector([recipient], tmp_path / "spool")
    scan = tmp_path / "a.bin"
    scan.write_bytes(b"y" * 5000)
    real = p._cipher.protect

    def unverified(*args: object, **kwargs: object) -> object:
        return dataclasses.replace(real(*args, **kwargs), verified=False)

    p._cipher = type("C", (), {"protect": staticmethod(unverified),
                               "CipherError": p._cipher.CipherError,
                               "NotDicomError": p._cipher.NotDicomError})()
    answer = p.handle(_request(scan, ["file"]))
    assert answer["status"] == "failed" and answer["permanent"] is False
    assert "did not verify" in answer["reason"]
    assert [q.name for q in (tmp_path / "spool").iterdir() if q.suffix in (".file", ".dicom")] == []
    assert list((tmp_path / "spool" / "tmp").iterdir()) == []


def test_protector_applies_the_folders_policy_and_the_sites_secret(
        tmp_path: Path, site_keys) -> None:
    import pydicom

    from cipher.pseudonym import PseudonymSecret

    identity, recipient = site_keys
    secret = PseudonymSecret.generate()
    secret_file = tmp_path / "pseudonym.secret"
    secret_file.write_text(secret.encode())
    spool = tmp_path / "spool"
    p = Protector([recipient], spool)
    scan = tmp_path / "ct.dcm"
    scan.write_bytes(ct_slice(32, 32, seed=3))
    source = pydicom.dcmread(scan)
    answer = p.handle({**_request(scan, ["dicom"]), "pseudonym_secret_file": str(secret_file),
                       "dicom_policy": "profile", "dicom_options": []})
    assert answer["status"] == "protected"
    [art] = answer["artifacts"]
    protected = pydicom.dcmread(spool / art["name"])
    assert protected.PatientID == secret.patient_id(str(source.PatientID),
                                                    str(source.get("IssuerOfPatientID", "")))
    codes = {i.CodeValue for i in protected.DeidentificationMethodCodeSequence}
    assert codes == {"113100"}  # the strictest: no option
    # The UIDs as stored (pseudonymised here): the parent sends them with the copy without
    # parsing it.
    stored = [str(protected[k].value) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                "SOPInstanceUID")]
    assert art["uids"] == stored and stored[0] != str(source.StudyInstanceUID)
    # What the central may learn of the study: keyed hashes only (for the exam lookup).
    expected = [secret.study_key(str(v)) for v in (source.get("AccessionNumber", ""),
                                                   source.StudyInstanceUID) if str(v)]
    assert art["study_keys"] == expected
    assert decrypt((spool / art["name"]).read_bytes(), identity) == scan.read_bytes()
    answer = p.handle({**_request(scan, ["dicom"]), "dicom_policy": "pixels-only"})
    [art] = answer["artifacts"]
    assert pydicom.dcmread(spool / art["name"]).PatientID == source.PatientID
    # A secret the worker cannot read: that file waits (not permanent), nothing is spooled.
    answer = p.handle({**_request(scan, ["dicom"]),
                       "pseudonym_secret_file": str(tmp_path / "gone")})
    assert answer["status"] == "failed" and answer["permanent"] is False


def test_the_configured_cipher_kernel_runs_in_the_workers(tmp_path: Path, site_keys) -> None:
    """``cipher_kernel`` (the benchmark runs a CPU without GFNI's kernel this way): the
    worker pins it, says so, and refuses to start with one its CPU cannot run."""
    from agent.config import CIPHER_KERNELS
    from agent.errors import ConfigError
    from cipher import chaos
    from tests.helpers import write_config

    _, recipient = site_keys
    dests = {"share": {"kind": "folder", "path": str(tmp_path / "out")}}
    assert write_config(tmp_path, [recipient], dests).cipher_kernel is None  # the fastest
    assert write_config(tmp_path, [recipient], dests,
                        cipher_kernel="aesni-sse").cipher_kernel == "aesni-sse"
    with pytest.raises(ConfigError, match="cipher_kernel: must be one of"):
        write_config(tmp_path, [recipient], dests, cipher_kernel="fast")
    assert set(chaos._native.BUILT) <= set(CIPHER_KERNELS)  # the agent knows every name
    slow = chaos.kernels()[-2]  # the slowest C kernel this CPU runs ("table")
    pool = WorkerPool(1, [recipient], tmp_path / "spool", kernel=slow)
    scan = tmp_path / "scan.bin"
    scan.write_bytes(os.urandom(3000))
    try:
        assert pool.call(_request(scan, ["file"]), 30)["status"] == "protected"
        assert pool.status()["kernels"] == [slow]
    finally:
        pool.close()
    missing = next(k for k in CIPHER_KERNELS if k not in chaos.kernels())  # x86: neon-aes
    pool = WorkerPool(1, [recipient], tmp_path / "spool", kernel=missing)
    try:
        with pytest.raises(WorkerStartFailed, match=f"{missing}.*not available on this CPU"):
            pool.call(_request(scan, ["file"]), 30)
    finally:
        pool.close()


def test_a_worker_holds_the_next_request_and_a_stuck_one_takes_it_down_as_collateral(
        tmp_path: Path, site_keys) -> None:
    """Two requests in one worker: answered in order to the right callers. When the child
    hangs on the first and is killed at its deadline, the second, queued behind it, is
    lost with it and says so (``collateral``: that file is not at fault); the next call
    gets a fresh child."""
    import threading

    identity, recipient = site_keys
    spool = tmp_path / "spool"
    scans = []
    for i in range(2):
        scan = tmp_path / f"{i}.raw"
        scan.write_bytes(bytes([i]) * (1000 + i))
        scans.append(scan)

    def both(worker: ProtectWorker, timeout_s: float) -> list[object]:
        results: list[object] = [None, None]

        def call(i: int) -> None:
            try:
                results[i] = worker.call(_request(scans[i], ["file"]), timeout_s)
            except WorkerLost as exc:
                results[i] = exc

        stuck = timeout_s < 5
        first = threading.Thread(target=call, args=(0,))
        first.start()
        if stuck:  # the first hangs in the child: the second queues behind it
            wait_until(lambda: worker.inflight == 1)
        second = threading.Thread(target=call, args=(1,))
        second.start()
        if stuck:
            wait_until(lambda: worker.inflight == 2)
            wait_until(lambda: worker.kill_if_overdue(time.monotonic()))
        first.join(30)
        second.join(30)
        return results

    worker = ProtectWorker([recipient], spool)
    try:
        answers = both(worker, 60)
        for scan, answer in zip(scans, answers, strict=True):
            assert isinstance(answer, dict) and answer["status"] == "protected"
            art = answer["artifacts"][0]
            assert decrypt((spool / art["name"]).read_bytes(), identity) == scan.read_bytes()
        assert worker.started == 1
    finally:
        worker.close()
    stuck = ProtectWorker([recipient], spool, argv=[
        sys.executable, str(Path(__file__).with_name("stuck_worker.py")), str(tmp_path / "m")])
    try:
        first, second = both(stuck, 0.5)
        assert isinstance(first, WorkerLost) and not first.collateral
        assert isinstance(second, WorkerLost) and second.collateral
        assert stuck.killed == 1 and stuck.inflight == 0
        assert stuck.call(_request(scans[0], ["file"]), timeout_s=60)["status"] == "protected"
        assert stuck.started == 2
    finally:
        stuck.close()
