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
