"""Shared helpers for the tests (and bench/bench_agent.py); no tests here.

- :func:`free_port` and :func:`wait_http` (a ``/healthz``-style readiness wait);
- :func:`write_config` writes a real TOML config and loads it through ``load_config``;
- :class:`Receiver` is a small real HTTP server on loopback that implements the central
  service's object upload (PUT by SHA-256, hash verified), heartbeats and events;
- :func:`ct_slice` makes a synthetic CT slice (no patient data).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

import cipher
from agent.config import AgentConfig, load_config

TOKEN = "agent-token-for-tests"


def cipher_core_sources() -> list[Path]:
    """The C core's sources (``cipher/csrc``) that build without Python: all but the
    extension's binding files, which include ``Python.h``."""
    csrc = Path(__file__).resolve().parents[1] / "cipher" / "csrc"
    return [p for p in sorted(csrc.glob("*.c")) if "<Python.h>" not in p.read_text()]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0, ok: Callable[[int], bool] = lambda c: c == 200,
              context: Any = None) -> None:
    """Wait until GET ``url`` answers with a status ``ok`` accepts (a server's readiness)."""
    def ready() -> bool:
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                return ok(resp.status)
        except OSError:
            return False
    wait_until(ready, timeout=timeout, every=0.2)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))


def write_config(tmp: Path, recipients: list[str], destinations: dict[str, dict[str, Any]],
                 folder: dict[str, Any] | None = None, central: dict[str, Any] | None = None,
                 extra_folders: list[dict[str, Any]] | None = None,
                 disk: dict[str, str] | None = None, **top: Any) -> AgentConfig:
    """Write ``tmp/agent.toml`` (one folder ``tmp/inbox`` with ``folder`` settings, then
    ``extra_folders``) and load it."""
    inbox = tmp / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "recipients": recipients, "spool_dir": str(tmp / "spool"), "settle_seconds": 0.3,
        "reconcile_seconds": 2, "log_dir": str(tmp / "logs"), "workers": 2,
        "incomplete_grace_seconds": 2,
    }
    values.update(top)
    lines = [f"{k} = {toml_value(v)}" for k, v in values.items()]
    lines += ["[retry]", "initial_seconds = 0.2", "max_seconds = 1"]
    disk = disk or {"low_watermark": "1 MB", "high_watermark": "2 MB"}
    lines += ["[disk]"] + [f"{k} = {toml_value(v)}" for k, v in disk.items()]
    if central:
        lines.append("[central]")
        lines += [f"{k} = {toml_value(v)}" for k, v in central.items()]
    f = {"path": str(inbox), "destinations": list(destinations)}
    f.update(folder or {})
    for table in [f, *(extra_folders or [])]:
        lines.append("[[folders]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
    for name, d in destinations.items():
        lines.append(f"[destinations.{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in d.items()]
    path = tmp / "agent.toml"
    path.write_text("\n".join(lines) + "\n")
    return load_config(path)


def ct_slice(rows: int = 64, cols: int = 64, seed: int = 0) -> bytes:
    """A synthetic CT slice as Part 10 bytes (random pixels, made-up names)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = f"SYN{seed:06d}"
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, (rows, cols),
                                                        dtype=np.uint16).tobytes()
    buf = BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def drop(path: Path, data: bytes) -> None:
    """Write like a careful modality: a .partial name, then rename."""
    tmp = path.with_name(path.name + ".partial")
    tmp.write_bytes(data)
    tmp.rename(path)


def wait_until(pred: Callable[[], bool], timeout: float = 30.0, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(every)
    raise AssertionError(f"condition not met after {timeout:.0f}s")


class Receiver:
    """The central's agent API, for real over HTTP on loopback (objects kept in memory).

    With ``keep_objects=False`` (the benchmark) each body is still read in full and its
    SHA-256 checked against the address, but only its size is kept: half a gigabyte of
    bodies held in this process would cost the machine more than the agent under test.
    """

    def __init__(self, token: str = TOKEN, port: int = 0, keep_objects: bool = True) -> None:
        self.token = token
        self.keep_objects = keep_objects
        self.objects: dict[str, bytes] = {}
        self.sizes: dict[str, int] = {}
        self.puts = 0
        self.heartbeats: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.recipients: list[str] = []  # what enrollment hands out
        self.pseudonym_secret: str | None = None  # ... and the site's secret, if set
        self.commands: list[dict[str, Any]] = []  # returned with every heartbeat answer
        self.fail_with: int | None = None  # answer every request with this status
        self.ack_times: dict[str, float] = {}
        #: per object, the X-Scanfort-{Study,Series,SOP}-UID headers of its last PUT
        self.uid_headers: dict[str, tuple[str, str, str]] = {}
        self.connections: set[tuple[str, int]] = set()  # client addresses PUTs came from
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY each reply waits
            # for the client's delayed ACK (40 ms), which would make the receiver the
            # bottleneck of every benchmark.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _check(self) -> bool:
                body = self._body()
                self._data = body
                if receiver.fail_with is not None:
                    self._reply(receiver.fail_with, {"error": "injected"})
                    return False
                if self.headers.get("Authorization") != f"Bearer {receiver.token}":
                    self._reply(401, {"error": "bad token"})
                    return False
                return True

            def do_PUT(self) -> None:
                if not self._check():
                    return
                sha = self.path.rsplit("/", 1)[-1]
                if not self.path.startswith("/api/v1/objects/") or \
                        hashlib.sha256(self._data).hexdigest() != sha:
                    self._reply(400, {"error": "hash mismatch"})
                    return
                with receiver.lock:
                    created = sha not in receiver.sizes
                    receiver.sizes[sha] = len(self._data)
                    if receiver.keep_objects:
                        receiver.objects[sha] = self._data
                    receiver.puts += 1
                    receiver.ack_times.setdefault(sha, time.time())
                    receiver.uid_headers[sha] = (
                        self.headers.get("X-Scanfort-Study-UID", ""),
                        self.headers.get("X-Scanfort-Series-UID", ""),
                        self.headers.get("X-Scanfort-SOP-UID", ""))
                    receiver.connections.add(self.client_address)
                self._reply(201 if created else 200,
                            {"sha256": sha, "size": len(self._data), "created": created})

            def do_POST(self) -> None:
                if self.path == "/api/v1/enroll":
                    self._data = self._body()
                    if self.headers.get("Authorization") != "Bearer enroll-once":
                        self._reply(401, {"error": "bad enrollment token"})
                        return
                    self._reply(200, {"agent_id": "agent-1", "agent_token": receiver.token,
                                      "recipients": receiver.recipients,
                                      "heartbeat_interval_s": 15.0,
                                      "pseudonym_secret": receiver.pseudonym_secret})
                    return
                if not self._check():
                    return
                doc = json.loads(self._data)
                with receiver.lock:
                    if self.path.endswith("/heartbeat"):
                        receiver.heartbeats.append(doc)
                    elif self.path.endswith("/events"):
                        receiver.events.extend(doc["events"])
                answer: dict[str, Any] = {"ok": True, "server_time": time.time()}
                if self.path.endswith("/heartbeat"):
                    with receiver.lock:
                        answer["commands"] = list(receiver.commands)
                self._reply(200, answer)

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        # a client killed mid-request (the crash tests) is expected, not worth a traceback
        self.server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def running(config: AgentConfig, **kwargs: Any) -> Iterator[Any]:
    """An in-process agent, stopped (threads joined) at the end of the block."""
    from agent.runner import Agent

    agent = Agent(config, **kwargs)
    agent.start()
    stop = threading.Event()

    def ticker() -> None:
        while not stop.wait(0.5):
            agent.tick()

    t = threading.Thread(target=ticker, daemon=True)
    t.start()
    try:
        yield agent
    finally:
        stop.set()
        t.join()
        agent.stop()


def decrypt(data: bytes, identity: str) -> bytes:
    """Both layers of a protected file or DICOM-mode dataset, with the site identity."""
    out = io.BytesIO()
    cipher.unprotect(io.BytesIO(data), out, [identity])
    return out.getvalue()


def child_pids(pid: int) -> list[int]:
    """The live child processes of ``pid`` (an agent's protect workers), from /proc."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out
