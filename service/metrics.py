"""``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Fleet gauges come from the database (the same for every central process); ``*_total``
counters are per process, as Prometheus expects. Labels carry agent ids and host names,
never anything about patients or files.

Per-agent series carry ``agent_id`` (stable), ``agent`` (the display name: label, configured
name or host), ``site`` and ``host``. The agent's own counters (protected, forwarded,
quarantined, retries, …) are exported as ``scanfort_agent_<name>_total``; they restart at
zero when the agent restarts, which Prometheus' ``rate()`` treats as a counter reset.
"""

from __future__ import annotations

from service import status
from service.context import AppContext
from service.store import AgentRow

AGENT_COUNTERS = ("seen", "protected", "forwarded", "quarantined", "retries")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def _agent_labels(agent: AgentRow, **extra: str) -> str:
    return _labels(
        agent_id=agent.agent_id,
        agent=agent.display_name,
        site=agent.site or "",
        host=agent.host,
        **extra,
    )


def render_metrics(ctx: AppContext) -> str:
    now = ctx.clock()
    agents = ctx.store.list_agents(with_status=True)
    totals = ctx.store.totals()
    lines: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")

    states = {state: 0 for state in status.STATES}
    family("scanfort_agents", "gauge", "Enrolled agents by heartbeat state.")
    for agent in agents:
        states[status.agent_state(agent, ctx.settings, now)] += 1
    for state, count in states.items():
        lines.append(f"scanfort_agents{_labels(state=state)} {count}")

    live = [a for a in agents if a.revoked_at is None and a.last_seen_at is not None]
    per_agent = (
        (
            "scanfort_agent_last_heartbeat_age_seconds",
            "Seconds since the agent's last heartbeat.",
            lambda a: now - (a.last_seen_at or now),
        ),
        (
            "scanfort_agent_spool_items",
            "Items waiting in the agent's spool.",
            lambda a: a.spool_depth,
        ),
        (
            "scanfort_agent_spool_bytes",
            "Bytes waiting in the agent's spool.",
            lambda a: a.spool_bytes,
        ),
        (
            "scanfort_agent_oldest_item_age_seconds",
            "Age of the oldest spooled item.",
            lambda a: a.oldest_item_age_s,
        ),
        (
            "scanfort_agent_paused_destinations",
            "Destinations paused by the agent.",
            lambda a: len(a.paused_destinations),
        ),
        (
            "scanfort_agent_intake_paused",
            "1 when intake is paused for low disk.",
            lambda a: int(a.intake_paused),
        ),
    )
    for name, help_text, get in per_agent:
        family(name, "gauge", help_text)
        for agent in live:
            value = get(agent)
            if value is not None:
                lines.append(f"{name}{_agent_labels(agent)} {float(value):g}")

    for key in AGENT_COUNTERS:
        name = f"scanfort_agent_{key}_total"
        family(name, "counter", f"Files {key} by the agent since it started (its own count).")
        for agent in live:
            value = ((agent.status or {}).get("counters") or {}).get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"{name}{_agent_labels(agent)} {float(value):g}")
    family(
        "scanfort_agent_destination_paused",
        "gauge",
        "1 when the agent has paused sending to this destination.",
    )
    for agent in live:
        for dest in (agent.status or {}).get("destinations") or []:
            labels = _agent_labels(agent, destination=str(dest.get("name", "")))
            lines.append(f"scanfort_agent_destination_paused{labels} {int(bool(dest.get('paused')))}")

    family("scanfort_objects_stored", "gauge", "Protected objects in the central store.")
    lines.append(f"scanfort_objects_stored {totals['objects']}")
    family(
        "scanfort_objects_stored_bytes", "gauge", "Bytes of protected objects in the central store."
    )
    lines.append(f"scanfort_objects_stored_bytes {totals['object_bytes']}")
    family("scanfort_events_stored", "gauge", "Agent events kept in the database.")
    lines.append(f"scanfort_events_stored {totals['events']}")

    counters = ctx.counters.snapshot()
    for key, help_text in (
        ("heartbeats", "Heartbeats accepted by this process."),
        ("events", "New events accepted by this process."),
        ("enrollments", "Agents enrolled by this process."),
        ("objects_stored", "Objects newly stored by this process."),
        ("object_bytes_stored", "Bytes newly stored by this process."),
        ("auth_failures", "Agent API requests rejected for a bad token."),
        ("login_failures", "Failed dashboard logins."),
        ("object_store_unavailable", "Object store requests answered 503 (store unreachable)."),
        ("objects_corrupt", "Object reads refused because the bytes failed their SHA-256."),
    ):
        name = f"scanfort_{key}_total"
        family(name, "counter", help_text)
        lines.append(f"{name} {counters.get(key, 0)}")
    return "\n".join(lines) + "\n"
