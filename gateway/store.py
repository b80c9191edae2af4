"""The gateway store: users, sessions, API tokens, the audit chain and the sealed index.

SQLite by default; PostgreSQL when several gateway processes share one database. The audit
chain stays one chain across processes: an append takes a lock that every writer shares
(``BEGIN IMMEDIATE`` on SQLite, a transaction-scoped advisory lock on PostgreSQL), reads
the head and writes the next entry in the same transaction.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from gateway import security, tables
from gateway.audit import GENESIS, AuditEntry, AuditEvent, entry_hash
from gateway.errors import NotInitializedError

ROLES = ("reader", "auditor", "admin")
_AUDIT_LOCK_KEY = 0x5346_4741  # "SFGA": the advisory lock every audit writer takes


@dataclass(frozen=True)
class Principal:
    """An authenticated user and how they authenticated."""

    username: str
    roles: frozenset[str]
    via: str  # "session", "api", "basic"

    def has(self, role: str) -> bool:
        return role in self.roles or "admin" in self.roles


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        engine = sa.create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8
        )

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (below)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: sa.Connection) -> None:
            write = conn.get_execution_options().get("gw_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


class Store:
    """All database access of the gateway."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._clock = clock
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        self.process = f"{socket.gethostname()}:{os.getpid()}"
        self.on_audit: Callable[[AuditEntry], None] | None = None

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._write_lock, self.engine.connect() as conn:
            conn.execution_options(gw_write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def _insert(self, table: sa.Table) -> Any:
        if self.dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    def create_schema(self) -> None:
        """Create missing tables; safe when several processes start at once."""
        for attempt in range(5):
            try:
                tables.metadata.create_all(self.engine, checkfirst=True)
                break
            except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        with self._write() as conn:
            stmt = self._insert(tables.meta).values(
                key="schema_version", value=str(tables.SCHEMA_VERSION)
            )
            conn.execute(stmt.on_conflict_do_nothing())

    def check_initialized(self) -> None:
        try:
            with self._read() as conn:
                count = conn.execute(sa.select(sa.func.count()).select_from(tables.users)).scalar()
        except sa.exc.DBAPIError as exc:
            raise NotInitializedError(f"database not initialized: {exc.orig}") from exc
        if not count:
            raise NotInitializedError("database has no user")

    # -- users ----------------------------------------------------------------------------

    def set_user(self, username: str, password: str, roles: Sequence[str]) -> None:
        bad = [r for r in roles if r not in ROLES]
        if bad or not roles:
            raise ValueError(f"roles must be among {', '.join(ROLES)}")
        if not username or len(username) > 64:
            raise ValueError("username must be 1 to 64 characters")
        encoded = security.hash_password(password)
        values = {"password_hash": encoded, "roles": " ".join(sorted(set(roles)))}
        with self._write() as conn:
            updated = conn.execute(
                tables.users.update()
                .where(tables.users.c.username == username)
                .values(**values, failed_count=0, last_failed_at=None)
            ).rowcount
            if not updated:
                conn.execute(
                    tables.users.insert().values(username=username, failed_count=0, **values)
                )

    def list_users(self) -> list[tuple[str, str]]:
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tables.users.c.username, tables.users.c.roles).order_by(
                    tables.users.c.username
                )
            ).all()
        return [(r.username, r.roles) for r in rows]

    def _roles(self, conn: sa.Connection, username: str) -> frozenset[str] | None:
        roles = conn.execute(
            sa.select(tables.users.c.roles).where(tables.users.c.username == username)
        ).scalar()
        return None if roles is None else frozenset(str(roles).split())

    def check_login(
        self, username: str, password: str, window_s: float = 900.0
    ) -> tuple[Principal | None, int]:
        """(the user if the password is right, failures within ``window_s`` before)."""
        now = self._clock()
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.users).where(tables.users.c.username == username)
            ).first()
        ok = security.verify_password(password, row.password_hash if row else None)
        recent = 0
        if row is not None and row.last_failed_at is not None and now - row.last_failed_at < window_s:
            recent = int(row.failed_count)
        if row is None:
            return None, recent
        if ok and recent == 0:
            return Principal(username, frozenset(row.roles.split()), "basic"), 0
        with self._write() as conn:
            values: dict[str, Any] = (
                {"failed_count": 0, "last_failed_at": None}
                if ok
                else {"failed_count": recent + 1, "last_failed_at": now}
            )
            conn.execute(
                tables.users.update().where(tables.users.c.username == username).values(**values)
            )
        principal = Principal(username, frozenset(row.roles.split()), "basic") if ok else None
        return principal, recent

    # -- sessions and API tokens ------------------------------------------------------------

    def create_token(self, username: str, lifetime_s: float, kind: str, note: str = "") -> str:
        prefix = security.SESSION_TOKEN_PREFIX if kind == "session" else security.API_TOKEN_PREFIX
        token = security.new_token(prefix)
        now = self._clock()
        with self._write() as conn:
            conn.execute(tables.sessions.delete().where(tables.sessions.c.expires_at < now))
            conn.execute(
                tables.sessions.insert().values(
                    token_hash=security.token_hash(token),
                    username=username,
                    kind=kind,
                    note=note,
                    created_at=now,
                    expires_at=now + lifetime_s,
                )
            )
        return token

    def authenticate_token(self, token: str, kind: str) -> Principal | None:
        """The user of a live token of ``kind``; None when unknown, expired or deleted."""
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.sessions).where(
                    tables.sessions.c.token_hash == security.token_hash(token)
                )
            ).first()
            if row is None or row.kind != kind or row.expires_at < self._clock():
                return None
            roles = self._roles(conn, row.username)
        if roles is None:
            return None
        return Principal(row.username, roles, kind)

    def delete_token(self, token: str) -> None:
        with self._write() as conn:
            conn.execute(
                tables.sessions.delete().where(
                    tables.sessions.c.token_hash == security.token_hash(token)
                )
            )

    # -- audit ------------------------------------------------------------------------------

    def append_audit(self, events: Sequence[AuditEvent]) -> list[AuditEntry]:
        """Append ``events`` to the one chain, in order, in one transaction."""
        if not events:
            return []
        written: list[AuditEntry] = []
        with self._write() as conn:
            if self.dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _AUDIT_LOCK_KEY})
            head = conn.execute(
                sa.select(tables.audit.c.seq, tables.audit.c.hash)
                .order_by(tables.audit.c.seq.desc())
                .limit(1)
            ).first()
            seq, prev = (int(head.seq), str(head.hash)) if head else (0, GENESIS)
            now = self._clock()
            rows = []
            for given in events:
                seq += 1
                # the hash covers the event as stored: bound the free-form fields first
                if (len(given.username) > 64 or len(given.client) > 64
                        or len(given.detail) > 500):
                    given = AuditEvent(
                        given.username[:64], given.client[:64], given.operation, given.outcome,
                        given.study_uid, given.series_uid, given.instance_uid,
                        given.detail[:500])  # fmt: skip
                digest = entry_hash(prev, seq, now, given, self.process)
                row: dict[str, Any] = {
                    "seq": seq, "at": now, "username": given.username, "client": given.client,
                    "operation": given.operation, "study_uid": given.study_uid,
                    "series_uid": given.series_uid, "instance_uid": given.instance_uid,
                    "outcome": given.outcome, "detail": given.detail, "process": self.process,
                    "prev_hash": prev, "hash": digest,
                }  # fmt: skip
                rows.append(row)
                written.append(AuditEntry(**row))
                prev = digest
            conn.execute(tables.audit.insert(), rows)
        if self.on_audit is not None:
            for entry in written:
                self.on_audit(entry)
        return written

    def audit_entries(
        self, *, since_seq: int = 0, limit: int | None = None, newest_first: bool = False
    ) -> list[AuditEntry]:
        order = tables.audit.c.seq.desc() if newest_first else tables.audit.c.seq
        stmt = sa.select(tables.audit).where(tables.audit.c.seq > since_seq).order_by(order)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self._read() as conn:
            rows = conn.execute(stmt).all()
        return [AuditEntry(**row._asdict()) for row in rows]

    def iter_audit(self, batch: int = 5000) -> Iterator[AuditEntry]:
        last = 0
        while True:
            chunk = self.audit_entries(since_seq=last, limit=batch)
            if not chunk:
                return
            yield from chunk
            last = chunk[-1].seq

    # -- the sealed index ---------------------------------------------------------------------

    def put_index(self, rows: Sequence[tuple[str, str, str, bytes]]) -> None:
        """Upsert ``(instance_uid, study_uid, series_uid, sealed)`` rows."""
        if not rows:
            return
        now = self._clock()
        values = [
            {"instance_uid": i, "study_uid": st, "series_uid": se, "sealed": s, "updated_at": now}
            for i, st, se, s in rows
        ]
        with self._write() as conn:
            stmt = self._insert(tables.index_rows).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=["instance_uid"],
                set_={"sealed": stmt.excluded.sealed, "updated_at": stmt.excluded.updated_at,
                      "study_uid": stmt.excluded.study_uid,
                      "series_uid": stmt.excluded.series_uid},
            )  # fmt: skip
            conn.execute(stmt)

    def index_rows(self, study_uid: str | None = None) -> list[tuple[str, str, str, bytes]]:
        """``(instance_uid, study_uid, series_uid, sealed)`` rows (the archive's UIDs)."""
        t = tables.index_rows
        stmt = sa.select(t.c.instance_uid, t.c.study_uid, t.c.series_uid, t.c.sealed)
        if study_uid is not None:
            stmt = stmt.where(t.c.study_uid == study_uid)
        with self._read() as conn:
            return [(r.instance_uid, r.study_uid, r.series_uid, bytes(r.sealed))
                    for r in conn.execute(stmt).all()]  # fmt: skip

    def index_counts(self) -> dict[str, int]:
        """Instances indexed per study (what a sync compares against the upstream)."""
        with self._read() as conn:
            rows = conn.execute(
                sa.select(tables.index_rows.c.study_uid, sa.func.count()).group_by(
                    tables.index_rows.c.study_uid
                )
            ).all()
        return {str(r[0]): int(r[1]) for r in rows}

    def clear_index(self, study_uid: str | None = None) -> None:
        with self._write() as conn:
            stmt = tables.index_rows.delete()
            if study_uid is not None:
                stmt = stmt.where(tables.index_rows.c.study_uid == study_uid)
            conn.execute(stmt)
