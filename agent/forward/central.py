"""``central``: content-addressed upload to the central service (PUT by SHA-256).

In a burst the agent's parent process spends a good part of its time here, so the upload
is kept lean: one kept-alive HTTP/1.1 connection per sending thread (no pool
machinery), and the spool file goes out with ``socket.sendfile`` on a plain
connection (zero-copy, no Python loop over the body). Over TLS the body is read and
written in large pieces (``sendfile`` cannot encrypt). A connection the central closed
while it was idle is noticed before it is reused; a send that fails on a reused
connection is tried once more on a fresh one (a PUT by content address is idempotent).

Behind a proxy (``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY``, read the way requests
reads them) the upload goes through urllib3, which speaks to proxies; the CA bundle is
``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` or certifi's, as requests would verify.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import ssl
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from requests.utils import get_environ_proxies

from agent.config import CentralConfig, DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Forwarder, Outgoing, http_error, transport_error
from protocol.wire import API_PREFIX

#: Over TLS the body is written in pieces of this size (one read, one ``sendall`` each).
_TLS_PIECE = 1 << 20


def _ca_bundle() -> str:
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        return bundle
    import certifi  # what requests verifies against by default

    return str(certifi.where())


def _tls_context(verify: bool) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context(cafile=_ca_bundle())
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class _Connection:
    """One kept-alive HTTP/1.1 connection to the central (plain or TLS), used by one thread.

    The request is written by hand and the answer read the same way: the central's
    answers to an upload are a status line, a few headers and a small JSON receipt, and
    ``http.client``'s general-purpose header parsing (the ``email`` package) cost more
    per object than the rest of the upload together.
    """

    def __init__(self, url: str, verify: bool, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (443 if self.tls else 80)
        self.netloc = parts.netloc.rsplit("@", 1)[-1]
        self.timeout_s = timeout_s
        self.context = _tls_context(verify) if self.tls else None
        self._sock: socket.socket | None = None
        self._rfile: BinaryIO | None = None

    def _open(self) -> tuple[socket.socket, BinaryIO]:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        try:
            # The head and the body go out in separate writes: without TCP_NODELAY the
            # body's last segment would wait for the peer's delayed ACK.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self._sock, self._rfile = sock, sock.makefile("rb")
        return sock, self._rfile

    def _usable(self) -> tuple[socket.socket, BinaryIO] | None:
        """The kept-alive connection, unless the peer closed it meanwhile (an idle
        connection that is readable has seen its end, or something unasked for)."""
        sock, rfile = self._sock, self._rfile
        if sock is None or rfile is None:
            return None
        try:
            readable, _, _ = select.select([sock], [], [], 0)
        except (OSError, ValueError):
            readable = [sock]
        if readable:
            self.close()
            return None
        return sock, rfile

    def put(self, target: str, headers: dict[str, str], body: BinaryIO,
            size: int) -> tuple[int, bytes]:
        """PUT ``size`` bytes of ``body`` (from its start); (status, response body)."""
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"PUT {target} HTTP/1.1\r\nHost: {self.netloc}\r\n{head}"
                   f"Content-Length: {size}\r\n\r\n").encode("latin-1")
        for attempt in (0, 1):
            conn = self._usable()
            reused = conn is not None
            try:
                sock, rfile = conn or self._open()
                sock.sendall(request)
                body.seek(0)
                self._send_body(sock, body, size)
                status, data, keep = _read_response(rfile)
            except ConnectionError:  # reset, broken pipe, closed before the answer
                self.close()
                if reused and attempt == 0:
                    continue  # the peer closed it as we reused it: once more, fresh
                raise
            except (OSError, _BadResponse):
                self.close()
                raise
            if not keep:
                self.close()
            return status, data
        raise AssertionError("unreachable")

    def _send_body(self, sock: socket.socket, body: BinaryIO, size: int) -> None:
        if self.tls:
            left = size
            while left:
                piece = body.read(min(left, _TLS_PIECE))
                if not piece:
                    break
                sock.sendall(piece)
                left -= len(piece)
            sent = size - left
        else:
            sent = sock.sendfile(body, 0, size)
        if sent != size:  # the spool file is shorter than recorded: never half a body
            raise _BadResponse("object shorter than recorded")

    def close(self) -> None:
        sock, rfile = self._sock, self._rfile
        self._sock = self._rfile = None
        if rfile is not None:
            rfile.close()
        if sock is not None:
            sock.close()


class _BadResponse(Exception):
    """The peer's answer is not HTTP/1.x as expected (or the request could not be sent)."""


