"""Database schema of the gateway (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Times are unix seconds as floats. The audit table holds UIDs, never patient attributes;
the index table holds each instance's real attributes sealed (see :class:`IndexSeal`).
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA_VERSION = 1

metadata = sa.MetaData()

meta = sa.Table(
    "gw_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

users = sa.Table(
    "gw_users",
    metadata,
    sa.Column("username", sa.String(64), primary_key=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("roles", sa.Text, nullable=False),  # space-separated: reader auditor admin
    sa.Column("failed_count", sa.Integer, nullable=False, default=0),
    sa.Column("last_failed_at", sa.Float, nullable=True),
)

sessions = sa.Table(
    "gw_sessions",
    metadata,
    sa.Column("token_hash", sa.String(64), primary_key=True),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # "session" (cookie) or "api" (bearer)
    sa.Column("note", sa.Text, nullable=False, default=""),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False, index=True),
)

audit = sa.Table(
    "gw_audit",
    metadata,
    sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True,
              autoincrement=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("username", sa.String(64), nullable=False),
    sa.Column("client", sa.String(64), nullable=False),
    sa.Column("operation", sa.String(32), nullable=False),
    sa.Column("study_uid", sa.String(64), nullable=False),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("instance_uid", sa.String(64), nullable=False),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("detail", sa.Text, nullable=False),
    sa.Column("process", sa.String(64), nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)  # fmt: skip

index_rows = sa.Table(
    "gw_index",
    metadata,
    sa.Column("instance_uid", sa.String(64), primary_key=True),
    sa.Column("study_uid", sa.String(64), nullable=False, index=True),
    sa.Column("series_uid", sa.String(64), nullable=False),
    sa.Column("sealed", sa.LargeBinary, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
