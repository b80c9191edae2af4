"""Export: push a study's decrypted instances to a clinical system, every one audited.

Targets: ``dicom://AE@host:port`` (C-STORE, one association per SOP class and transfer
syntax, reused while they stay the same) or an ``http(s)://…`` DICOMweb root (STOW-RS, one
request per instance, the original bytes). Refused instances are skipped and audited;
the result counts what was sent, refused and failed.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from dataclasses import dataclass

import pydicom
import requests
from pynetdicom import AE
from pynetdicom.association import Association

from gateway.audit import AuditEvent
from gateway.context import Gateway
from gateway.errors import GatewayError, RefusedInstance
from gateway.multipart import closing, new_boundary, part_bytes

_DICOM_RE = re.compile(r"dicom://([^@/]{1,16})@([^:/]+):(\d{1,5})/?")
_STORE_OK = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class ExportError(GatewayError):
    """The target is malformed or unreachable."""


@dataclass
class ExportResult:
    sent: int = 0
    refused: int = 0
    failed: int = 0


class _CStore:
    def __init__(self, ae_title: str, host: str, port: int, timeout_s: float) -> None:
        self.ae_title, self.host, self.port, self.timeout_s = ae_title, host, port, timeout_s
        self.assoc: Association | None = None
        self.context: tuple[str, str] | None = None

    def send(self, data: bytes) -> bool:
        ds = pydicom.dcmread(io.BytesIO(data))
        context = (str(ds.file_meta.MediaStorageSOPClassUID), str(ds.file_meta.TransferSyntaxUID))
        if self.assoc is None or self.context != context or not self.assoc.is_established:
            self.close()
            ae = AE(ae_title="SCANFORT-GW")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
            ae.connection_timeout = self.timeout_s
            ae.add_requested_context(context[0], [context[1]])
            assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
            if not assoc.is_established:
                raise ExportError("c-store: association rejected or peer unreachable")
            self.assoc, self.context = assoc, context
        assert self.assoc is not None
        status = self.assoc.send_c_store(ds)
        code = getattr(status, "Status", None)
        return code is not None and int(code) in _STORE_OK

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


class _Stow:
    def __init__(self, root: str, timeout_s: float) -> None:
        self.url = root.rstrip("/") + "/studies"
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def send(self, data: bytes) -> bool:
        boundary = new_boundary()
        body = part_bytes(boundary, "application/dicom", data) + closing(boundary)
        try:
            resp = self.session.post(
                self.url, data=body, timeout=self.timeout_s,
                headers={"Content-Type":
                         f'multipart/related; type="application/dicom"; boundary={boundary}',
                         "Accept": "application/dicom+json"},
            )  # fmt: skip
        except requests.RequestException as exc:
            raise ExportError("stow-rs: target unreachable") from exc
        return resp.status_code in (200, 202)

    def close(self) -> None:
        self.session.close()


def export_study(gw: Gateway, study: str, target: str, username: str, client: str = "cli",
                 on_instance: Callable[[str], None] | None = None) -> ExportResult:
    """Send every instance of ``study`` the gateway can restore to ``target``.

    ``on_instance`` is told each instance's outcome (``sent``, ``refused``, ``failed``).
    """
    match = _DICOM_RE.fullmatch(target)
    sender: _CStore | _Stow
    if match:
        sender = _CStore(match.group(1), match.group(2), int(match.group(3)),
                         gw.settings.upstream_timeout_s)  # fmt: skip
    elif target.startswith(("http://", "https://")):
        sender = _Stow(target, gw.settings.upstream_timeout_s)
    else:
        raise ExportError("target must be dicom://AE@host:port or an http(s) DICOMweb root")
    result = ExportResult()
    detail = f"to {match.group(1) + '@' + match.group(2) if match else target}"
    try:
        for raw in gw.upstream.iter_instances(gw.index.archive_path(study)):
            try:
                item = gw.restorer.restore(raw)
            except RefusedInstance as exc:
                result.refused += 1
                gw.audit([AuditEvent(username, client, "export", "refused", study, "",
                                     exc.sop_instance_uid, exc.reason)])  # fmt: skip
                if on_instance is not None:
                    on_instance("refused")
                continue
            ok = sender.send(item.data)
            result.sent += ok
            result.failed += not ok
            gw.audit([AuditEvent(username, client, "export", "ok" if ok else "failed", study,
                                 item.series_uid, item.sop_uid, detail)])  # fmt: skip
            if on_instance is not None:
                on_instance("sent" if ok else "failed")
    finally:
        sender.close()
    return result
