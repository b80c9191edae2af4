"""The gateway in front of a real Orthanc (DICOMweb plugin) holding DICOM-mode protected studies.

Conformance goes through ``dicomweb-client`` (a DICOMweb client that is not ours); byte
identity is checked on the raw HTTP answers. The archive holds only placeholders: every
search by a real patient attribute is answered from the gateway's sealed index.
"""

from __future__ import annotations

import io
import re
import socket
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image

from cipher import keys
from gateway import audit
from gateway.config import Settings
from gateway.server import BackgroundServer
from gateway.store import Store
from tests import gateway_data as data
from tests import peers

pytestmark = pytest.mark.peer

JANE = data.Patient("PAT-001", "DOE^JANE", "ACC1001", "20240315")
JOHN = data.Patient("PAT-002", "SMITH^JOHN", "ACC2002", "20231102")
ANNA = data.Patient("PAT-003", "MILLER^ANNA", "ACC3003", "20220607")
PASSWORD = "reader-password-1"


@dataclass
class Site:
    orthanc: peers.OrthancPeer
    server: BackgroundServer
    identity: str
    ct: list[bytes]  # JANE's CT, originals (protected in the archive)
    mr: bytes  # JOHN's MR (pydicom MR_small), protected
    rgb: bytes  # JOHN's RGB secondary capture, protected
    multi: bytes  # ANNA's 3-frame instance, protected
    plain: bytes  # ANNA's CT_small, NOT protected (a non-ScanFort instance)
    tampered: bytes  # a protected instance of JANE's CT series, one bit flipped (original)
    sleeps: list[float] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def root(self) -> str:
        return self.server.url + "/dicom-web"

    @property
    def store(self) -> Store:
        store: Store = self.server.app.state.gateway.store
        return store


