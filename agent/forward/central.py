"""``central``: content-addressed upload to the central service (PUT by SHA-256)."""

from __future__ import annotations

import requests

from agent.config import CentralConfig, DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Forwarder, Outgoing, http_error, transport_error
from scanfort.protocol import API_PREFIX

#: Objects up to this size are read into memory and sent in one piece.
_IN_MEMORY_MAX = 8 << 20


class CentralForwarder(Forwarder):
    """Idempotent: re-sending an object the central already holds is acknowledged again."""

    def __init__(self, dest: DestinationConfig, central: CentralConfig,
                 session: requests.Session | None = None) -> None:
        if not central.url or not central.token:
            raise DeliveryError("central destination without central.url/token", auth=True)
        self.dest = dest
        self.base = f"{central.url}{API_PREFIX}/objects/"
        self.session = session or requests.Session()
        self.session.headers["Authorization"] = f"Bearer {central.token}"
        self.session.verify = central.verify_tls and dest.verify_tls
        # Read the environment (proxies, CA bundle) once for this URL rather than on every
        # request: requests walks os.environ twice per request otherwise, a measurable
        # part of each upload's Python time. The Authorization header is ours, not netrc's.
        env = self.session.merge_environment_settings(self.base, {}, None,
                                                      self.session.verify, None)
        self.session.proxies.update(env["proxies"])
        self.session.verify = env["verify"]
        self.session.trust_env = False

    def send(self, obj: Outgoing) -> None:
        try:
            with open(obj.path, "rb") as fh:
                # A small object goes out as bytes: one send instead of a Python loop over
                # 16 KiB reads of the file; a large one is streamed (bounded memory).
                body = fh.read() if obj.size <= _IN_MEMORY_MAX else fh
                resp = self.session.put(
                    self.base + obj.sha256, data=body, timeout=self.dest.timeout_s,
                    headers={"Content-Type": "application/octet-stream",
                             "Content-Length": str(obj.size)})
        except requests.RequestException as exc:
            raise transport_error(exc, "central upload") from exc
        if resp.status_code not in (200, 201, 204):
            raise http_error(resp, "central upload")
        try:
            receipt = resp.json()
        except ValueError:
            return
        if isinstance(receipt, dict) and receipt.get("sha256") not in (None, obj.sha256):
            raise DeliveryError("central upload: receipt for another object")

    def close(self) -> None:
        self.session.close()
