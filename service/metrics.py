"""``/metrics`` in the Prometheus text exposition format (version 0.0.4).

Fleet gauges come from the database (the same for every central process); ``*_total``
counters are per process, as Prometheus expects. Labels carry agent ids and host names,
never anything about patients or files.
"""

from __future__ import annotations

from service import status
from service.context import AppContext


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}" if inner else ""


def render_metrics(ctx: AppContext) -> str:
    now = ctx.clock()
    agents = ctx.store.list_agents()
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
                lines.append(
                    f"{name}{_labels(agent_id=agent.agent_id, host=agent.host)} {float(value):g}"
                )

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
    ):
        name = f"scanfort_{key}_total"
        family(name, "counter", help_text)
        lines.append(f"{name} {counters.get(key, 0)}")
    return "\n".join(lines) + "\n"
