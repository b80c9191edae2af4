"""Frames, metadata and bulk data of a large multi-frame through the gateway, in front of
a real Orthanc: memory.

A ~48 MB protected multi-frame sits in a loopback Orthanc (DICOMweb plugin); ``scanfort
gateway run`` runs as its own process with ``stream_above_bytes`` lowered to 4 MiB. Its
frames must equal the original's pixel data of those frames, its metadata the original's
attributes, its Pixel Data bulk data the original's value, and the gateway's peak RSS
(VmHWM) must grow by well under the instance's size while it serves them: the ciphertext
is staged in a file and deciphered one frame at a time, only the requested frames kept;
the metadata comes from the blob's header; the bulk data goes out frame by frame. (A
bound with a generous margin, not a timing; the bench prints the figures.)
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import requests

from cipher import keys
from gateway import dicomdata
from tests import gateway_data as data
from tests import peers

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "frames-password-1"


def _vm_hwm_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"(?m)^VmHWM:\s+(\d+) kB", text).group(1)) / 1024  # type: ignore[union-attr]


def test_frames_metadata_and_bulkdata_of_a_large_multiframe_keep_the_gateway_memory_bounded(tmp_path: Path) -> None:
    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-MF", "MULTI^MIA", "ACC-MF", "20240709")
    frames, rows, cols = 96, 512, 512  # 48 MiB of 16-bit pixels
    original = data.multiframe(patient, frames, rows=rows, cols=cols)
    pixels = np.frombuffer(original[-frames * rows * cols * 2:], "<u2").reshape(frames, -1)
    pixel_sha = hashlib.sha256(pixels.tobytes()).hexdigest()
    header = pydicom.dcmread(io.BytesIO(original), stop_before_pixels=True)
    protected = data.protect(original, recipient)
    size_mb = len(protected) / 2**20
    study, series, sop = data.uids(original)
    del original
    with peers.start_orthanc(tmp_path / "orthanc") as orthanc:
        orthanc.upload(protected)
        del protected
        (tmp_path / "site.key").write_text(identity + "\n")
        env = {**os.environ, "PYTHONPATH": str(REPO), "SCANFORT_GATEWAY_PASSWORD": PASSWORD}
        gw_dir = tmp_path / "gw"
        subprocess.run([sys.executable, "-m", "scanfort", "gateway", "init", "--data-dir",
                        str(gw_dir), "--identity", str(tmp_path / "site.key"), "--upstream",
                        orthanc.dicomweb_url], check=True, env=env, capture_output=True,
                       cwd=REPO)  # fmt: skip
        toml = gw_dir / "gateway.toml"
        text = re.sub(r"(?m)^stream_above_bytes = .*\n", "", toml.read_text())
        toml.write_text(f"stream_above_bytes = {4 * 2**20}\n" + text)
        port = peers.free_port()
        proc = subprocess.Popen([sys.executable, "-m", "scanfort", "gateway", "run",
                                 "--data-dir", str(gw_dir), "--port", str(port),
                                 "--log-level", "warning"], env=env, cwd=REPO)  # fmt: skip
        try:
            peers.wait_for_port(port, proc)
            root = (f"http://127.0.0.1:{port}/dicom-web/studies/{study}/series/{series}"
                    f"/instances/{sop}")  # fmt: skip
            auth = ("admin", PASSWORD)
            # warm up the process (imports, first request) on a small answer
            assert requests.get(f"http://127.0.0.1:{port}/dicom-web/studies", auth=auth,
                                timeout=60).status_code == 200  # fmt: skip
            before = _vm_hwm_mb(proc.pid)
            for numbers in ([1], [frames], [frames // 2, 2], [3, frames - 1]):
                got = requests.get(f"{root}/frames/{','.join(map(str, numbers))}", auth=auth,
                                   timeout=120)  # fmt: skip
                assert got.status_code == 200, got.text
                assert data.bodies(got) == [pixels[n - 1].tobytes() for n in numbers]
            meta = requests.get(f"{root}/metadata", auth=auth, timeout=120)
            assert meta.status_code == 200
            got_meta = meta.json()[0]
            bulk_uri = got_meta.pop("7FE00010")["BulkDataURI"]
            assert bulk_uri == f"{root}/bulkdata/7FE00010"
            assert got_meta == dicomdata.metadata_json(header, root)  # the original's
            digest, size = hashlib.sha256(), 0
            with requests.get(bulk_uri, auth=auth, timeout=120, stream=True,
                              headers={"Accept": "application/octet-stream"}) as bulk:
                assert bulk.status_code == 200
                for chunk in bulk.iter_content(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
            assert (size, digest.hexdigest()) == (pixels.nbytes, pixel_sha)
            growth = _vm_hwm_mb(proc.pid) - before
        finally:
            proc.terminate()
            proc.wait(10)
    print(f"gateway VmHWM growth serving frames, metadata and bulk data of a {size_mb:.0f} MB "
          f"instance: {growth:.0f} MB")
    # whole-instance restore (before) grew by about twice the instance; a frame is 0.5 MiB
    assert growth < size_mb / 3, (growth, size_mb)
