"""The command channel: operator requests that reach an agent through its heartbeats.

The central cannot call an agent (agents sit behind hospital firewalls), so a command
waits in the database until the agent's next heartbeat, whose response carries every
command the agent has not acknowledged yet (at-least-once: an agent deduplicates by
``command_id``). The agent lists the ids it received in ``command_acks`` and, once it has
carried a command out, its outcome in ``command_results``. States::

    pending ──(id in command_acks)──► acknowledged ──(command_results)──► succeeded | failed

A result for a command still pending counts as its acknowledgement too. A command no
heartbeat acknowledged within ``command_ttl_s`` (``central.toml``, default 24 h) becomes
``expired`` (:func:`expire_overdue`): it is never handed out again, shows as expired on the
quarantine page and leaves a ``command.expired`` line in the audit log (by ``system``).
Exactly one central process expires a given command (a conditional ``UPDATE``)::

    pending ──(no acknowledgement within command_ttl_s)──► expired
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from protocol.wire import COMMAND_KINDS, Command, CommandResult
from service import security, tables, users
from service.store import Store, clean_text

PENDING = "pending"
ACKNOWLEDGED = "acknowledged"
SUCCEEDED = "succeeded"
FAILED = "failed"
EXPIRED = "expired"
SYSTEM_USER = "system"  # the audit log's author of housekeeping actions


class CommandError(ValueError):
    """A command was refused (unknown kind, unknown agent or item)."""


@dataclass(frozen=True)
class CommandRow:
    command_id: str
    agent_id: str
    kind: str
    item_id: str
    destination: str
    created_at: float
    created_by: str
    state: str
    delivered_at: float | None
    acked_at: float | None
    finished_at: float | None
    result: str | None


def enqueue(
    store: Store, agent_id: str, kind: str, item_id: str, destination: str, *, by: str
) -> str:
    """Queue a command for ``agent_id``; returns its id. Repeating one still open is a no-op."""
    if kind not in COMMAND_KINDS:
        raise CommandError(f"unknown command {kind!r}")
    c = tables.commands
    with store._write() as conn:
        open_id = conn.execute(
            sa.select(c.c.command_id).where(
                c.c.agent_id == agent_id,
                c.c.kind == kind,
                c.c.item_id == item_id,
                c.c.destination == destination,
                c.c.state.in_((PENDING, ACKNOWLEDGED)),
            )
        ).scalar()
        if open_id is not None:
            return str(open_id)
        command_id = security.new_id("cmd_")
        conn.execute(
            tables.agents.update()
            .where(tables.agents.c.agent_id == agent_id)
            .values(commands_pending=True)
        )
        conn.execute(
            c.insert().values(
                command_id=command_id,
                agent_id=agent_id,
                kind=kind,
                item_id=clean_text(item_id, 64) or "",
                destination=clean_text(destination, 64) or "",
                created_at=store._clock(),
                created_by=by,
                state=PENDING,
            )
        )
    return command_id


def record_report(
    store: Store, agent_id: str, acks: list[str], results: list[CommandResult]
) -> None:
    """Apply a heartbeat's acknowledgements and results (only to this agent's commands)."""
    if not acks and not results:
        return
    c = tables.commands
    now = store._clock()
    with store._write() as conn:
        if acks:
            conn.execute(
                c.update()
                .where(c.c.agent_id == agent_id, c.c.command_id.in_(acks), c.c.state == PENDING)
                .values(state=ACKNOWLEDGED, acked_at=now)
            )
        for result in results:
            conn.execute(
                c.update()
                .where(
                    c.c.agent_id == agent_id,
                    c.c.command_id == result.command_id,
                    c.c.state.in_((PENDING, ACKNOWLEDGED)),
                )
                .values(
                    state=SUCCEEDED if result.ok else FAILED,
                    acked_at=sa.func.coalesce(c.c.acked_at, now),
                    finished_at=now,
                    result=clean_text(result.message, 512) or "",
                )
            )


def pending_for(
    store: Store, agent_id: str, flagged: bool = True, ttl_s: float | None = None
) -> list[Command]:
    """Commands to hand to the agent in this heartbeat response (oldest first).

    ``flagged`` is the agent row's ``commands_pending`` as read at authentication: when
    false nothing was queued since the last check, and the query is skipped. With ``ttl_s``
    this agent's overdue commands are expired first (and so never handed out).
    """
    if not flagged:
        return []
    if ttl_s is not None:
        expire_overdue(store, ttl_s, agent_id)
    c = tables.commands
    with store._read() as conn:
        rows = conn.execute(
            sa.select(c.c.command_id, c.c.kind, c.c.item_id, c.c.destination, c.c.created_at)
            .where(c.c.agent_id == agent_id, c.c.state == PENDING)
            .order_by(c.c.created_at)
            .limit(50)
        ).all()
    if not rows:
        a = tables.agents
        none_pending = ~sa.exists().where(c.c.agent_id == agent_id, c.c.state == PENDING)
        with store._write() as conn:  # cleared only if nothing was queued meanwhile
            conn.execute(
                a.update().where(a.c.agent_id == agent_id, none_pending).values(commands_pending=False)
            )
        return []
    undelivered = [r.command_id for r in rows]
    with store._write() as conn:
        conn.execute(
            c.update()
            .where(c.c.command_id.in_(undelivered), c.c.delivered_at.is_(None))
            .values(delivered_at=store._clock())
        )
    return [Command(r[0], r[1], r[2], r[3], r[4]) for r in rows]


def list_commands(store: Store, agent_id: str | None = None, limit: int = 100) -> list[CommandRow]:
    c = tables.commands
    query = sa.select(*[c.c[col.name] for col in c.columns])
    if agent_id is not None:
        query = query.where(c.c.agent_id == agent_id)
    with store._read() as conn:
        rows = conn.execute(query.order_by(c.c.created_at.desc()).limit(limit)).all()
    return [CommandRow(*r) for r in rows]


def expire_overdue(store: Store, ttl_s: float, agent_id: str | None = None) -> list[str]:
    """Expire pending commands older than ``ttl_s`` (of ``agent_id`` or all); their ids.

    The ``UPDATE … WHERE state = 'pending'`` decides: when two processes sweep at once,
    each command is expired, and audited, by exactly one of them.
    """
    c = tables.commands
    now = store._clock()
    stmt = (
        c.update()
        .where(c.c.state == PENDING, c.c.created_at < now - ttl_s)
        .values(state=EXPIRED, finished_at=now,
                result=f"not acknowledged by the agent within {ttl_s / 3600:g} h")
        .returning(c.c.command_id, c.c.agent_id, c.c.kind, c.c.item_id, c.c.destination)
    )  # fmt: skip
    if agent_id is not None:
        stmt = stmt.where(c.c.agent_id == agent_id)
    with store._write() as conn:
        rows = conn.execute(stmt).all()
    for command_id, agent, kind, item_id, destination in rows:
        users.audit(store, SYSTEM_USER, "command.expired", agent,
                    f"command={command_id} kind={kind} item={item_id} destination={destination}")  # fmt: skip
    return [r[0] for r in rows]
