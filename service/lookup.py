"""Exam lookup by keyed hash: "did exam X reach the PACS?" without storing identifiers.

Agents report, with their protected/forwarded events, ``study_key`` hashes of the study's
AccessionNumber and StudyInstanceUID under the site pseudonymisation secret. The operator
types either identifier; the central hashes it the same way and looks the hash up. The
typed value is never stored or logged.

The keyed hash is ``cipher.pseudonym.PseudonymSecret.study_key`` (``cipher/SPEC.md``
§2.5), re-stated here because the central service must not import the cipher package
(a test checks that both agree)::

    HMAC-SHA256(key, b"scanfort pseudonym v1\\x00study-key\\x00\\x00" + strip(value))
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from service import tables
from service.store import Store

_TEXT_RE = re.compile(r"scanfort-pseudonym-secret/1 ([1-9][0-9]{0,5}) ([A-Za-z0-9_-]{43}=?)")
_PREFIX = b"scanfort pseudonym v1\x00study-key\x00\x00"  # label, kind, empty issuer
MAX_QUERY_LEN = 128


class LookupUnavailable(RuntimeError):
    """The central has no (valid) pseudonymisation secret, so it cannot hash queries."""


def load_key_text(text: str) -> bytes:
    """The HMAC key from the secret's text form (``scanfort-pseudonym-secret/1 V KEY``)."""
    body = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    match = _TEXT_RE.fullmatch(body[0]) if len(body) == 1 else None
    if match is None:
        raise LookupUnavailable("not a pseudonymisation secret")
    return base64.urlsafe_b64decode(match.group(2).rstrip("=") + "=")


def load_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii")
    except (FileNotFoundError, UnicodeDecodeError) as exc:
        raise LookupUnavailable(f"no pseudonymisation secret at {path}") from exc
    return load_key_text(text)


def study_key(key: bytes, value: str) -> str:
    """Keyed hash (hex) of an AccessionNumber or StudyInstanceUID, as agents report it."""
    message = _PREFIX + value.strip(" \x00").encode("utf-8")
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Sighting:
    agent_id: str
    kind: str  # protected | forwarded
    at: float
    destination: str | None
    file_id: str | None


def find(store: Store, keyed: str, limit: int = 200) -> list[Sighting]:
    """Every protected/forwarded event reported for ``keyed``, oldest first."""
    s = tables.study_events
    with store._read() as conn:
        rows = conn.execute(
            sa.select(s.c.agent_id, s.c.kind, s.c.at, s.c.destination, s.c.file_id)
            .where(s.c.study_key == keyed)
            .order_by(s.c.at)
            .limit(limit)
        ).all()
    return [Sighting(*r) for r in rows]


@dataclass(frozen=True)
class Delivery:
    """What one destination acknowledged of an exam protected by one agent."""

    destination: str
    files: int  # distinct protected files it acknowledged
    first_at: float
    last_at: float
    complete: bool  # every file the agent reported protecting was acknowledged here


@dataclass(frozen=True)
class ExamAtAgent:
    """One agent's part of a looked-up exam: when it protected it and where it went."""

    agent_id: str
    files: int  # distinct files protected (0 if the protect events were pruned)
    first_protected_at: float | None
    last_protected_at: float | None
    deliveries: tuple[Delivery, ...]


def summarize(sightings: list[Sighting]) -> list[ExamAtAgent]:
    """Group sightings per agent, then per acknowledging destination (file counts, times)."""
    by_agent: dict[str, list[Sighting]] = {}
    for s in sightings:
        by_agent.setdefault(s.agent_id, []).append(s)
    out = []
    for agent_id, seen in by_agent.items():
        protected = [s for s in seen if s.kind == "protected"]
        protected_files = {s.file_id or f"event-{i}" for i, s in enumerate(protected)}
        acks: dict[str, list[Sighting]] = {}
        for s in seen:
            if s.kind == "forwarded" and s.destination:
                acks.setdefault(s.destination, []).append(s)
        deliveries = []
        for destination, got in sorted(acks.items()):
            files = {s.file_id or f"event-{i}" for i, s in enumerate(got)}
            deliveries.append(Delivery(
                destination, len(files), min(s.at for s in got), max(s.at for s in got),
                complete=bool(protected_files) and protected_files <= files,
            ))  # fmt: skip
        out.append(ExamAtAgent(
            agent_id, len(protected_files),
            min((s.at for s in protected), default=None),
            max((s.at for s in protected), default=None), tuple(deliveries),
        ))  # fmt: skip
    out.sort(key=lambda e: e.first_protected_at if e.first_protected_at is not None else 0.0)
    return out