def _settings(tmp: Path, upstream: str, **extra: object) -> Settings:
    return Settings(data_dir=tmp, identity_file="site.key", upstreams=(upstream,),
                    login_failure_delay_s=0.5, **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    identity, recipient = keys.generate_identity()
    ct = data.ct_series(JANE, 4)
    tampered_original = data.ct_series(JANE, 1, study_uid=data.uids(ct[0])[0])[0]
    mr = data.pydicom_file("MR_small.dcm", JOHN)
    rgb = data.rgb_image(JOHN)
    multi = data.multiframe(ANNA, 3)
    plain = data.pydicom_file("CT_small.dcm", ANNA)
    with peers.start_orthanc(tmp_path_factory.mktemp("gw-orthanc")) as orthanc:
        for raw in [*ct, mr, rgb, multi]:
            orthanc.upload(data.protect(raw, recipient))
        orthanc.upload(data.tamper(data.protect(tampered_original, recipient)))
        orthanc.upload(plain)
        tmp = tmp_path_factory.mktemp("gw")
        sleeps: list[float] = []
        server = BackgroundServer(_settings(tmp, orthanc.dicomweb_url), identities=[identity],
                                  sleep=sleeps.append)  # fmt: skip
        with server:
            store = server.app.state.gateway.store
            store.set_user("rita", PASSWORD, ["reader"])
            store.set_user("otto", PASSWORD, ["auditor"])
            yield Site(orthanc, server, identity, ct, mr, rgb, multi, plain, tampered_original,
                       sleeps)  # fmt: skip


def client(site: Site, user: str = "rita") -> DICOMwebClient:
    session = requests.Session()
    session.auth = (user, PASSWORD)
    return DICOMwebClient(url=site.root, session=session)


def raw_parts(resp: requests.Response) -> list[bytes]:
    """Bodies of a multipart/related answer (a parser independent of the gateway's)."""
    match = re.search(r"boundary=([^;\s]+)", resp.headers["Content-Type"])
    assert match is not None
    boundary = match.group(1).strip('"')
    chunks = resp.content.split(b"--" + boundary.encode())
    bodies = []
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        _head, _, body = chunk.partition(b"\r\n\r\n")
        bodies.append(body[:-2] if body.endswith(b"\r\n") else body)
    return bodies


def get(site: Site, path: str, accept: str = 'multipart/related; type="application/dicom"',
        user: str = "rita", **kw: object) -> requests.Response:  # fmt: skip
    return requests.get(site.root + path, headers={"Accept": accept}, auth=(user, PASSWORD),
                        timeout=30, **kw)  # type: ignore[arg-type]


def audit_rows(site: Site) -> list[audit.AuditEntry]:
    return list(site.store.iter_audit())


# --------------------------------------------------------------------------- QIDO


def test_search_by_real_patient_attributes_finds_studies_the_archive_only_knows_as_placeholders(
    site: Site,
) -> None:
    jane_study = data.uids(site.ct[0])[0]
    # the archive has no trace of the real PatientID
    direct = requests.get(site.orthanc.dicomweb_url + "/studies",
                          params={"PatientID": JANE.patient_id}, timeout=10)  # fmt: skip
    assert direct.status_code == 204 or direct.json() == []
    c = client(site)
    by_id = c.search_for_studies(search_filters={"PatientID": "PAT-001"})
    assert [s["0020000D"]["Value"][0] for s in by_id] == [jane_study]
    assert by_id[0]["00100010"]["Value"][0]["Alphabetic"] == "DOE^JANE"
    assert by_id[0]["00080061"]["Value"] == ["CT"]
    assert by_id[0]["00201208"]["Value"] == [4]  # the tampered slice is refused, not indexed
    by_acc = c.search_for_studies(search_filters={"AccessionNumber": "ACC2002"})
    assert {s["00100020"]["Value"][0] for s in by_acc} == {"PAT-002"}
    assert len(by_acc) == 2  # JOHN's MR and RGB studies
    by_name = c.search_for_studies(search_filters={"PatientName": "doe^j*"})
    assert [s["0020000D"]["Value"][0] for s in by_name] == [jane_study]
    by_date = c.search_for_studies(search_filters={"StudyDate": "20230101-20231231"})
    assert {s["00100020"]["Value"][0] for s in by_date} == {"PAT-002"}
    open_range = c.search_for_studies(search_filters={"StudyDate": "-20221231"})
    assert {s["00100020"]["Value"][0] for s in open_range} == {"PAT-003"}
    by_mod = c.search_for_studies(search_filters={"ModalitiesInStudy": "MR"})
    assert {s["00100020"]["Value"][0] for s in by_mod} == {"PAT-002"}
    assert c.search_for_studies(search_filters={"PatientID": "NOBODY"}) == []


def test_search_limit_offset_includefield_and_lower_levels(site: Site) -> None:
    c = client(site)
    every = c.search_for_studies()
    assert len(every) == 5  # JANE CT, JOHN MR + RGB, ANNA multi-frame + plain CT_small
    page = c.search_for_studies(limit=2, offset=1)
    assert [s["0020000D"] for s in page] == [s["0020000D"] for s in every[1:3]]
    with_birth = c.search_for_studies(search_filters={"PatientID": "PAT-001"},
                                      fields=["PatientBirthDate", "00081030"])  # fmt: skip
    assert with_birth[0]["00100030"]["Value"] == ["19700101"]
    assert with_birth[0]["00081030"]["Value"] == ["SYNTHETIC PHANTOM"]
    study, series, _ = data.uids(site.ct[0])
    found_series = c.search_for_series(study_instance_uid=study)
    assert [s["0020000E"]["Value"][0] for s in found_series] == [series]
    instances = c.search_for_instances(study_instance_uid=study, series_instance_uid=series)
    assert [i["00080018"]["Value"][0] for i in instances] == [data.sop_uid(r) for r in site.ct]
    all_mr = c.search_for_series(search_filters={"Modality": "MR"})
    assert [s["0020000E"]["Value"][0] for s in all_mr] == [data.uids(site.mr)[1]]


# --------------------------------------------------------------------------- WADO


def test_retrieved_instances_are_byte_identical_to_the_modality_originals(site: Site) -> None:
    study, series, _ = data.uids(site.ct[0])
    resp = get(site, f"/studies/{study}/series/{series}")
    assert resp.status_code == 200
    assert sorted(raw_parts(resp)) == sorted(site.ct)
    for original in (site.mr, site.rgb, site.multi):
        st, se, sop = data.uids(original)
        one = get(site, f"/studies/{st}/series/{se}/instances/{sop}")
        assert raw_parts(one) == [original]
    # and through dicomweb-client: a real patient in the dataset, the original pixels
    ds = client(site).retrieve_instance(*data.uids(site.mr))
    assert ds.PatientID == "PAT-002"
    assert ds.PixelData == pydicom.dcmread(io.BytesIO(site.mr)).PixelData


def test_frames_equal_the_original_pixel_data(site: Site) -> None:
    original = pydicom.dcmread(io.BytesIO(site.multi))
    size = original.Rows * original.Columns * 2
    frames = client(site).retrieve_instance_frames(*data.uids(site.multi), frame_numbers=[3, 1])
    assert frames == [original.PixelData[2 * size : 3 * size], original.PixelData[:size]]
    st, se, sop = data.uids(site.ct[0])
    resp = get(site, f"/studies/{st}/series/{se}/instances/{sop}/frames/1",
               accept="multipart/related; type=application/octet-stream; transfer-syntax=*")
    assert "transfer-syntax=1.2.840.10008.1.2.1" in resp.headers["Content-Type"]
    assert raw_parts(resp) == [pydicom.dcmread(io.BytesIO(site.ct[0])).PixelData]
    assert get(site, f"/studies/{st}/series/{se}/instances/{sop}/frames/2").status_code == 404


def test_metadata_has_real_attributes_and_bulkdata_uris_that_resolve(site: Site) -> None:
    st, se, sop = data.uids(site.ct[1])
    meta = client(site).retrieve_series_metadata(st, se)
    assert len(meta) == 4  # the tampered instance is in another series
    mine = next(m for m in meta if m["00080018"]["Value"][0] == sop)
    assert mine["00100020"]["Value"] == ["PAT-001"]
    uri = mine["7FE00010"]["BulkDataURI"]
    # dicomweb-client sends its Host header without the port; the URI follows the Host
    path = f"/dicom-web/studies/{st}/series/{se}/instances/{sop}/bulkdata/7FE00010"
    assert uri == "http://127.0.0.1" + path
    bulk = requests.get(site.url + path, auth=("rita", PASSWORD), headers={"Accept": "application/octet-stream"},
                        timeout=10)  # fmt: skip
    assert bulk.content == pydicom.dcmread(io.BytesIO(site.ct[1])).PixelData


def _windowed(raw: bytes, center: float, width: float) -> np.ndarray:
    ds = pydicom.dcmread(io.BytesIO(raw))
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    lo = center - width / 2
    return (np.clip((hu - lo) / width, 0, 1) * 255).round().astype(np.uint8)


def test_rendered_png_and_jpeg_are_the_windowed_original_not_noise(site: Site) -> None:
    st, se, sop = data.uids(site.ct[0])
    path = f"/studies/{st}/series/{se}/instances/{sop}/rendered"
    png = get(site, path, accept="image/png", params={"window": "300,1200,linear"})
    assert png.headers["Content-Type"] == "image/png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))),
                          _windowed(site.ct[0], 300, 1200))  # fmt: skip
    jpeg = get(site, path, accept="image/jpeg")
    img = np.asarray(Image.open(io.BytesIO(jpeg.content))).astype(int)
    assert np.abs(img - _windowed(site.ct[0], 40, 400)).mean() < 3  # lossy, but the image
    rgb_st, rgb_se, rgb_sop = data.uids(site.rgb)
    rgb = get(site, f"/studies/{rgb_st}/series/{rgb_se}/instances/{rgb_sop}/rendered",
              accept="image/png")  # fmt: skip
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rgb.content))),
                          pydicom.dcmread(io.BytesIO(site.rgb)).pixel_array)  # fmt: skip
    mf = pydicom.dcmread(io.BytesIO(site.multi))
    mst, mse, msop = data.uids(site.multi)
    third = get(site, f"/studies/{mst}/series/{mse}/instances/{msop}/frames/3/rendered",
                accept="image/png")  # fmt: skip
    frame = mf.pixel_array[2].astype(np.float64)  # no window in the file: min..max
    want = ((frame - frame.min()) / (frame.max() - frame.min()) * 255).round().astype(np.uint8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(third.content))), want)
    assert get(site, f"/studies/{mst}/series/{mse}/instances/{msop}/frames/4/rendered",
               accept="image/png").status_code == 404  # fmt: skip
    thumb = get(site, f"/studies/{st}/series/{se}/thumbnail", accept="image/jpeg")
    assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (64, 64)


