"""``dicom``: C-STORE with pynetdicom, one association per sending thread, reused.

Success statuses: 0000, and the warnings B000 (coercion), B006 (elements discarded),
B007 (data set does not match SOP class) — the peer stored the instance. 0xA7xx (out of
resources) and failures of the association itself are retried; other failures concern the
object (A9xx, Cxxx, 0117, 0122…) and quarantine it.
"""

from __future__ import annotations

import logging

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.association import Association

from agent.config import DestinationConfig
from agent.errors import DeliveryError
from agent.forward.base import Forwarder, Outgoing

SUCCESS = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
_log = logging.getLogger(__name__)


def _transient(status: int) -> bool:
    return 0xA700 <= status <= 0xA7FF or status in (0x0124, 0x0210, 0x0213)


class CStoreForwarder(Forwarder):
    def __init__(self, dest: DestinationConfig) -> None:
        assert dest.host is not None and dest.port is not None
        self.dest = dest
        self.assoc: Association | None = None
        self.context: tuple[str, str] | None = None

    def _associate(self, context: tuple[str, str]) -> Association:
        if self.assoc is not None and self.assoc.is_established and self.context == context:
            return self.assoc
        self.close()
        ae = AE(ae_title=self.dest.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.dest.timeout_s
        ae.connection_timeout = self.dest.timeout_s
        ae.add_requested_context(context[0], [context[1]])
        assoc = ae.associate(self.dest.host or "", self.dest.port or 104,
                             ae_title=self.dest.ae_title)
        if not assoc.is_established:
            raise DeliveryError("c-store: association rejected or peer unreachable")
        if not assoc.accepted_contexts:
            assoc.release()
            raise DeliveryError("c-store: peer accepts no context for this SOP class",
                                permanent=True)
        self.assoc, self.context = assoc, context
        return assoc

    def send(self, obj: Outgoing) -> None:
        try:
            meta = dcmread(obj.path, stop_before_pixels=True,
                           specific_tags=["SOPClassUID"])
            context = (str(meta.file_meta.MediaStorageSOPClassUID),
                       str(meta.file_meta.TransferSyntaxUID))
        except (InvalidDicomError, AttributeError, OSError, ValueError) as exc:
            raise DeliveryError("c-store: artifact is not a DICOM file", permanent=True) from exc
        assoc = self._associate(context)
        try:
            status = assoc.send_c_store(obj.path)
        except (RuntimeError, ValueError, OSError) as exc:
            self.close()
            raise DeliveryError(f"c-store: {type(exc).__name__}") from exc
        code = getattr(status, "Status", None)
        if code is None:
            self.close()  # timeout, abort or invalid response: the association is gone
            raise DeliveryError("c-store: no response from peer")
        if int(code) in SUCCESS:
            return
        comment = getattr(status, "ErrorComment", None)
        detail = f"status {int(code):04X}" + (f", (0000,0902) Error Comment {comment!s}"
                                               if comment else "")
        raise DeliveryError(f"c-store: status {int(code):04X}",
                            permanent=not _transient(int(code)), detail=detail)

    def idle(self) -> None:
        # Many SCPs (dcmtk storescp, older PACS) serve one association at a time.
        self.close()

    def close(self) -> None:
        if self.assoc is not None:
            try:
                if self.assoc.is_established:
                    self.assoc.release()
            except Exception:  # releasing a broken association must never raise
                _log.debug("association release failed", exc_info=True)
            self.assoc = None
            self.context = None
