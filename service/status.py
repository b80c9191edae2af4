"""Fleet health from stored agent rows: online / stale / offline, and alerts.

Pure functions of the rows, the settings and "now", so tests drive them with any clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.settings import Settings
from service.store import AgentRow

ONLINE = "online"
STALE = "stale"
OFFLINE = "offline"
NEVER = "never"  # enrolled, no heartbeat yet
REVOKED = "revoked"
STOPPED = "stopped"  # its last heartbeat announced a clean stop
STATES = (ONLINE, STALE, OFFLINE, STOPPED, NEVER, REVOKED)


def agent_state(agent: AgentRow, settings: Settings, now: float) -> str:
    if agent.revoked_at is not None:
        return REVOKED
    if agent.last_seen_at is None:
        return NEVER
    if isinstance(agent.status, dict) and agent.status.get("state") == STOPPED:
        return STOPPED
    age = now - agent.last_seen_at
    if age <= settings.stale_after_s:
        return ONLINE
    if age <= settings.offline_after_s:
        return STALE
    return OFFLINE


def spool_growing(agent: AgentRow, settings: Settings, now: float) -> bool:
    """The spool has not shrunk for the growth window and holds more than at its start."""
    if agent.spool_depth is None or agent.spool_trend_since is None:
        return False
    return (
        agent.spool_depth > (agent.spool_trend_depth or 0)
        and now - agent.spool_trend_since >= settings.spool_growth_window_s
    )


@dataclass(frozen=True)
class Alert:
    severity: str  # warning | error
    agent_id: str
    host: str  # the agent's display name (label, configured name or host name)
    kind: str  # stale | offline | spool_growing | spool_old | destination_paused | intake_paused | quarantine
    text: str


def alerts_for(
    agents: list[AgentRow], settings: Settings, now: float, quarantines: dict[str, int]
) -> list[Alert]:
    """Alerts for the dashboard; ``quarantines`` counts quarantine events per agent (24 h)."""
    out: list[Alert] = []
    for agent in agents:
        state = agent_state(agent, settings, now)
        if state == REVOKED:
            continue
        if state in (STALE, OFFLINE):
            age = now - (agent.last_seen_at or now)
            out.append(
                Alert(
                    "error" if state == OFFLINE else "warning",
                    agent.agent_id,
                    agent.display_name,
                    state,
                    f"no heartbeat for {format_age(age)}",
                )
            )
        if spool_growing(agent, settings, now):
            out.append(
                Alert(
                    "warning",
                    agent.agent_id,
                    agent.display_name,
                    "spool_growing",
                    f"spool growing: {agent.spool_depth} items (was {agent.spool_trend_depth})",
                )
            )
        if (
            agent.oldest_item_age_s is not None
            and agent.oldest_item_age_s >= settings.spool_age_alert_s
        ):
            out.append(
                Alert(
                    "warning",
                    agent.agent_id,
                    agent.display_name,
                    "spool_old",
                    f"oldest spooled item waiting {format_age(agent.oldest_item_age_s)}",
                )
            )
        for name in agent.paused_destinations:
            out.append(
                Alert(
                    "error",
                    agent.agent_id,
                    agent.display_name,
                    "destination_paused",
                    f"destination {name} paused (credentials rejected?)",
                )
            )
        if agent.intake_paused:
            out.append(
                Alert(
                    "error",
                    agent.agent_id,
                    agent.display_name,
                    "intake_paused",
                    "intake paused: spool disk below low watermark",
                )
            )
        count = quarantines.get(agent.agent_id, 0)
        if count:
            out.append(
                Alert(
                    "warning",
                    agent.agent_id,
                    agent.display_name,
                    "quarantine",
                    f"{count} file(s) quarantined in the last 24 h",
                )
            )
    out.sort(key=lambda a: (a.severity != "error", a.host, a.kind))
    return out


def format_age(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def format_bytes(size: int | None) -> str:
    if size is None:
        return "–"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1024 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover


def hourly_buckets(times: list[float], now: float, hours: int = 24) -> list[int]:
    """Counts per clock hour, oldest first; the last bucket is the hour ``now`` falls in."""
    buckets = [0] * hours
    current = int(now // 3600)
    for t in times:
        index = current - int(t // 3600)
        if 0 <= index < hours:
            buckets[hours - 1 - index] += 1
    return buckets
