"""Central service API and dashboard, on SQLite and on a real PostgreSQL started on loopback."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from cipher.pseudonym import PseudonymSecret
from protocol.wire import (
    Ack,
    EnrollRequest,
    EnrollResponse,
    Heartbeat,
    HeartbeatAck,
    ObjectReceipt,
    to_dict,
)
from service import dashboard, status, tables
from service.app import create_app
from service.settings import Settings
from service.store import Store
from tests.peers import central_run_command
from tests.pgcluster import PostgresMissing, throwaway_postgres

PASSWORD = "correct horse battery"


# -- a real PostgreSQL on loopback ------------------------------------------------------


def _missing_peer(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"peer missing under CI: {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """Admin URL of a throw-away PostgreSQL cluster (initdb in a temp dir, loopback only)."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(throwaway_postgres())
        except PostgresMissing as exc:
            _missing_peer(str(exc))
            return
        yield url


def _new_pg_database(server: str) -> str:
    name = "sf_" + uuid.uuid4().hex[:12]
    engine = sa.create_engine(
        server.replace("postgresql://", "postgresql+psycopg://") + "/postgres",
        isolation_level="AUTOCOMMIT",
    )
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.peer)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return ""
    return _new_pg_database(request.getfixturevalue("postgres_server"))


# -- app fixtures -----------------------------------------------------------------------


class FakeClock:
    def __init__(self, start: float = 1_800_001_800.0) -> None:  # mid-hour
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _settings(tmp_path: Path, db_url: str, **overrides: Any) -> Settings:
    base = Settings(
        data_dir=tmp_path / "central",
        db_url=db_url,
        recipients=("age1siterecipient",),
        stale_after_s=60,
        offline_after_s=300,
        spool_growth_window_s=120,
        login_failure_delay_s=0.25,
        max_object_bytes=64 * 1024,
    )
    return Settings(**{**base.__dict__, **overrides})


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return _settings(tmp_path, db_url)


@pytest.fixture
def store(settings: Settings, clock: FakeClock) -> Iterator[Store]:
    s = Store(settings.database_url, clock=clock)
    s.create_schema()
    s.set_user("admin", PASSWORD)
    yield s
    s.close()


@pytest.fixture
def client(settings: Settings, store: Store, clock: FakeClock) -> Iterator[TestClient]:
    app = create_app(settings, clock=clock, store=store)
    with TestClient(app) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def enroll(client: TestClient, store: Store, host: str = "ct-console-1") -> EnrollResponse:
    _id, token = store.mint_enrollment_token(3600)
    r = client.post(
        "/api/v1/enroll",
        json={"host": host, "os": "Linux", "version": "0.1.0"},
        headers=bearer(token),
    )
    assert r.status_code == 200, r.text
    return EnrollResponse.from_dict(r.json())


def heartbeat(agent_id: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "agent_id": agent_id,
        "version": "0.1.0",
        "host": "ct-console-1",
        "os": "Linux",
        "uptime_s": 12.5,
        "sent_at": time.time(),
        "watched_folders": 1,
        "spool_depth": 0,
        "spool_bytes": 0,
        "counters": {"seen": 3, "protected": 3},
        "destinations": [],
    }
    body.update(fields)
    return body


