"""Fleet-wide reads for the dashboard: event pages, throughput, backlog, quarantine.

Event pages collapse runs of identical events (same agent, kind, severity, destination
and message) into one group with a count, so 40 "protected" in a row are one line.
Newest first by the agent's clock; paging is by the last event shown (``before``, an id),
stable while new events arrive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from service import tables
from service.store import AgentRow, Store

PAGE_EVENTS = 200  # raw events read per page (then collapsed)
BACKLOG_WINDOWS = {"24h": (86400, 1), "7d": (7 * 86400, 6)}  # window, samples per point


@dataclass
class EventGroup:
    agent_id: str
    kind: str
    severity: str
    message: str
    destination: str | None
    file_id: str | None  # of the newest event in the group
    first_at: float
    last_at: float
    count: int


@dataclass(frozen=True)
class EventPage:
    groups: list[EventGroup]
    next_before: int | None  # pass as ``before`` for the next (older) page
    raw_count: int


def events_page(
    store: Store,
    *,
    agent_id: str | None = None,
    kind: str | None = None,
    severity: str | None = None,
    destination: str | None = None,
    before: int | None = None,
    limit: int = PAGE_EVENTS,
) -> EventPage:
    e = tables.events
    query = sa.select(
        e.c.id,
        e.c.agent_id,
        e.c.at,
        e.c.kind,
        e.c.severity,
        e.c.message,
        e.c.file_id,
        e.c.destination,
    )
    for column, value in (
        (e.c.agent_id, agent_id),
        (e.c.kind, kind),
        (e.c.severity, severity),
        (e.c.destination, destination),
    ):
        if value:
            query = query.where(column == value)
    with store._read() as conn:
        if before is not None:  # keyset paging on (agent time, id): stable as events arrive
            at = conn.execute(sa.select(e.c.at).where(e.c.id == before)).scalar()
            if at is not None:
                query = query.where(sa.or_(e.c.at < at, sa.and_(e.c.at == at, e.c.id < before)))
        rows = conn.execute(
            query.order_by(e.c.at.desc(), e.c.id.desc()).limit(limit + 1)
        ).all()
    more = len(rows) > limit
    rows = rows[:limit]
    groups: list[EventGroup] = []
    for row in rows:
        last = groups[-1] if groups else None
        same = last is not None and (
            last.agent_id,
            last.kind,
            last.severity,
            last.message,
            last.destination,
        ) == (row.agent_id, row.kind, row.severity, row.message, row.destination)
        if last is not None and same:
            last.count += 1
            last.first_at = min(last.first_at, row.at)
            last.last_at = max(last.last_at, row.at)
        else:
            groups.append(
                EventGroup(
                    row.agent_id,
                    row.kind,
                    row.severity,
                    row.message,
                    row.destination,
                    row.file_id,
                    row.at,
                    row.at,
                    1,
                )
            )
    next_before = int(rows[-1].id) if more and rows else None
    return EventPage(groups, next_before, len(rows))


def event_filter_options(store: Store, agent_id: str | None = None) -> dict[str, list[str]]:
    """Kinds and destinations that occur (for the filter menus)."""
    e = tables.events
    out: dict[str, list[str]] = {}
    with store._read() as conn:
        for name, column in (("kind", e.c.kind), ("destination", e.c.destination)):
            query = sa.select(column).where(column.is_not(None)).distinct()
            if agent_id:
                query = query.where(e.c.agent_id == agent_id)
            out[name] = sorted(str(v) for v in conn.execute(query.limit(100)).scalars())
    return out


def _hour_expr(store: Store) -> Any:
    e = tables.events
    if store.dialect == "postgresql":
        return sa.cast(sa.func.floor(e.c.at / 3600), sa.BigInteger)
    return sa.cast(e.c.at / 3600, sa.BigInteger)  # SQLite truncates: floor for times >= 0


def hourly_counts(
    store: Store, kinds: tuple[str, ...], now: float, hours: int = 24
) -> dict[tuple[str, str], list[int]]:
    """``{(agent_id, kind): counts per hour}``, oldest first, the last hour holding ``now``."""
    e = tables.events
    current = int(now // 3600)
    hour = _hour_expr(store)
    with store._read() as conn:
        rows = conn.execute(
            sa.select(e.c.agent_id, e.c.kind, hour.label("hour"), sa.func.count())
            .where(e.c.kind.in_(kinds), e.c.at >= (current - hours + 1) * 3600)
            .group_by(e.c.agent_id, e.c.kind, hour)
        ).all()
    out: dict[tuple[str, str], list[int]] = {}
    for agent_id, kind, hour_value, count in rows:
        index = int(hour_value) - (current - hours + 1)
        if 0 <= index < hours:
            out.setdefault((agent_id, kind), [0] * hours)[index] += int(count)
    return out


def fleet_hourly(
    per_agent: dict[tuple[str, str], list[int]], kind: str, hours: int = 24
) -> list[int]:
    total = [0] * hours
    for (_agent, k), counts in per_agent.items():
        if k == kind:
            total = [a + b for a, b in zip(total, counts, strict=False)]
    return total


@dataclass(frozen=True)
class Backlog:
    start: float  # time of the first point
    step_s: float
    depth: list[int | None]  # fleet spool depth (sum over agents), None: no samples
    oldest_age_s: list[float | None]  # oldest item anywhere in the fleet


def backlog(store: Store, now: float, window: str, agent_id: str | None = None) -> Backlog:
    """Spool depth and oldest item over ``window`` ("24h" or "7d") from heartbeat samples."""
    span, per_point = BACKLOG_WINDOWS[window]
    period = tables.SAMPLE_PERIOD_S
    step = period * per_point
    last_bucket = int(now // period)
    first_bucket = last_bucket - span // period + 1
    s = tables.agent_samples
    query = (
        sa.select(s.c.bucket, sa.func.sum(s.c.spool_depth), sa.func.max(s.c.oldest_item_age_s))
        .where(s.c.bucket >= first_bucket)
        .group_by(s.c.bucket)
    )
    if agent_id is not None:
        query = query.where(s.c.agent_id == agent_id)
    with store._read() as conn:
        rows = conn.execute(query).all()
    points = span // step
    depth: list[int | None] = [None] * points
    oldest: list[float | None] = [None] * points
    for bucket, total, age in rows:
        index = (int(bucket) - first_bucket) // per_point
        if not 0 <= index < points:
            continue
        if total is not None:
            depth[index] = max(depth[index] or 0, int(total))
        if age is not None:
            oldest[index] = max(oldest[index] or 0.0, float(age))
    return Backlog(first_bucket * period, float(step), depth, oldest)


@dataclass(frozen=True)
class QuarantineEntry:
    agent: AgentRow
    item_id: str
    destination: str
    since: float
    reason: str
    attempts: int


def quarantine_entries(agents: list[AgentRow]) -> list[QuarantineEntry]:
    """Quarantined items across the fleet, from each agent's last heartbeat, oldest first."""
    out: list[QuarantineEntry] = []
    for agent in agents:
        if agent.revoked_at is not None:
            continue
        for item in (agent.status or {}).get("quarantine") or []:
            out.append(
                QuarantineEntry(
                    agent,
                    str(item.get("item_id", "")),
                    str(item.get("destination", "")),
                    float(item.get("since") or 0.0),
                    str(item.get("reason", "")),
                    int(item.get("attempts") or 0),
                )
            )
    out.sort(key=lambda q: q.since)
    return out


