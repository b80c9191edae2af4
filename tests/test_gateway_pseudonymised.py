"""A study protected without ``retain-uids`` is reachable through the gateway end to end.

The archive (a real Orthanc) then holds the study under keyed pseudonym UIDs (the site's
pseudonym secret keeps them consistent across the study's instances); readers see and use
the original UIDs, which the gateway maps to the archive's when it asks the archive.
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import requests

import cipher
from cipher import keys
from cipher.profile import DicomPolicy
from cipher.pseudonym import PseudonymSecret
from gateway.config import Settings
from gateway.server import BackgroundServer
from tests import gateway_data as data
from tests import peers


def _protect(raw: bytes, recipient: str, secret: PseudonymSecret) -> bytes:
    out = io.BytesIO()
    policy = DicomPolicy(options=frozenset({"retain-long-full-dates"}), pseudonym_secret=secret)
    cipher.protect(io.BytesIO(raw), out, [recipient], mode="dicom", policy=policy)
    return out.getvalue()


def test_a_study_stored_under_pseudonym_uids_is_found_and_read_by_its_real_uids(
    tmp_path: Path,
) -> None:
    identity, recipient = keys.generate_identity()
    secret = PseudonymSecret.generate()
    patient = data.Patient("PAT-U", "UIDLESS^UMA", "ACC-U", "20240808")
    series = data.ct_series(patient, 3)
    stored = [_protect(raw, recipient, secret) for raw in series]
    study, series_uid, _ = data.uids(series[0])
    archive_study, archive_series, _ = data.uids(stored[0])
    assert archive_study != study and archive_series != series_uid  # pseudonyms in the PACS
    assert {data.uids(s)[0] for s in stored} == {archive_study}  # one study there too
    with peers.start_orthanc(tmp_path / "orthanc") as orthanc:
        for blob in stored:
            orthanc.upload(blob)
        settings = Settings(data_dir=tmp_path / "gw", identity_file="unused",
                            upstreams=(orthanc.dicomweb_url,))  # fmt: skip
        with BackgroundServer(settings, identities=[identity]) as gw:
            gw.app.state.gateway.store.set_user("rita", "pw-1", ["reader"])
            auth = ("rita", "pw-1")
            root = gw.url + "/dicom-web"
            found = requests.get(root + "/studies", params={"PatientID": "PAT-U"}, auth=auth,
                                 timeout=60).json()  # fmt: skip
            assert [s["0020000D"]["Value"][0] for s in found] == [study]
            listed = requests.get(f"{root}/studies/{study}/series", auth=auth, timeout=30).json()
            assert [s["0020000E"]["Value"][0] for s in listed] == [series_uid]
            meta = requests.get(f"{root}/studies/{study}/series/{series_uid}/metadata",
                                auth=auth, timeout=30).json()  # fmt: skip
            sops = [m["00080018"]["Value"][0] for m in meta]
            assert sorted(sops) == sorted(data.sop_uid(r) for r in series)

            whole = requests.get(f"{root}/studies/{study}/series/{series_uid}", auth=auth,
                                 timeout=60)  # fmt: skip
            assert whole.status_code == 200
            assert sorted(data.bodies(whole)) == sorted(series)  # the originals, byte for byte
            one = requests.get(f"{root}/studies/{study}/series/{series_uid}/instances/"
                               f"{data.sop_uid(series[1])}", auth=auth, timeout=30)  # fmt: skip
            assert data.bodies(one) == [series[1]]
            frame = requests.get(f"{root}/studies/{study}/series/{series_uid}/instances/"
                                 f"{data.sop_uid(series[2])}/frames/1", auth=auth, timeout=30,
                                 headers={"Accept": "application/octet-stream"})  # fmt: skip
            assert frame.status_code == 200
            assert frame.content == pydicom.dcmread(io.BytesIO(series[2])).PixelData