def login(client: TestClient, password: str = PASSWORD) -> str:
    """Log in through the form; returns the session's CSRF token."""
    page = client.get("/login")
    csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
    r = client.post(
        "/login",
        data={"username": "admin", "password": password, "csrf": csrf, "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    home = client.get("/")
    return home.text.split('name="csrf" value="')[1].split('"')[0]


# -- enrollment -------------------------------------------------------------------------


def test_enroll_consumes_the_one_time_token_and_stores_only_hashes(client, store, settings):
    _id, token = store.mint_enrollment_token(3600)
    body = {"host": "mr-room-3", "os": "Windows 10", "version": "0.1.0"}
    r = client.post("/api/v1/enroll", json=body, headers=bearer(token))
    assert r.status_code == 200, r.text
    resp = EnrollResponse.from_dict(r.json())
    assert resp.agent_id.startswith("ag_") and resp.agent_token.startswith("sfa_")
    assert resp.recipients == ["age1siterecipient"]
    assert resp.heartbeat_interval_s == settings.heartbeat_interval_s
    assert resp.pseudonym_secret is None  # this data dir has no secret
    settings.pseudonym_secret_path.parent.mkdir(parents=True, exist_ok=True)
    settings.pseudonym_secret_path.write_text(PseudonymSecret.generate().encode())
    _id, token2 = store.mint_enrollment_token(3600)
    second = EnrollResponse.from_dict(
        client.post("/api/v1/enroll", json=body, headers=bearer(token2)).json())
    assert second.pseudonym_secret is not None
    assert PseudonymSecret.parse(second.pseudonym_secret).encode().strip() == \
        settings.pseudonym_secret_path.read_text().strip()

    again = client.post("/api/v1/enroll", json=body, headers=bearer(token))
    assert again.status_code == 401
    assert client.post("/api/v1/enroll", json=body, headers=bearer("sfe_bogus")).status_code == 401
    assert client.post("/api/v1/enroll", json=body).status_code == 401

    with store.engine.connect() as conn:
        dump = json.dumps(
            [
                list(map(str, row))
                for t in (tables.agents, tables.enrollment_tokens)
                for row in conn.execute(sa.select(t))
            ]
        )
    assert resp.agent_token not in dump and token not in dump
    assert hashlib.sha256(resp.agent_token.encode()).hexdigest() in dump


def test_expired_or_revoked_enrollment_tokens_are_refused(client, store, clock):
    _id, expired = store.mint_enrollment_token(60)
    clock.now += 61
    body = {"host": "h", "os": "Linux", "version": "1"}
    assert client.post("/api/v1/enroll", json=body, headers=bearer(expired)).status_code == 401
    token_id, revoked = store.mint_enrollment_token(3600)
    assert store.revoke_enrollment_token(token_id)
    assert client.post("/api/v1/enroll", json=body, headers=bearer(revoked)).status_code == 401


def test_one_enrollment_token_wins_once_across_two_central_processes(settings, store, clock):
    """Two app instances on one database (as two central processes) race for one token."""
    _id, token = store.mint_enrollment_token(3600)
    other_store = Store(settings.database_url, clock=clock)
    apps = [
        create_app(settings, clock=clock, store=store),
        create_app(settings, clock=clock, store=other_store),
    ]
    results: list[int] = []
    barrier = threading.Barrier(8)

    def attempt(i: int) -> None:
        with TestClient(apps[i % 2]) as c:
            barrier.wait()
            r = c.post(
                "/api/v1/enroll",
                json={"host": f"h{i}", "os": "Linux", "version": "1"},
                headers=bearer(token),
            )
            results.append(r.status_code)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other_store.close()
    assert sorted(results) == [200] + [401] * 7
    assert len(store.list_agents()) == 1


# -- heartbeats and status --------------------------------------------------------------


def test_heartbeat_needs_the_agents_own_valid_token(client, store):
    a = enroll(client, store, "host-a")
    b = enroll(client, store, "host-b")
    assert client.post("/api/v1/heartbeat", json=heartbeat(a.agent_id)).status_code == 401
    r = client.post("/api/v1/heartbeat", json=heartbeat(a.agent_id), headers=bearer("sfa_nope"))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.post("/api/v1/heartbeat", json=heartbeat(b.agent_id), headers=bearer(a.agent_token))
    assert r.status_code == 403
    r = client.post("/api/v1/heartbeat", json=heartbeat(a.agent_id), headers=bearer(a.agent_token))
    assert r.status_code == 200
    ack = HeartbeatAck(**r.json())
    assert ack.ok and ack.server_time is not None and ack.commands == []


@pytest.mark.parametrize(
    "raw",
    [b"not json", b'{"agent_id": NaN}', b"[1,2]", b'{"spool_depth": 1e400}'],
)
def test_malformed_bodies_are_client_errors(client, store, raw):
    a = enroll(client, store)
    r = client.post(
        "/api/v1/heartbeat",
        content=raw,
        headers={**bearer(a.agent_token), "Content-Type": "application/json"},
    )
    assert r.status_code in (400, 422)
    assert isinstance(r.json()["detail"], str)


def test_heartbeat_schema_violations_are_rejected_with_the_field(client, store):
    a = enroll(client, store)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"spool_depth": -1}, "spool_depth"),
        ({"intake_paused": "yes"}, "intake_paused"),
        ({"counters": {"seen": "3"}}, "counters.seen"),
        ({"host": 7}, "host"),
    ]
    for bad, field in cases:
        r = client.post(
            "/api/v1/heartbeat", json=heartbeat(a.agent_id, **bad), headers=bearer(a.agent_token)
        )
        assert r.status_code == 422, (bad, r.text)
        assert field in r.json()["detail"]


