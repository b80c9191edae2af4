"""The central upload: kept-alive connection, zero-copy body, the peer closing it, UIDs."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.config import CentralConfig, DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Outgoing
from agent.forward.central import CentralForwarder
from tests.helpers import TOKEN, Receiver

REPO = Path(__file__).resolve().parent.parent
UIDS = ("1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2",
        "1.2.826.0.1.3680043.8.498.3")


def outgoing(tmp_path: Path, i: int, mode: str = "file",
             uids: tuple[str, str, str] | None = None, size: int = 300_000) -> Outgoing:
    data = os.urandom(size)
    path = tmp_path / f"obj{i}.{mode}"
    path.write_bytes(data)
    return Outgoing(i, f"{i:016x}", path, hashlib.sha256(data).hexdigest(), len(data), mode,
                    path.name, uids=uids)


def forwarder(url: str) -> CentralForwarder:
    return CentralForwarder(DestinationConfig(name="central", kind="central", timeout_s=10),
                            CentralConfig(url=url, agent_id="a1", token=TOKEN))


def test_uploads_share_one_kept_alive_connection(tmp_path: Path) -> None:
    with Receiver() as rx:
        fwd = forwarder(rx.url)
        objs = [outgoing(tmp_path, i) for i in range(6)]
        for obj in objs:
            fwd.send(obj)
        fwd.send(objs[0])  # idempotent: acknowledged again
        fwd.close()
    assert {o.sha256: o.path.read_bytes() for o in objs} == rx.objects  # bodies intact
    assert rx.puts == 7
    assert len(rx.connections) == 1


@dataclass
class Live:
    """What :func:`terse_server` saw (live counters), and its URL."""

    seen: dict[str, int]
    url: str


@contextmanager
def terse_server(answer_per_connection: int, hang_up_on: int | None = None,
                 ) -> Iterator[Live]:
    """A central that answers ``answer_per_connection`` uploads per connection, then closes
    it without saying so (no ``Connection: close``); with ``hang_up_on`` it closes the
    connection instead of answering that request of it (1-based)."""
    seen = {"connections": 0, "answered": 0}
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        rfile = conn.makefile("rb")
        try:
            for n in range(1, answer_per_connection + 1):
                headers = {}
                line = rfile.readline()
                if not line:
                    return
                while (h := rfile.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = rfile.read(int(headers["content-length"]))
                if n == hang_up_on:
                    return
                sha = line.split()[1].rsplit(b"/", 1)[-1].decode()
                assert hashlib.sha256(body).hexdigest() == sha
                receipt = json.dumps({"sha256": sha, "size": len(body)}).encode()
                conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(receipt), receipt))
                seen["answered"] += 1
        finally:
            rfile.close()
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            seen["connections"] += 1
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield Live(seen, f"http://127.0.0.1:{srv.getsockname()[1]}")
    finally:
        stop.set()
        t.join()
        srv.close()


@pytest.mark.parametrize("server", [
    # the central closes each connection after one answer: the idle one is not reused
    {"answer_per_connection": 1},
    # the second request of every connection is cut off: each such upload goes through on
    # a new connection, none is reported failed
    {"answer_per_connection": 2, "hang_up_on": 2},
], ids=["closed-while-idle-not-reused", "cut-mid-request-retried-once-fresh"])
def test_a_connection_the_central_closed_costs_no_upload(tmp_path: Path,
                                                          server: dict[str, int]) -> None:
    with terse_server(**server) as live:
        fwd = forwarder(live.url)
        for i in range(3):
            fwd.send(outgoing(tmp_path, i))
        fwd.close()
    assert live.seen == {"connections": 3, "answered": 3}


def test_a_fresh_connection_refused_is_a_transient_delivery_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as s:
        port = s.getsockname()[1]
    fwd = forwarder(f"http://127.0.0.1:{port}")
    with pytest.raises(DeliveryError) as err:
        fwd.send(outgoing(tmp_path, 1))
    assert not err.value.permanent and not err.value.auth
    assert "ConnectionRefusedError" in str(err.value)


def test_http_errors_keep_their_classes(tmp_path: Path) -> None:
    with Receiver() as rx:
        fwd = forwarder(rx.url)
        rx.fail_with = 503
        with pytest.raises(DeliveryError) as err:
            fwd.send(outgoing(tmp_path, 1))
        assert not err.value.permanent and "HTTP 503" in str(err.value)
        rx.fail_with = 401
        with pytest.raises(DeliveryError) as err:
            fwd.send(outgoing(tmp_path, 2))
        assert err.value.auth
        rx.fail_with = None
        fwd.send(outgoing(tmp_path, 3))  # the same connection goes on after errors
        fwd.close()
    assert len(rx.objects) == 1 and len(rx.connections) == 1


def test_dicom_mode_uids_go_as_headers_and_only_when_they_are_uids(tmp_path: Path) -> None:
    with Receiver() as rx:
        fwd = forwarder(rx.url)
        good = outgoing(tmp_path, 1, "dicom", UIDS, size=2000)
        hostile = outgoing(tmp_path, 2, "dicom", (UIDS[0], "1.2\r\nX-Evil: 1", UIDS[2]),
                           size=2000)
        unknown = outgoing(tmp_path, 3, "dicom", ("", "", ""), size=2000)
        file_mode = outgoing(tmp_path, 4, "file", UIDS, size=2000)
        for obj in (good, hostile, unknown, file_mode):
            fwd.send(obj)
        fwd.close()
    assert rx.uid_headers[good.sha256] == UIDS
    for obj in (hostile, unknown, file_mode):
        assert rx.uid_headers[obj.sha256] == ("", "", "")
    assert len(rx.objects) == 4


def test_the_agent_process_never_imports_pydicom_to_upload_dicom_mode(tmp_path: Path) -> None:
    """The UIDs come from the worker (in the journal), so the agent's own process, whose
    memory the benchmark counts, does not load pydicom to send DICOM-mode copies."""
    with Receiver() as rx:
        obj = outgoing(tmp_path, 1, "dicom", UIDS, size=5000)
        script = (
            "import sys\n"
            "import agent.runner, agent.pipeline, agent.dispatch\n"
            "from agent.config import CentralConfig, DestinationConfig\n"
            "from agent.forward.base import Outgoing\n"
            "from pathlib import Path\n"
            "a = sys.argv\n"
            "from agent.forward.central import CentralForwarder\n"
            "f = CentralForwarder(DestinationConfig(name='c', kind='central'),"
            " CentralConfig(url=a[1], agent_id='a1', token=a[2]))\n"
            "f.send(Outgoing(1, 'x', Path(a[3]), a[4], int(a[5]), 'dicom', 'x',"
            " uids=tuple(a[6:9])))\n"
            "assert 'pydicom' not in sys.modules, 'pydicom imported'\n")
        out = subprocess.run([sys.executable, "-c", script, rx.url, TOKEN, str(obj.path),
                              obj.sha256, str(obj.size), *UIDS], cwd=REPO,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr[-2000:]
    assert rx.uid_headers[obj.sha256] == UIDS


def test_over_tls_the_body_goes_in_pieces_on_a_verified_kept_alive_connection(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ssl

    from tests.test_service_cli import _self_signed

    cert, key = _self_signed(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    with Receiver() as rx:
        rx.server.socket = ctx.wrap_socket(rx.server.socket, server_side=True)
        url = rx.url.replace("http://", "https://")
        monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
        monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
        untrusted = forwarder(url)  # certifi's roots do not include this certificate
        with pytest.raises(DeliveryError) as err:
            untrusted.send(outgoing(tmp_path, 0))
        assert not err.value.permanent and "SSL" in str(err.value)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
        fwd = forwarder(url)
        objs = [outgoing(tmp_path, i, size=1_500_000) for i in range(1, 4)]  # > one piece
        for obj in objs:
            fwd.send(obj)
        fwd.close()
    assert {o.sha256: o.path.read_bytes() for o in objs} == rx.objects
    assert len(rx.connections) == 1
