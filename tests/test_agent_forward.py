"""Forwarder classification against a small real STOW-RS server (202 partial failures)."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from agent.config import DestinationConfig
from agent.forward.base import Outgoing
from agent.forward.dicomweb import DicomWebForwarder
from agent.forward.dimse import _transient
from agent.forward.folder import FolderForwarder


class Stow:
    def __init__(self) -> None:
        self.status = 200
        self.body: dict[str, Any] = {}
        self.requests: list[tuple[str, bytes]] = []
        stow = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers["Content-Length"]))
                stow.requests.append((self.headers["Content-Type"], data))
                reply = json.dumps(stow.body).encode()
                self.send_response(stow.status)
                self.send_header("Content-Type", "application/dicom+json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def stow() -> Iterator[Stow]:
    s = Stow()
    yield s
    s.server.shutdown()
    s.server.server_close()


def objs(tmp_path: Path, n: int) -> list[Outgoing]:
    out = []
    for i in range(n):
        p = tmp_path / f"{i}.dicom"
        p.write_bytes(f"DICOM-BYTES-{i}".encode() * 10)
        out.append(Outgoing(i, f"f{i}", p, hashlib.sha256(p.read_bytes()).hexdigest(),
                            p.stat().st_size, "dicom", f"{i}.dcm", f"1.2.3.{i}"))
    return out


def failed(uid: str, reason: int) -> dict[str, Any]:
    return {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}


def test_stow_batch_202_resends_only_failed_instances(tmp_path: Path, stow: Stow) -> None:
    fwd = DicomWebForwarder(DestinationConfig("pacs", "dicomweb", "dicom", url=stow.url))
    batch = objs(tmp_path, 4)
    stow.status = 202
    stow.body = {"00081198": {"vr": "SQ", "Value": [
        failed("1.2.3.1", 0xA700), failed("1.2.3.2", 0x0111), failed("1.2.3.3", 0xC000)]}}
    results = fwd.send_many(batch)
    assert results[0] is None  # stored
    assert results[1] is not None and not results[1].permanent  # out of resources: retry
    assert results[2] is None  # already stored = done
    assert results[3] is not None and results[3].permanent  # cannot understand: quarantine
    ctype, body = stow.requests[0]
    assert 'type="application/dicom"' in ctype
    for o in batch:  # every part made it into one multipart request, byte for byte
        assert o.path.read_bytes() in body
    stow.status, stow.body = 401, {}
    err = fwd.send_many(batch[:1])[0]
    assert err is not None and err.auth
    stow.status = 503
    err = fwd.send_many(batch[:1])[0]
    assert err is not None and not err.permanent and not err.auth
    fwd.close()


def test_unreachable_stow_is_transient(tmp_path: Path) -> None:
    fwd = DicomWebForwarder(DestinationConfig("pacs", "dicomweb", "dicom",
                                              url="http://127.0.0.1:9", timeout_s=2))
    err = fwd.send_many(objs(tmp_path, 1))[0]
    assert err is not None and not err.permanent and not err.auth


def test_c_store_status_classes() -> None:
    assert _transient(0xA700) and _transient(0xA7FF)
    assert not _transient(0xA900) and not _transient(0xC000) and not _transient(0x0122)


def test_folder_copy_is_atomic_and_keeps_relative_path(tmp_path: Path) -> None:
    fwd = FolderForwarder(DestinationConfig("share", "folder", path=tmp_path / "share"))
    [o] = objs(tmp_path, 1)
    o = Outgoing(o.item_id, o.file_id, o.path, o.sha256, o.size, "file", "a/b/scan.dcm")
    fwd.send(o)
    fwd.send(o)  # idempotent
    assert (tmp_path / "share" / "a" / "b" / "scan.dcm.age").read_bytes() == o.path.read_bytes()
    assert [p.name for p in (tmp_path / "share" / "a" / "b").iterdir()] == ["scan.dcm.age"]
    evil = Outgoing(2, "x", o.path, o.sha256, o.size, "dicom", "../../etc/x")
    fwd.send(evil)
    assert (tmp_path / "share" / "x").exists()  # never written outside the share


def test_folder_never_replaces_a_copy_of_different_content(tmp_path: Path) -> None:
    """Modalities reuse names: a second ``scan.dcm`` with new content gets its own name,
    the first copy stays; the same object sent again is acknowledged, not copied twice."""
    fwd = FolderForwarder(DestinationConfig("share", "folder", path=tmp_path / "share"))
    sent = []
    for i in range(3):
        p = tmp_path / f"v{i}.file"
        p.write_bytes(f"protected version {i}".encode())
        o = Outgoing(i, "f", p, hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size,
                     "file", "scan.dcm")
        fwd.send(o)
        fwd.send(o)  # a re-send after a crash before the ack was recorded
        sent.append(p.read_bytes())
    share = tmp_path / "share"
    assert sorted(p.name for p in share.iterdir()) == \
        ["scan (2).dcm.age", "scan (3).dcm.age", "scan.dcm.age"]
    assert [(share / n).read_bytes() for n in ("scan.dcm.age", "scan (2).dcm.age",
                                               "scan (3).dcm.age")] == sent


def test_stow_refusal_carries_the_peers_own_reason(tmp_path: Path, stow: Stow) -> None:
    stow.status = 400
    stow.body = {"HttpError": "Bad Request", "Message": "Bad file format",
                 "Details": "Cannot parse an invalid DICOM file"}
    fwd = DicomWebForwarder(DestinationConfig("pacs", "dicomweb", "dicom", url=stow.url))
    [err] = fwd.send_many(objs(tmp_path, 1))
    assert err is not None and err.permanent
    assert str(err) == "stow-rs: HTTP 400"  # what goes to the central: no peer text
    assert err.reason == ("stow-rs: HTTP 400: Bad file format; Cannot parse an invalid "
                          "DICOM file")
