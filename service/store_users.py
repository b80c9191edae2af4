"""Store: dashboard users and their sessions (audit and roles live in :mod:`service.users`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from service import security, tables
from service.store_base import StoreBase


@dataclass(frozen=True)
class SessionInfo:
    username: str
    csrf_token: str
    expires_at: float
    role: str = "admin"



class UsersStore(StoreBase):
    """Dashboard accounts and database-backed sessions (shared by every process)."""

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
