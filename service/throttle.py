"""Login throttling that holds under concurrency and across central processes.

Every attempt is counted *before* its password is checked, by one atomic upsert per key
in the shared database, so concurrent guesses cannot all see "no failures yet": the n-th
attempt in a window always waits ``delay * 2**min(n, 3)`` whatever the interleaving, and
once an account reaches ``login_lockout_after`` failures it is locked until an admin
unlocks it (``scanfort central user unlock`` or the Users page). Keys are
``user:<name>`` and ``ip:<client address>``; the client address limit is temporary (it
lapses with its window) so one noisy host cannot lock everybody out.

Unknown user names are counted and locked exactly like real ones, so neither the delays
nor the lock reveal whether an account exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from service import tables
from service.store import Store


@dataclass(frozen=True)
class Attempt:
    previous_failures: int  # failures in the window before this attempt
    locked: bool


def user_key(username: str) -> str:
    return "user:" + username.lower()[:64]


def ip_key(address: str) -> str:
    return "ip:" + address[:64]


def record_attempt(store: Store, key: str, window_s: float) -> Attempt:
    """Count an attempt for ``key`` (atomically); returns the state before it."""
    t = tables.login_throttle
    now = store._clock()
    stmt = store._insert(t).values(key=key, failures=1, window_start=now)
    expired = t.c.window_start < now - window_s
    stmt = stmt.on_conflict_do_update(
        index_elements=["key"],
        set_={
            "failures": sa.case((expired, 1), else_=t.c.failures + 1),
            "window_start": sa.case((expired, now), else_=t.c.window_start),
        },
    ).returning(t.c.failures, t.c.locked_at)
    with store._write() as conn:
        failures, locked_at = conn.execute(stmt).one()
    return Attempt(int(failures) - 1, locked_at is not None)


def lock(store: Store, key: str) -> None:
    t = tables.login_throttle
    with store._write() as conn:
        conn.execute(
            t.update().where(t.c.key == key, t.c.locked_at.is_(None)).values(locked_at=store._clock())
        )


def succeeded(store: Store, key: str) -> None:
    """A right password: forget the key's failures (this attempt was counted as one)."""
    with store._write() as conn:
        conn.execute(tables.login_throttle.delete().where(tables.login_throttle.c.key == key))


def forgive_one(store: Store, key: str) -> None:
    """Take back the count of one successful attempt (for the client address key)."""
    t = tables.login_throttle
    with store._write() as conn:
        conn.execute(
            t.update()
            .where(t.c.key == key, t.c.failures > 0)
            .values(failures=t.c.failures - 1)
        )


def unlock(store: Store, username: str) -> bool:
    t = tables.login_throttle
    with store._write() as conn:
        return bool(conn.execute(t.delete().where(t.c.key == user_key(username))).rowcount)


def locked_users(store: Store) -> set[str]:
    t = tables.login_throttle
    with store._read() as conn:
        keys = conn.execute(
            sa.select(t.c.key).where(t.c.locked_at.is_not(None), t.c.key.like("user:%"))
        ).scalars()
        return {k[len("user:") :] for k in keys}


def prune(store: Store, window_s: float, keep_locked_s: float) -> None:
    t = tables.login_throttle
    now = store._clock()
    with store._write() as conn:
        conn.execute(
            t.delete().where(
                sa.or_(
                    sa.and_(t.c.locked_at.is_(None), t.c.window_start < now - window_s),
                    t.c.locked_at < now - keep_locked_s,
                )
            )
        )
