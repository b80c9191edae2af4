"""``central``: content-addressed upload to the central service (PUT by SHA-256).

The upload goes through urllib3 directly rather than requests: per object, requests'
session machinery (hooks, cookie jar, adapters, environment merging) costs about as much
Python time as the rest of the upload together, and in a burst the agent's parent process
spends its time exactly here. Proxies and the CA bundle are read from the environment
once, the way requests reads them (``HTTPS_PROXY``/``NO_PROXY``, ``REQUESTS_CA_BUNDLE``).
"""

from __future__ import annotations

import json
import os

import urllib3
from requests.utils import get_environ_proxies

from agent.config import CentralConfig, DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Forwarder, Outgoing, http_error, transport_error
from protocol.wire import API_PREFIX

#: Objects up to this size are read into memory and sent in one piece.
_IN_MEMORY_MAX = 8 << 20


def _pool(url: str, verify: bool) -> urllib3.PoolManager:
    """A connection pool for ``url`` with the environment's proxy and CA bundle."""
    tls: dict[str, object] = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
    if verify:
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            tls["ca_certs"] = bundle
        else:
            import certifi  # what requests verifies against by default

            tls["ca_certs"] = certifi.where()
    else:
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)
    proxies = get_environ_proxies(url)
    proxy = proxies.get(url.split(":", 1)[0]) or proxies.get("all")
    if proxy:
        return urllib3.ProxyManager(proxy, num_pools=1, maxsize=1, **tls)  # type: ignore[arg-type]
    return urllib3.PoolManager(num_pools=1, maxsize=1, **tls)  # type: ignore[arg-type]


class CentralForwarder(Forwarder):
    """Idempotent: re-sending an object the central already holds is acknowledged again."""

    def __init__(self, dest: DestinationConfig, central: CentralConfig,
                 pool: urllib3.PoolManager | None = None) -> None:
        if not central.url or not central.token:
            raise DeliveryError("central destination without central.url/token", auth=True)
        self.dest = dest
        self.base = f"{central.url}{API_PREFIX}/objects/"
        self.pool = pool or _pool(self.base, central.verify_tls and dest.verify_tls)
        self.headers = {"Authorization": f"Bearer {central.token}",
                        "Content-Type": "application/octet-stream"}
        self.timeout = urllib3.Timeout(connect=dest.timeout_s, read=dest.timeout_s)

    def send(self, obj: Outgoing) -> None:
        uids = _uid_headers(obj)
        try:
            with open(obj.path, "rb") as fh:
                # A small object goes out as bytes: one send instead of a Python loop over
                # reads of the file; a large one is streamed (bounded memory).
                body = fh.read() if obj.size <= _IN_MEMORY_MAX else fh
                resp = self.pool.request(
                    "PUT", self.base + obj.sha256, body=body, timeout=self.timeout,
                    headers={**self.headers, **uids, "Content-Length": str(obj.size)},
                    retries=False, redirect=False)
        except urllib3.exceptions.HTTPError as exc:
            raise transport_error(exc, "central upload") from exc
        if resp.status not in (200, 201, 204):
            raise http_error(resp.status, "central upload", _peer_text(resp.data))
        try:
            receipt = json.loads(resp.data) if resp.data else None
        except ValueError:
            return
        if isinstance(receipt, dict) and receipt.get("sha256") not in (None, obj.sha256):
            raise DeliveryError("central upload: receipt for another object")

    def close(self) -> None:
        self.pool.clear()


#: What the central indexes an object by, for reading gateways (``service.readers``).
UID_HEADERS = {"StudyInstanceUID": "X-Scanfort-Study-UID",
               "SeriesInstanceUID": "X-Scanfort-Series-UID",
               "SOPInstanceUID": "X-Scanfort-SOP-UID"}


def _uid_headers(obj: Outgoing) -> dict[str, str]:
    """The UIDs of a DICOM-mode artifact as stored (pseudonymised unless the policy retains
    UIDs): the ones a reading gateway asks the central for. Read from the artifact's
    leading elements (its enciphered pixels and blob are not read); none for file mode,
    whose container shows nothing, nor for an artifact they cannot be read from."""
    if obj.mode != "dicom":
        return {}
    from pydicom import dcmread  # as the C-STORE forwarder does; only for DICOM mode

    try:
        ds = dcmread(obj.path, stop_before_pixels=True, defer_size=1024,
                     specific_tags=list(UID_HEADERS))  # fmt: skip
        values = {h: str(ds.get(k, "") or "").strip(" \x00") for k, h in UID_HEADERS.items()}
    except Exception:  # the upload itself must not fail over its index entry
        return {}
    return values if all(values.values()) else {}


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
