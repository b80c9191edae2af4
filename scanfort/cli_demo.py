"""``scanfort demo``: the whole flow on embedded defaults, on this machine.

Creates ``./demo`` (or ``--dir``): a site identity, a central service on loopback
(SQLite), an agent enrolled with it watching ``demo/inbox``, then drops pydicom's bundled
sample scans into the inbox and waits until the central service has acknowledged every
protected copy. It prints the dashboard URL and login and keeps running until Ctrl-C
(``--once`` stops after the samples are through). Every step is the real command a site
would run (``scanfort keygen``, ``central init``/``run``, ``agent enroll``/``run``), each
in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

SAMPLES = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_implicit.dcm",
    "JPEG2000.dcm",
    "SC_rgb_small_odd.dcm",
    "rtdose_1frame.dcm",
    "liver_1frame.dcm",
    "SC_rgb_rle_2frame.dcm",
)

AGENT_CONFIG = """\
# ScanFort demo agent (written by `scanfort demo`)
recipients = []
spool_dir = "spool"
workers = 2
settle_seconds = 1
reconcile_seconds = 10
log_level = "info"
log_dir = "logs"

[disk]
low_watermark = "50 MB"
high_watermark = "100 MB"

[retry]
initial_seconds = 1
max_seconds = 30

[central]
url = "{url}"
heartbeat_seconds = 5

[[folders]]
path = "inbox"
recursive = true
destinations = ["central", "share"]
after_ack = "keep"

[destinations.central]
kind = "central"

[destinations.share]
kind = "folder"
path = "outbox"
mode = "auto"
"""


def _say(msg: str) -> None:
    print(f"scanfort demo: {msg}", flush=True)


def _fail(msg: str, hint: str | None = None) -> int:
    sys.stderr.write(f"scanfort: error: {msg}\n")
    if hint:
        sys.stderr.write(f"scanfort: hint: {hint}\n")
    return 1


def _scanfort(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "scanfort", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)


def _checked(*args: str, env: dict[str, str] | None = None) -> str:
    done = _scanfort(*args, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"scanfort {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def _wait_http(url: str, deadline: float, proc: subprocess.Popen[Any]) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("the central service exited during start-up")
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer in time")


def _drop_samples(inbox: Path) -> int:
    """Copy the bundled samples into the inbox the way a modality should: write, then rename."""
    from pydicom.data import get_testdata_file

    count = 0
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in SAMPLES:
        src = get_testdata_file(name, download=False)
        if src is None:
            continue
        dst = inbox / f"{stamp}-{name}"
        tmp = dst.with_name(dst.name + ".partial")
        shutil.copyfile(str(src), tmp)
        os.replace(tmp, dst)
        count += 1
    return count


def _states(config: Path) -> dict[str, int]:
    done = _scanfort("agent", "status", "--config", str(config), "--json")
    if done.returncode != 0:
        return {}
    try:
        return dict(json.loads(done.stdout).get("states", {}))
    except ValueError:
        return {}


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _command() -> str:
    """How to type ``scanfort`` so a printed command works as printed: the bare name when
    it is this installation's on the PATH, else the full path (e.g. ``.venv/bin/scanfort``)."""
    here = Path(sys.executable).parent / "scanfort"
    found = shutil.which("scanfort")
    if not here.exists() or (found and Path(found).resolve() == here.resolve()):
        return "scanfort"
    return str(here)


def run_demo(root: Path, port: int, once: bool, timeout: float) -> int:
    root = root.resolve()
    for sub in ("inbox", "outbox", "spool", "logs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    identity = root / "site-identity.txt"
    if not identity.exists():
        _checked("keygen", "-o", str(identity))
    recipient = _checked("keygen", "-y", str(identity)).strip()
    central_dir = root / "central"
    password_file = root / "admin-password.txt"
    env = dict(os.environ)
    if not (central_dir / "central.toml").exists():
        password = secrets.token_urlsafe(12)
        password_file.write_text(password + "\n")
        password_file.chmod(0o600)
        env["SCANFORT_ADMIN_PASSWORD"] = password
        _checked("central", "init", "--data-dir", str(central_dir), "--recipient", recipient, "--json", env=env)
    password = password_file.read_text().strip() if password_file.exists() else "(see central init output)"
    url = f"http://127.0.0.1:{port}"
    config = root / "agent.toml"
    central: subprocess.Popen[Any] | None = None
    agent: subprocess.Popen[Any] | None = None
    try:
        _say(f"starting the central service on {url}")
        central = subprocess.Popen(
            [sys.executable, "-m", "scanfort", "central", "run", "--data-dir", str(central_dir), "--port", str(port),
             "--stale-after", "30", "--offline-after", "120"],
            stdout=open(root / "logs" / "central.out", "ab"),
            stderr=subprocess.STDOUT,
        )
        _wait_http(f"{url}/healthz", time.monotonic() + 60, central)
        if not config.exists() or "agent_id" not in config.read_text():
            config.write_text(AGENT_CONFIG.format(url=url))
            token = json.loads(_checked("central", "token", "--data-dir", str(central_dir), "--json"))
            _checked("agent", "enroll", "--central", url, "--token", token["enrollment_token"], "--config", str(config))
        _say(f"starting the agent (watching {root / 'inbox'})")
        agent = subprocess.Popen(
            [sys.executable, "-m", "scanfort", "agent", "run", "--config", str(config)],
            stdout=open(root / "logs" / "agent.out", "ab"),
            stderr=subprocess.STDOUT,
        )
        before = _states(config).get("done", 0)
        dropped = _drop_samples(root / "inbox")
        _say(f"dropped {dropped} sample scans into {root / 'inbox'}")
        deadline = time.monotonic() + timeout
        done = before
        while time.monotonic() < deadline:
            if agent.poll() is not None:
                return _fail("the agent stopped", f"see {root / 'logs' / 'agent.out'}")
            states = _states(config)
            done = states.get("done", 0)
            if done - before >= dropped:
                break
            time.sleep(0.5)
        else:
            return _fail(f"only {done - before} of {dropped} scans were acknowledged in {timeout:.0f}s",
                         f"see {root / 'logs'} and {_command()} agent status --config {config}")
        objects = sum(1 for p in (central_dir / "objects").rglob("*") if p.is_file())
        _say(f"{dropped} scans protected and acknowledged; the central store holds {objects} protected objects")
        _say(f"dashboard: {url}/  login: admin / {password}")
        _say(f"decrypt a copy: {_command()} decrypt -i {identity} -o {root / 'restored'} "
             f"{root / 'outbox'}")
        if once:
            return 0
        _say(f"running; drop more files into {root / 'inbox'}, Ctrl-C to stop")
        while agent.poll() is None and central.poll() is None:
            time.sleep(1)
        return _fail("a demo process stopped", f"see {root / 'logs'}")
    except RuntimeError as exc:
        return _fail(str(exc), f"logs are in {root / 'logs'}")
    except KeyboardInterrupt:
        _say("stopping")
        return 0
    finally:
        _stop(agent)
        _stop(central)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo like Ctrl-C: children are stopped too


def _demo(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    return run_demo(Path(args.dir), args.port, args.once, args.timeout)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run central + agent on loopback with sample scans (embedded defaults)")
    p.add_argument("--dir", default="demo", help="demo folder (default ./demo)")
    p.add_argument("--port", type=int, default=8600, help="central service port (default 8600)")
    p.add_argument("--once", action="store_true", help="stop once the sample scans are acknowledged")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the samples")
    p.set_defaults(func=_demo)
