"""The fleet dashboard in a real headless Chromium: labels, sort and filter, 360 px to a
wall display, dark mode, and a quarantine retry that reaches the agent through heartbeats.

Four agents on hosts all called "vm" (the issue's case) are told apart by their labels.
Screenshots go to the test's temp dir (or ``$SCANFORT_SCREENSHOT_DIR``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from cipher.pseudonym import PseudonymSecret
from service import tables, users
from service.server import BackgroundServer
from service.settings import Settings
from service.store import Store
from tests.test_service_browser import CHROMIUM, CHROMIUM_ARGS, _missing_peer

pytestmark = pytest.mark.peer

ADMIN_PW, OPERATOR_PW, VIEWER_PW = "admin-password-1", "operator-password-1", "viewer-password-1"
ITEM = "00c0ffee00c0ffee"
ACCESSION = "ACC-2026-0815"  # synthetic


class Fleet:
    def __init__(self, url: str) -> None:
        self.url = url
        self.agents: dict[str, dict[str, Any]] = {}

    def beat(self, key: str, **fields: Any) -> dict[str, Any]:
        agent = self.agents[key]
        body = {
            "agent_id": agent["agent_id"],
            "version": "0.2.0",
            "host": "vm",
            "os": "Linux",
            "uptime_s": 100.0,
            "sent_at": time.time(),
            **fields,
        }
        r = requests.post(
            f"{self.url}/api/v1/heartbeat",
            json=body,
            headers={"Authorization": f"Bearer {agent['agent_token']}"},
            timeout=5,
        )
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def events(self, key: str, events: list[dict[str, Any]]) -> None:
        agent = self.agents[key]
        r = requests.post(
            f"{self.url}/api/v1/events",
            json={"agent_id": agent["agent_id"], "events": events},
            headers={"Authorization": f"Bearer {agent['agent_token']}"},
            timeout=5,
        )
        r.raise_for_status()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    settings = Settings(
        data_dir=tmp_path / "central",
        stale_after_s=60.0,
        offline_after_s=120.0,
        refresh_interval_s=1.0,
        login_failure_delay_s=0.1,
    )
    secret = PseudonymSecret.generate()
    settings.pseudonym_secret_path.parent.mkdir(parents=True, exist_ok=True)
    settings.pseudonym_secret_path.write_text(secret.encode(), encoding="ascii")
    store = Store(settings.database_url)
    store.create_schema()
    store.set_user("admin", ADMIN_PW)
    users.add_user(store, "otto", OPERATOR_PW, "operator", by="test")
    users.add_user(store, "vera", VIEWER_PW, "viewer", by="test")
    tokens = {
        "ct": store.mint_enrollment_token(600, "CT 2 console", "CT room 2")[1],
        "mr": store.mint_enrollment_token(600, "", "MR suite")[1],
        "xr": store.mint_enrollment_token(600, "X-ray 1", "Emergency")[1],
        "us": store.mint_enrollment_token(600, "Ultrasound 3", "Maternity")[1],
    }
    with BackgroundServer(settings) as server:
        f = Fleet(server.url)
        for key, token in tokens.items():
            r = requests.post(
                f"{server.url}/api/v1/enroll",
                json={"host": "vm", "os": "Linux", "version": "0.2.0"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=5,
            )
            r.raise_for_status()
            f.agents[key] = r.json()
        now = time.time()
        quarantined = {
            "item_id": ITEM,
            "destination": "pacs",
            "since": now - 5400,
            "reason": "stow-rs: HTTP 400 (peer: bad file format)",
            "attempts": 5,
        }
        f.beat("ct", spool_depth=12, spool_bytes=9_000_000, oldest_item_age_s=5400.0,
               quarantine=[quarantined],
               destinations=[{"name": "pacs", "kind": "dicomweb", "folders": 1,
                              "last_error": "stow-rs: HTTP 400", "last_error_at": now,
                              "peer_reason": "bad file format"},
                             {"name": "spare", "kind": "folder", "folders": 0}])
        f.beat("mr", name="mr-from-config", spool_depth=3, spool_bytes=2_000_000)
        f.beat("xr", spool_depth=0)
        # "us" never sends a heartbeat: never seen
        for key, count in (("ct", 9), ("mr", 4), ("xr", 1)):
            f.events(key, [
                {"event_id": uuid.uuid4().hex, "at": now - 300 - 3600 * (i % 6),
                 "kind": kind, "destination": "pacs"}
                for i in range(count) for kind in ("protected", "forwarded")
            ])
        keys = [secret.study_key(ACCESSION), secret.study_key("1.2.826.0.1.3680043.8.498.7")]
        f.events("ct", [
            {"event_id": uuid.uuid4().hex, "at": now - 900, "kind": "protected", "study_keys": keys},
            {"event_id": uuid.uuid4().hex, "at": now - 880, "kind": "forwarded",
             "destination": "pacs", "study_keys": keys},
        ])
        # a week of backlog history, as heartbeats every 10 minutes would have left it
        with store._write() as conn:
            rows = []
            for n in range(1, 7 * 144):
                bucket = int(now // tables.SAMPLE_PERIOD_S) - n
                for agent, scale in (("ct", 1.0), ("mr", 0.3)):
                    depth = int(scale * (20 + 15 * ((n // 36) % 4)))
                    rows.append({"agent_id": f.agents[agent]["agent_id"], "bucket": bucket,
                                 "spool_depth": depth, "oldest_item_age_s": 60.0 * depth})
            conn.execute(tables.agent_samples.insert(), rows)
        store.close()
        yield f


def _login(page: Any, url: str, user: str, password: str) -> None:
    page.goto(f"{url}/login")
    page.fill('input[name="username"]', user)
    page.fill('input[name="password"]', password)
    page.click('button[type="submit"]')
    page.wait_for_selector("#agents")


def _names(page: Any) -> list[str]:
    rows = page.locator("#agents tbody tr:not([hidden]) a.agent-name")
    return [t.strip() for t in rows.all_inner_texts()]


def test_fleet_dashboard_in_chromium(fleet, tmp_path, capsys):
    if not Path(CHROMIUM).exists():
        _missing_peer(f"{CHROMIUM} not installed (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing_peer("playwright python package not installed")
    shots = Path(os.environ.get("SCANFORT_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    url = fleet.url
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            # -- wall display, admin ------------------------------------------------------
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            _login(page, url, "admin", ADMIN_PW)
            assert sorted(_names(page)) == ["CT 2 console", "Ultrasound 3", "X-ray 1", "mr-from-config"]
            states = dict(zip(_names(page), page.locator("#agents tbody tr").evaluate_all(
                "rs => rs.map(r => r.dataset.state)"), strict=True))
            assert states["Ultrasound 3"] == "never" and states["CT 2 console"] == "online"
            assert "CT room 2" in page.locator("#agents").inner_text()
            bars = page.locator("#fleet-throughput rect.bar.protected").evaluate_all(
                "rs => rs.map(r => +r.dataset.count)")
            assert len(bars) == 24 and sum(bars) == 15  # 9 + 4 + 1, and the looked-up exam
            week = page.locator("#fleet-backlog-7d desc").get_attribute("data-points")
            assert int(week or 0) >= 160
            page.screenshot(path=str(shots / "1-wall-1920.png"), full_page=True)

            # sort by spool depth (ascending, then descending), by clicking the header
            page.click("#agents th:has-text('Spool')")
            assert _names(page)[-1] == "CT 2 console"
            page.click("#agents th:has-text('Spool')")
            assert _names(page)[0] == "CT 2 console"
            # filter by text and by state; both survive the auto-refresh
            page.fill("#agent-filter", "room 2")
            assert _names(page) == ["CT 2 console"]
            page.fill("#agent-filter", "")
            page.select_option("#state-filter", "never")
            assert _names(page) == ["Ultrasound 3"]
            before = page.locator("#live").get_attribute("data-refreshed-at")
            deadline = time.monotonic() + 10  # the CSP forbids wait_for_function's eval
            while page.locator("#live").get_attribute("data-refreshed-at") == before:
                assert time.monotonic() < deadline, "the page did not refresh itself"
                page.wait_for_timeout(100)
            assert _names(page) == ["Ultrasound 3"]
            page.select_option("#state-filter", "")

            # agent page: unused destination, the peer's reason, collapsed events
            page.click("#agents a.agent-name:has-text('CT 2 console')")
            page.wait_for_selector("#destinations")
            assert page.locator('tr[data-destination="spare"]').get_attribute("data-state") == "unused"
            assert "bad file format" in page.locator('tr[data-destination="pacs"]').inner_text()
            page.screenshot(path=str(shots / "2-agent-1920.png"), full_page=True)
            page.close()

            # -- operator: retry a quarantined item; it reaches the agent ------------------
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            _login(page, url, "otto", OPERATOR_PW)
            page.goto(f"{url}/quarantine")
            row = page.locator(f'#quarantine tr[data-item="{ITEM}"]')
            assert "CT 2 console" in row.inner_text() and "1.5 h" in row.inner_text()
            row.locator("button.retry").click()
            page.wait_for_selector('#commands tr[data-state="pending"]')
            commands = fleet.beat("ct")["commands"]
            assert [(c["kind"], c["item_id"]) for c in commands] == [("retry", ITEM)]
            result = {"command_id": commands[0]["command_id"], "ok": True, "message": "sent"}
            fleet.beat("ct", command_acks=[commands[0]["command_id"]], command_results=[result])
            page.reload()
            assert page.locator("#commands tbody tr").first.get_attribute("data-state") == "succeeded"
            assert page.locator("#quarantine").inner_text().count("Nothing in quarantine") == 1
            page.screenshot(path=str(shots / "3-quarantine-operator.png"), full_page=True)
            # label edit from the agent page
            page.goto(f"{url}/agents/{fleet.agents['mr']['agent_id']}")
            page.fill('#label-form input[name="label"]', "MR 1.5T")
            page.click("#label-form button")
            page.wait_for_selector("#agent-name")
            assert page.locator("#agent-name").inner_text() == "MR 1.5T"
            page.close()

            # -- viewer on a 360 px phone, dark mode ----------------------------------------
            context = browser.new_context(
                viewport={"width": 360, "height": 740}, color_scheme="dark"
            )
            page = context.new_page()
            _login(page, url, "vera", VIEWER_PW)
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"page is {overflow}px wider than a 360px screen"
            background = page.evaluate("getComputedStyle(document.body).backgroundColor")
            assert background == "rgb(17, 21, 28)"
            assert "MR 1.5T" in _names(page)
            page.screenshot(path=str(shots / "4-phone-360-dark.png"), full_page=True)
            page.goto(f"{url}/quarantine")
            assert page.locator("button.retry").count() == 0  # viewers read only
            page.goto(f"{url}/lookup")
            page.fill('#lookup-form input[name="q"]', ACCESSION)
            page.click("#lookup-form button")
            page.wait_for_selector("#lookup-result")
            verdict = page.locator("#lookup-result .verdict").inner_text()
            assert "Protected by CT 2 console" in verdict and "Acknowledged by: pacs" in verdict
            assert ACCESSION not in page.url
            # the per-destination table and the sightings fit the phone: no cell past the
            # right edge, no sideways scrolling inside their wrappers either
            for table in ("table.deliveries", "#sightings"):
                fit = page.evaluate(
                    """(table) => {
                      const vw = document.documentElement.clientWidth;
                      const cells = [...document.querySelectorAll(
                        `#lookup-result ${table} th, #lookup-result ${table} td`)];
                      const wrap = document.querySelector(`#lookup-result ${table}`).parentElement;
                      return {cells: cells.length, vw: vw,
                              right: Math.max(...cells.map(c => c.getBoundingClientRect().right)),
                              hidden: wrap.scrollWidth - wrap.clientWidth};
                    }""",
                    table,
                )
                assert fit["cells"] >= 5 and fit["right"] <= fit["vw"] and fit["hidden"] <= 0, (table, fit)
            pacs = page.locator('#lookup-result table.deliveries tr[data-destination="pacs"]')
            assert "pacs" in pacs.inner_text() and pacs.is_visible()
            page.screenshot(path=str(shots / "5-lookup-360-dark.png"), full_page=True)
            assert "Enrollment tokens" not in page.locator("header").inner_text()
            context.close()
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\nscreenshots: {shots}")