def test_a_non_scanfort_instance_passes_through_unchanged_and_is_audited(site: Site) -> None:
    st, se, sop = data.uids(site.plain)
    resp = get(site, f"/studies/{st}/series/{se}/instances/{sop}")
    assert raw_parts(resp) == [site.plain]
    stored = site.orthanc.find_instance(sop)
    assert stored is not None and raw_parts(resp) == [site.orthanc.instance_file(stored)]
    last = [e for e in audit_rows(site) if e.instance_uid == sop][-1]
    assert (last.operation, last.outcome, last.username) == ("retrieve", "passthrough", "rita")


def test_a_tampered_instance_is_refused_alone_and_audited(site: Site) -> None:
    st, se, sop = data.uids(site.tampered)
    one = get(site, f"/studies/{st}/series/{se}/instances/{sop}")
    assert one.status_code == 409
    assert "refused" in one.json()["detail"]
    frames = get(site, f"/studies/{st}/series/{se}/instances/{sop}/frames/1")
    assert frames.status_code == 409
    whole = get(site, f"/studies/{st}")  # the study: the four good CT slices still come
    got = raw_parts(whole)
    assert [data.sop_uid(g) for g in got] == [data.sop_uid(c) for c in site.ct], [len(g) for g in got]
    assert sorted(got) == sorted(site.ct)
    refused = [e for e in audit_rows(site) if e.instance_uid == sop and e.outcome == "refused"]
    assert {e.operation for e in refused} >= {"retrieve", "frames"}
    assert all("tampered" in e.detail for e in refused)
    client(site).search_for_studies(search_filters={"StudyInstanceUID": st})  # indexed once
    indexer = [e for e in audit_rows(site) if e.operation == "reindex" and e.study_uid == st]
    assert [(e.outcome, e.instance_uid) for e in indexer] == [("ok", ""), ("refused", sop)]
    assert indexer[0].detail == "4 instances"
    # QIDO lists it (UIDs only, marked unavailable) so a viewer can show its error
    listed = client(site).search_for_instances(study_instance_uid=st)
    by_sop = {i["00080018"]["Value"][0]: i for i in listed}
    assert by_sop[sop]["00080056"]["Value"] == ["UNAVAILABLE"]
    assert "00100010" not in by_sop[sop] and "00100020" not in by_sop[sop]
    assert all("00080056" not in i for u, i in by_sop.items() if u != sop)
    assert len(by_sop) == 5


