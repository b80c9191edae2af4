"""The object store's read side: reader credentials (for gateways) and the UID index.

A reading gateway holds a reader token (``sfr_…``, minted by ``scanfort central
reader-token``); with it, it may list objects by Study/Series/SOP Instance UID and GET
their (still encrypted) bytes. Agents may report an object's UIDs when they upload it
(headers ``X-Scanfort-Study-UID``, ``X-Scanfort-Series-UID``, ``X-Scanfort-SOP-UID``):
UIDs only, never patient attributes. The central still never holds a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa

from service import security, tables
from service.store import Store

READER_TOKEN_PREFIX = "sfr_"
UID_RE = re.compile(r"[0-9]+(\.[0-9]+)*")


@dataclass(frozen=True)
class ObjectUids:
    sha256: str
    study_uid: str
    series_uid: str
    sop_uid: str


def valid_uid(value: str | None) -> bool:
    return value is not None and len(value) <= 64 and bool(UID_RE.fullmatch(value))


def mint_reader_token(store: Store, note: str = "") -> str:
    token = security.new_token(READER_TOKEN_PREFIX)
    with store._write() as conn:
        conn.execute(tables.reader_tokens.insert().values(
            token_hash=security.token_hash(token), note=note[:200], created_at=store._clock()))
    return token


def authenticate_reader(store: Store, token: str) -> bool:
    t = tables.reader_tokens
    with store._read() as conn:
        row = conn.execute(sa.select(t.c.token_hash).where(
            t.c.token_hash == security.token_hash(token), t.c.revoked_at.is_(None))).first()
    return row is not None


def record_uids(store: Store, uids: ObjectUids) -> None:
    stmt = store._insert(tables.object_uids).values(
        sha256=uids.sha256, study_uid=uids.study_uid, series_uid=uids.series_uid,
        sop_uid=uids.sop_uid,
    ).on_conflict_do_nothing(index_elements=["sha256"])  # fmt: skip
    with store._write() as conn:
        conn.execute(stmt)


def find_objects(store: Store, study: str | None = None, series: str | None = None,
                 sop: str | None = None, limit: int = 10_000) -> list[ObjectUids]:  # fmt: skip
    t = tables.object_uids
    stmt = sa.select(t).order_by(t.c.study_uid, t.c.series_uid, t.c.sop_uid).limit(limit)
    for column, value in ((t.c.study_uid, study), (t.c.series_uid, series), (t.c.sop_uid, sop)):
        if value:
            stmt = stmt.where(column == value)
    with store._read() as conn:
        return [ObjectUids(r.sha256, r.study_uid, r.series_uid, r.sop_uid)
                for r in conn.execute(stmt).all()]  # fmt: skip