def destination_rows(agent: AgentRow) -> list[dict[str, Any]]:
    """The agent's destinations with a state: paused, failing, unused or active."""
    rows = []
    for d in (agent.status or {}).get("destinations") or []:
        if d.get("paused"):
            state = "paused"
        elif d.get("folders") == 0:
            state = "unused"  # configured, but no watched folder routes to it
        elif d.get("last_error") and (d.get("last_error_at") or 0) > (d.get("last_success") or 0):
            state = "failing"
        else:
            state = "active"
        rows.append({**d, "state": state})
    return rows


@dataclass
class DestinationHealth:
    name: str
    kind: str
    agents: int = 0
    pending: int = 0
    by_state: dict[str, int] = field(default_factory=dict)

    @property
    def worst(self) -> str:
        for state in ("paused", "failing", "active", "unused"):
            if self.by_state.get(state):
                return state
        return "unused"


def destination_health(agents: list[AgentRow]) -> list[DestinationHealth]:
    """Destinations across the fleet (by name): how many agents use them and in what state."""
    out: dict[str, DestinationHealth] = {}
    for agent in agents:
        if agent.revoked_at is not None:
            continue
        for d in destination_rows(agent):
            name = str(d.get("name", ""))
            health = out.setdefault(name, DestinationHealth(name, str(d.get("kind", ""))))
            health.agents += 1
            health.pending += int(d.get("pending") or 0)
            health.by_state[d["state"]] = health.by_state.get(d["state"], 0) + 1
    return sorted(out.values(), key=lambda h: h.name)