#: Limits on an answer to an upload (a status line, headers and a small receipt).
_MAX_LINE = 16 << 10
_MAX_HEADERS = 100
_MAX_BODY = 1 << 20


def _read_response(rfile: BinaryIO) -> tuple[int, bytes, bool]:
    """(status, body, whether the connection may be used again) of one HTTP/1.x answer;
    interim (1xx) answers are skipped."""
    while True:
        line = rfile.readline(_MAX_LINE + 1)
        if not line:
            raise ConnectionResetError("closed before an answer")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit() or len(line) > _MAX_LINE:
            raise _BadResponse("not an HTTP/1.x answer")
        fields: dict[str, str] = {}
        for _ in range(_MAX_HEADERS + 1):
            h = rfile.readline(_MAX_LINE + 1)
            if h in (b"\r\n", b"\n", b""):
                break
            name, sep, value = h.decode("latin-1").partition(":")
            if not sep or len(h) > _MAX_LINE:
                raise _BadResponse("a malformed header")
            fields[name.strip().lower()] = value.strip()
        else:
            raise _BadResponse("too many headers")
        status = int(code)
        if 100 <= status < 200:
            continue
        keep = version != "HTTP/1.0" and fields.get("connection", "").lower() != "close"
        if "chunked" in fields.get("transfer-encoding", "").lower():
            return status, _read_chunked(rfile), keep
        length = fields.get("content-length")
        if length is not None:
            if not length.isdigit() or int(length) > _MAX_BODY:
                raise _BadResponse("an answer of unexpected length")
            data = rfile.read(int(length))
            if len(data) != int(length):
                raise ConnectionResetError("closed inside an answer")
            return status, data, keep
        if status in (204, 304):
            return status, b"", keep
        return status, rfile.read(_MAX_BODY), False  # until the peer closes


def _read_chunked(rfile: BinaryIO) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = rfile.readline(_MAX_LINE + 1).split(b";", 1)[0].strip()
        try:
            n = int(line, 16)
        except ValueError:
            raise _BadResponse("a malformed chunk") from None
        if n == 0:
            while rfile.readline(_MAX_LINE + 1) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        total += n
        if total > _MAX_BODY:
            raise _BadResponse("an answer of unexpected length")
        data = rfile.read(n + 2)
        if len(data) != n + 2:
            raise ConnectionResetError("closed inside an answer")
        parts.append(data[:n])


class _ProxiedConnection:
    """The upload through a proxy (urllib3 speaks CONNECT and absolute forms)."""

    def __init__(self, proxy: str, verify: bool, timeout_s: float) -> None:
        import urllib3

        if not verify:
            urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
        tls: dict[str, str] = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
        if verify:
            tls["ca_certs"] = _ca_bundle()
        self._urllib3 = urllib3
        self.pool = urllib3.ProxyManager(proxy, num_pools=1, maxsize=1, **tls)  # type: ignore[arg-type]
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)

    def put(self, url: str, headers: dict[str, str], body: BinaryIO,
            size: int) -> tuple[int, bytes]:
        try:
            resp = self.pool.request("PUT", url, body=body.read(size), timeout=self.timeout,
                                     headers=headers, retries=False, redirect=False)
        except self._urllib3.exceptions.HTTPError as exc:
            raise transport_error(exc, "central upload") from exc
        return resp.status, resp.data

    def close(self) -> None:
        self.pool.clear()


