"""Instances above ``stream_above_bytes`` stream from the archive to the reader, never whole.

A stdlib DICOMweb stand-in serves protected multi-frames (and a tampered one, and one
ScanFort did not protect) in multipart answers; the gateway's threshold is set low so
these small instances take the large-instance path: the enciphered value waits in a
temporary file until its digest matched, then the original goes out frame by frame. What
arrives must be the original byte for byte, a tampered instance must be refused before any
of its bytes leave (409 alone, left out of a series), and nothing is cached.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from cipher import keys
from gateway.config import Settings
from gateway.server import BackgroundServer
from tests import gateway_data as data


class Archive(ThreadingHTTPServer):
    instances: list[tuple[str, bytes]]  # (SOP Instance UID, stored bytes)


class Handler(BaseHTTPRequestHandler):
    server: Archive
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        wanted = [raw for sop, raw in self.server.instances
                  if "/instances/" not in self.path or self.path.endswith("/" + sop)]
        boundary = "arch-b0undary"
        body = b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                        + raw + b"\r\n" for raw in wanted) + f"--{boundary}--\r\n".encode()
        self.send_response(200 if wanted else 404)
        self.send_header("Content-Type",
                         f'multipart/related; type="application/dicom"; boundary={boundary}')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(0, len(body), 65536):  # in pieces, as a network delivers it
            self.wfile.write(body[i : i + 65536])

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def archive() -> Iterator[Archive]:
    server = Archive(("127.0.0.1", 0), Handler)
    server.instances = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_large_instances_stream_byte_exact_and_tampered_ones_are_refused_before_a_byte(
    archive: Archive, tmp_path: Path
) -> None:
    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-L", "LARGE^LENA", "ACC-L", "20240707")
    originals = [data.multiframe(patient, 40, rows=64, cols=64) for _ in range(2)]  # 328 KB
    protected = [data.protect(raw, recipient) for raw in originals]
    plain = data.ct_series(data.Patient("PAT-P", "PLAIN^PIA", "ACC-P", "20240101"), 1,
                           rows=256, cols=256)[0]  # not ScanFort's: passed through  # fmt: skip
    bad = data.tamper(data.protect(data.multiframe(patient, 40, rows=64, cols=64), recipient))
    archive.instances = [(data.uids(p)[2], p) for p in (protected[0], bad, protected[1], plain)]
    url = f"http://127.0.0.1:{archive.server_address[1]}/dicom-web"
    settings = Settings(data_dir=tmp_path, identity_file="unused", upstreams=(url,),
                        stream_above_bytes=64 * 1024)  # fmt: skip
    study, series, _ = data.uids(protected[0])
    with BackgroundServer(settings, identities=[identity]) as gw:
        state = gw.app.state.gateway
        state.store.set_user("rita", "pw", ["reader"])
        auth = ("rita", "pw")
        root = f"{gw.url}/dicom-web/studies/{study}/series/{series}"

        got = requests.get(f"{root}/instances/{data.uids(protected[0])[2]}", auth=auth,
                           timeout=60)  # fmt: skip
        assert got.status_code == 200
        assert int(got.headers["Content-Length"]) == len(got.content)  # known in advance
        assert data.bodies(got) == [originals[0]]

        refused = requests.get(f"{root}/instances/{data.uids(bad)[2]}", auth=auth, timeout=60)
        assert refused.status_code == 409

        whole = requests.get(root, auth=auth, timeout=60)
        assert whole.status_code == 200
        assert [hashlib.sha256(b).digest() for b in data.bodies(whole)] == [
            hashlib.sha256(b).digest() for b in (originals[0], originals[1], plain)]
        assert state.restorer.cache.size == 0  # streamed instances are never cached

        entries = list(state.store.iter_audit())
        outcomes = [(e.operation, e.outcome, e.instance_uid) for e in entries
                    if e.operation == "retrieve"]  # fmt: skip
        assert ("retrieve", "refused", data.uids(bad)[2]) in outcomes
        assert sum(o[1] == "refused" for o in outcomes) == 2  # alone, and in the series
        assert sum(o[1] == "ok" for o in outcomes) == 3
        assert ("retrieve", "passthrough", data.uids(plain)[2]) in outcomes


def test_frames_and_rendered_of_a_large_instance_keep_only_what_was_asked(
    archive: Archive, tmp_path: Path
) -> None:
    """frames/N and frames/N/rendered of a large instance: the original's frames, taken
    from its stream (nothing cached); a tampered one is refused (409) and audited."""
    import io

    import numpy as np
    import pydicom

    from gateway import dicomdata

    identity, recipient = keys.generate_identity()
    patient = data.Patient("PAT-F", "FRAME^FIONA", "ACC-F", "20240708")
    original = data.multiframe(patient, 30, rows=64, cols=48)
    protected = data.protect(original, recipient)
    bad = data.tamper(data.protect(data.multiframe(patient, 30, rows=64, cols=48), recipient))
    archive.instances = [(data.uids(x)[2], x) for x in (protected, bad)]
    url = f"http://127.0.0.1:{archive.server_address[1]}/dicom-web"
    settings = Settings(data_dir=tmp_path, identity_file="unused", upstreams=(url,),
                        stream_above_bytes=32 * 1024)  # fmt: skip
    ds = pydicom.dcmread(io.BytesIO(original))
    pixels = ds.pixel_array  # (30, 64, 48)
    study, series, sop = data.uids(protected)
    with BackgroundServer(settings, identities=[identity]) as gw:
        state = gw.app.state.gateway
        state.store.set_user("rita", "pw", ["reader"])
        auth = ("rita", "pw")
        root = f"{gw.url}/dicom-web/studies/{study}/series/{series}/instances"

        got = requests.get(f"{root}/{sop}/frames/7,1,30,7", auth=auth, timeout=60)
        assert got.status_code == 200, got.text
        assert data.bodies(got) == [pixels[n - 1].tobytes() for n in (7, 1, 30, 7)]

        one = requests.get(f"{root}/{sop}/frames/12", auth=auth, timeout=60,
                           headers={"Accept": "application/octet-stream"})  # fmt: skip
        assert one.status_code == 200
        assert one.content == pixels[11].tobytes()

        assert requests.get(f"{root}/{sop}/frames/31", auth=auth, timeout=60).status_code == 404

        png = requests.get(f"{root}/{sop}/frames/5/rendered", auth=auth, timeout=60,
                           params={"window": "500,1000"}, headers={"Accept": "image/png"})
        assert png.status_code == 200
        expected = dicomdata.render(ds, 5, window=(500.0, 1000.0), fmt="png")
        from PIL import Image

        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png.content))),
                              np.asarray(Image.open(io.BytesIO(expected))))  # fmt: skip
        assert state.restorer.cache.size == 0  # large: never cached

        bad_sop = data.uids(bad)[2]
        refused = requests.get(f"{root}/{bad_sop}/frames/1", auth=auth, timeout=60)
        assert refused.status_code == 409
        refused = requests.get(f"{root}/{bad_sop}/frames/1/rendered", auth=auth, timeout=60)
        assert refused.status_code == 409

        outcomes = [(e.operation, e.outcome, e.instance_uid) for e in state.store.iter_audit()]
        assert ("frames", "refused", bad_sop) in outcomes
        assert ("rendered", "refused", bad_sop) in outcomes
        assert ("frames", "ok", sop) in outcomes
        assert ("rendered", "ok", sop) in outcomes
