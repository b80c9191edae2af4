"""The agent against real peers on loopback: Orthanc (STOW-RS, C-STORE) and dcmtk storescp."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

import cipher
from tests.helpers import ct_slice, decrypt, drop, running, wait_until, write_config
from tests.peers import OrthancPeer, StoreSCPPeer

pytestmark = pytest.mark.peer


def assert_same_scan(protected: bytes, original: bytes, identity: str) -> None:
    """The copy held by the peer is protected, and decrypts to the original dataset."""
    held = pydicom.dcmread(io.BytesIO(protected))
    plain = pydicom.dcmread(io.BytesIO(original))
    assert held.PixelData != plain.PixelData  # the peer never sees the image
    assert str(held.get("PatientID", "")) != str(plain.PatientID)
    out = io.BytesIO()
    cipher.unprotect(io.BytesIO(protected), out, [identity])
    restored = pydicom.dcmread(io.BytesIO(out.getvalue()))
    assert restored.PixelData == plain.PixelData
    assert restored.PatientID == plain.PatientID
    assert restored.SOPInstanceUID == plain.SOPInstanceUID


def test_stow_rs_to_orthanc(tmp_path: Path, site_keys, orthanc: OrthancPeer) -> None:
    identity, recipient = site_keys
    orthanc.clear()
    config = write_config(tmp_path, [recipient],
                          {"pacs": {"kind": "dicomweb", "url": orthanc.dicomweb_url}})
    scans = {f"s{i}.dcm": ct_slice(seed=i) for i in range(6)}
    with running(config) as agent:
        for name, data in scans.items():
            drop(config.folders[0].path / name, data)
        wait_until(lambda: agent.journal.state_counts().get("done") == len(scans))
    assert len(orthanc.instances()) == len(scans)
    for data in scans.values():
        uid = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
        oid = orthanc.find_instance(uid)
        assert oid is not None
        assert_same_scan(orthanc.instance_file(oid), data, identity)


def test_c_store_to_orthanc_and_storescp(tmp_path: Path, site_keys, orthanc: OrthancPeer,
                                         storescp: StoreSCPPeer) -> None:
    identity, recipient = site_keys
    orthanc.clear()
    config = write_config(tmp_path, [recipient], {
        "orthanc": {"kind": "dicom", "host": orthanc.host, "port": orthanc.dicom_port,
                    "ae_title": orthanc.aet},
        "scp": {"kind": "dicom", "host": storescp.host, "port": storescp.port,
                "ae_title": storescp.aet},
    })
    scans = [ct_slice(seed=100 + i) for i in range(4)]
    with running(config) as agent:
        for i, data in enumerate(scans):
            drop(config.folders[0].path / f"c{i}.dcm", data)
        wait_until(lambda: agent.journal.state_counts().get("done") == len(scans))
    assert len(orthanc.instances()) == len(scans)
    received = storescp.wait_for(len(scans))
    assert len(received) == len(scans)
    by_uid = {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: d for d in scans}
    for path in received:
        held = path.read_bytes()
        uid = pydicom.dcmread(io.BytesIO(held)).SOPInstanceUID
        assert_same_scan(held, by_uid[uid], identity)


def test_garbage_and_truncated_are_quarantined_and_agent_goes_on(
        tmp_path: Path, site_keys, orthanc: OrthancPeer) -> None:
    _, recipient = site_keys
    orthanc.clear()
    config = write_config(tmp_path, [recipient],
                          {"pacs": {"kind": "dicomweb", "url": orthanc.dicomweb_url}})
    inbox = config.folders[0].path
    good = ct_slice(seed=7)
    with running(config) as agent:
        drop(inbox / "garbage.dcm", b"\x00\x01not dicom at all" * 50)
        drop(inbox / "truncated.dcm", ct_slice(seed=8)[:-777])
        drop(inbox / "good.dcm", good)
        wait_until(lambda: agent.journal.state_counts().get("quarantined") == 2, timeout=20)
        wait_until(lambda: agent.journal.state_counts().get("done") == 1)
    reasons = sorted(p.read_text() for p in config.quarantine_dir.glob("*.reason.txt"))
    assert len(reasons) == 2
    assert any("truncated" in r for r in reasons)
    assert any("not a dicom image" in r for r in reasons)
    # quarantine never touches the plaintext
    assert (inbox / "garbage.dcm").exists() and (inbox / "truncated.dcm").exists()
    assert len(orthanc.instances()) == 1


def test_unparseable_and_truncated_still_go_where_file_mode_is_accepted(
        tmp_path: Path, site_keys, orthanc: OrthancPeer) -> None:
    """Nothing left behind unprotected: garbage and a truncated DICOM file are protected in
    file mode and reach the share; the PACS delivery of the truncated one is quarantined
    (the plaintext stays), a good slice reaches both."""
    identity, recipient = site_keys
    orthanc.clear()
    share = tmp_path / "share"
    config = write_config(tmp_path, [recipient],
                          {"pacs": {"kind": "dicomweb", "url": orthanc.dicomweb_url},
                           "share": {"kind": "folder", "path": str(share)}},
                          folder={"after_ack": "delete"})
    inbox = config.folders[0].path
    garbage, cut = b"\x00\x01not dicom at all" * 50, ct_slice(seed=8)[:-777]
    with running(config) as agent:
        drop(inbox / "garbage.dcm", garbage)
        drop(inbox / "truncated.dcm", cut)
        drop(inbox / "good.dcm", ct_slice(seed=7))
        wait_until(lambda: agent.journal.state_counts() == {"done": 2, "quarantined": 1},
                   timeout=30)
        [q] = agent.journal.quarantined()
        states = {d.dest: d.state for d in agent.journal.delivery_states(q.id)}
    assert q.path == str(inbox / "truncated.dcm") and states == {"pacs": "quarantined",
                                                                 "share": "done"}
    assert decrypt((share / "garbage.dcm.age").read_bytes(), identity) == garbage
    assert decrypt((share / "truncated.dcm.age").read_bytes(), identity) == cut
    assert (inbox / "truncated.dcm").exists() and not (inbox / "garbage.dcm").exists()
    assert len(orthanc.instances()) == 1
