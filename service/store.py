"""The central store: every read and write of the database, on SQLite or PostgreSQL.

Several central processes may share one PostgreSQL database, so nothing here keeps state
between calls except the engine: one-time enrollment tokens are consumed by a single
conditional ``UPDATE`` (exactly one caller wins), sessions live in the database.

On SQLite, writes take ``BEGIN IMMEDIATE`` (no read-then-upgrade deadlocks) behind an
in-process lock, so threads of one process queue instead of spinning on ``SQLITE_BUSY``.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from protocol.wire import EnrollRequest, Event, Heartbeat, to_dict
from service import security, tables
from service.errors import NotInitializedError

_MAX_INT = 2**62


def clean_text(value: str | None, max_len: int = 512) -> str | None:
    """Text from an agent, made storable anywhere: no NUL, no lone surrogates, bounded."""
    if value is None:
        return None
    text = value[:max_len].replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8")


def _int(value: float | int) -> int:
    if isinstance(value, float) and not math.isfinite(value):
        return 0
    return max(0, min(int(value), _MAX_INT))


def _float(value: float | int | None) -> float | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = min(value, _MAX_INT)
    result = float(value)
    return result if math.isfinite(result) else None


@dataclass(frozen=True)
class AgentAuth:
    """An authenticated agent and the spool state the next heartbeat compares against."""

    agent_id: str
    spool_depth: int | None
    spool_trend_since: float | None
    spool_trend_depth: int | None
    commands_pending: bool = False
    last_seen_at: float | None = None


@dataclass(frozen=True)
class AgentRow:
    agent_id: str
    host: str
    os: str
    version: str
    enrolled_at: float
    revoked_at: float | None
    last_seen_at: float | None
    heartbeats: int
    uptime_s: float | None
    spool_depth: int | None
    spool_bytes: int | None
    oldest_item_age_s: float | None
    intake_paused: bool
    paused_destinations: tuple[str, ...]
    last_error: str | None
    spool_trend_since: float | None
    spool_trend_depth: int | None
    status: dict[str, Any] | None
    label: str | None = None  # set centrally: the enrollment token's note, or the dashboard
    site: str | None = None
    name: str | None = None  # ``name`` from the agent's own config

    @property
    def display_name(self) -> str:
        """What tables, alerts, charts and metrics call the agent."""
        return self.label or self.name or self.host


@dataclass(frozen=True)
class EventRow:
    at: float
    kind: str
    severity: str
    message: str
    file_id: str | None
    destination: str | None


@dataclass(frozen=True)
class EnrollmentTokenRow:
    token_id: str
    note: str
    created_at: float
    expires_at: float
    used_at: float | None
    agent_id: str | None
    revoked_at: float | None
    site: str | None = None


@dataclass(frozen=True)
class SessionInfo:
    username: str
    csrf_token: str
    expires_at: float
    role: str = "admin"


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
            write = conn.get_execution_options().get("sf_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return sa.create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


def _heartbeat_update() -> sa.Update:
    """The per-heartbeat UPDATE, built once: the hot path skips statement construction."""
    a = tables.agents
    columns = ("host", "os", "version", "last_seen_at", "uptime_s", "spool_depth",
               "spool_bytes", "oldest_item_age_s", "intake_paused", "paused_destinations",
               "last_error", "spool_trend_since", "spool_trend_depth", "status_json", "name")  # fmt: skip
    values: dict[str, Any] = {c: sa.bindparam(f"b_{c}") for c in columns}
    values["heartbeats"] = a.c.heartbeats + 1
    return a.update().where(a.c.agent_id == sa.bindparam("b_agent_id")).values(**values)


_HEARTBEAT_UPDATE = _heartbeat_update()
_AUTH_AGENT = sa.select(
    tables.agents.c.agent_id,
    tables.agents.c.spool_depth,
    tables.agents.c.spool_trend_since,
    tables.agents.c.spool_trend_depth,
    tables.agents.c.commands_pending,
    tables.agents.c.last_seen_at,
).where(
    tables.agents.c.token_hash == sa.bindparam("b_token_hash"),
    tables.agents.c.revoked_at.is_(None),
)


class Store:
    """All database access of the central service."""

    def __init__(self, url: str, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = make_engine(url)
        self.dialect = self.engine.dialect.name
        self._clock = clock
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )

    # -- plumbing -----------------------------------------------------------------------

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._write_lock, self.engine.connect() as conn:
            conn.execution_options(sf_write=True)
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
                time.sleep(0.2 * (attempt + 1))  # another process created it concurrently
        self._add_missing_columns()
        with self._write() as conn:
            stmt = self._insert(tables.meta).values(
                key="schema_version", value=str(tables.SCHEMA_VERSION)
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["key"], set_={"value": str(tables.SCHEMA_VERSION)}
                )
            )

    def _add_missing_columns(self) -> None:
        """Bring a version-1 database up to date: nullable columns only, so it is additive."""
        for attempt in range(5):
            present = {
                name: {c["name"] for c in sa.inspect(self.engine).get_columns(name)}
                for name in {t.name for t, _ in tables.ADDED_COLUMNS}
            }
            missing = [(t, c) for t, c in tables.ADDED_COLUMNS if c not in present[t.name]]
            if not missing:
                return
            try:
                with self._write() as conn:
                    for table, column in missing:
                        col = table.c[column]
                        kind = col.type.compile(dialect=self.engine.dialect)
                        conn.exec_driver_sql(
                            f'ALTER TABLE {table.name} ADD COLUMN "{column}" {kind}'
                        )
            except (sa.exc.OperationalError, sa.exc.ProgrammingError):
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))  # another process added them concurrently

    def ping(self) -> None:
        with self._read() as conn:
            conn.execute(sa.text("SELECT 1"))

    def check_initialized(self) -> None:
        try:
            with self._read() as conn:
                count = conn.execute(sa.select(sa.func.count()).select_from(tables.users)).scalar()
        except sa.exc.DBAPIError as exc:
            raise NotInitializedError(f"database not initialized: {exc.orig}") from exc
        if not count:
            raise NotInitializedError("database has no admin user")

    # -- dashboard users and sessions ---------------------------------------------------

    def set_user(self, username: str, password: str, role: str | None = None) -> None:
        """Create a user or set an existing one's password (and role, when given)."""
        encoded = security.hash_password(password)
        values: dict[str, Any] = {"password_hash": encoded, "failed_count": 0}
        values["last_failed_at"] = None
        if role is not None:
            values["role"] = role
        with self._write() as conn:
            updated = conn.execute(
                tables.users.update().where(tables.users.c.username == username).values(**values)
            ).rowcount
            if not updated:
                values.setdefault("role", "admin")
                conn.execute(tables.users.insert().values(username=username, **values))

    def check_login(
        self, username: str, password: str, window_s: float = 900.0
    ) -> tuple[bool, int]:
        """(password ok, failures within ``window_s`` before this attempt)."""
        now = self._clock()
        with self._read() as conn:
            row = conn.execute(
                sa.select(
                    tables.users.c.password_hash,
                    tables.users.c.failed_count,
                    tables.users.c.last_failed_at,
                    tables.users.c.disabled_at,
                ).where(tables.users.c.username == username)
            ).first()
        ok = security.verify_password(password, row.password_hash if row else None)
        ok = ok and row is not None and row.disabled_at is None
        recent = 0
        if (
            row is not None
            and row.last_failed_at is not None
            and now - row.last_failed_at < window_s
        ):
            recent = int(row.failed_count)
        if row is not None:
            with self._write() as conn:
                values: dict[str, Any] = (
                    {"failed_count": 0, "last_failed_at": None}
                    if ok
                    else {"failed_count": recent + 1, "last_failed_at": now}
                )
                conn.execute(
                    tables.users.update()
                    .where(tables.users.c.username == username)
                    .values(**values)
                )
        return ok, recent

    def create_session(self, username: str, lifetime_s: float) -> tuple[str, str]:
        """A new session: (cookie token, CSRF token)."""
        token = security.new_token(security.SESSION_TOKEN_PREFIX)
        csrf = security.new_token("")[:43]
        now = self._clock()
        with self._write() as conn:
            conn.execute(tables.sessions.delete().where(tables.sessions.c.expires_at < now))
            conn.execute(
                tables.sessions.insert().values(
                    token_hash=security.token_hash(token),
                    username=username,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + lifetime_s,
                )
            )
        return token, csrf

    def get_session(self, token: str) -> SessionInfo | None:
        """The live session of an enabled user (disabling a user ends its sessions)."""
        s, u = tables.sessions, tables.users
        with self._read() as conn:
            row = conn.execute(
                sa.select(s.c.username, s.c.csrf_token, s.c.expires_at, u.c.role, u.c.disabled_at)
                .join(u, u.c.username == s.c.username)
                .where(s.c.token_hash == security.token_hash(token))
            ).first()
        if row is None or row.expires_at < self._clock() or row.disabled_at is not None:
            return None
        return SessionInfo(row.username, row.csrf_token, row.expires_at, row.role or "admin")

    def delete_session(self, token: str) -> None:
        with self._write() as conn:
            conn.execute(
                tables.sessions.delete().where(
                    tables.sessions.c.token_hash == security.token_hash(token)
                )
            )

    # -- enrollment and agent tokens ----------------------------------------------------

    def mint_enrollment_token(
        self, ttl_s: float, note: str = "", site: str = ""
    ) -> tuple[str, str]:
        """A one-time enrollment token: (token id, token). Only the hash is stored."""
        token = security.new_token(security.ENROLLMENT_TOKEN_PREFIX)
        token_id = security.new_id("et_")
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                tables.enrollment_tokens.insert().values(
                    token_id=token_id,
                    token_hash=security.token_hash(token),
                    note=clean_text(note, 200) or "",
                    site=clean_text(site, 200) or None,
                    created_at=now,
                    expires_at=now + ttl_s,
                )
            )
        return token_id, token

    def list_enrollment_tokens(self) -> list[EnrollmentTokenRow]:
        t = tables.enrollment_tokens
        with self._read() as conn:
            rows = conn.execute(
                sa.select(
                    t.c.token_id,
                    t.c.note,
                    t.c.created_at,
                    t.c.expires_at,
                    t.c.used_at,
                    t.c.agent_id,
                    t.c.revoked_at,
                    t.c.site,
                ).order_by(t.c.created_at.desc())
            ).all()
        return [EnrollmentTokenRow(*row) for row in rows]

    def revoke_enrollment_token(self, token_id: str) -> bool:
        t = tables.enrollment_tokens
        with self._write() as conn:
            return bool(
                conn.execute(
                    t.update()
                    .where(
                        t.c.token_id == token_id, t.c.used_at.is_(None), t.c.revoked_at.is_(None)
                    )
                    .values(revoked_at=self._clock())
                ).rowcount
            )

    def enroll(self, enrollment_token: str, request: EnrollRequest) -> tuple[str, str] | None:
        """Consume ``enrollment_token`` and register an agent: (agent id, agent token)."""
        t = tables.enrollment_tokens
        now = self._clock()
        agent_id = security.new_id("ag_")
        agent_token = security.new_token(security.AGENT_TOKEN_PREFIX)
        with self._write() as conn:
            consumed = conn.execute(
                t.update()
                .where(
                    t.c.token_hash == security.token_hash(enrollment_token),
                    t.c.used_at.is_(None),
                    t.c.revoked_at.is_(None),
                    t.c.expires_at > now,
                )
                .values(used_at=now, agent_id=agent_id)
            ).rowcount
            if consumed != 1:
                return None
            note, site = conn.execute(
                sa.select(t.c.note, t.c.site).where(
                    t.c.token_hash == security.token_hash(enrollment_token)
                )
            ).one()
            conn.execute(
                tables.agents.insert().values(
                    agent_id=agent_id,
                    token_hash=security.token_hash(agent_token),
                    host=clean_text(request.host, 256),
                    os=clean_text(request.os, 256),
                    version=clean_text(request.version, 256),
                    enrolled_at=now,
                    heartbeats=0,
                    intake_paused=False,
                    paused_destinations="",
                    label=note or None,  # "CT room 2": the note said where the token went
                    site=site or None,
                )
            )
        return agent_id, agent_token

    def authenticate_agent(self, token: str) -> AgentAuth | None:
        with self._read() as conn:
            row = conn.execute(_AUTH_AGENT, {"b_token_hash": security.token_hash(token)}).first()
        if row is None:
            return None
        return AgentAuth(row[0], row[1], row[2], row[3], bool(row[4]), row[5])

    def revoke_agent(self, agent_id: str) -> bool:
        a = tables.agents
        with self._write() as conn:
            return bool(
                conn.execute(
                    a.update()
                    .where(a.c.agent_id == agent_id, a.c.revoked_at.is_(None))
                    .values(revoked_at=self._clock())
                ).rowcount
            )

    # -- agent reports ------------------------------------------------------------------

    def record_heartbeat(self, auth: AgentAuth, hb: Heartbeat) -> float:
        """Store ``hb`` as the agent's current status; returns the server time used."""
        now = self._clock()
        depth = _int(hb.spool_depth)
        since, start = auth.spool_trend_since, auth.spool_trend_depth
        if auth.spool_depth is None or since is None or depth == 0 or depth < auth.spool_depth:
            since, start = now, depth  # the spool shrank or emptied: a new trend starts
        paused = [clean_text(d.name, 64) or "" for d in hb.destinations if d.paused is True]
        errors = [
            (
                d.last_error_at if isinstance(d.last_error_at, (int, float)) else 0.0,
                d.name,
                d.last_error if not d.peer_reason else f"{d.last_error} ({d.peer_reason})",
            )
            for d in hb.destinations
            if isinstance(d.last_error, str) and d.last_error
        ]
        last_error = None
        if errors:
            _, name, message = max(errors, key=lambda e: e[0])
            last_error = clean_text(f"{name}: {message}", 1100)
        with self._write() as conn:
            conn.execute(
                _HEARTBEAT_UPDATE,
                {
                    "b_agent_id": auth.agent_id,
                    "b_host": clean_text(hb.host, 256),
                    "b_os": clean_text(hb.os, 256),
                    "b_version": clean_text(hb.version, 256),
                    "b_last_seen_at": now,
                    "b_uptime_s": _float(hb.uptime_s),
                    "b_spool_depth": depth,
                    "b_spool_bytes": _int(hb.spool_bytes),
                    "b_oldest_item_age_s": _float(hb.oldest_item_age_s),
                    "b_intake_paused": hb.intake_paused is True,
                    "b_paused_destinations": ",".join(paused),
                    "b_last_error": last_error,
                    "b_spool_trend_since": since,
                    "b_spool_trend_depth": start,
                    "b_status_json": json.dumps(to_dict(hb), ensure_ascii=True),
                    "b_name": clean_text(hb.name, 128) or None,
                },
            )
            bucket = int(now // tables.SAMPLE_PERIOD_S)
            last = auth.last_seen_at
            if last is None or int(last // tables.SAMPLE_PERIOD_S) != bucket:
                # the first heartbeat of the bucket: one backlog sample (others skip the write)
                sample = self._insert(tables.agent_samples).values(
                    agent_id=auth.agent_id,
                    bucket=bucket,
                    spool_depth=depth,
                    oldest_item_age_s=_float(hb.oldest_item_age_s),
                )
                conn.execute(sample.on_conflict_do_nothing())
        return now

    def set_agent_label(self, agent_id: str, label: str, site: str) -> bool:
        a = tables.agents
        with self._write() as conn:
            return bool(
                conn.execute(
                    a.update()
                    .where(a.c.agent_id == agent_id)
                    .values(label=clean_text(label, 128) or None, site=clean_text(site, 128) or None)
                ).rowcount
            )

    def record_events(self, agent_id: str, events: list[Event]) -> int:
        """Insert events, ignoring ones already received (a resent batch); returns new ones."""
        if not events:
            return 0
        now = self._clock()
        rows = [
            {
                "agent_id": agent_id,
                "event_id": clean_text(e.event_id, 64),
                "at": _float(e.at) or 0.0,
                "received_at": now,
                "kind": e.kind,
                "severity": e.severity,
                "message": clean_text(e.message, 512) or "",
                "file_id": clean_text(e.file_id, 64),
                "destination": clean_text(e.destination, 64),
            }
            for e in events
        ]
        stmt = (
            self._insert(tables.events)
            .on_conflict_do_nothing(index_elements=["agent_id", "event_id"])
            .returning(tables.events.c.id)
        )
        keyed = [
            {
                "study_key": key,
                "agent_id": agent_id,
                "event_id": row["event_id"],
                "at": row["at"],
                "received_at": now,
                "kind": row["kind"],
                "destination": row["destination"],
                "file_id": row["file_id"],
            }
            for e, row in zip(events, rows, strict=True)
            for key in dict.fromkeys(e.study_keys)
        ]
        with self._write() as conn:
            # RETURNING lists only inserted rows (driver rowcounts differ for executemany)
            added = len(conn.execute(stmt, rows).all())
            if keyed:
                conn.execute(self._insert(tables.study_events).on_conflict_do_nothing(), keyed)
            return added

    def record_object(self, sha256: str, size: int, agent_id: str) -> bool:
        """Remember a stored object; False if it was already known."""
        stmt = (
            self._insert(tables.objects)
            .values(sha256=sha256, size=size, agent_id=agent_id, stored_at=self._clock())
            .on_conflict_do_nothing(index_elements=["sha256"])
        )
        with self._write() as conn:
            return bool(conn.execute(stmt).rowcount)

    # -- dashboard queries --------------------------------------------------------------

    def _agent_row(self, row: Any) -> AgentRow:
        status = json.loads(row.status_json) if row.status_json else None
        paused = tuple(p for p in (row.paused_destinations or "").split(",") if p)
        return AgentRow(
            agent_id=row.agent_id,
            host=row.host,
            os=row.os,
            version=row.version,
            enrolled_at=row.enrolled_at,
            revoked_at=row.revoked_at,
            last_seen_at=row.last_seen_at,
            heartbeats=row.heartbeats,
            uptime_s=row.uptime_s,
            spool_depth=row.spool_depth,
            spool_bytes=row.spool_bytes,
            oldest_item_age_s=row.oldest_item_age_s,
            intake_paused=bool(row.intake_paused),
            paused_destinations=paused,
            last_error=row.last_error,
            spool_trend_since=row.spool_trend_since,
            spool_trend_depth=row.spool_trend_depth,
            status=status,
            label=row.label,
            site=row.site,
            name=row.name,
        )

    def list_agents(self, *, with_status: bool = False) -> list[AgentRow]:
        a = tables.agents
        cols = [c for c in a.c if with_status or c.name != "status_json"]
        with self._read() as conn:
            rows = conn.execute(sa.select(*cols).order_by(a.c.host, a.c.agent_id)).all()
        return [self._agent_row(_WithDefault(r)) for r in rows]

    def get_agent(self, agent_id: str) -> AgentRow | None:
        with self._read() as conn:
            row = conn.execute(
                sa.select(tables.agents).where(tables.agents.c.agent_id == agent_id)
            ).first()
        return self._agent_row(row) if row is not None else None

    def recent_events(self, agent_id: str, limit: int = 50) -> list[EventRow]:
        e = tables.events
        with self._read() as conn:
            rows = conn.execute(
                sa.select(e.c.at, e.c.kind, e.c.severity, e.c.message, e.c.file_id, e.c.destination)
                .where(e.c.agent_id == agent_id)
                .order_by(e.c.at.desc(), e.c.id.desc())
                .limit(limit)
            ).all()
        return [EventRow(*row) for row in rows]

    def event_times(self, agent_id: str, kind: str, since: float) -> list[float]:
        e = tables.events
        with self._read() as conn:
            return list(
                conn.execute(
                    sa.select(e.c.at).where(
                        e.c.agent_id == agent_id, e.c.kind == kind, e.c.at >= since
                    )
                ).scalars()
            )

    def event_counts(self, kind: str, since: float) -> dict[str, int]:
        """Events of ``kind`` per agent since ``since`` (agent clock)."""
        e = tables.events
        with self._read() as conn:
            rows = conn.execute(
                sa.select(e.c.agent_id, sa.func.count())
                .where(e.c.kind == kind, e.c.at >= since)
                .group_by(e.c.agent_id)
            ).all()
        return {agent_id: int(count) for agent_id, count in rows}

    def totals(self) -> dict[str, int]:
        """Fleet-wide counts for ``/metrics``."""
        with self._read() as conn:
            objects_count, objects_bytes = conn.execute(
                sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(tables.objects.c.size), 0))
            ).one()
            events_count = conn.execute(
                sa.select(sa.func.count()).select_from(tables.events)
            ).scalar_one()
        return {
            "objects": int(objects_count),
            "object_bytes": int(objects_bytes),
            "events": int(events_count),
        }

    def prune(self, event_retention_s: float) -> None:
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                tables.events.delete().where(tables.events.c.received_at < now - event_retention_s)
            )
            conn.execute(tables.sessions.delete().where(tables.sessions.c.expires_at < now))
            conn.execute(
                tables.study_events.delete().where(
                    tables.study_events.c.received_at < now - event_retention_s
                )
            )
            oldest_bucket = int((now - 8 * 86400) // tables.SAMPLE_PERIOD_S)
            conn.execute(
                tables.agent_samples.delete().where(tables.agent_samples.c.bucket < oldest_bucket)
            )


class _WithDefault:
    """A row missing ``status_json`` (not selected) reads as None."""

    def __init__(self, row: Any) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name, None)
