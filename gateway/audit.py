"""The audit log: one hash chain of every access, whatever process wrote it.

Each entry's ``hash`` is SHA-256 over the previous entry's hash and the entry's fields in a
canonical JSON form; ``seq`` numbers are consecutive from 1. Editing a field, deleting an
entry (even the last few, when the head is known) or inserting one breaks the chain, which
:func:`verify_chain` reports. Entries carry UIDs and outcomes only, never patient
attributes (search terms are not written either, only how many results they gave).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass

from gateway.errors import AuditChainError

GENESIS = "0" * 64

#: Operations written to the log.
OPERATIONS = (
    "login", "logout", "search", "retrieve", "metadata", "frames", "bulkdata", "rendered",
    "export", "reindex", "audit-view", "denied", "cache-clear",
)  # fmt: skip
#: Outcomes: ``ok`` served (decrypted or passed through), ``refused`` an instance that does
#: not restore, ``denied`` missing role, ``failed`` upstream or login failure.
OUTCOMES = ("ok", "passthrough", "refused", "denied", "failed")


@dataclass(frozen=True)
class AuditEvent:
    """What a request handler reports; the store adds ``seq``, ``at`` and the chain."""

    username: str
    client: str
    operation: str
    outcome: str
    study_uid: str = ""
    series_uid: str = ""
    instance_uid: str = ""
    detail: str = ""


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: float
    username: str
    client: str
    operation: str
    study_uid: str
    series_uid: str
    instance_uid: str
    outcome: str
    detail: str
    process: str
    prev_hash: str
    hash: str


def entry_hash(prev_hash: str, seq: int, at: float, event: AuditEvent, process: str) -> str:
    # the fields spelled out (not dataclasses.asdict, which deep-copies): same JSON
    body = {
        "seq": seq,
        "at": repr(float(at)),
        "process": process,
        "username": event.username,
        "client": event.client,
        "operation": event.operation,
        "outcome": event.outcome,
        "study_uid": event.study_uid,
        "series_uid": event.series_uid,
        "instance_uid": event.instance_uid,
        "detail": event.detail,
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256((prev_hash + "\n" + canonical).encode("ascii")).hexdigest()


def _event_of(entry: AuditEntry) -> AuditEvent:
    return AuditEvent(
        username=entry.username,
        client=entry.client,
        operation=entry.operation,
        outcome=entry.outcome,
        study_uid=entry.study_uid,
        series_uid=entry.series_uid,
        instance_uid=entry.instance_uid,
        detail=entry.detail,
    )


def verify_chain(entries: Iterable[AuditEntry], expected_head: str | None = None) -> int:
    """Check ``entries`` (in ``seq`` order, from 1); return how many verified.

    Raise :class:`AuditChainError` naming the first bad entry. ``expected_head``, a hash
    noted earlier (e.g. printed by ``gateway audit verify``), detects a truncated tail.
    """
    prev = GENESIS
    count = 0
    seen_head = expected_head is None
    for entry in entries:
        count += 1
        if entry.seq != count:
            raise AuditChainError(f"entry {count} missing (found seq {entry.seq})")
        if entry.prev_hash != prev:
            raise AuditChainError(f"entry {entry.seq}: previous hash does not match")
        if entry_hash(prev, entry.seq, entry.at, _event_of(entry), entry.process) != entry.hash:
            raise AuditChainError(f"entry {entry.seq}: content does not match its hash")
        prev = entry.hash
        if entry.hash == expected_head:
            seen_head = True
    if not seen_head:
        raise AuditChainError("the chain no longer contains the expected head (entries removed)")
    return count


CSV_FIELDS = (
    "seq", "time", "username", "client", "operation", "study_uid", "series_uid",
    "instance_uid", "outcome", "detail", "process", "hash",
)  # fmt: skip


def iso_time(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def to_csv(entries: Iterable[AuditEntry]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_FIELDS)
    for e in entries:
        writer.writerow(
            [e.seq, iso_time(e.at), e.username, e.client, e.operation, e.study_uid,
             e.series_uid, e.instance_uid, e.outcome, e.detail, e.process, e.hash]
        )  # fmt: skip
    return out.getvalue()


# --------------------------------------------------------------------------- syslog (ATNA)

# DICOM PS3.15 A.5 event IDs (code, meaning) for the operations we report.
_EVENT_IDS = {
    "login": ("110114", "User Authentication"),
    "logout": ("110114", "User Authentication"),
    "search": ("110112", "Query"),
    "export": ("110106", "Export"),
    "denied": ("110113", "Security Alert"),
}
_DEFAULT_EVENT = ("110103", "DICOM Instances Accessed")
_OUTCOME_CODES = {"ok": "0", "passthrough": "0", "refused": "8", "denied": "4", "failed": "8"}


def atna_message(entry: AuditEntry, host: str) -> bytes:
    """An RFC 5424 syslog message carrying a PS3.15 A.5 style AuditMessage (XML)."""
    from xml.sax.saxutils import quoteattr

    code, meaning = _EVENT_IDS.get(entry.operation, _DEFAULT_EVENT)
    outcome = _OUTCOME_CODES.get(entry.outcome, "8")
    objects = "".join(
        f'<ParticipantObjectIdentification ParticipantObjectID={quoteattr(uid)} '
        f'ParticipantObjectTypeCode="2" ParticipantObjectTypeCodeRole="3">'
        f'<ParticipantObjectIDTypeCode csd-code="110180" codeSystemName="DCM" '
        f'originalText="Study Instance UID"/></ParticipantObjectIdentification>'
        for uid in (entry.study_uid,)
        if uid
    )
    xml = (
        f'<AuditMessage><EventIdentification EventActionCode="R" '
        f'EventDateTime="{iso_time(entry.at)}" EventOutcomeIndicator="{outcome}">'
        f'<EventID csd-code="{code}" codeSystemName="DCM" originalText="{meaning}"/>'
        f"</EventIdentification>"
        f"<ActiveParticipant UserID={quoteattr(entry.username)} UserIsRequestor=\"true\" "
        f"NetworkAccessPointID={quoteattr(entry.client)} NetworkAccessPointTypeCode=\"2\"/>"
        f'<AuditSourceIdentification AuditSourceID={quoteattr(host)}/>{objects}</AuditMessage>'
    )
    # <PRI> = facility 10 (authpriv) * 8 + severity 5 (notice) → 85
    header = f"<85>1 {iso_time(entry.at)} {host} scanfort-gateway - IHE+RFC-3881 - "
    return (header + "\ufeff" + xml).encode("utf-8")


class SyslogSender:
    """Best-effort UDP syslog: the database stays the record; a lost datagram loses nothing."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._addr = (host or "127.0.0.1", int(port))
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._host = socket.gethostname()

    def send(self, entry: AuditEntry) -> None:
        try:
            self._sock.sendto(atna_message(entry, self._host), self._addr)
        except OSError:
            pass

    def close(self) -> None:
        self._sock.close()
