"""A study of thousands of instances streams through the gateway without being buffered.

The upstream here is a small stdlib DICOMweb stand-in that generates its multipart answer
lazily and counts the instances it has sent: when the client has read the first instance
and then waits, the upstream must not have been drained much further than the socket
buffers and the few instances restored ahead allow, and every instance must arrive, in
order, unchanged (they are not ScanFort instances: passthrough).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pydicom
import pytest
import requests
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from cipher import keys
from gateway.config import Settings
from gateway.server import BackgroundServer

COUNT = 3000
PIXELS = 64 * 1024  # bytes of pixel data per instance: ~200 MB in all
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"


def _instance(i: int) -> bytes:
    ds = Dataset()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = STUDY, SERIES
    ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.3.{i}"
    ds.SOPClassUID = UID("1.2.840.10008.5.1.4.1.1.7")
    ds.InstanceNumber = i
    ds.PixelData = bytes([i % 251]) * PIXELS
    ds["PixelData"].VR = "OB"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


class Upstream(ThreadingHTTPServer):
    sent = 0
    aborted = 0  # answers whose connection the gateway closed before their end
    template = b""


class Handler(BaseHTTPRequestHandler):
    server: Upstream
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        boundary = "up-boundary"
        self.send_response(200)
        self.send_header("Content-Type",
                         f'multipart/related; type="application/dicom"; boundary={boundary}')
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(COUNT):
            part = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                    + _instance(i) + b"\r\n")  # fmt: skip
            try:
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            except OSError:
                self.server.aborted += 1
                return
            self.server.sent = i + 1
        end = f"--{boundary}--\r\n".encode()
        self.wfile.write(f"{len(end):x}\r\n".encode() + end + b"\r\n0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    server = Upstream(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_thousands_of_instances_stream_through_in_order_without_buffering(
    upstream: Upstream, tmp_path: Path
) -> None:
    identity, _ = keys.generate_identity()
    url = f"http://127.0.0.1:{upstream.server_address[1]}/dicom-web"
    settings = Settings(data_dir=tmp_path, identity_file="unused", upstreams=(url,),
                        cache_bytes=1024 * 1024)  # fmt: skip
    with BackgroundServer(settings, identities=[identity]) as gw:
        gw.app.state.gateway.store.set_user("rita", "pw", ["reader"])
        resp = requests.get(f"{gw.url}/dicom-web/studies/{STUDY}", auth=("rita", "pw"),
                            stream=True, timeout=60)  # fmt: skip
        boundary = resp.headers["Content-Type"].rsplit("boundary=", 1)[1].encode()
        stream = resp.iter_content(256 * 1024)
        buf = b""
        while buf.count(b"--" + boundary) < 2:
            buf += next(stream)
        time.sleep(1.0)  # a slow reader: the gateway must wait too, not drain the upstream
        sent_while_waiting = upstream.sent
        # socket buffers on both hops hold a few MB; buffering would mean all 3000 (~200 MB)
        assert sent_while_waiting < 400, sent_while_waiting
        count, last = 0, -1
        delim = b"\r\n--" + boundary
        rest = buf
        for chunk in stream:
            rest += chunk
            while True:
                start = rest.find(b"DICM")
                end = rest.find(delim, start) if start >= 0 else -1
                if end < 0:
                    break
                ds = pydicom.dcmread(io.BytesIO(rest[start - 128 : end]))
                assert ds.InstanceNumber == last + 1 and ds.PixelData[:1] == bytes([count % 251])
                last, count = ds.InstanceNumber, count + 1
                rest = rest[end:]
        assert count == COUNT
        entries = list(gw.app.state.gateway.store.iter_audit())
        assert sum(e.outcome == "passthrough" for e in entries) == COUNT
        assert len({e.instance_uid for e in entries}) == COUNT


def test_a_client_that_leaves_mid_stream_stops_the_archive_read_and_the_gateway_goes_on(
    upstream: Upstream, tmp_path: Path
) -> None:
    identity, _ = keys.generate_identity()
    url = f"http://127.0.0.1:{upstream.server_address[1]}/dicom-web"
    settings = Settings(data_dir=tmp_path, identity_file="unused", upstreams=(url,),
                        cache_bytes=1024 * 1024)  # fmt: skip
    with BackgroundServer(settings, identities=[identity]) as gw:
        gw.app.state.gateway.store.set_user("rita", "pw", ["reader"])
        for attempt in (1, 2):  # the second retrieve works after the first was abandoned
            resp = requests.get(f"{gw.url}/dicom-web/studies/{STUDY}", auth=("rita", "pw"),
                                stream=True, timeout=60)  # fmt: skip
            got, chunks = b"", resp.iter_content(512 * 1024)
            while b"DICM" not in got:
                got += next(chunks)
            resp.close()  # the viewer navigated away
            deadline = time.monotonic() + 10
            before = -1
            while upstream.sent != before and time.monotonic() < deadline:
                before = upstream.sent
                time.sleep(0.5)
            # the archive's answer was closed: it stopped well before the end
            assert upstream.sent < COUNT // 2, upstream.sent
            deadline = time.monotonic() + 10
            while upstream.aborted < attempt and time.monotonic() < deadline:
                time.sleep(0.1)
            assert upstream.aborted == attempt
            upstream.sent = 0
        entries = list(gw.app.state.gateway.store.iter_audit())
        served = [e for e in entries if e.outcome == "passthrough"]
        assert 0 < len(served) < COUNT  # only what left (or was about to), never all
