"""The central store: every read and write of the database, on SQLite or PostgreSQL.

Several central processes may share one PostgreSQL database, so nothing here keeps state
between calls except the engine: one-time enrollment tokens are consumed by a single
conditional ``UPDATE`` (exactly one caller wins), sessions live in the database.

On SQLite, writes take ``BEGIN IMMEDIATE`` (no read-then-upgrade deadlocks) behind an
in-process lock, so threads of one process queue instead of spinning on ``SQLITE_BUSY``.

The store is split by concept: :mod:`service.store_base` (engine, transactions, schema),
:mod:`service.store_users` (dashboard users, sessions), :mod:`service.store_agents`
(enrollment, agents, heartbeats) and :mod:`service.store_events` (events, objects, totals,
pruning). Commands, audit, throttling and reader tokens keep their own modules and reach
the database through this class.
"""

from __future__ import annotations

from service.store_agents import AgentAuth, AgentRow, AgentsStore, EnrollmentTokenRow
from service.store_base import clean_text, make_engine
from service.store_events import EventRow, EventsStore
from service.store_users import SessionInfo, UsersStore

__all__ = [
    "AgentAuth",
    "AgentRow",
    "EnrollmentTokenRow",
    "EventRow",
    "SessionInfo",
    "Store",
    "clean_text",
    "make_engine",
]


class Store(AgentsStore, EventsStore, UsersStore):
    """All database access of the central service."""