# --------------------------------------------------------------------------- who may read


def test_authentication_roles_tokens_and_sessions(site: Site) -> None:
    st, se, sop = data.uids(site.mr)
    path = f"/studies/{st}/series/{se}/instances/{sop}"
    anonymous = requests.get(site.root + path, timeout=10)
    assert anonymous.status_code == 401 and "Basic" in anonymous.headers["WWW-Authenticate"]
    before = len(site.sleeps)
    wrong = requests.get(site.root + path, auth=("rita", "wrong"), timeout=10)
    assert wrong.status_code == 401
    assert site.sleeps[before:] == [0.5]  # delayed; doubled on the next failure
    requests.get(site.root + path, auth=("rita", "wrong-again"), timeout=10)
    assert site.sleeps[before + 1 :] == [1.0]
    denied = get(site, path, user="otto")
    assert denied.status_code == 403
    entry = audit_rows(site)[-1]
    assert (entry.username, entry.operation, entry.outcome, entry.instance_uid) == (
        "otto", "denied", "denied", sop)  # fmt: skip
    token = site.store.create_token("rita", 60, "api")
    ok = requests.get(site.root + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert raw_parts(ok) == [site.mr]
    expired = site.store.create_token("rita", -1, "session")
    stale = requests.get(site.root + path, cookies={"sfgw_session": expired}, timeout=10)
    assert stale.status_code == 401 and "expired" in stale.json()["detail"]
    s = requests.Session()
    login = s.post(site.url + "/login", data={"username": "rita", "password": PASSWORD},
                   allow_redirects=False, timeout=10)  # fmt: skip
    assert login.status_code == 303 and "sfgw_session" in s.cookies
    assert raw_parts(s.get(site.root + path, timeout=10)) == [site.mr]
    assert s.get(site.url + "/audit", timeout=10).status_code == 403  # a reader, not an auditor


def test_audit_chain_verifies_holds_no_patient_attributes_and_detects_edits(site: Site) -> None:
    client(site).search_for_studies(search_filters={"PatientID": "PAT-001"})
    entries = audit_rows(site)
    assert audit.verify_chain(entries) == len(entries) > 10
    auditor = requests.Session()
    auditor.auth = ("otto", PASSWORD)
    page = auditor.get(site.url + "/audit", timeout=10)
    assert "Chain verified" in page.text
    csv_text = auditor.get(site.url + "/audit.csv", timeout=10).text
    db = Path(site.server.app.state.gateway.settings.database_url.removeprefix("sqlite:///"))
    raw_db = db.read_bytes() + b"".join(p.read_bytes() for p in db.parent.glob("*-wal"))
    for secret in ("PAT-001", "DOE^JANE", "DOE", "ACC1001", "SMITH", "19700101"):
        assert secret not in csv_text and secret not in page.text
        assert secret.encode() not in raw_db  # neither the audit nor the sealed index
    # an edit anywhere in the chain is detected
    con = sqlite3.connect(db)
    try:
        con.execute("UPDATE gw_audit SET username='mallory' WHERE seq=3")
        con.commit()
        with pytest.raises(audit.AuditChainError, match="entry 3"):
            audit.verify_chain(audit_rows(site))
        assert "Chain broken" in auditor.get(site.url + "/audit", timeout=10).text
    finally:
        con.execute("UPDATE gw_audit SET username=? WHERE seq=3", (entries[2].username,))
        con.commit()
        con.close()
    assert audit.verify_chain(audit_rows(site)) >= len(entries)


# --------------------------------------------------------------------------- faults


def test_upstream_down_is_502_and_slow_is_504(tmp_path: Path, site: Site) -> None:
    dead = peers.free_port()
    with BackgroundServer(_settings(tmp_path / "a", f"http://127.0.0.1:{dead}/dicom-web"),
                          identities=[site.identity]) as gw:  # fmt: skip
        gw.app.state.gateway.store.set_user("rita", PASSWORD, ["reader"])
        resp = requests.get(gw.url + "/dicom-web/studies", auth=("rita", PASSWORD), timeout=10)
        assert resp.status_code == 502 and "cannot be reached" in resp.json()["detail"]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])  # accept, never answer
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/dicom-web"
        with BackgroundServer(_settings(tmp_path / "b", url, upstream_timeout_s=0.5),
                              identities=[site.identity]) as gw:  # fmt: skip
            gw.app.state.gateway.store.set_user("rita", PASSWORD, ["reader"])
            resp = requests.get(gw.url + "/dicom-web/studies/1.2.3/series/4.5/instances/6.7",
                                auth=("rita", PASSWORD), timeout=10)  # fmt: skip
            assert resp.status_code == 504 and "in time" in resp.json()["detail"]
    finally:
        stop.set()
        thread.join(2)
        silent.close()
        for s in held:
            s.close()


