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
