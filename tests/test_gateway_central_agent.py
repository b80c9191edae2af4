"""End to end on loopback: agent -> central object store -> reading gateway (central upstream).

The real agent (``scanfort agent run``, enrolled with the central, its only destination the
central in DICOM mode: a file-mode container shows no UIDs to index) protects a CT series dropped into its inbox and uploads it with the UIDs the
central indexes (``X-Scanfort-*-UID``, as stored in the DICOM-mode artifacts); a gateway
whose upstream is that central then finds the study by the patient's real ID and returns
the modality's original bytes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from cipher import keys
from gateway.config import Settings
from gateway.server import BackgroundServer as GatewayServer
from service.bootstrap import initialize
from service.server import BackgroundServer
from tests import gateway_data as data

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent

CONFIG = """\
recipients = []
spool_dir = "{root}/spool"
workers = 1
settle_seconds = 0.3
reconcile_seconds = 5
log_dir = "{root}/logs"

[retry]
initial_seconds = 0.5
max_seconds = 5

[central]
url = "{central}"
heartbeat_seconds = 5

[[folders]]
path = "{root}/inbox"
destinations = ["central"]

[destinations.central]
kind = "central"
mode = "dicom"
"""


def _scanfort(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "scanfort", *args], capture_output=True,
                          text=True, timeout=120, check=False, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_study_the_agent_sent_to_the_central_is_found_and_read_through_the_gateway(
    tmp_path: Path,
) -> None:
    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-AGENT-7", "AGENT^ALMA", "ACC-AG7", "20240606")
    series = data.ct_series(patient, 3)
    central_init = initialize(tmp_path / "central", admin_password="central-admin-1",
                              recipients=(recipient,))  # fmt: skip
    agent: subprocess.Popen[bytes] | None = None
    with BackgroundServer(central_init.settings, port=0) as central:
        try:
            root = tmp_path / "agent"
            (root / "inbox").mkdir(parents=True)
            config = root / "agent.toml"
            config.write_text(CONFIG.format(root=root, central=central.url))
            _scanfort("agent", "enroll", "--central", central.url, "--token",
                      central_init.enrollment_token, "--config", str(config))  # fmt: skip
            agent = subprocess.Popen(
                [sys.executable, "-m", "scanfort", "agent", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )  # fmt: skip
            for i, raw in enumerate(series):
                part = root / "inbox" / f"slice{i}.partial"
                part.write_bytes(raw)
                part.rename(root / "inbox" / f"slice{i}.dcm")
            deadline = time.monotonic() + 120
            states: dict[str, int] = {}
            while time.monotonic() < deadline:
                states = json.loads(_scanfort("agent", "status", "--config", str(config),
                                              "--json"))["states"]  # fmt: skip
                if states.get("done", 0) == len(series):
                    break
                assert agent.poll() is None, "agent exited"
                time.sleep(0.5)
            assert states.get("done", 0) == len(series), states
        finally:
            if agent is not None:
                agent.terminate()
                agent.wait(30)

        token = _scanfort("central", "reader-token", "--data-dir", str(tmp_path / "central"))
        (tmp_path / "reader.token").write_text(token)
        study, series_uid, _ = data.uids(series[0])
        # the central indexed every upload by the UIDs the agent sent (retain-uids: the
        # modality's own; UIDs only, never a patient attribute)
        listed = requests.get(f"{central.url}/api/v1/reader/objects", params={"study": study},
                              headers={"Authorization": f"Bearer {token.strip()}"},
                              timeout=10).json()  # fmt: skip
        assert sorted(o["sop_uid"] for o in listed) == sorted(data.sop_uid(r) for r in series)
        assert {o["series_uid"] for o in listed} == {series_uid}

        settings = Settings(data_dir=tmp_path / "gw", identity_file="unused",
                            upstreams=(f"scanfort-central+{central.url}",),
                            central_token_file=str(tmp_path / "reader.token"))  # fmt: skip
        with GatewayServer(settings, identities=[identity]) as gw:
            gw.app.state.gateway.store.set_user("rita", "pw-1", ["reader"])
            auth = ("rita", "pw-1")
            found = requests.get(gw.url + "/dicom-web/studies", auth=auth, timeout=60,
                                 params={"PatientID": "PAT-AGENT-7"}).json()  # fmt: skip
            assert [s["0020000D"]["Value"][0] for s in found] == [study]
            assert found[0]["00100010"]["Value"][0]["Alphabetic"] == "AGENT^ALMA"
            whole = requests.get(f"{gw.url}/dicom-web/studies/{study}/series/{series_uid}",
                                 auth=auth, timeout=60)  # fmt: skip
            assert whole.status_code == 200
            assert all(whole.content.count(raw) == 1 for raw in series)  # the originals
