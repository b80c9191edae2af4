"""Forwarders: deliver spool artifacts to one destination each, and say what went wrong.

Every forwarder raises :class:`agent.errors.DeliveryError` on failure, classified as
transient (retried forever), auth (the destination is paused) or permanent (quarantine).
"""

from __future__ import annotations

from agent.config import AgentConfig, DestinationConfig
from agent.forward.base import Forwarder, Outgoing


def make_forwarder(config: AgentConfig, dest: DestinationConfig) -> Forwarder:
    """A new forwarder for ``dest`` (one per sending thread: sessions are not shared)."""
    if dest.kind == "central":
        from agent.forward.central import CentralForwarder

        return CentralForwarder(dest, config.central)
    if dest.kind == "dicomweb":
        from agent.forward.dicomweb import DicomWebForwarder

        return DicomWebForwarder(dest)
    if dest.kind == "dicom":
        from agent.forward.dimse import CStoreForwarder

        return CStoreForwarder(dest)
    from agent.forward.folder import FolderForwarder

    return FolderForwarder(dest)


__all__ = ["Forwarder", "Outgoing", "make_forwarder"]
