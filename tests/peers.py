"""Real peers on loopback for tests: Orthanc (with DICOMweb) and dcmtk's ``storescp``.

Reusable by any test module (no fixtures here; ``tests/conftest.py`` wraps these in pytest
fixtures). Every peer runs in its own temporary directory on free loopback ports, is
started by the test run itself and is stopped (terminate, then kill) on exit.

Missing binaries: :func:`require_binary` skips the test with a reason, except when the
environment says ``CI=true``, where a missing peer is a failure, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "ORTHANC_DICOMWEB_PLUGIN_DIRS",
    "OrthancPeer",
    "PeerError",
    "StoreSCPPeer",
    "free_port",
    "in_ci",
    "require_binary",
    "start_orthanc",
    "start_storescp",
    "wait_for_port",
]

#: Where Debian (and a few other layouts) put the DICOMweb plugin.
ORTHANC_DICOMWEB_PLUGIN_DIRS = (
    "/usr/share/orthanc/plugins",
    "/usr/lib/orthanc/plugins",
    "/usr/local/share/orthanc/plugins",
)
_DICOMWEB_SO = "libOrthancDicomWeb.so"
_LOOPBACK = "127.0.0.1"


class PeerError(RuntimeError):
    """A peer could not be started or did not become ready."""


def in_ci() -> bool:
    """True when ``CI`` is set to a true value (``true``, ``1``, ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_binary(name: str, package: str | None = None) -> str:
    """Path of executable ``name``; skip the test if missing (fail instead under CI=true)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path:
        return path
    reason = f"peer binary {name!r} not found (Debian package {package or name!r})"
    if in_ci():
        pytest.fail(f"{reason}; CI=true requires every peer", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A TCP port free on loopback right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30.0
) -> None:
    """Wait until something accepts TCP connections on loopback ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise PeerError(f"peer exited with status {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection((_LOOPBACK, port), 0.5):
            return
        time.sleep(0.1)
    raise PeerError(f"nothing listening on {_LOOPBACK}:{port} after {timeout:.0f}s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- Orthanc


@dataclass
class OrthancPeer:
    """A running Orthanc: REST at ``url``, DICOM at ``dicom_port`` (AE ``aet``)."""

    url: str
    dicom_port: int
    aet: str
    workdir: Path
    process: subprocess.Popen[bytes] = field(repr=False)
    dicomweb: bool = True

    @property
    def host(self) -> str:
        return _LOOPBACK

    @property
    def dicomweb_url(self) -> str:
        """Root of the DICOMweb API (``…/dicom-web``); STOW-RS is ``POST {root}/studies``."""
        return f"{self.url}/dicom-web"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> bytes:
        """One HTTP request to the REST API; raise ``urllib.error.HTTPError`` on >= 400."""
        req = urllib.request.Request(
            self.url + path, data=body, method=method, headers=headers or {}
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return bytes(resp.read())

    def get_json(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def instances(self) -> list[str]:
        """Orthanc identifiers of every stored instance."""
        return list(self.get_json("/instances"))

    def instance_file(self, orthanc_id: str) -> bytes:
        """The stored DICOM file, byte for byte as Orthanc keeps it."""
        return self.request("GET", f"/instances/{orthanc_id}/file")

    def find_instance(self, sop_instance_uid: str) -> str | None:
        """Orthanc identifier of the instance with this SOP Instance UID, if stored."""
        found = json.loads(self.request("POST", "/tools/lookup", sop_instance_uid.encode()))
        for item in found:
            if item.get("Type") == "Instance":
                return str(item["ID"])
        return None

    def upload(self, dicom: bytes) -> str:
        """Store a file through the REST API; return its Orthanc identifier."""
        reply = json.loads(self.request("POST", "/instances", dicom))
        return str(reply["ID"])

    def stow(self, files: list[bytes]) -> Any:
        """Store files through DICOMweb STOW-RS; return the JSON response."""
        boundary = uuid.uuid4().hex
        parts = []
        for data in files:
            parts.append(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
        reply = self.request(
            "POST",
            "/dicom-web/studies",
            body,
            {"Content-Type": ctype, "Accept": "application/dicom+json"},
        )
        return json.loads(reply) if reply else {}

    def clear(self) -> None:
        """Delete every stored instance (keeps one Orthanc for a whole session)."""
        for patient in self.get_json("/patients"):
            self.request("DELETE", f"/patients/{patient}")


def _find_dicomweb_plugin() -> str | None:
    for d in ORTHANC_DICOMWEB_PLUGIN_DIRS:
        candidate = Path(d) / _DICOMWEB_SO
        if candidate.is_file():
            return str(candidate)
    return None


@contextlib.contextmanager
def start_orthanc(
    workdir: Path,
    aet: str = "ORTHANC",
    dicomweb: bool = True,
    extra_config: dict[str, Any] | None = None,
    timeout: float = 60.0,
) -> Iterator[OrthancPeer]:
    """Run Orthanc on free loopback ports with a temporary JSON config until the block ends.

    Accepts C-STORE from any AE (``DicomAlwaysAllowStore``) and unknown SOP classes; the
    DICOMweb plugin is loaded when ``dicomweb`` (skip/fail as for a missing binary if it
    is not installed).
    """
    binary = require_binary("Orthanc", "orthanc")
    plugin = _find_dicomweb_plugin() if dicomweb else None
    if dicomweb and plugin is None:
        reason = (
            f"Orthanc DICOMweb plugin {_DICOMWEB_SO} not found (Debian package 'orthanc-dicomweb')"
        )
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    workdir.mkdir(parents=True, exist_ok=True)
    http_port, dicom_port = free_port(), free_port()
    while dicom_port == http_port:
        dicom_port = free_port()
    config: dict[str, Any] = {
        "Name": "scanfort-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "StorageCompression": False,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "SslEnabled": False,
        "DicomServerEnabled": True,
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "UnknownSopClassAccepted": True,
        "DicomModalities": {},
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
        "SaveJobs": False,
        "Plugins": [plugin] if plugin else [],
        "DicomWeb": {"Enable": bool(plugin), "Root": "/dicom-web/", "EnableWado": True},
    }
    config.update(extra_config or {})
    config_path = workdir / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = workdir / "orthanc.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [binary, "--no-jobs", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
        )
    peer = OrthancPeer(
        url=f"http://{_LOOPBACK}:{http_port}",
        dicom_port=dicom_port,
        aet=aet,
        workdir=workdir,
        process=proc,
        dicomweb=bool(plugin),
    )
    try:
        _wait_orthanc(peer, timeout)
        wait_for_port(dicom_port, proc, timeout)
        yield peer
    except PeerError as exc:
        raise PeerError(f"{exc}\n--- orthanc.log ---\n{_log_tail(log_path)}") from None
    finally:
        _stop(proc)


def _wait_orthanc(peer: OrthancPeer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            raise PeerError(f"Orthanc exited with status {peer.process.returncode}")
        with contextlib.suppress(OSError, urllib.error.URLError, ValueError):
            info = peer.get_json("/system")
            if "Version" in info:
                return
        time.sleep(0.2)
    raise PeerError(f"Orthanc not ready after {timeout:.0f}s")


# --------------------------------------------------------------------------- storescp


@dataclass
class StoreSCPPeer:
    """A running dcmtk ``storescp`` writing every received instance under ``directory``."""

    port: int
    aet: str
    directory: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    @property
    def host(self) -> str:
        return _LOOPBACK

    def received(self) -> list[Path]:
        """Files received so far (sorted)."""
        return sorted(p for p in self.directory.iterdir() if p.is_file())

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Path]:
        """Wait until at least ``count`` files were received (polling every 0.1 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            files = self.received()
            if len(files) >= count:
                return files
            time.sleep(0.1)
        raise PeerError(f"storescp received {len(self.received())} of {count} files")


@contextlib.contextmanager
def start_storescp(
    workdir: Path, aet: str = "STORESCP", timeout: float = 30.0
) -> Iterator[StoreSCPPeer]:
    """Run ``storescp`` on a free loopback port, accepting every storage SOP class."""
    binary = require_binary("storescp", "dcmtk")
    directory = workdir / "received"
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = workdir / "storescp.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                binary,
                "--aetitle", aet,
                "--output-directory", str(directory),
                "--promiscuous",  # accept unknown SOP classes (some test files use them)
                "+xa",  # accept every supported transfer syntax
                str(port),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=workdir,
        )  # fmt: skip
    peer = StoreSCPPeer(port=port, aet=aet, directory=directory, process=proc)
    try:
        wait_for_port(port, proc, timeout)
        yield peer
    except PeerError as exc:
        raise PeerError(f"{exc}\n--- storescp.log ---\n{_log_tail(log_path)}") from None
    finally:
        _stop(proc)


def central_run_command(data_dir: Path, port: int, *extra: str) -> list[str]:
    """argv of ``scanfort central run`` on loopback for ``data_dir`` (quiet logs)."""
    return [sys.executable, "-m", "scanfort", "central", "run", "--data-dir", str(data_dir),
            "--port", str(port), "--log-level", "warning", *extra]