def test_states_follow_heartbeat_age_and_alerts_name_the_problem(client, store, settings, clock):
    a = enroll(client, store, "ct-1")
    dest = {
        "name": "pacs",
        "kind": "dicomweb",
        "pending": 4,
        "paused": True,
        "last_error": "401 from destination",
        "last_error_at": clock.now,
    }
    hb = heartbeat(
        a.agent_id,
        host="ct-1",
        spool_depth=4,
        spool_bytes=4096,
        intake_paused=True,
        destinations=[dest],
    )
    assert (
        client.post("/api/v1/heartbeat", json=hb, headers=bearer(a.agent_token)).status_code == 200
    )
    row = store.get_agent(a.agent_id)
    assert row is not None
    assert status.agent_state(row, settings, clock.now) == status.ONLINE
    assert row.paused_destinations == ("pacs",) and row.last_error == "pacs: 401 from destination"
    kinds = {al.kind for al in status.alerts_for([row], settings, clock.now, {})}
    assert kinds == {"destination_paused", "intake_paused"}

    clock.now += settings.stale_after_s + 1
    assert status.agent_state(row, settings, clock.now) == status.STALE
    clock.now += settings.offline_after_s
    assert status.agent_state(row, settings, clock.now) == status.OFFLINE
    assert "offline" in {al.kind for al in status.alerts_for([row], settings, clock.now, {})}


def test_a_spool_that_keeps_growing_raises_an_alert_and_clears_when_it_drains(
    client, store, settings, clock
):
    a = enroll(client, store)
    for depth in (1, 3, 5, 8):
        r = client.post(
            "/api/v1/heartbeat",
            json=heartbeat(a.agent_id, spool_depth=depth),
            headers=bearer(a.agent_token),
        )
        assert r.status_code == 200
        clock.now += 50
    row = store.get_agent(a.agent_id)
    assert row is not None and status.spool_growing(row, settings, clock.now)
    client.post(
        "/api/v1/heartbeat",
        json=heartbeat(a.agent_id, spool_depth=2),
        headers=bearer(a.agent_token),
    )
    row = store.get_agent(a.agent_id)
    assert row is not None and not status.spool_growing(row, settings, clock.now)


# -- events -----------------------------------------------------------------------------


def _event(kind: str, at: float, **extra: Any) -> dict[str, Any]:
    return {"event_id": uuid.uuid4().hex, "at": at, "kind": kind, **extra}


def test_events_are_deduplicated_and_feed_the_hourly_chart(client, store, clock):
    a = enroll(client, store)
    evs = [_event("protected", clock.now - 3600 * h - 10, file_id="f" * 16) for h in (0, 0, 0, 5)]
    evs.append(_event("quarantined", clock.now - 5, severity="warning", message="not DICOM"))
    batch = {"agent_id": a.agent_id, "events": evs}
    for _ in range(2):  # a resent batch adds nothing
        r = client.post("/api/v1/events", json=batch, headers=bearer(a.agent_token))
        assert r.status_code == 200, r.text
    assert "scanfort_events_total 5\n" in client.get("/metrics").text  # counted once
    recent = store.recent_events(a.agent_id)
    assert len(recent) == 5 and recent[0].kind == "quarantined"
    times = store.event_times(a.agent_id, "protected", clock.now - 86400)
    buckets = status.hourly_buckets(times, clock.now)
    assert buckets[-1] == 3 and buckets[-6] == 1 and sum(buckets) == 4
    assert store.event_counts("quarantined", clock.now - 86400) == {a.agent_id: 1}
    bad = {"agent_id": a.agent_id, "events": [_event("exploded", clock.now)]}
    assert client.post("/api/v1/events", json=bad, headers=bearer(a.agent_token)).status_code == 422
    other = {"agent_id": "ag_someoneelse", "events": []}
    assert (
        client.post("/api/v1/events", json=other, headers=bearer(a.agent_token)).status_code == 403
    )