def test_decrypted_instances_are_cached_in_memory_within_the_cap(site: Site) -> None:
    cache = site.server.app.state.gateway.restorer.cache
    st, se, sop = data.uids(site.ct[2])
    get(site, f"/studies/{st}/series/{se}/instances/{sop}")
    hits = cache.hits
    for _ in range(3):
        get(site, f"/studies/{st}/series/{se}/instances/{sop}/frames/1")
    assert cache.hits == hits + 3
    assert 0 < cache.size <= cache.cap


def test_export_pushes_decrypted_instances_by_c_store_and_audits_them(
    site: Site, tmp_path: Path
) -> None:
    from gateway.export import export_study

    study = data.uids(site.ct[0])[0]
    gw = site.server.app.state.gateway
    with peers.start_storescp(tmp_path / "scp") as scp:
        outcomes: list[str] = []
        result = export_study(gw, study, f"dicom://{scp.aet}@127.0.0.1:{scp.port}", "cli:test",
                              on_instance=outcomes.append)
        files = scp.wait_for(4)
    assert (result.sent, result.refused, result.failed) == (4, 1, 0)
    assert sorted(outcomes) == ["refused"] + ["sent"] * 4  # what the CLI's progress counts
    received = {str(d.SOPInstanceUID): d for d in (pydicom.dcmread(f) for f in files)}
    for original in site.ct:
        ds = received[data.sop_uid(original)]
        assert ds.PatientID == "PAT-001"  # the real patient, restored
        assert ds.PixelData == pydicom.dcmread(io.BytesIO(original)).PixelData
    exports = [e for e in audit_rows(site) if e.operation == "export"]
    assert sorted(e.outcome for e in exports) == ["ok"] * 4 + ["refused"]
    assert all(e.username == "cli:test" and e.study_uid == study for e in exports)


def test_export_by_stow_rs_sends_the_original_bytes(site: Site, tmp_path: Path) -> None:
    from gateway.export import export_study

    study = data.uids(site.mr)[0]
    gw = site.server.app.state.gateway
    with peers.start_orthanc(tmp_path / "clinical") as clinical:
        result = export_study(gw, study, clinical.dicomweb_url, "cli:test")
        assert (result.sent, result.refused, result.failed) == (1, 0, 0)
        stored = clinical.find_instance(data.sop_uid(site.mr))
        assert stored is not None and clinical.instance_file(stored) == site.mr
