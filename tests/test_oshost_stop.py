"""Stopping the service mid-burst loses nothing: SIGTERM, restart, every scan delivered."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FILES = 40


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    try:
        yield sock
    finally:
        sock.close()


def _host(cfg: Path, sock: socket.socket) -> subprocess.Popen[str]:
    env = dict(os.environ, NOTIFY_SOCKET=sock.getsockname(), PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-m", "scanfort", "service", "run-host", "--config", str(cfg)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _until(sock: socket.socket, wanted: str, timeout: float) -> None:
    sock.settimeout(timeout)
    while wanted not in sock.recv(4096).decode().split("\n"):
        pass


def test_sigterm_mid_burst_then_restart_delivers_every_scan_once(
    tmp_path: Path, notify: socket.socket
) -> None:
    from cipher import keys, unprotect

    identity, recipient = keys.generate_identity()
    inbox, outbox = tmp_path / "in", tmp_path / "out"
    inbox.mkdir()
    outbox.mkdir()
    cfg = tmp_path / "agent.toml"
    cfg.write_text(
        f'recipients = ["{recipient}"]\n'
        f'spool_dir = "{tmp_path}/spool"\nlog_dir = "{tmp_path}/logs"\n'
        "settle_seconds = 0.2\nreconcile_seconds = 1\n"
        f'[destinations.out]\nkind = "folder"\npath = "{outbox}"\n'
        f'[[folders]]\npath = "{inbox}"\ndestinations = ["out"]\n'
    )
    originals = {f"scan{i:03d}.bin": os.urandom(50_000 + i) for i in range(FILES)}

    first = _host(cfg, notify)
    try:
        _until(notify, "READY=1", 120)
        for name, data in originals.items():
            (inbox / name).write_bytes(data)
        # Stop while the burst is in flight: as soon as the first copy lands.
        deadline = time.monotonic() + 60
        while not list(outbox.glob("*.age")) and time.monotonic() < deadline:
            time.sleep(0.02)
        first.send_signal(signal.SIGTERM)
        _until(notify, "STOPPING=1", 30)
        _, err = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate()
    assert first.returncode == 0, err
    delivered_at_stop = len(list(outbox.glob("*.age")))

    second = _host(cfg, notify)
    try:
        _until(notify, "READY=1", 120)
        deadline = time.monotonic() + 120
        while len(list(outbox.glob("*.age"))) < FILES and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        second.send_signal(signal.SIGTERM)
        _, err = second.communicate(timeout=60)
    assert second.returncode == 0, err

    copies = sorted(p.name for p in outbox.iterdir())
    assert copies == sorted(f"{name}.age" for name in originals), (delivered_at_stop, copies)
    for name, data in originals.items():
        out = io.BytesIO()
        with open(outbox / f"{name}.age", "rb") as fh:
            unprotect(fh, out, [identity])
        assert out.getvalue() == data
        assert (inbox / name).read_bytes() == data  # plaintext kept (after_ack = keep)