# -- objects ----------------------------------------------------------------------------


def test_objects_are_content_addressed_idempotent_and_verified(client, store, settings):
    a = enroll(client, store)
    data = os.urandom(20_000)
    sha = hashlib.sha256(data).hexdigest()
    url = f"/api/v1/objects/{sha}"
    assert client.head(url, headers=bearer(a.agent_token)).status_code == 404
    r = client.put(url, content=data, headers=bearer(a.agent_token))
    assert r.status_code == 201, r.text
    assert ObjectReceipt(**r.json()) == ObjectReceipt(sha256=sha, size=len(data), created=True)
    stored = settings.objects_dir / sha[:2] / sha[2:4] / sha
    assert stored.read_bytes() == data
    r = client.put(url, content=data, headers=bearer(a.agent_token))
    assert r.status_code == 200 and r.json()["created"] is False
    head = client.head(url, headers=bearer(a.agent_token))
    assert head.status_code == 200 and head.headers["content-length"] == str(len(data))

    forged = os.urandom(100)
    fake_sha = hashlib.sha256(b"something else").hexdigest()
    r = client.put(f"/api/v1/objects/{fake_sha}", content=forged, headers=bearer(a.agent_token))
    assert r.status_code == 422
    assert not (settings.objects_dir / fake_sha[:2] / fake_sha[2:4] / fake_sha).exists()
    big = os.urandom(settings.max_object_bytes + 1)
    r = client.put(
        f"/api/v1/objects/{hashlib.sha256(big).hexdigest()}",
        content=big,
        headers=bearer(a.agent_token),
    )
    assert r.status_code == 413
    assert client.put(url, content=data).status_code == 401
    assert (
        client.put(
            "/api/v1/objects/NOTAHASH", content=data, headers=bearer(a.agent_token)
        ).status_code
        == 422
    )
    assert list((settings.objects_dir / "tmp").iterdir()) == []


# -- dashboard --------------------------------------------------------------------------


def test_dashboard_requires_login_and_shows_the_agent(client, store):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    assert client.get("/partials/overview").status_code == 401
    a = enroll(client, store, "xray-2")
    client.post(
        "/api/v1/heartbeat",
        json=heartbeat(a.agent_id, host="xray-2", spool_depth=7),
        headers=bearer(a.agent_token),
    )
    login(client)
    page = client.get("/")
    assert f'data-agent-id="{a.agent_id}" data-state="online"' in page.text
    assert "xray-2" in page.text and "Content-Security-Policy" in page.headers
    detail = client.get(f"/agents/{a.agent_id}")
    assert (
        detail.status_code == 200
        and "<svg" in detail.text
        and 'id="agent-state">online' in detail.text
    )


def test_failed_login_is_delayed_more_each_time(client, store, settings, monkeypatch):
    delays: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        delays.append(seconds)

    monkeypatch.setattr(dashboard, "_sleep", fake_sleep)
    for _ in range(3):
        page = client.get("/login")
        csrf = page.text.split('name="csrf" value="')[1].split('"')[0]
        r = client.post("/login", data={"username": "admin", "password": "guess", "csrf": csrf})
        assert r.status_code == 401 and "wrong user name or password" in r.text
    base = settings.login_failure_delay_s
    assert delays == [base, base * 2, base * 4]
    assert client.cookies.get(dashboard.SESSION_COOKIE) is None
    login(client)  # the right password still works and resets the counter


