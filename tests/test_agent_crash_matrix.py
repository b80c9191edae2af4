"""The crash-point matrix: a crash at every named point loses, duplicates and leaves nothing.

For each point of :data:`agent.crashpoints.POINTS` a burst (synthetic DICOM and other
files, two folders with ``after_ack`` delete and move, three destinations: folder,
central, Orthanc C-STORE) is run by a real ``scanfort agent run`` that ``os._exit``s at
that point (in the agent or in a protect worker, once), then by a restarted agent.
Asserted for every point: every source at every destination that takes it exactly once,
each decrypting byte-identical to its source; the plaintext removed (or moved) only
after all acknowledgements; no spool file left; the journal says done. The default suite
runs a small burst per point; the ``slow`` run (CI) the full 200 files. The matrix is
printed at the end (``-s`` shows it; CI logs it).
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from agent import crashpoints
from tests.helpers import TOKEN, Receiver, ct_slice, decrypt, wait_until, write_config
from tests.peers import OrthancPeer

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.peer
MATRIX: dict[tuple[str, int], dict[str, int]] = {}


def _states(journal: Path) -> dict[str, int]:
    if not journal.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=5)
        try:
            return dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"))
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def _start(config_path: Path, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "scanfort", "agent", "run", "--config", str(config_path)],
            cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, **env})


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _burst(tmp: Path, n: int) -> dict[Path, bytes]:
    """``n`` sources, half DICOM, over two folders; written before the agent starts."""
    sources: dict[Path, bytes] = {}
    for i in range(n):
        folder = tmp / ("inbox" if i % 2 == 0 else "inbox2")
        folder.mkdir(parents=True, exist_ok=True)
        if i % 4 < 2:
            path, data = folder / f"ct{i:03d}.dcm", ct_slice(32, 32, seed=5000 + i)
        else:
            path, data = folder / f"doc{i:03d}.bin", os.urandom(2000 + i)
        path.write_bytes(data)
        sources[path] = data
    return sources


def run_point(point: str, n: int, tmp: Path, site_keys: tuple[str, str],
              orthanc: OrthancPeer) -> dict[str, int]:
    identity, recipient = site_keys
    orthanc.clear()
    share, sent = tmp / "share", tmp / "sent"
    with Receiver() as rx:
        config = write_config(
            tmp, [recipient],
            {"share": {"kind": "folder", "path": str(share)},
             "central": {"kind": "central"},
             "pacs": {"kind": "dicom", "host": orthanc.host, "port": orthanc.dicom_port,
                      "ae_title": orthanc.aet}},
            folder={"after_ack": "delete"},
            extra_folders=[{"path": str(tmp / "inbox2"), "after_ack": "move",
                            "move_to": str(sent),
                            "destinations": ["share", "central", "pacs"]}],
            central={"url": rx.url, "token": TOKEN, "heartbeat_seconds": 1},
            settle_seconds=0.2)
        assert config.source is not None
        sources = _burst(tmp, n)
        marker = tmp / "crashed"
        env = {crashpoints.ENV: point, crashpoints.ONCE_ENV: str(marker)}
        log = tmp / "agent.log"
        proc = _start(config.source, log, env)
        try:
            wait_until(lambda: marker.exists() or _states(config.journal_path).get("done") == n,
                       timeout=120, every=0.1)
            crashed = marker.exists()
            if crashed and not point.startswith("protect."):
                assert proc.wait(30) == crashpoints.CRASH_EXIT
                proc = _start(config.source, log, env)  # the marker keeps it from crashing
            wait_until(lambda: _states(config.journal_path).get("done") == n, timeout=150,
                       every=0.2)
        finally:
            _stop(proc)
        # -- what is where --------------------------------------------------------------
        by_content = {data: path for path, data in sources.items()}
        share_files = [p for p in share.rglob("*") if p.is_file()]
        at_share = [decrypt(p.read_bytes(), identity) for p in share_files]
        at_central = [decrypt(o, identity) for o in rx.objects.values()]
        dicom = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d for p, d in sources.items()
                 if p.suffix == ".dcm"}
        in_pacs = 0
        for uid, data in dicom.items():
            oid = orthanc.find_instance(uid)
            if oid is None:
                continue
            # Orthanc rewrites the file it stores: compare what it must carry
            held = pydicom.dcmread(io.BytesIO(decrypt(orthanc.instance_file(oid), identity)))
            original = pydicom.dcmread(io.BytesIO(data))
            if (held.PixelData, held.PatientID) == (original.PixelData, original.PatientID):
                in_pacs += 1
        lost = sum(1 for d in sources.values() if d not in at_share) + \
            sum(1 for d in sources.values() if d not in at_central) + (len(dicom) - in_pacs)
        duplicated = (len(at_share) - len(set(at_share))) + \
            (len(orthanc.instances()) - len(dicom))
        unknown = sum(1 for d in at_share + at_central if d not in by_content)
        left = [p for p in config.spool_dir.iterdir() if p.suffix in (".file", ".dicom")]
        left += list((config.spool_dir / "tmp").iterdir())
        left += [p for p in sources if p.exists()]  # after_ack applied to every source
        moved = sorted(p.read_bytes() for p in sent.rglob("*") if p.is_file())
        row = {"crashed": int(crashed), "lost": lost + unknown, "duplicated": duplicated,
               "left over": len(left),
               "moved": len(moved), "states": len(_states(config.journal_path))}
        assert moved == sorted(d for p, d in sources.items() if p.parent.name == "inbox2")
        assert _states(config.journal_path) == {"done": n}
        return row


@pytest.mark.parametrize("point", crashpoints.POINTS)
def test_crash_at_point_small_burst(point: str, tmp_path: Path, site_keys,
                                    orthanc: OrthancPeer) -> None:
    row = run_point(point, 8, tmp_path, site_keys, orthanc)
    MATRIX[(point, 8)] = row
    assert row["crashed"] == 1, f"{point} was never reached"
    assert (row["lost"], row["duplicated"], row["left over"]) == (0, 0, 0), row


@pytest.mark.slow
@pytest.mark.parametrize("point", crashpoints.POINTS)
def test_crash_at_point_200_files(point: str, tmp_path: Path, site_keys,
                                  orthanc: OrthancPeer) -> None:
    row = run_point(point, 200, tmp_path, site_keys, orthanc)
    MATRIX[(point, 200)] = row
    assert row["crashed"] == 1, f"{point} was never reached"
    assert (row["lost"], row["duplicated"], row["left over"]) == (0, 0, 0), row


def test_print_the_matrix(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this module: the table of every point run above."""
    if not MATRIX:
        pytest.skip("no crash point ran")
    lines = [f"{'crash point':<28} {'files':>5} {'crashed':>7} {'lost':>5} {'duplicated':>10} "
             f"{'left over':>9}"]
    for (point, n), row in sorted(MATRIX.items(), key=lambda kv: (kv[0][1],
                                                                crashpoints.POINTS.index(kv[0][0]))):
        lines.append(f"{point:<28} {n:>5} {row['crashed']:>7} {row['lost']:>5} "
                     f"{row['duplicated']:>10} {row['left over']:>9}")
    bad = [k for k, r in MATRIX.items() if (r["lost"], r["duplicated"], r["left over"]) != (0, 0, 0)]
    lines.append(f"{len({p for p, _ in MATRIX})} points, {len(MATRIX)} runs, "
                 f"{len(bad)} with a loss, a duplicate or a leftover")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    assert not bad
