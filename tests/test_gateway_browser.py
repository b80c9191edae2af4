"""OHIF in headless Chromium reads a protected CT series through the gateway.

The viewer is ``@ohif/app``'s built ``dist/`` installed by ``make viewer`` into ``.viewer``
(or ``$SCANFORT_OHIF_DIR``); the gateway serves it on its own origin. The test logs in,
finds the study in the study list by the real patient name (the archive holds only
placeholders), opens it and checks that the viewport shows the phantom, not the noise the
archive holds: the screenshot's neighbouring pixels agree (noise does not) and its dark
air and bright body appear where the phantom has them. Screenshots are kept under the
test's temp dir (or ``$SCANFORT_SCREENSHOT_DIR``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

from cipher import keys
from gateway.config import Settings
from gateway.server import BackgroundServer
from tests import gateway_data as data
from tests import peers

pytestmark = pytest.mark.peer

CHROMIUM = "/usr/lib/chromium/chromium"  # /usr/bin/chromium is a shell wrapper
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--use-gl=swiftshader",
                 "--enable-unsafe-swiftshader"]  # fmt: skip
PASSWORD = "viewer-password-1"
PATIENT = data.Patient("PAT-777", "DOE^JANE", "ACC7777", "20240501")
REPO = Path(__file__).resolve().parent.parent


def _missing_peer(reason: str) -> None:
    if peers.in_ci():
        pytest.fail(f"peer missing under CI: {reason}", pytrace=False)
    pytest.skip(reason)


def viewer_dir() -> Path:
    return Path(os.environ.get("SCANFORT_OHIF_DIR") or REPO / ".viewer")


def neighbour_disagreement(gray: np.ndarray) -> float:
    """Mean absolute difference of horizontally adjacent pixels (noise: ~85, an image: small)."""
    g = gray.astype(np.int16)
    return float(np.abs(np.diff(g, axis=1)).mean())


@pytest.fixture
def reading_site(tmp_path: Path) -> Iterator[tuple[BackgroundServer, list[bytes], list[bytes]]]:
    if not (viewer_dir() / "index.html").is_file():
        _missing_peer(f"no OHIF viewer in {viewer_dir()} (run `make viewer`)")
    identity, recipient = keys.generate_identity()
    series = data.ct_series(PATIENT, 6, rows=256, cols=256)
    protected = [data.protect(raw, recipient) for raw in series]
    with peers.start_orthanc(tmp_path / "orthanc") as orthanc:
        for raw in protected:
            orthanc.upload(raw)
        settings = Settings(data_dir=tmp_path / "gw", identity_file="unused",
                            upstreams=(orthanc.dicomweb_url,), viewer_dir=str(viewer_dir()),
                            login_failure_delay_s=0.1)  # fmt: skip
        with BackgroundServer(settings, identities=[identity]) as server:
            server.app.state.gateway.store.set_user("rita", PASSWORD, ["reader"])
            yield server, series, protected


def test_ohif_logs_in_and_renders_the_decrypted_ct_not_noise(reading_site, tmp_path, capsys):
    if not Path(CHROMIUM).exists():
        _missing_peer(f"{CHROMIUM} not installed (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing_peer("playwright python package not installed")
    server, series, protected = reading_site
    study = data.uids(series[0])[0]
    shots = Path(os.environ.get("SCANFORT_SCREENSHOT_DIR") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    hosts: set[str] = set()
    failed: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_init_script(
                "localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));"
            )
            page = context.new_page()
            page.on("request", lambda r: hosts.add(urlparse(r.url).hostname or r.url))
            page.on("response", lambda r: failed.append(f"{r.status} {r.url}")
                    if r.status >= 400 and "/dicom-web/" in r.url else None)  # fmt: skip
            page.goto(server.url + "/")
            assert urlparse(page.url).path == "/login"
            page.fill('input[name="username"]', "rita")
            page.fill('input[name="password"]', PASSWORD)
            page.click('button[type="submit"]')
            # the study list, from the gateway's index: the real name, not the placeholder
            page.wait_for_selector("text=DOE, JANE", timeout=60_000)
            page.screenshot(path=str(shots / "1-study-list.png"))
            page.goto(f"{server.url}/viewer?StudyInstanceUIDs={study}")
            canvas = page.locator("canvas").first
            canvas.wait_for(timeout=60_000)
            gray = np.zeros((1, 1), np.uint8)
            for _ in range(60):  # wait until the image is drawn (not a black viewport)
                page.wait_for_timeout(500)
                shot = canvas.screenshot()
                gray = np.asarray(Image.open(io.BytesIO(shot)).convert("L"))
                if gray.std() > 20:
                    break
            page.screenshot(path=str(shots / "2-viewer.png"))
            Image.fromarray(gray).save(shots / "3-viewport.png")
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\nscreenshots: {shots}")
    assert hosts <= {"127.0.0.1"}, hosts  # nothing left loopback
    assert not failed, failed
    assert gray.std() > 20, "the viewport stayed blank"
    # the phantom: large uniform regions (air, soft tissue) with sharp edges only at borders
    assert neighbour_disagreement(gray) < 10
    # the archive's noise, shown with the same window, would look like this instead
    noise = data.window_noise(protected[0])
    Image.fromarray(noise).save(shots / "4-what-the-archive-shows.png")
    assert neighbour_disagreement(noise) > 40
    # dark air around a bright body: the centre of the viewport is brighter than its corners
    h, w = gray.shape
    centre = gray[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3].mean()
    corners = np.concatenate([gray[:20, :20].ravel(), gray[-20:, -20:].ravel()]).mean()
    assert centre > corners + 60
    frames = [e for e in server.app.state.gateway.store.iter_audit()
              if e.operation == "frames" and e.study_uid == study]  # fmt: skip
    assert frames and all(e.username == "rita" and e.outcome == "ok" for e in frames)
