"""The gateway with DICOM mode v2 pseudonyms and with compressed (encapsulated) instances.

Each test runs its own Orthanc (DICOMweb plugin) on loopback with the gateway in front.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from cipher import keys
from gateway.server import BackgroundServer
from tests import gateway_data as data
from tests import peers
from tests.test_gateway_dicomweb import PASSWORD, _settings, raw_parts

pytestmark = pytest.mark.peer


def test_exact_ids_are_found_through_keyed_pseudonyms_without_walking_the_archive(
    tmp_path: Path,
) -> None:
    import cipher
    from cipher.pseudonym import PseudonymSecret

    secret = PseudonymSecret.generate()
    identity, recipient = keys.generate_identity()
    policy = cipher.DicomPolicy(pseudonym_secret=secret)
    a = data.ct_series(data.Patient("PAT-A", "ALPHA^A", "ACC-A", "20240101"), 2)
    b = data.ct_series(data.Patient("PAT-B", "BETA^B", "ACC-B", "20240102"), 1)
    with peers.start_orthanc(tmp_path / "orthanc") as orthanc:
        for raw in a + b:
            out = io.BytesIO()
            cipher.protect(io.BytesIO(raw), out, [recipient], mode="dicom", policy=policy)
            orthanc.upload(out.getvalue())
        stored = orthanc.get_json(f"/instances/{orthanc.instances()[0]}/simplified-tags")
        assert stored["PatientID"].startswith("SF1-")  # the archive holds pseudonyms only
        settings = _settings(tmp_path / "gw", orthanc.dicomweb_url)
        with BackgroundServer(settings, identities=[identity], pseudonyms=secret) as server:
            store = server.app.state.gateway.store
            store.set_user("rita", PASSWORD, ["reader"])
            c = DICOMwebClient(url=server.url + "/dicom-web")
            c._session.auth = ("rita", PASSWORD)
            found = c.search_for_studies(search_filters={"PatientID": "PAT-A"})
            assert [s["0020000D"]["Value"][0] for s in found] == [data.uids(a[0])[0]]
            assert found[0]["00100010"]["Value"][0]["Alphabetic"] == "ALPHA^A"
            assert set(store.index_counts()) == {data.uids(a[0])[0]}  # B was not decrypted
            by_acc = c.search_for_studies(search_filters={"AccessionNumber": "ACC-B"})
            assert [s["00100020"]["Value"][0] for s in by_acc] == ["PAT-B"]
            assert len(store.index_counts()) == 2


def test_encapsulated_instances_serve_their_compressed_frames_and_render(tmp_path: Path) -> None:
    from pydicom.encaps import generate_frames

    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-RLE", "RLE^ONE", "ACCRLE", "20240202")
    rle = data.pydicom_file("MR_small_RLE.dcm", patient)  # RLE Lossless, encapsulated
    rgb = data.pydicom_file("SC_rgb_rle.dcm", patient)
    with peers.start_orthanc(tmp_path / "orthanc") as orthanc:
        for raw in (rle, rgb):
            orthanc.upload(data.protect(raw, recipient))
        with BackgroundServer(_settings(tmp_path / "gw", orthanc.dicomweb_url),
                              identities=[identity]) as server:  # fmt: skip
            server.app.state.gateway.store.set_user("rita", PASSWORD, ["reader"])
            site_url = server.url + "/dicom-web"
            for original in (rle, rgb):
                st, se, sop = data.uids(original)
                base = f"{site_url}/studies/{st}/series/{se}/instances/{sop}"
                ds = pydicom.dcmread(io.BytesIO(original))
                whole = requests.get(base, auth=("rita", PASSWORD), timeout=30,
                                     headers={"Accept": 'multipart/related; type="application/dicom"'})
                assert whole.content.count(original) == 1  # byte for byte, still compressed
                frames = requests.get(base + "/frames/1", auth=("rita", PASSWORD), timeout=30,
                                      headers={"Accept": "multipart/related; "
                                               "type=application/octet-stream; transfer-syntax=*"})
                assert f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in \
                    frames.headers["Content-Type"]
                first = next(generate_frames(ds.PixelData, number_of_frames=1))
                assert raw_parts(frames) == [first]
                png = requests.get(base + "/rendered", auth=("rita", PASSWORD), timeout=30,
                                   headers={"Accept": "image/png"})
                img = np.asarray(Image.open(io.BytesIO(png.content)))
                pixels = ds.pixel_array
                if pixels.ndim == 2:  # grayscale, with the file's own window (600/1600)
                    lo = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
                    want = np.clip((pixels - lo) / float(ds.WindowWidth), 0, 1) * 255
                    assert np.abs(img.astype(int) - want.round().astype(int)).max() <= 1
                else:
                    assert np.array_equal(img, pixels if pixels.ndim == 3 else pixels[0])
