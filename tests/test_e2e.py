"""End to end: agent + central + Orthanc on loopback.

Scans dropped into the watched folder are protected on the "workstation", uploaded to the
central store and stored in Orthanc by STOW-RS; the dashboard shows the agent's counters;
every copy decrypts with the site identity to the original scan.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.data import get_testdata_file

from cipher import keys
from service.bootstrap import initialize
from service.server import BackgroundServer
from tests.helpers import decrypt
from tests.peers import start_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.peer]

SAMPLES = ("CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "SC_rgb_small_odd.dcm", "rtdose_1frame.dcm", "liver_1frame.dcm")  # distinct SOP Instance UIDs
PASSWORD = "e2e-admin-password"

CONFIG = """\
recipients = []
spool_dir = "{root}/spool"
workers = 2
settle_seconds = 0.5
reconcile_seconds = 5
log_dir = "{root}/logs"

[disk]
low_watermark = "10 MB"
high_watermark = "20 MB"

[retry]
initial_seconds = 0.5
max_seconds = 5

[central]
url = "{central}"
heartbeat_seconds = 1

[[folders]]
path = "{root}/inbox"
destinations = ["central", "pacs"]

[destinations.central]
kind = "central"

[destinations.pacs]
kind = "dicomweb"
url = "{orthanc}/dicom-web"
"""


def _scanfort(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "scanfort", *args], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _restored(protected: bytes, identity: str) -> pydicom.Dataset:
    return pydicom.dcmread(BytesIO(decrypt(protected, identity)))


def _login(session: requests.Session, url: str) -> None:
    page = session.get(f"{url}/login", timeout=10)
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    r = session.post(f"{url}/login", data={"username": "admin", "password": PASSWORD, "csrf": csrf, "next": "/"}, timeout=30)
    assert r.status_code == 200 and "Sign in" not in r.text


def test_scans_flow_to_central_and_orthanc_and_show_on_the_dashboard(tmp_path: Path) -> None:
    identity, recipient = keys.generate_identity()
    result = initialize(tmp_path / "central", admin_password=PASSWORD, recipients=(recipient,))
    server = BackgroundServer(result.settings, port=0).start()
    agent: subprocess.Popen[bytes] | None = None
    try:
        with start_orthanc(tmp_path / "orthanc") as orthanc:
            root = tmp_path / "agent"
            (root / "inbox").mkdir(parents=True)
            config = root / "agent.toml"
            config.write_text(CONFIG.format(root=root, central=server.url, orthanc=orthanc.url))
            _scanfort("agent", "enroll", "--central", server.url, "--token", result.enrollment_token, "--config", str(config))
            agent = subprocess.Popen([sys.executable, "-m", "scanfort", "agent", "run", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            originals = {}
            for name in SAMPLES:
                src = get_testdata_file(name, download=False)
                assert src is not None
                tmp = root / "inbox" / f"{name}.partial"
                shutil.copyfile(str(src), tmp)
                tmp.rename(root / "inbox" / name)
                originals[name] = pydicom.dcmread(str(src))
            deadline = time.monotonic() + 180
            states: dict[str, int] = {}
            while time.monotonic() < deadline:
                states = json.loads(_scanfort("agent", "status", "--config", str(config), "--json"))["states"]
                if states.get("done", 0) == len(SAMPLES):
                    break
                assert agent.poll() is None, "agent exited"
                time.sleep(0.5)
            assert states.get("done", 0) == len(SAMPLES), states

            # central store: one protected object per scan, each decrypting to an original
            objects = [p for p in (tmp_path / "central" / "objects").rglob("*") if p.is_file() and len(p.name) == 64]
            assert len(objects) == len(SAMPLES)
            by_uid = {ds.SOPInstanceUID: ds for ds in originals.values()}
            for obj in objects:
                ds = _restored(obj.read_bytes(), identity)
                assert ds == by_uid[ds.SOPInstanceUID]

            # Orthanc: every instance stored once, protected (pixel data differs), decrypts to the original
            assert len(orthanc.instances()) == len(SAMPLES)
            for uid, original in by_uid.items():
                stored = orthanc.instance_file(orthanc.find_instance(uid) or "")
                protected = pydicom.dcmread(BytesIO(stored))
                assert protected.PixelData != original.PixelData
                assert "PatientName" not in protected or protected.PatientName != original.PatientName or not original.PatientName
                restored = _restored(stored, identity)
                assert restored.PixelData == original.PixelData
                assert restored.PatientName == original.PatientName

            # dashboard: the agent is online with its counters
            session = requests.Session()
            _login(session, server.url)
            agent_id = next(line.split("=", 1)[1].strip().strip('"') for line in config.read_text().splitlines() if line.startswith("agent_id"))
            deadline = time.monotonic() + 30
            page = ""
            while time.monotonic() < deadline:
                page = session.get(f"{server.url}/agents/{agent_id}", timeout=10).text
                if f"protected: <b>{len(SAMPLES)}</b>" in page:
                    break
                time.sleep(1)
            assert f"protected: <b>{len(SAMPLES)}</b>" in page
            assert "online" in page.lower()
            home = session.get(f"{server.url}/", timeout=10).text
            assert agent_id[:8] in home
            for ds in originals.values():  # no patient data on the dashboard
                if ds.get("PatientName"):
                    assert str(ds.PatientName) not in page and str(ds.PatientName) not in home
    finally:
        if agent is not None:
            agent.terminate()
            agent.wait(timeout=30)
        server.stop()
