"""Dashboard users, their roles, and the admin audit log.

Three roles, each allowed everything the one below may do:

- ``viewer``: reads every page, changes nothing;
- ``operator``: also edits agent labels and retries or releases quarantined items;
- ``admin``: also mints and revokes enrollment tokens, revokes agents, manages users and
  reads the audit log.

Every change made from the dashboard or ``scanfort central user …`` is appended to the
audit log (who, when, what, on which target); the log is only ever inserted into.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa

from service import security, tables
from service.store import Store, clean_text

ROLES = ("viewer", "operator", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
USERNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
MIN_PASSWORD_LEN = 10


class UserError(ValueError):
    """A user operation was refused (message says why, fit for the user)."""


def allows(role: str, needed: str) -> bool:
    """Whether ``role`` may do what needs ``needed`` (an unknown role may do nothing)."""
    return role in _RANK and _RANK[role] >= _RANK[needed]


@dataclass(frozen=True)
class UserRow:
    username: str
    role: str
    disabled_at: float | None
    failed_count: int


@dataclass(frozen=True)
class AuditRow:
    at: float
    username: str
    action: str
    target: str
    detail: str


def _check_role(role: str) -> None:
    if role not in _RANK:
        raise UserError(f"unknown role {role!r} (one of {', '.join(ROLES)})")


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LEN:
        raise UserError(f"password must have at least {MIN_PASSWORD_LEN} characters")


def add_user(store: Store, username: str, password: str, role: str, *, by: str) -> None:
    if not USERNAME_RE.match(username):
        raise UserError("user name: letters, digits and . _ @ - only, at most 64")
    _check_role(role)
    _check_password(password)
    if get_user(store, username) is not None:
        raise UserError(f"user {username} exists (use passwd to change the password)")
    store.set_user(username, password, role)
    audit(store, by, "user.add", username, f"role={role}")


def get_user(store: Store, username: str) -> UserRow | None:
    u = tables.users
    with store._read() as conn:
        row = conn.execute(
            sa.select(u.c.username, u.c.role, u.c.disabled_at, u.c.failed_count).where(
                u.c.username == username
            )
        ).first()
    return UserRow(row[0], row[1] or "admin", row[2], int(row[3] or 0)) if row else None


def list_users(store: Store) -> list[UserRow]:
    u = tables.users
    with store._read() as conn:
        rows = conn.execute(
            sa.select(u.c.username, u.c.role, u.c.disabled_at, u.c.failed_count).order_by(
                u.c.username
            )
        ).all()
    return [UserRow(r[0], r[1] or "admin", r[2], int(r[3] or 0)) for r in rows]


def _enabled_admins(store: Store) -> int:
    return sum(1 for u in list_users(store) if u.role == "admin" and u.disabled_at is None)


def disable_user(store: Store, username: str, *, by: str) -> None:
    """Disable a user: login refused, live sessions end. The last enabled admin stays."""
    user = get_user(store, username)
    if user is None:
        raise UserError(f"no user {username}")
    if user.disabled_at is not None:
        raise UserError(f"user {username} is already disabled")
    if user.role == "admin" and _enabled_admins(store) <= 1:
        raise UserError("refusing to disable the last enabled admin")
    with store._write() as conn:
        conn.execute(
            tables.users.update()
            .where(tables.users.c.username == username)
            .values(disabled_at=store._clock())
        )
        conn.execute(tables.sessions.delete().where(tables.sessions.c.username == username))
    audit(store, by, "user.disable", username)


def set_password(store: Store, username: str, password: str, *, by: str) -> None:
    """New password; also re-enables a disabled user and ends its sessions."""
    _check_password(password)
    if get_user(store, username) is None:
        raise UserError(f"no user {username}")
    store.set_user(username, password)
    with store._write() as conn:
        conn.execute(
            tables.users.update()
            .where(tables.users.c.username == username)
            .values(disabled_at=None)
        )
        conn.execute(tables.sessions.delete().where(tables.sessions.c.username == username))
    audit(store, by, "user.passwd", username)


def audit(store: Store, username: str, action: str, target: str = "", detail: str = "") -> None:
    """Append one line to the audit log (never a secret: callers pass ids, not tokens)."""
    with store._write() as conn:
        conn.execute(
            tables.audit.insert().values(
                at=store._clock(),
                username=clean_text(username, 64) or "?",
                action=action,
                target=clean_text(target, 256) or "",
                detail=clean_text(detail, 512) or "",
            )
        )


def audit_log(store: Store, limit: int = 200, before_id: int | None = None) -> list[AuditRow]:
    a = tables.audit
    query = sa.select(a.c.at, a.c.username, a.c.action, a.c.target, a.c.detail)
    if before_id is not None:
        query = query.where(a.c.id < before_id)
    with store._read() as conn:
        rows = conn.execute(query.order_by(a.c.id.desc()).limit(limit)).all()
    return [AuditRow(*r) for r in rows]


def generate_password() -> str:
    return security.generate_password()
