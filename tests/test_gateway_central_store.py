"""The central object store's read side, for reading gateways: reader tokens, UID index, GET.

An agent uploads an encrypted object with its UIDs in headers; a gateway holding a reader
token lists objects by UID and fetches the bytes unchanged. Agent tokens cannot read, and
nothing but UIDs is indexed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import requests

from service.bootstrap import initialize
from service.server import BackgroundServer

REPO = Path(__file__).resolve().parent.parent
STUDY, SERIES, SOP = "1.2.826.0.1.3680043.8.498.10", "1.2.826.0.1.3680043.8.498.11", "1.2.3.4.5"


def test_a_reader_token_lists_objects_by_uid_and_gets_their_bytes(tmp_path: Path) -> None:
    result = initialize(tmp_path / "central", admin_password="central-admin-1")
    reader = subprocess.run(
        [sys.executable, "-m", "scanfort", "central", "reader-token", "--data-dir",
         str(tmp_path / "central"), "--note", "gateway 1"],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout.strip()  # fmt: skip
    assert reader.startswith("sfr_")
    with BackgroundServer(result.settings) as server:
        api = server.url + "/api/v1"
        reader_api = api + "/reader"
        enrolled = requests.post(api + "/enroll", json={"host": "ct-1", "os": "Linux",
                                 "version": "0.1.0"}, timeout=10,
                                 headers={"Authorization": f"Bearer {result.enrollment_token}"})
        agent = {"Authorization": f"Bearer {enrolled.json()['agent_token']}"}
        blob = os.urandom(5000)  # stands for an encrypted DICOM-mode instance
        sha = hashlib.sha256(blob).hexdigest()
        put = requests.put(f"{api}/objects/{sha}", data=blob, timeout=10, headers={
            **agent, "X-Scanfort-Study-UID": STUDY, "X-Scanfort-Series-UID": SERIES,
            "X-Scanfort-SOP-UID": SOP})  # fmt: skip
        assert put.status_code == 201
        other = os.urandom(100)
        other_sha = hashlib.sha256(other).hexdigest()
        bad_uid = requests.put(f"{api}/objects/{other_sha}", data=other, timeout=10, headers={
            **agent, "X-Scanfort-Study-UID": "DOE^JANE", "X-Scanfort-Series-UID": SERIES,
            "X-Scanfort-SOP-UID": "1.2"})  # fmt: skip
        assert bad_uid.status_code == 201  # stored, but a non-UID is never indexed
        gateway = {"Authorization": f"Bearer {reader}"}
        listed = requests.get(f"{reader_api}/objects", params={"study": STUDY}, headers=gateway,
                              timeout=10)  # fmt: skip
        assert listed.json() == [{"sha256": sha, "study_uid": STUDY, "series_uid": SERIES,
                                  "sop_uid": SOP}]  # fmt: skip
        assert requests.get(f"{reader_api}/objects", params={"sop": "1.2"}, headers=gateway,
                            timeout=10).json() == []  # fmt: skip
        got = requests.get(f"{reader_api}/objects/{sha}", headers=gateway, timeout=10)
        assert got.status_code == 200 and got.content == blob
        assert requests.get(f"{reader_api}/objects/{sha}", headers=agent, timeout=10).status_code == 401
        assert requests.get(f"{reader_api}/objects/{sha}", timeout=10).status_code == 401
        assert requests.get(f"{reader_api}/objects", headers=agent, timeout=10).status_code == 401
        missing = requests.get(f"{reader_api}/objects/{'0' * 64}", headers=gateway, timeout=10)
        assert missing.status_code == 404


def test_the_gateway_reads_protected_studies_from_the_central_object_store(
    tmp_path: Path,
) -> None:
    from cipher import keys
    from gateway.config import Settings
    from gateway.server import BackgroundServer as GatewayServer
    from tests import gateway_data as data

    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-C", "CENTRAL^CAROL", "ACC-C", "20240303")
    series = data.ct_series(patient, 3)
    result = initialize(tmp_path / "central", admin_password="central-admin-1")
    (tmp_path / "reader.token").write_text(subprocess.run(
        [sys.executable, "-m", "scanfort", "central", "reader-token", "--data-dir",
         str(tmp_path / "central")],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    ).stdout)  # fmt: skip
    with BackgroundServer(result.settings) as central:
        api = central.url + "/api/v1"
        enrolled = requests.post(api + "/enroll", json={"host": "ct-1", "os": "Linux",
                                 "version": "0.1.0"}, timeout=10,
                                 headers={"Authorization": f"Bearer {result.enrollment_token}"})
        agent = {"Authorization": f"Bearer {enrolled.json()['agent_token']}"}
        for raw in series:  # what an agent's central destination uploads
            blob = data.protect(raw, recipient)
            st, se, sop = data.uids(raw)
            r = requests.put(f"{api}/objects/{hashlib.sha256(blob).hexdigest()}", data=blob,
                             headers={**agent, "X-Scanfort-Study-UID": st,
                                      "X-Scanfort-Series-UID": se, "X-Scanfort-SOP-UID": sop},
                             timeout=10)  # fmt: skip
            assert r.status_code == 201
        settings = Settings(data_dir=tmp_path / "gw", identity_file="unused",
                            upstreams=(f"scanfort-central+{central.url}",),
                            central_token_file=str(tmp_path / "reader.token"))  # fmt: skip
        with GatewayServer(settings, identities=[identity]) as gw:
            gw.app.state.gateway.store.set_user("rita", "pw-1", ["reader"])
            root = gw.url + "/dicom-web"
            found = requests.get(root + "/studies", params={"PatientID": "PAT-C"},
                                 auth=("rita", "pw-1"), timeout=30).json()  # fmt: skip
            assert [s["00100010"]["Value"][0]["Alphabetic"] for s in found] == ["CENTRAL^CAROL"]
            st, se, _ = data.uids(series[0])
            whole = requests.get(f"{root}/studies/{st}/series/{se}", auth=("rita", "pw-1"),
                                 timeout=30)  # fmt: skip
            assert whole.status_code == 200
            assert all(whole.content.count(raw) == 1 for raw in series)  # the originals