class CentralForwarder(Forwarder):
    """Idempotent: re-sending an object the central already holds is acknowledged again."""

    def __init__(self, dest: DestinationConfig, central: CentralConfig) -> None:
        if not central.url or not central.token:
            raise DeliveryError("central destination without central.url/token", auth=True)
        if not central.token.isprintable() or not central.token.isascii():
            raise DeliveryError("central.token is not printable ASCII", auth=True)
        self.dest = dest
        self.base = f"{central.url}{API_PREFIX}/objects/"
        verify = central.verify_tls and dest.verify_tls
        proxies = get_environ_proxies(self.base)
        proxy = proxies.get(self.base.split(":", 1)[0]) or proxies.get("all")
        self.conn: _Connection | _ProxiedConnection = (
            _ProxiedConnection(proxy, verify, dest.timeout_s) if proxy
            else _Connection(self.base, verify, dest.timeout_s))
        self._prefix = self.base if proxy else urlsplit(self.base).path
        self.headers = {"Authorization": f"Bearer {central.token}",
                        "Content-Type": "application/octet-stream"}

    def send(self, obj: Outgoing) -> None:
        headers = {**self.headers, **_uid_headers(obj)}
        with open(obj.path, "rb") as fh:  # a missing spool copy is not a transport error
            try:
                status, data = self.conn.put(self._prefix + obj.sha256, headers, fh, obj.size)
            except (OSError, _BadResponse) as exc:
                raise transport_error(exc, "central upload") from exc
        if status not in (200, 201, 204):
            raise http_error(status, "central upload", _peer_text(data))
        try:
            receipt = json.loads(data) if data else None
        except ValueError:
            return
        if isinstance(receipt, dict) and receipt.get("sha256") not in (None, obj.sha256):
            raise DeliveryError("central upload: receipt for another object")

    def close(self) -> None:
        self.conn.close()


_UID = re.compile(r"[0-9.]{1,64}")

#: What the central indexes an object by, for reading gateways (``service.readers``).
UID_HEADERS = {"StudyInstanceUID": "X-Scanfort-Study-UID",
               "SeriesInstanceUID": "X-Scanfort-Series-UID",
               "SOPInstanceUID": "X-Scanfort-SOP-UID"}


def _uid_headers(obj: Outgoing) -> dict[str, str]:
    """The UIDs of a DICOM-mode artifact as stored (pseudonymised unless the policy retains
    UIDs): the ones a reading gateway asks the central for. None for file mode, whose
    container shows nothing.

    The protect worker reads them from the copy it wrote and the journal keeps them with
    the artifact (``Outgoing.uids``), so this process never parses DICOM; only an artifact
    recorded by an earlier version without them is read here (its leading elements)."""
    if obj.mode != "dicom":
        return {}
    uids = obj.uids if obj.uids is not None else _read_uids(obj.path)
    # Only what a UID may be (PS3.5 §9): a value read from a file never shapes the request.
    if not all(_UID.fullmatch(u) for u in uids):
        return {}
    return dict(zip(UID_HEADERS.values(), uids, strict=True))


def _read_uids(path: Path) -> tuple[str, str, str]:
    from pydicom import dcmread  # only for artifacts recorded before the worker told them

    try:
        ds = dcmread(path, stop_before_pixels=True, defer_size=1024,
                     specific_tags=list(UID_HEADERS))  # fmt: skip
        study, series, sop = (str(ds.get(k, "") or "").strip(" \x00") for k in UID_HEADERS)
    except Exception:  # the upload itself must not fail over its index entry
        return "", "", ""
    return study, series, sop


def _peer_text(data: bytes | None) -> str | None:
    """The central's own reason (``detail`` or ``error`` of its JSON body)."""
    try:
        body = json.loads(data) if data else None
    except ValueError:
        return None
    if isinstance(body, dict):
        text = body.get("detail") or body.get("error")
        return str(text)[:300] if text else None
    return None
