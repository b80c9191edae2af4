"""Store: enrollment tokens, agents, their tokens and heartbeats (the current status)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from protocol.wire import EnrollRequest, Heartbeat, to_dict
from service import security, tables
from service.store_base import StoreBase, _float, _int, clean_text


@dataclass(frozen=True)
class AgentAuth:
    """An authenticated (enrolled, unrevoked) agent."""

    agent_id: str


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
class HeartbeatRecorded:
    """What storing a heartbeat tells the handler: whose it was, and whether to look for commands."""

    agent_id: str
    server_time: float
    commands_pending: bool


_STATUS_COLUMNS = ("host", "os", "version", "last_seen_at", "uptime_s", "spool_depth",
                   "spool_bytes", "oldest_item_age_s", "intake_paused", "paused_destinations",
                   "last_error", "status_json", "name")  # fmt: skip


def _heartbeat_update() -> sa.Update:
    """The per-heartbeat UPDATE, built once (the hot path skips statement construction).

    It authenticates too: only the unrevoked agent holding both the token (by hash) and the
    heartbeat's ``agent_id`` matches, so a revocation takes effect on the very next
    heartbeat. The spool trend is decided from the row's previous values inside the
    statement (the right-hand sides of ``SET`` read the old row), so no read precedes it.
    """
    a = tables.agents
    b = sa.bindparam
    values: dict[str, Any] = {c: b(f"b_{c}", type_=a.c[c].type) for c in _STATUS_COLUMNS}
    depth = b("b_spool_depth", type_=a.c.spool_depth.type)
    # the spool shrank or emptied (or there is no trend yet): a new trend starts now
    restart = sa.or_(
        a.c.spool_depth.is_(None), a.c.spool_trend_since.is_(None), depth == 0,
        depth < a.c.spool_depth,
    )  # fmt: skip
    values["spool_trend_since"] = sa.case((restart, values["last_seen_at"]), else_=a.c.spool_trend_since)
    values["spool_trend_depth"] = sa.case((restart, depth), else_=a.c.spool_trend_depth)
    values["heartbeats"] = a.c.heartbeats + 1
    return (
        a.update()
        .where(
            a.c.token_hash == b("b_token_hash"),
            a.c.revoked_at.is_(None),
            a.c.agent_id == b("b_agent_id"),
        )
        .values(**values)
        .returning(a.c.agent_id, a.c.commands_pending)
    )


def _sample_insert(dialect: Any, source: Any = None) -> Any:
    """The backlog sample of this heartbeat's bucket (the first heartbeat in it wins)."""
    s = tables.agent_samples
    b = sa.bindparam
    cols = ["agent_id", "bucket", "spool_depth", "oldest_item_age_s"]
    bucket = b("b_bucket", type_=s.c.bucket.type)
    depth = b("b_spool_depth", type_=s.c.spool_depth.type)
    age = b("b_oldest_item_age_s", type_=s.c.oldest_item_age_s.type)
    if source is None:
        stmt = dialect.insert(s).values(agent_id=b("b_agent_id"), bucket=bucket, spool_depth=depth,
                                        oldest_item_age_s=age)  # fmt: skip
    else:
        stmt = dialect.insert(s).from_select(cols, sa.select(source.c.agent_id, bucket, depth, age))
    return stmt.on_conflict_do_nothing()


_HEARTBEAT_UPDATE = _heartbeat_update()
#: PostgreSQL: authenticate, update and sample in one statement (one round trip, autocommit)
_HEARTBEAT_PG = (lambda u: sa.select(u.c.agent_id, u.c.commands_pending).add_cte(
    _sample_insert(postgresql, u).cte("sf_sample")))(_HEARTBEAT_UPDATE.cte("sf_hb"))  # fmt: skip
_SAMPLE_SQLITE = _sample_insert(sqlite)
_DriverSQL = tuple[str, dict[str, Any], dict[str, Callable[[Any], Any]]]
_DRIVER_SQL: dict[str, _DriverSQL | None] = {}


def _driver_sql(dialect: sa.Dialect) -> _DriverSQL | None:
    """``_HEARTBEAT_PG`` compiled once for the driver: (SQL, literal parameters, parameter
    converters), or None for a driver other than psycopg (then it goes through SQLAlchemy)."""
    key = f"{dialect.name}+{dialect.driver}"
    if key not in _DRIVER_SQL:
        compiled = _HEARTBEAT_PG.compile(dialect=dialect)
        literals = {k: v for k, v in compiled.params.items() if v is not None}
        processors = compiled._bind_processors  # e.g. Boolean's strict check
        converters: dict[str, Callable[[Any], Any]] = {
            k: p for k, p in processors.items() if callable(p)
        }
        usable = dialect.driver == "psycopg" and len(converters) == len(processors)
        _DRIVER_SQL[key] = (compiled.string, literals, converters) if usable else None
    return _DRIVER_SQL[key]


_AUTH_AGENT = sa.select(tables.agents.c.agent_id).where(
    tables.agents.c.token_hash == sa.bindparam("b_token_hash"),
    tables.agents.c.revoked_at.is_(None),
)


class AgentsStore(StoreBase):
    """Enrollment, agent authentication, heartbeats and the agent rows the dashboard reads."""

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
        return AgentAuth(row[0]) if row is not None else None

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

    def record_heartbeat(self, token: str, hb: Heartbeat) -> HeartbeatRecorded | None:
        """Store ``hb`` as the current status of the agent holding ``token``.

        None when no unrevoked agent has both this token and ``hb.agent_id`` (nothing is
        written; the caller tells 401 from 403 with :meth:`authenticate_agent`). On
        PostgreSQL this is one autocommitted statement; on SQLite one write transaction.
        """
        now = self._clock()
        depth = _int(hb.spool_depth)
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
        params = {
            "b_token_hash": security.token_hash(token),
            "b_agent_id": hb.agent_id,
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
            "b_status_json": json.dumps(to_dict(hb), ensure_ascii=True),
            "b_name": clean_text(hb.name, 128) or None,
            "b_bucket": int(now // tables.SAMPLE_PERIOD_S),
        }
        if self.dialect == "postgresql":
            compiled = _driver_sql(self.engine.dialect)
            with self._autocommit() as conn:
                if compiled is None:
                    row = conn.execute(_HEARTBEAT_PG, params).first()
                else:  # straight to psycopg: the statement is compiled once, not per call
                    sql, literals, converters = compiled
                    for name, convert in converters.items():
                        params[name] = convert(params[name])
                    driver: Any = conn.connection.dbapi_connection
                    try:
                        cursor = driver.cursor()
                        try:
                            cursor.execute(sql, {**literals, **params})
                            row = cursor.fetchone()
                        finally:
                            cursor.close()
                    except Exception:
                        conn.invalidate()  # a failed or dropped connection is not pooled again
                        raise
        else:
            with self._write() as conn:
                row = conn.execute(_HEARTBEAT_UPDATE, params).first()
                if row is not None:
                    conn.execute(_SAMPLE_SQLITE, params)
        if row is None:
            return None
        return HeartbeatRecorded(row[0], now, bool(row[1]))

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


class _WithDefault:
    """A row missing ``status_json`` (not selected) reads as None."""

    def __init__(self, row: Any) -> None:
        self._row = row

    def __getattr__(self, name: str) -> Any:
        return getattr(self._row, name, None)
