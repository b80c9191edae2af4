"""``dicomweb``: STOW-RS (PS3.18 10.5) with requests, several instances per request.

200 means every instance was stored. 202 (or 409) lists failures in (0008,1198) Failed
SOP Sequence: only those instances are sent again, the others are done. An instance the
server reports as already stored counts as done.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from typing import Any

import requests

from agent.config import DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Forwarder, Outgoing, http_error, transport_error

FAILED_SOP_SEQ = "00081198"
REFERENCED_SOP_UID = "00081155"
FAILURE_REASON = "00081197"
_ALREADY_STORED = {0x0111}  # Duplicate SOP Instance: the server holds it, done
# Out of resources / processing failure may clear up; anything else is about the object.
_TRANSIENT = {0x0110, 0x0213, 0x0272}


class DicomWebForwarder(Forwarder):
    batch_size = 16

    def __init__(self, dest: DestinationConfig, session: requests.Session | None = None) -> None:
        assert dest.url is not None
        self.dest = dest
        self.url = f"{dest.url}/studies"
        self.session = session or requests.Session()
        self.session.verify = dest.verify_tls
        if dest.username is not None:
            self.session.auth = (dest.username, dest.password or "")

    def send(self, obj: Outgoing) -> None:
        err = self.send_many([obj])[0]
        if err is not None:
            raise err

    def send_many(self, objs: Sequence[Outgoing]) -> list[DeliveryError | None]:
        boundary = f"scanfort-{secrets.token_hex(12)}"
        headers = {
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        }
        try:
            resp = self.session.post(self.url, data=_Multipart(objs, boundary), headers=headers,
                                     timeout=self.dest.timeout_s)
        except (requests.RequestException, OSError) as exc:
            err = transport_error(exc, "stow-rs")
            return [err for _ in objs]
        if resp.status_code == 200:
            return [None for _ in objs]
        if resp.status_code not in (202, 409):
            err = http_error(resp.status_code, "stow-rs", _peer_text(resp))
            return [err for _ in objs]
        failed = _failures(resp)
        if failed is None:  # no usable body: nothing tells us which ones failed
            return [DeliveryError(f"stow-rs: HTTP {resp.status_code}",
                                  detail=_peer_text(resp)) for _ in objs]
        results: list[DeliveryError | None] = []
        for obj in objs:
            reason = failed.get(obj.sop_instance_uid or "")
            if reason is None or reason in _ALREADY_STORED:
                results.append(None)
            else:
                permanent = reason not in _TRANSIENT and not 0xA700 <= reason <= 0xA7FF
                results.append(DeliveryError(
                    f"stow-rs: failure reason {reason:04X}", permanent=permanent,
                    detail=f"(0008,1197) Failure Reason {reason:04X}, HTTP {resp.status_code}"))
        return results

    def close(self) -> None:
        self.session.close()


class _Multipart:
    """The multipart body as a file-like object of known length.

    requests then sends a Content-Length (some servers refuse chunked uploads) while the
    artifacts are read from the spool piece by piece instead of being joined in memory.
    """

    def __init__(self, objs: Sequence[Outgoing], boundary: str) -> None:
        self._parts: list[bytes | Outgoing] = []
        for obj in objs:
            self._parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            self._parts.append(obj)
            self._parts.append(b"\r\n")
        self._parts.append(f"--{boundary}--\r\n".encode())
        self._len = sum(p.size if isinstance(p, Outgoing) else len(p) for p in self._parts)
        self._gen = self._chunks()
        self._buf = b""

    def __len__(self) -> int:
        return self._len

    def _chunks(self) -> Iterator[bytes]:
        for part in self._parts:
            if isinstance(part, bytes):
                yield part
                continue
            with open(part.path, "rb") as fh:
                while chunk := fh.read(1 << 20):
                    yield chunk

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self._buf) < n:
            chunk = next(self._gen, None)
            if chunk is None:
                break
            self._buf += chunk
        if n < 0:
            out, self._buf = self._buf, b""
        else:
            out, self._buf = self._buf[:n], self._buf[n:]
        return out


def _peer_text(resp: requests.Response) -> str | None:
    """The server's own words about a refusal (Orthanc: ``Message`` and ``Details`` of its
    JSON error body; else the start of a text body), for the local journal only."""
    try:
        body: Any = resp.json()
    except ValueError:
        text = (resp.text or "").strip()
        return text[:300] or None
    if isinstance(body, dict):
        parts = [str(body[k]) for k in ("Message", "Details", "OrthancError") if body.get(k)]
        if parts:
            return "; ".join(parts)[:300]
    return None


def _failures(resp: requests.Response) -> dict[str, int] | None:
    """SOP Instance UID → failure reason, from (0008,1198) Failed SOP Sequence."""
    try:
        body: Any = resp.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    out: dict[str, int] = {}
    for entry in (body.get(FAILED_SOP_SEQ) or {}).get("Value", []) or []:
        try:
            uid = entry[REFERENCED_SOP_UID]["Value"][0]
            reason = int(entry.get(FAILURE_REASON, {}).get("Value", [0x0110])[0])
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        out[str(uid)] = reason
    return out