def test_forms_without_the_csrf_token_are_refused(client, store):
    a = enroll(client, store)
    r = client.post("/login", data={"username": "admin", "password": PASSWORD, "csrf": "x"})
    assert r.status_code == 403
    csrf = login(client)
    r = client.post(f"/agents/{a.agent_id}/revoke", data={"csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403
    r = client.post(f"/agents/{a.agent_id}/revoke", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    hb = client.post("/api/v1/heartbeat", json=heartbeat(a.agent_id), headers=bearer(a.agent_token))
    assert hb.status_code == 401  # revoked from the dashboard


def test_enrollment_tokens_can_be_minted_from_the_dashboard(client, store):
    csrf = login(client)
    r = client.post("/tokens", data={"csrf": csrf, "note": "CT room 2"})
    assert r.status_code == 200
    token = r.text.split('<pre id="new-token">')[1].split("<")[0]
    body = {"host": "ct-room-2", "os": "Linux", "version": "0.1.0"}
    assert client.post("/api/v1/enroll", json=body, headers=bearer(token)).status_code == 200
    assert "used by" in client.get("/tokens").text


# -- operations -------------------------------------------------------------------------


def test_metrics_and_healthz(client, store):
    a = enroll(client, store, "ct-metrics")
    client.post(
        "/api/v1/heartbeat",
        json=heartbeat(a.agent_id, host="ct-metrics", spool_depth=2),
        headers=bearer(a.agent_token),
    )
    text = client.get("/metrics").text
    assert 'scanfort_agents{state="online"} 1' in text
    labels = f'agent_id="{a.agent_id}",agent="ct-metrics",site="",host="ct-metrics"'
    assert f"scanfort_agent_spool_items{{{labels}}} 2" in text
    assert "scanfort_heartbeats_total 1" in text
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok", "problems": []}


def test_openapi_documents_the_protocol_messages(client):
    doc = client.get("/openapi.json").json()
    assert {
        "/api/v1/enroll",
        "/api/v1/heartbeat",
        "/api/v1/events",
        "/api/v1/objects/{sha256}",
    } <= set(doc["paths"])
    hb = doc["components"]["schemas"]["Heartbeat"]
    assert set(hb["required"]) == {"agent_id", "version", "host", "os", "uptime_s", "sent_at"}
    assert "/login" not in doc["paths"]


def test_heartbeat_round_trip_keeps_the_reported_status(client, store):
    a = enroll(client, store)
    hb = heartbeat(a.agent_id, watcher={"overflows": 1}, free_disk_bytes=10**12)
    client.post("/api/v1/heartbeat", json=hb, headers=bearer(a.agent_token))
    row = store.get_agent(a.agent_id)
    assert row is not None and row.status is not None
    assert row.status["watcher"] == {"overflows": 1} and row.status["free_disk_bytes"] == 10**12
    assert to_dict(Ack()) == {"ok": True, "server_time": None}


@pytest.mark.peer
def test_two_central_processes_share_one_postgresql(postgres_server, tmp_path):
    """`central init --db` once, then two `central run` processes serve the same fleet."""

    import requests

    from scanfort.cli import main

    url = _new_pg_database(postgres_server)
    data = tmp_path / "shared"
    password_file = tmp_path / "pw"
    password_file.write_text("two-process-password")
    assert (
        main(
            [
                "central",
                "init",
                "--data-dir",
                str(data),
                "--db",
                url,
                "--json",
                "--admin-password-file",
                str(password_file),
            ]
        )
        == 0
    )
    assert not (data / "central.sqlite3").exists()
    store = Store(Settings(data_dir=data, db_url=url).database_url)
    tokens = [store.mint_enrollment_token(600)[1] for _ in range(2)]
    ports = [_free_port(), _free_port()]
    procs = [
        subprocess.Popen(
            central_run_command(data, port),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    bases = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for base, proc in zip(bases, procs, strict=True):
            deadline = time.monotonic() + 30
            while True:
                try:
                    if requests.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert proc.poll() is None and time.monotonic() < deadline, "central did not start"
                time.sleep(0.2)
        agents = []
        for i, (base, token) in enumerate(zip(bases, tokens, strict=True)):
            r = requests.post(
                f"{base}/api/v1/enroll",
                headers=bearer(token),
                timeout=5,
                json={"host": f"pg-host-{i}", "os": "Linux", "version": "1"},
            )
            assert r.status_code == 200, r.text
            agents.append(r.json())
        # each agent reports to the *other* process; both processes see both agents
        for agent, base in zip(agents, reversed(bases), strict=True):
            r = requests.post(
                f"{base}/api/v1/heartbeat",
                headers=bearer(agent["agent_token"]),
                json=heartbeat(agent["agent_id"]),
                timeout=5,
            )
            assert r.status_code == 200, r.text
        for base in bases:
            text = requests.get(f"{base}/metrics", timeout=5).text
            assert 'scanfort_agents{state="online"} 2' in text
        # a session made by one process is honoured by the other
        with requests.Session() as browser:
            page = browser.get(f"{bases[0]}/login", timeout=5).text
            csrf = page.split('name="csrf" value="')[1].split('"')[0]
            r = browser.post(
                f"{bases[0]}/login",
                timeout=5,
                allow_redirects=False,
                data={
                    "username": "admin",
                    "password": "two-process-password",
                    "csrf": csrf,
                    "next": "/",
                },
            )
            assert r.status_code == 303
            other = browser.get(f"{bases[1]}/", timeout=5, allow_redirects=False)
            assert other.status_code == 200
            for agent in agents:
                assert f'data-agent-id="{agent["agent_id"]}" data-state="online"' in other.text
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(15)
        store.close()


@pytest.fixture
def pg_store(postgres_server: str) -> Iterator[tuple[str, Store]]:
    """A store on a fresh PostgreSQL database with its schema, and the database's URL."""
    url = _new_pg_database(postgres_server)
    store = Store(Settings(data_dir=Path("/nonexistent"), db_url=url).database_url)
    try:
        store.create_schema()
        yield url, store
    finally:
        store.close()


def _terminate_other_backends(url: str) -> int:
    """End every other session on ``url``'s database (as a restart or a network cut would
    end the store's pooled connections); how many there were."""
    admin = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"),
                             isolation_level="AUTOCOMMIT")  # fmt: skip
    try:
        with admin.connect() as conn:
            killed = conn.exec_driver_sql(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).scalar()
    finally:
        admin.dispose()
    return int(killed or 0)


@pytest.mark.peer
def test_a_dropped_postgresql_connection_is_replaced_before_use(pg_store, monkeypatch):
    """Connections idle past IDLE_PING_AFTER_S are pinged at checkout; dead ones replaced."""
    from service import store_base

    url, store = pg_store
    store.ping()
    killed = _terminate_other_backends(url)
    assert killed >= 1  # the store's pooled connection is gone
    monkeypatch.setattr(store_base, "IDLE_PING_AFTER_S", 0.0)
    store.ping()  # pinged at checkout, replaced, then used: no error reaches the caller
    assert store.list_agents() == []


# -- the heartbeat hot path: one statement that authenticates and records -----------------


def _agent_row(store: Store, agent_id: str) -> tuple[Any, ...]:
    a = tables.agents
    with store.engine.connect() as conn:
        return tuple(
            conn.execute(
                sa.select(a.c.heartbeats, a.c.last_seen_at, a.c.spool_depth, a.c.host).where(
                    a.c.agent_id == agent_id
                )
            ).one()
        )


def test_revoking_an_agent_refuses_its_very_next_heartbeat(client, store, clock):
    """No cached authentication: a revocation (from any process) holds on the next heartbeat."""
    a = enroll(client, store)
    ok = client.post("/api/v1/heartbeat", json=heartbeat(a.agent_id), headers=bearer(a.agent_token))
    assert ok.status_code == 200
    before = _agent_row(store, a.agent_id)
    # revoked through a second store (as another central process or the CLI would do)
    other = Store(store.engine.url.render_as_string(hide_password=False))
    try:
        assert other.revoke_agent(a.agent_id)
    finally:
        other.close()
    clock.now += 30
    body = heartbeat(a.agent_id, spool_depth=4, host="changed")
    r = client.post("/api/v1/heartbeat", json=body, headers=bearer(a.agent_token))
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert _agent_row(store, a.agent_id) == before  # nothing of the refused heartbeat was stored


def test_a_heartbeat_for_another_agent_is_refused_and_writes_nothing(client, store, clock):
    a = enroll(client, store, "host-a")
    b = enroll(client, store, "host-b")
    client.post("/api/v1/heartbeat", json=heartbeat(b.agent_id, host="host-b"), headers=bearer(b.agent_token))
    before = _agent_row(store, b.agent_id), _agent_row(store, a.agent_id)
    clock.now += 30
    r = client.post("/api/v1/heartbeat", json=heartbeat(b.agent_id, host="evil", spool_depth=9),
                    headers=bearer(a.agent_token))  # fmt: skip
    assert r.status_code == 403
    assert (_agent_row(store, b.agent_id), _agent_row(store, a.agent_id)) == before


def test_an_unknown_token_hears_401_before_any_complaint_about_the_body(client, store, monkeypatch):
    from service import api

    a = enroll(client, store)
    headers = {**bearer("sfa_" + "0" * 43), "Content-Type": "application/json"}
    r = client.post("/api/v1/heartbeat", content=b"not json", headers=headers)
    assert r.status_code == 401  # small body: parsed first, but the token decides the answer
    parsed: list[int] = []
    real_parse = api._parse

    def counting_parse(raw: bytes, message: type[Any]) -> Any:
        parsed.append(len(raw))
        return real_parse(raw, message)

    monkeypatch.setattr(api, "_parse", counting_parse)
    big = json.dumps(heartbeat(a.agent_id, host="x" * 100, padding="y" * (api.PARSE_BEFORE_AUTH_MAX_BYTES + 1)))
    r = client.post("/api/v1/heartbeat", content=big.encode(), headers=headers)
    assert r.status_code == 401 and parsed == []  # a large body from a stranger is never parsed
    r = client.post("/api/v1/heartbeat", content=big.encode(),
                    headers={**bearer(a.agent_token), "Content-Type": "application/json"})  # fmt: skip
    assert r.status_code == 200 and parsed == [len(big)]  # the agent's own token: accepted


def test_heartbeat_counts_trend_and_one_backlog_sample_per_bucket(client, store, clock):
    """What the single UPDATE decides in SQL: counter, spool trend from the old row, samples."""
    a = enroll(client, store)
    clock.now = 1_800_000_000.0 + 5  # 5 s into a SAMPLE_PERIOD_S bucket
    depths = [0, 3, 5, 2, 6]
    for i, depth in enumerate(depths):
        r = client.post("/api/v1/heartbeat", json=heartbeat(a.agent_id, spool_depth=depth),
                        headers=bearer(a.agent_token))  # fmt: skip
        assert r.status_code == 200
        if i < len(depths) - 1:
            clock.now += 30
    row = store.get_agent(a.agent_id)
    assert row is not None and row.heartbeats == len(depths) and row.spool_depth == 6
    # 5 -> 2 shrank: the trend restarted at the 4th heartbeat with depth 2
    assert row.spool_trend_depth == 2 and row.spool_trend_since == 1_800_000_000.0 + 5 + 3 * 30
    s = tables.agent_samples
    with store.engine.connect() as conn:
        samples = conn.execute(sa.select(s.c.bucket, s.c.spool_depth).where(s.c.agent_id == a.agent_id)).all()
    assert samples == [(1_800_000_000 // tables.SAMPLE_PERIOD_S, 0)]  # the bucket's first heartbeat
    clock.now += tables.SAMPLE_PERIOD_S
    client.post("/api/v1/heartbeat", json=heartbeat(a.agent_id, spool_depth=1), headers=bearer(a.agent_token))
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(s)).scalar() == 2


@pytest.mark.peer
def test_a_dropped_connection_under_the_heartbeat_path_is_not_reused(pg_store, monkeypatch):
    """The autocommit pool of the hot path pings idle connections and drops failed ones."""
    from service import store_agents, store_base

    url, store = pg_store
    # the statement goes straight to psycopg, compiled once (not a silent fallback)
    compiled = store_agents._driver_sql(store.engine.dialect)
    assert compiled is not None and compiled is store_agents._driver_sql(store.engine.dialect)
    _id, enroll_token = store.mint_enrollment_token(3600)
    enrolled = store.enroll(enroll_token, EnrollRequest(host="h", os="Linux", version="1"))
    assert enrolled is not None
    agent_id, token = enrolled
    hb = Heartbeat.from_dict(heartbeat(agent_id))
    assert store.record_heartbeat(token, hb) is not None
    _terminate_other_backends(url)
    monkeypatch.setattr(store_base, "IDLE_PING_AFTER_S", 0.0)
    assert store.record_heartbeat(token, hb) is not None  # pinged, replaced, used
    monkeypatch.setattr(store_base, "IDLE_PING_AFTER_S", 3600.0)
    _terminate_other_backends(url)
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises for a dead socket
        store.record_heartbeat(token, hb)
    recorded = store.record_heartbeat(token, hb)  # the dead connection was not pooled again
    assert recorded is not None and recorded.agent_id == agent_id
    monkeypatch.setattr(store_base, "IDLE_PING_AFTER_S", 0.0)  # the other pool's are dead too
    assert store.get_agent(agent_id).heartbeats == 3
