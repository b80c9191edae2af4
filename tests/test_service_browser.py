"""A real headless Chromium logs in to the dashboard and watches an agent go from online to stale.

Uses the system browser (Debian ``chromium``) through Playwright; screenshots are saved
under the test's temp dir (or ``$SCANFORT_SCREENSHOT_DIR``) and their paths printed.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from service.server import BackgroundServer
from service.settings import Settings
from service.store import Store

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PASSWORD = "browser-test-password"

pytestmark = pytest.mark.peer


def _missing_peer(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"peer missing under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture
def central(tmp_path: Path) -> Iterator[tuple[BackgroundServer, str]]:
    settings = Settings(
        data_dir=tmp_path / "central",
        stale_after_s=2.0,
        offline_after_s=120.0,
        refresh_interval_s=1.0,
        login_failure_delay_s=0.1,
    )
    store = Store(settings.database_url)
    store.create_schema()
    store.set_user("admin", PASSWORD)
    _id, token = store.mint_enrollment_token(600)
    store.close()
    with BackgroundServer(settings) as server:
        yield server, token


class Heartbeats(threading.Thread):
    """An agent's status reporter, reduced to its heartbeat loop."""

    def __init__(self, url: str, agent_id: str, token: str) -> None:
        super().__init__(daemon=True)
        self.url, self.agent_id, self.token = url, agent_id, token
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        start = time.time()
        while not self.stop.is_set():
            body = {
                "agent_id": self.agent_id,
                "version": "0.1.0",
                "host": "ct-browser-1",
                "os": "Linux",
                "uptime_s": time.time() - start,
                "sent_at": time.time(),
                "spool_depth": 2,
                "spool_bytes": 1_500_000,
                "oldest_item_age_s": 4.0,
                "counters": {"seen": 5, "protected": 5, "forwarded": 3},
                "destinations": [{"name": "central", "kind": "central", "pending": 2}],
            }
            r = requests.post(
                f"{self.url}/api/v1/heartbeat",
                json=body,
                timeout=5,
                headers={"Authorization": f"Bearer {self.token}"},
            )
            r.raise_for_status()
            self.sent += 1
            self.stop.wait(0.4)


def test_dashboard_in_chromium_shows_online_then_stale(central, tmp_path, capsys):
    if not Path(CHROMIUM).exists():
        _missing_peer(f"{CHROMIUM} not installed (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing_peer("playwright python package not installed")
    server, enrollment_token = central
    shots = Path(os.environ.get("SCANFORT_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)

    r = requests.post(
        f"{server.url}/api/v1/enroll",
        timeout=5,
        json={"host": "ct-browser-1", "os": "Linux", "version": "0.1.0"},
        headers={"Authorization": f"Bearer {enrollment_token}"},
    )
    assert r.status_code == 200, r.text
    agent_id, agent_token = r.json()["agent_id"], r.json()["agent_token"]
    now = time.time()
    events = [
        {
            "event_id": f"ev{i}",
            "at": now - 60 - 3600 * (i % 3),
            "kind": "protected",
            "file_id": f"{i:016x}",
            "destination": "central",
        }
        for i in range(7)
    ]
    r = requests.post(
        f"{server.url}/api/v1/events",
        json={"agent_id": agent_id, "events": events},
        headers={"Authorization": f"Bearer {agent_token}"},
        timeout=5,
    )
    assert r.status_code == 200, r.text
    beats = Heartbeats(server.url, agent_id, agent_token)
    beats.start()
    row = f'tr[data-agent-id="{agent_id}"]'
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 720})
                page.goto(f"{server.url}/")
                assert page.url.startswith(f"{server.url}/login")
                page.fill('input[name="username"]', "admin")
                page.fill('input[name="password"]', "wrong password")
                page.click('button[type="submit"]')
                assert page.locator(".error").inner_text() == "wrong user name or password"
                page.fill('input[name="username"]', "admin")
                page.fill('input[name="password"]', PASSWORD)
                page.click('button[type="submit"]')
                page.wait_for_selector(f'{row}[data-state="online"]', timeout=10_000)
                assert "ct-browser-1" in page.locator(row).inner_text()
                page.screenshot(path=str(shots / "1-online.png"), full_page=True)

                beats.stop.set()
                beats.join(10)
                assert beats.sent >= 1
                # no reload: the page's own auto-refresh must bring the new state
                page.wait_for_selector(f'{row}[data-state="stale"]', timeout=20_000)
                alerts = page.locator("#alerts").inner_text()
                assert "ct-browser-1" in alerts and "no heartbeat for" in alerts
                page.screenshot(path=str(shots / "2-stale.png"), full_page=True)

                page.click(f"{row} a")
                page.wait_for_selector("svg.chart")
                assert page.locator("#agent-state").inner_text() == "stale"
                heights = [
                    float(h or 0)
                    for h in page.locator("svg.chart rect.bar.protected").evaluate_all(
                        "rs => rs.map(r => r.getAttribute('height'))"
                    )
                ]
                assert len(heights) == 24 and sum(1 for h in heights if h > 0) == 3
                # seven identical "protected" events collapse into one row with a count
                assert page.locator("#events tbody tr").count() == 1
                assert page.locator("#events tbody tr").get_attribute("data-count") == "7"
                page.screenshot(path=str(shots / "3-agent.png"), full_page=True)
            finally:
                browser.close()
    finally:
        beats.stop.set()
    with capsys.disabled():
        print(f"\nscreenshots: {shots}")
    assert {p.name for p in shots.iterdir()} >= {"1-online.png", "2-stale.png", "3-agent.png"}
