"""What a forwarder is given and what it promises."""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import DeliveryError


@dataclass(frozen=True)
class Outgoing:
    """One protected object to deliver (never the plaintext)."""

    item_id: int
    file_id: str  # salted hash of the source name, for logs
    path: Path  # the spool artifact
    sha256: str  # of the artifact
    size: int
    mode: str  # file | dicom
    relpath: str  # source path relative to its watched folder (folder destinations only)
    sop_instance_uid: str | None = None
    #: DICOM mode: (study, series, SOP) UIDs as stored in the artifact, when recorded
    uids: tuple[str, str, str] | None = None


class Forwarder(abc.ABC):
    """Delivers artifacts to one destination. Not thread-safe: one per sending thread."""

    batch_size = 1

    @abc.abstractmethod
    def send(self, obj: Outgoing) -> None:
        """Deliver ``obj``; return only once the destination acknowledged it."""

    def send_many(self, objs: Sequence[Outgoing]) -> list[DeliveryError | None]:
        """Deliver several; one result per object (None = acknowledged)."""
        results: list[DeliveryError | None] = []
        for obj in objs:
            try:
                self.send(obj)
                results.append(None)
            except DeliveryError as exc:
                results.append(exc)
        return results

    def idle(self) -> None:  # noqa: B027 - optional hook
        """Nothing to send for now: drop connections a peer may need for someone else."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


def http_error(code: int, what: str, detail: str | None = None) -> DeliveryError:
    """Classify an HTTP failure: 401/403 pause, 408/429/5xx retry, other 4xx permanent.
    ``detail`` is the peer's own text (kept locally, see :class:`DeliveryError`)."""
    message = f"{what}: HTTP {code}"
    if code in (401, 403):
        return DeliveryError(message, auth=True, detail=detail)
    if code in (408, 425, 429) or code >= 500:
        return DeliveryError(message, detail=detail)
    return DeliveryError(message, permanent=True, detail=detail)


def transport_error(exc: Exception, what: str) -> DeliveryError:
    """A network-level failure: always transient. The text never contains a file name."""
    return DeliveryError(f"{what}: {type(exc).__name__}")
