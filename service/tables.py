"""Database schema (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Times are unix seconds as floats (server clock, except ``events.at`` which is the agent's).
Free text coming from agents is ``Text`` so no length limit can turn input into a 500.
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 1

metadata = sa.MetaData()

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrement needs INTEGER

meta = sa.Table(
    "sf_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

users = sa.Table(
    "sf_users",
    metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("failed_count", sa.Integer, nullable=False, default=0),
    sa.Column("last_failed_at", sa.Float, nullable=True),
)

sessions = sa.Table(
    "sf_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("csrf_token", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

enrollment_tokens = sa.Table(
    "sf_enrollment_tokens",
    metadata,
    sa.Column("token_id", sa.String(32), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float, nullable=True),
    sa.Column("agent_id", sa.String(32), nullable=True),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

agents = sa.Table(
    "sf_agents",
    metadata,
    sa.Column("agent_id", sa.String(32), primary_key=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("host", sa.Text, nullable=False),
    sa.Column("os", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("enrolled_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
    sa.Column("last_seen_at", sa.Float, nullable=True),
    sa.Column("heartbeats", sa.BigInteger, nullable=False, default=0),
    sa.Column("uptime_s", sa.Float, nullable=True),
    sa.Column("spool_depth", sa.BigInteger, nullable=True),
    sa.Column("spool_bytes", sa.BigInteger, nullable=True),
    sa.Column("oldest_item_age_s", sa.Float, nullable=True),
    sa.Column("intake_paused", sa.Boolean, nullable=False, default=False),
    sa.Column("paused_destinations", sa.Text, nullable=False, default=""),
    sa.Column("last_error", sa.Text, nullable=True),
    # the spool has not shrunk since ``spool_trend_since``, when it held ``spool_trend_depth``
    sa.Column("spool_trend_since", sa.Float, nullable=True),
    sa.Column("spool_trend_depth", sa.BigInteger, nullable=True),
    sa.Column("status_json", sa.Text, nullable=True),  # the last heartbeat, as received
)

events = sa.Table(
    "sf_events",
    metadata,
    sa.Column("id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("agent_id", sa.String(32), nullable=False),
    sa.Column("event_id", sa.Text, nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("file_id", sa.Text, nullable=True),
    sa.Column("destination", sa.Text, nullable=True),
    sa.UniqueConstraint("agent_id", "event_id", name="uq_sf_events_agent_event"),
    sa.Index("ix_sf_events_agent_at", "agent_id", "at"),
    sa.Index("ix_sf_events_kind_at", "kind", "at"),
)

objects = sa.Table(
    "sf_objects",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("agent_id", sa.String(32), nullable=False),
    sa.Column("stored_at", sa.Float, nullable=False),
)

# The read side for reading gateways: credentials that may GET objects, and the UIDs an
# agent reports for each object (UIDs only, never patient attributes).
reader_tokens = sa.Table(
    "sf_reader_tokens",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float, nullable=True),
)

object_uids = sa.Table(
    "sf_object_uids",
    metadata,
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("sop_uid", sa.String(64), nullable=False, index=True),
)
