"""Fleet operations on the central: labels, roles and audit, events, charts, metrics.

The agent side of the new optional protocol fields (``name``, ``peer_reason``,
``folders``, ``study_keys``, ``quarantine``, command acks and results) is not wired yet,
so these tests post them to the API exactly as an agent would.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from service import fleet, tables, users
from service.app import create_app
from service.store import Store
from tests import test_service_api as _api
from tests.test_service_api import PASSWORD, _settings, bearer, heartbeat


def login_as(client: TestClient, username: str, password: str) -> str:
    page = client.get("/login")
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post(
        "/login",
        data={"username": username, "password": password, "csrf": csrf, "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    return client.get("/").text.split('name="csrf" value="')[1].split('"')[0]

GRAFANA_JSON = Path(__file__).parent.parent / "service" / "grafana" / "scanfort-fleet.json"

# fixtures shared with test_service_api (SQLite and a real PostgreSQL)
client = _api.client
clock = _api.clock
db_url = _api.db_url
postgres_server = _api.postgres_server
settings = _api.settings
store = _api.store


def enroll_with(client: TestClient, store: Store, note: str, site: str, host: str) -> Any:
    _id, token = store.mint_enrollment_token(3600, note, site)
    r = client.post(
        "/api/v1/enroll",
        json={"host": host, "os": "Linux", "version": "0.1.0"},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    return r.json()


def beat(client: TestClient, agent: Any, **fields: Any) -> dict[str, Any]:
    r = client.post(
        "/api/v1/heartbeat",
        json=heartbeat(agent["agent_id"], **fields),
        headers=bearer(agent["agent_token"]),
    )
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def post_events(client: TestClient, agent: Any, events: list[dict[str, Any]]) -> None:
    r = client.post(
        "/api/v1/events",
        json={"agent_id": agent["agent_id"], "events": events},
        headers=bearer(agent["agent_token"]),
    )
    assert r.status_code == 200, r.text


def ev(kind: str, at: float, **extra: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "at": at, "kind": kind, **extra}


# -- labels and sites -------------------------------------------------------------------


def test_agents_are_named_by_label_then_configured_name_then_host(client, store, settings, clock):
    # four agents on hosts all called "vm": only labels tell them apart
    a = enroll_with(client, store, "CT 2 console", "CT room 2", "vm")
    b = enroll_with(client, store, "", "", "vm")
    c = enroll_with(client, store, "", "", "vm")
    beat(client, a, host="vm", name="ct2-from-config")
    beat(client, b, host="vm", name="mr1-from-config")
    beat(client, c, host="vm")
    assert store.get_agent(a["agent_id"]).display_name == "CT 2 console"  # central label wins
    assert store.get_agent(b["agent_id"]).display_name == "mr1-from-config"
    assert store.get_agent(c["agent_id"]).display_name == "vm"
    clock.now += settings.offline_after_s + 1
    csrf = login_as(client, "admin", PASSWORD)
    page = client.get("/").text
    alerts = page.split('id="alerts"')[1].split("</ul>")[0]
    assert "CT 2 console</a>: no heartbeat for" in alerts
    assert "mr1-from-config</a>: no heartbeat for" in alerts
    assert "CT room 2" in page

    r = client.post(
        f"/agents/{c['agent_id']}/label",
        data={"csrf": csrf, "label": "X-ray 1", "site": "Radiology B"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    row = store.get_agent(c["agent_id"])
    assert (row.label, row.site, row.display_name) == ("X-ray 1", "Radiology B", "X-ray 1")
    metrics = client.get("/metrics").text
    assert (
        f'scanfort_agent_spool_items{{agent_id="{c["agent_id"]}",agent="X-ray 1",'
        f'site="Radiology B",host="vm"}} 0' in metrics
    )
    log = users.audit_log(store)
    assert log[0].action == "agent.label" and log[0].target == c["agent_id"]
    assert log[0].username == "admin" and "X-ray 1" in log[0].detail


def test_a_version_1_database_gains_the_new_columns(tmp_path, clock):
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = sa.create_engine(url)
    old = sa.MetaData()
    for table in tables.metadata.sorted_tables:
        added = {c for t, c in tables.ADDED_COLUMNS if t is table}
        columns = [
            sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
            for c in table.columns
            if c.name not in added
        ]
        sa.Table(table.name, old, *columns)
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO sf_users (username, password_hash, failed_count) "
                "VALUES ('old-admin', 'x', 0)"
            )
        )
    engine.dispose()
    s = Store(url, clock=clock)
    s.create_schema()
    s.create_schema()  # twice: idempotent
    cols = {c["name"] for c in sa.inspect(s.engine).get_columns("sf_agents")}
    assert {"label", "site", "name"} <= cols
    old_admin = users.get_user(s, "old-admin")
    assert old_admin is not None and old_admin.role == "admin"  # v1 users were all admins
    s.close()


# -- users, roles, CSRF, audit ----------------------------------------------------------


def test_roles_limit_what_each_user_may_do_and_admin_actions_are_audited(client, store):
    users.add_user(store, "vera", "viewer-password", "viewer", by="test")
    users.add_user(store, "otto", "operator-password", "operator", by="test")
    a = enroll_with(client, store, "", "", "ct-1")
    quarantined = {"item_id": "f" * 16, "destination": "pacs", "since": 1.0, "reason": "HTTP 400"}
    beat(client, a, quarantine=[quarantined])

    def attempts(csrf: str) -> dict[str, int]:
        posts = {
            "label": (f"/agents/{a['agent_id']}/label", {"label": "x", "site": ""}),
            "command": (
                "/quarantine/command",
                {
                    "agent_id": a["agent_id"],
                    "item_id": "f" * 16,
                    "destination": "pacs",
                    "kind": "retry",
                },
            ),
            "token": ("/tokens", {"note": "n"}),
            "user": ("/users", {"username": "eve", "password": "long-enough-pw", "role": "admin"}),
            "revoke": (f"/agents/{a['agent_id']}/revoke", {}),
        }
        out = {}
        for name, (path, data) in posts.items():
            r = client.post(path, data={"csrf": csrf, **data}, follow_redirects=False)
            out[name] = r.status_code
        return out

    csrf = login_as(client, "vera", "viewer-password")
    assert client.get("/").status_code == 200 and client.get("/quarantine").status_code == 200
    assert client.get("/tokens").status_code == 403 and client.get("/audit").status_code == 403
    assert "Mint" not in client.get("/").text and "/users" not in client.get("/").text
    assert attempts(csrf) == {"label": 403, "command": 403, "token": 403, "user": 403, "revoke": 403}

    client.cookies.clear()
    csrf = login_as(client, "otto", "operator-password")
    assert attempts(csrf) == {"label": 303, "command": 303, "token": 403, "user": 403, "revoke": 403}

    client.cookies.clear()
    csrf = login_as(client, "admin", PASSWORD)
    assert attempts(csrf) == {"label": 303, "command": 303, "token": 200, "user": 303, "revoke": 303}
    actions = [(r.username, r.action) for r in users.audit_log(store)]
    assert ("otto", "agent.label") in actions and ("otto", "quarantine.retry") in actions
    assert ("admin", "token.mint") in actions and ("admin", "user.add") in actions
    assert ("admin", "agent.revoke") in actions and ("test", "user.add") in actions
    assert not any(u == "vera" for u, _ in actions)
    page = client.get("/audit").text
    assert "agent.revoke" in page and "quarantine.retry" in page


def test_every_form_refuses_a_missing_or_forged_csrf_token(client, store):
    a = enroll_with(client, store, "", "", "ct-1")
    item = {"item_id": "f" * 16, "destination": "pacs", "since": 1.0, "reason": "HTTP 400"}
    beat(client, a, quarantine=[item])  # so the quarantine page has its action forms
    login_as(client, "admin", PASSWORD)
    pages = ["/", f"/agents/{a['agent_id']}", "/tokens", "/users", "/lookup", "/quarantine"]
    actions = set()
    for path in pages:
        for match in re.finditer(r'<form method="post" action="([^"]+)"', client.get(path).text):
            actions.add(match.group(1))
    assert {
        "/logout",
        "/tokens",
        "/users",
        "/lookup",
        "/quarantine/command",
        "/users/admin/disable",
        f"/agents/{a['agent_id']}/label",
        f"/agents/{a['agent_id']}/revoke",
    } <= actions
    for action in sorted(actions):
        for data in ({}, {"csrf": "forged"}):
            r = client.post(action, data=data, follow_redirects=False)
            assert r.status_code == 403, (action, data, r.status_code)
    assert store.get_agent(a["agent_id"]).revoked_at is None
    assert users.audit_log(store) == []  # nothing was done


def test_a_disabled_user_cannot_log_in_and_loses_its_session(client, store):
    users.add_user(store, "otto", "operator-password", "operator", by="test")
    login_as(client, "otto", "operator-password")
    assert client.get("/").status_code == 200
    users.disable_user(store, "otto", by="test")
    assert client.get("/", follow_redirects=False).status_code == 303  # session gone
    page = client.get("/login")
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post(
        "/login", data={"username": "otto", "password": "operator-password", "csrf": csrf}
    )
    assert r.status_code == 401
    with pytest.raises(users.UserError, match="last enabled admin"):
        users.disable_user(store, "admin", by="test")
    users.set_password(store, "otto", "a-new-password", by="test")  # re-enables
    client.cookies.clear()
    login_as(client, "otto", "a-new-password")


# -- events -----------------------------------------------------------------------------


def test_events_page_filters_and_collapses_identical_repeats(client, store, clock):
    a = enroll_with(client, store, "CT", "", "ct-1")
    t0 = clock.now - 3000
    batch = [ev("protected", t0 + i, destination="pacs", message="ok") for i in range(40)]
    batch += [
        ev("error", t0 + 50, severity="error", destination="pacs", message="stow-rs: HTTP 400"),
        ev("forwarded", t0 + 60, destination="archive"),
    ]
    post_events(client, a, batch)
    page = fleet.events_page(store, agent_id=a["agent_id"])
    assert [(g.kind, g.count) for g in page.groups] == [("forwarded", 1), ("error", 1), ("protected", 40)]
    assert page.groups[2].first_at == t0 and page.groups[2].last_at == t0 + 39
    only = fleet.events_page(store, agent_id=a["agent_id"], destination="archive")
    assert [g.kind for g in only.groups] == ["forwarded"]
    assert [g.kind for g in fleet.events_page(store, severity="error").groups] == ["error"]
    first = fleet.events_page(store, agent_id=a["agent_id"], limit=10)
    assert first.raw_count == 10 and first.next_before is not None
    rest = fleet.events_page(store, agent_id=a["agent_id"], before=first.next_before, limit=100)
    assert first.raw_count + rest.raw_count == 42 and rest.next_before is None

    login_as(client, "admin", PASSWORD)
    html = client.get(f"/agents/{a['agent_id']}").text
    table = html.split('id="events"')[1].split("</table>")[0]
    assert table.count('data-count="40"') == 1 and table.count("<tr class=") == 3
    assert "×40" in table
    html = client.get(f"/agents/{a['agent_id']}?kind=error").text
    table = html.split('id="events"')[1].split("</table>")[0]
    assert "stow-rs: HTTP 400" in table and "protected" not in table
    html = client.get("/events?destination=archive").text
    assert "forwarded" in html.split('id="events"')[1] and "×40" not in html


def test_destinations_show_the_peers_reason_and_unused_ones(client, store):
    a = enroll_with(client, store, "CT", "", "ct-1")
    dests = [
        {"name": "pacs", "kind": "dicomweb", "last_error": "stow-rs: HTTP 400",
         "last_error_at": 100.0, "peer_reason": "Orthanc: bad file format", "folders": 1},
        {"name": "spare", "kind": "folder", "folders": 0},
        {"name": "central", "kind": "central", "folders": 1, "last_success": 5.0},
    ]
    beat(client, a, destinations=dests)
    login_as(client, "admin", PASSWORD)
    html = client.get(f"/agents/{a['agent_id']}").text
    states = dict(re.findall(r'data-destination="([^"]+)" data-state="([^"]+)"', html))
    assert states == {"pacs": "failing", "spare": "unused", "central": "active"}
    assert "peer said: <q>Orthanc: bad file format</q>" in html
    overview = client.get("/").text
    assert "pacs: stow-rs: HTTP 400 (Orthanc: bad file format)" in overview  # agents table
    b = enroll_with(client, store, "MR", "", "mr-1")
    beat(client, b, destinations=[{"name": "pacs", "kind": "dicomweb", "paused": True, "pending": 4}])
    table = client.get("/").text.split('id="fleet-destinations"')[1].split("</table>")[0]
    rows = dict(re.findall(r'data-destination="([^"]+)" data-state="([^"]+)"', table))
    assert rows == {"central": "active", "pacs": "paused", "spare": "unused"}
    pacs = table.split('data-destination="pacs"')[1].split("</tr>")[0]
    assert "1 paused" in pacs and "1 failing" in pacs and "<td>2</td><td>4</td>" in pacs


# -- fleet view and metrics -------------------------------------------------------------


def test_fleet_throughput_and_backlog_charts(client, store, clock):
    a = enroll_with(client, store, "CT", "", "ct-1")
    b = enroll_with(client, store, "MR", "", "mr-1")
    now = clock.now
    post_events(client, a, [ev("protected", now - 60 - 3600 * (i % 3)) for i in range(6)])
    post_events(client, b, [ev("protected", now - 30), ev("forwarded", now - 20)])
    for step, depth in enumerate((5, 9, 2)):
        clock.now = now + step * 600
        beat(client, a, spool_depth=depth, oldest_item_age_s=7200.0)
        beat(client, b, spool_depth=1)
    hourly = fleet.hourly_counts(store, ("protected", "forwarded"), clock.now)
    assert fleet.fleet_hourly(hourly, "protected")[-1] == 3  # 2 of a's + b's
    assert sum(fleet.fleet_hourly(hourly, "protected")) == 7
    day = fleet.backlog(store, clock.now, "24h")
    assert [d for d in day.depth if d is not None] == [6, 10, 3]
    assert max(v for v in day.oldest_age_s if v is not None) == 7200.0
    week = fleet.backlog(store, clock.now, "7d", a["agent_id"])
    assert len(week.depth) == 168 and week.depth[-1] == 9  # hourly points: max of the hour

    login_as(client, "admin", PASSWORD)
    html = client.get("/").text
    bars = re.findall(r'class="bar protected s0"[^>]*data-count="(\d+)"', html)
    assert len(bars) == 24 and sum(map(int, bars)) == 7
    assert re.search(r'backlog-depth-24h".*?<desc data-points="3">', html, re.S)
    assert f'data-agent-id="{a["agent_id"]}"' in html and "<script" not in html.split("</head>")[1]


def test_metrics_export_per_agent_counters_and_can_require_a_token(tmp_path, db_url, clock):
    settings = _settings(tmp_path, db_url, metrics_token="metrics-secret")
    s = Store(settings.database_url, clock=clock)
    s.create_schema()
    s.set_user("admin", PASSWORD)
    with TestClient(create_app(settings, clock=clock, store=s)) as c:
        a = enroll_with(c, s, "CT 2", "Room 2", "vm")
        counters = {"protected": 12, "forwarded": 10, "quarantined": 1, "retries": 4}
        dests = [{"name": "pacs", "kind": "dicomweb", "paused": True}]
        beat(c, a, host="vm", counters=counters, spool_depth=3, destinations=dests)
        assert c.get("/metrics").status_code == 401
        assert c.get("/metrics", headers=bearer("wrong")).status_code == 401
        text = c.get("/metrics", headers=bearer("metrics-secret")).text
    s.close()
    labels = f'agent_id="{a["agent_id"]}",agent="CT 2",site="Room 2",host="vm"'
    for key, value in counters.items():
        assert f"scanfort_agent_{key}_total{{{labels}}} {value}" in text
    assert f'scanfort_agent_destination_paused{{{labels},destination="pacs"}} 1' in text
    assert "# TYPE scanfort_agent_protected_total counter" in text


def test_grafana_dashboard_queries_only_series_the_central_exports(client, store):
    dashboard = json.loads(GRAFANA_JSON.read_text(encoding="utf-8"))
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for p in panels:
        assert p["type"] in {"stat", "timeseries", "table"} and p["targets"]
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']} overlaps another"
                cells.add((x, y))
    a = enroll_with(client, store, "CT 2", "Room 2", "vm")
    counters = {"seen": 1, "protected": 1, "forwarded": 1, "quarantined": 0, "retries": 0}
    beat(client, a, counters=counters, oldest_item_age_s=5.0,
         destinations=[{"name": "pacs", "kind": "dicomweb", "paused": True}])
    exported = set(re.findall(r"^# TYPE (\S+)", client.get("/metrics").text, re.M))
    queried = {
        name
        for p in panels
        for t in p["targets"]
        for name in re.findall(r"scanfort_[a-z_]+", t["expr"])
    }
    variables = {
        name
        for v in dashboard["templating"]["list"]
        if v["type"] == "query"
        for name in re.findall(r"scanfort_[a-z_]+", v["definition"])
    }
    assert queried and queried | variables <= exported, (queried | variables) - exported
    for label in ("agent", "site"):  # legends and variables use labels the series carry
        assert f'{label}="' in client.get("/metrics").text


def test_a_clean_stop_shows_as_stopped_with_its_label_and_no_offline_alert(client, store, settings, clock):
    a = enroll_with(client, store, "CT 2 console", "CT room 2", "vm")
    beat(client, a, state="stopped")
    clock.now += settings.offline_after_s + 1
    login_as(client, "admin", PASSWORD)
    page = client.get("/").text
    assert f'data-agent-id="{a["agent_id"]}" data-state="stopped"' in page
    assert '<span class="pill stopped">1 stopped</span>' in page
    assert "No alerts." in page
    assert 'scanfort_agents{state="stopped"} 1' in client.get("/metrics").text
