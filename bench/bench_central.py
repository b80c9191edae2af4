"""Benchmark the central service: heartbeats of a simulated fleet, and object uploads S3 vs filesystem.

``heartbeats`` (default scenario): starts ``scanfort central run`` as separate processes
(``--processes N``, sharing one database) on a fresh data dir, enrolls N agents through the
API (spread over the processes), then every agent sends a realistic heartbeat every
INTERVAL seconds (random phase) for DURATION seconds. Latency is measured from the moment a
heartbeat was *due* (so a client that falls behind shows up as latency, not as a lower
rate), next to ``/healthz`` sampled once a second as the in-run reference. The generator's
own CPU is printed beside each server process's, PostgreSQL's and the rest of the machine's
(user+sys, and sys alone): on 2 cores a load generator that needs a core itself measures its
own queue, not the server. The 1-minute load average is sampled each second of the run
(start, mean, max, end), and the arrival spread (heartbeats due per 100 ms window against
the offered rate) shows the phases are spread, not a herd at t = 0. ``--settle S`` waits
after enrollment so its burst leaves the load average first.

The default generator speaks HTTP/1.1 over raw asyncio streams on a fixed set of keep-alive
connections (about 0.55 ms of CPU per heartbeat, building the JSON body included, measured with
5,000 agents); ``--client httpx`` runs the previous
generator (one ``httpx.AsyncClient`` pool per server, a task per agent), whose CPU per
request is what made 5,000 agents look like a p99 of minutes (see the README).

``uploads``: two central processes, one on the filesystem backend and one on S3 (a real
SeaweedFS on loopback, ``tests/s3server.py``), take 1,000 uploads of 0.5 MB each, in
interleaved rounds; the table gives the median per-round throughput and the S3/filesystem
ratio.

    .venv/bin/python bench/bench_central.py --postgres --processes 2 --agents 5000 --duration 90
    .venv/bin/python bench/bench_central.py --scenario uploads
    .venv/bin/python bench/bench_central.py --agents 2000            # SQLite, one process

Targets: heartbeats p99 < 100 ms and 0 errors (2,000 agents / 30 s on SQLite, issue 5;
5,000 agents / 30 s on PostgreSQL with two central processes, issue 14); S3 upload
throughput >= 0.5x the filesystem backend's (issue 14).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.* when run as a script

from service.bootstrap import initialize
from service.settings import ObjectsSettings
from service.store import Store
from tests.pgcluster import throwaway_postgres

# -- measurement helpers ----------------------------------------------------------------


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests
    service: list[float] = field(default_factory=list)  # from the write, not from due time
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    due: list[float] = field(default_factory=list)  # when each request was due (s from start)
    loads: list[float] = field(default_factory=list)  # 1-min load average, sampled each second

    def add(self, seconds: float, status: int | str, service: float | None = None) -> None:
        if status == 200:
            self.latencies.append(seconds)
            if service is not None:
                self.service.append(service)
        else:
            self.errors += 1
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(user+system CPU seconds, RSS bytes) of ``pid`` from /proc."""
    user, system, rss = _proc_usage(pid)
    return user + system, rss


def _proc_usage(pid: int) -> tuple[float, float, int]:
    """(user CPU s, system CPU s, RSS bytes) of ``pid`` from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return int(fields[11]) / ticks, int(fields[12]) / ticks, rss


def _tree_cpu(root_pids: list[int]) -> float:
    """CPU seconds of ``root_pids`` and all their live descendants (e.g. PostgreSQL backends)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1]
                )
    wanted, frontier = set(root_pids), list(root_pids)
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in wanted:
                wanted.add(child)
                frontier.append(child)
    total = 0.0
    for pid in wanted:
        with contextlib.suppress(OSError):
            total += _proc_cpu_rss(pid)[0]
    return total


def _postmaster_pid(port: int) -> list[int]:
    """PID of the PostgreSQL postmaster listening on ``port`` (by its command line)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                if argv and argv[0].endswith(b"postgres") and str(port).encode() in argv:
                    found.append(int(entry.name))
    return found


def _self_usage() -> tuple[float, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _machine_cpu() -> float:
    """CPU seconds the whole machine spent busy (all processes, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = int(fields[3]) + int(fields[4])  # idle + iowait
    return (sum(int(f) for f in fields[:8]) - idle) / ticks


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _machine_line() -> str:
    load = os.getloadavg()[0]
    return (f"CPU: {_cpu_model()}, {os.cpu_count()} cores; kernel {platform.release()}; "
            f"load average at start {load:.2f}")  # fmt: skip


# -- a lean HTTP/1.1 client over asyncio streams ----------------------------------------


class RawConnection:
    """One keep-alive HTTP/1.1 connection; requests are sent one after another."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        """Send ``head`` (request line + headers, without Content-Length) and ``body``."""
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        try:
            self.writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await self.writer.drain()
            raw = await self.reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length = 0
            close = False
            for line in raw.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lname = name.strip().lower()
                if lname == b"content-length":
                    length = int(value)
                elif lname == b"connection" and value.strip().lower() == b"close":
                    close = True
            data = await self.reader.readexactly(length) if length else b""
        except (OSError, asyncio.IncompleteReadError, ValueError):
            await self.close()
            raise
        if close:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def _head(method: str, path: str, host: str, token: str | None,
          content_type: str = "application/json") -> bytes:  # fmt: skip
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Type: {content_type}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


# -- servers ----------------------------------------------------------------------------


def _start_central(data: Path, port: int, db_url: str | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "scanfort", "central", "run", "--data-dir", str(data),
               "--port", str(port), "--log-level", "warning"]  # fmt: skip
    if db_url:
        command += ["--db", db_url]
    return subprocess.Popen(command)


def _wait_ready(url: str, server: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and server.poll() is None:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


@contextlib.contextmanager
def _centrals(dirs: list[Path], db_url: str | None) -> Iterator[tuple[list[subprocess.Popen[bytes]], list[int]]]:
    servers: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    try:
        for data in dirs:
            ports.append(_free_port())
            servers.append(_start_central(data, ports[-1], db_url))
        for port, server in zip(ports, servers, strict=True):
            if not _wait_ready(f"http://127.0.0.1:{port}", server):
                raise SystemExit("central did not start")
        yield servers, ports
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(15)


# -- heartbeats -------------------------------------------------------------------------


def _heartbeat(agent_id: str, index: int, started: float, rng: random.Random) -> dict[str, object]:
    depth = rng.randint(0, 5)
    return {
        "agent_id": agent_id,
        "version": "0.1.0",
        "host": f"ws-{index:04d}",
        "os": "Windows 10" if index % 3 else "Linux",
        "uptime_s": time.time() - started,
        "sent_at": time.time(),
        "watched_folders": 2,
        "spool_depth": depth,
        "spool_bytes": depth * 540_000,
        "oldest_item_age_s": rng.uniform(0, 20) if depth else None,
        "free_disk_bytes": 50 * 1024**3,
        "counters": {"seen": index, "protected": index, "forwarded": index, "quarantined": 0,
                     "retries": 1},
        "destinations": [
            {"name": "central", "kind": "central", "pending": depth, "last_success": time.time()},
            {"name": "pacs", "kind": "dicomweb", "pending": 0, "last_success": time.time()},
        ],
        "watcher": {"reconcile_finds": 0, "overflows": 0, "observers_alive": 2},
    }


async def _enroll_all(ports: list[int], tokens: list[str], connections: int) -> list[tuple[str, str, int]]:
    """Enroll one agent per token over raw connections; (agent_id, token, port) each."""
    queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for item in enumerate(tokens):
        queue.put_nowait(item)
    agents: list[tuple[str, str, int]] = []

    async def worker(port: int) -> None:
        conn = RawConnection("127.0.0.1", port)
        while not queue.empty():
            i, token = queue.get_nowait()
            body = json.dumps({"host": f"ws-{i:04d}", "os": "Linux", "version": "0.1.0"}).encode()
            status, data = await conn.request(_head("POST", "/api/v1/enroll", "c", token), body)
            if status == 200:
                reply = json.loads(data)
                agents.append((reply["agent_id"], reply["agent_token"], port))
        await conn.close()

    per = max(1, connections // len(ports))
    await asyncio.gather(*(worker(p) for p in ports for _ in range(per)))
    return agents


async def _raw_heartbeats(
    agents: list[tuple[str, str, int]], interval: float, duration: float, connections: int
) -> dict[str, Stats]:
    hb, ref = Stats(), Stats()
    ports = sorted({a[2] for a in agents})
    queues: dict[int, asyncio.Queue[tuple[float, bytes, bytes] | None]] = {
        p: asyncio.Queue() for p in ports
    }
    started = time.time()
    t_start = time.monotonic()
    end = t_start + duration

    async def agent(index: int, agent_id: str, token: str, port: int) -> None:
        rng = random.Random(index)
        head = _head("POST", "/api/v1/heartbeat", "central", token)
        due = time.monotonic() + rng.uniform(0, interval)  # agents start at random phases
        while due < end:
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            body = json.dumps(_heartbeat(agent_id, index, started, rng)).encode()
            queues[port].put_nowait((due, head, body))
            hb.due.append(due - t_start)
            due += interval

    async def worker(port: int) -> None:
        conn = RawConnection("127.0.0.1", port)
        queue = queues[port]
        while (job := await queue.get()) is not None:
            due, head, body = job
            sent = time.monotonic()
            try:
                status, _ = await conn.request(head, body)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                hb.add(time.monotonic() - due, type(exc).__name__)
                continue
            done = time.monotonic()
            hb.add(done - due, status, done - sent)
        await conn.close()

    async def reference() -> None:
        conn = RawConnection("127.0.0.1", ports[0])
        head = _head("GET", "/healthz", "central", None)
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                status, _ = await conn.request(head, b"")
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                status = type(exc).__name__  # type: ignore[assignment]
            ref.add(time.monotonic() - t0, status)
            ref.loads.append(os.getloadavg()[0])
            await asyncio.sleep(1.0)
        await conn.close()

    per = max(1, connections // len(ports))
    workers = [asyncio.create_task(worker(p)) for p in ports for _ in range(per)]
    await asyncio.gather(reference(), *(agent(i, a, t, p) for i, (a, t, p) in enumerate(agents)))
    for port in ports:
        for _ in range(per):
            queues[port].put_nowait(None)
    await asyncio.gather(*workers)
    return {"heartbeat": hb, "healthz (reference)": ref}


async def _httpx_heartbeats(
    agents: list[tuple[str, str, int]], interval: float, duration: float, connections: int
) -> dict[str, Stats]:
    """The previous generator: a task per agent on one httpx.AsyncClient pool per server."""
    hb, ref = Stats(), Stats()
    ports = sorted({a[2] for a in agents})
    per = max(1, connections // len(ports))
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    started = time.time()
    t_start = time.monotonic()
    end = t_start + duration
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            p: await stack.enter_async_context(httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{p}", limits=limits, timeout=30))
            for p in ports
        }  # fmt: skip

        async def agent(index: int, agent_id: str, token: str, port: int) -> None:
            rng = random.Random(index)
            headers = {"Authorization": f"Bearer {token}"}
            due = time.monotonic() + rng.uniform(0, interval)
            while due < end:
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                hb.due.append(due - t_start)
                sent = time.monotonic()
                try:
                    r = await clients[port].post("/api/v1/heartbeat", headers=headers,
                                                 json=_heartbeat(agent_id, index, started, rng))  # fmt: skip
                    status: int | str = r.status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                done = time.monotonic()
                hb.add(done - due, status, done - sent)
                due += interval

        async def reference() -> None:
            while time.monotonic() < end:
                t0 = time.monotonic()
                try:
                    status: int | str = (await clients[ports[0]].get("/healthz")).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                ref.add(time.monotonic() - t0, status)
                ref.loads.append(os.getloadavg()[0])
                await asyncio.sleep(1.0)

        await asyncio.gather(reference(), *(agent(i, a, t, p) for i, (a, t, p) in enumerate(agents)))
    return {"heartbeat": hb, "healthz (reference)": ref}


def run_heartbeats(args: argparse.Namespace) -> bool:
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sf-bench-central-"))
        db_url = None
        pg_roots: list[int] = []
        if args.postgres:
            admin = stack.enter_context(throwaway_postgres(max_connections=300))
            db_url = admin + "/postgres"
            pg_roots = _postmaster_pid(int(admin.rsplit(":", 1)[1]))
        data = Path(tmp) / "central"
        result = initialize(data, db_url=db_url, admin_password="bench")
        store = Store(result.settings.database_url)
        tokens = [store.mint_enrollment_token(3600)[1] for _ in range(args.agents)]
        store.close()
        servers, ports = stack.enter_context(_centrals([data] * args.processes, db_url))
        t0 = time.perf_counter()
        agents = asyncio.run(_enroll_all(ports, tokens, min(args.connections, 32)))
        print(f"enrolled {len(agents)} agents in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        if args.settle > 0:  # let the enrollment burst fade from the load average
            time.sleep(args.settle)
        load_start = os.getloadavg()
        srv0 = [_proc_usage(s.pid) for s in servers]
        pg0 = _tree_cpu(pg_roots) if pg_roots else 0.0
        gen0, wall0, machine0 = _self_usage(), time.monotonic(), _machine_cpu()
        generator = _raw_heartbeats if args.client == "raw" else _httpx_heartbeats
        stats = asyncio.run(generator(agents, args.interval, args.duration, args.connections))
        wall = time.monotonic() - wall0
        machine = _machine_cpu() - machine0
        gen_user, gen_sys = (b - a for a, b in zip(gen0, _self_usage(), strict=True))
        gen = gen_user + gen_sys
        srv1 = [_proc_usage(s.pid) for s in servers]
        per_server = [(b[0] - a[0], b[1] - a[1]) for a, b in zip(srv0, srv1, strict=True)]
        srv, rss = sum(u + k for u, k in per_server), sum(u[2] for u in srv1)
        pg = (_tree_cpu(pg_roots) - pg0) if pg_roots else 0.0
        load_end = os.getloadavg()
        db_size = sum(p.stat().st_size for p in data.glob("central.sqlite3*"))

    backend = "PostgreSQL" if args.postgres else "SQLite"
    loads = stats["healthz (reference)"].loads
    print(f"\nCPU: {_cpu_model()}, {os.cpu_count()} cores; kernel {platform.release()}")
    print(f"load average (1 min): {load_start[0]:.2f} at start, "
          f"{statistics.mean(loads) if loads else float('nan'):.2f} mean / "
          f"{max(loads, default=float('nan')):.2f} max during the run, {load_end[0]:.2f} at the end "
          f"(5 min: {load_start[1]:.2f} -> {load_end[1]:.2f})")  # fmt: skip
    print(f"central on {backend} ({args.processes} process{'es' if args.processes > 1 else ''}), "
          f"{len(agents)} agents, heartbeat every {args.interval:g} s for {args.duration:g} s, "
          f"{args.connections} client connections, generator: {args.client}")  # fmt: skip
    header = (f"{'request':<22}{'count':>8}{'errors':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}"
              f"{'max ms':>10}{'target':>24}")  # fmt: skip
    print(header)
    print("-" * len(header))
    hb = stats["heartbeat"]
    for name, s in stats.items():
        ms = [x * 1000 for x in s.latencies]
        target = "p99 < 100 ms, 0 errors" if name == "heartbeat" else "(reference)"
        print(f"{name:<22}{len(ms) + s.errors:>8}{s.errors:>8}{_pct(ms, 0.5):>9.1f}"
              f"{_pct(ms, 0.9):>9.1f}{_pct(ms, 0.99):>9.1f}{max(ms, default=float('nan')):>10.1f}"
              f"{target:>24}")  # fmt: skip
        if s.statuses:
            print(f"{'':<22}errors by status: {s.statuses}")
    if hb.service:
        svc = [x * 1000 for x in hb.service]
        print(f"{'  of which on the wire':<22}{len(svc):>8}{'':>8}{_pct(svc, 0.5):>9.1f}"
              f"{_pct(svc, 0.9):>9.1f}{_pct(svc, 0.99):>9.1f}{max(svc):>10.1f}"
              f"{'(write -> response)':>24}")  # fmt: skip
    hb_ms = [x * 1000 for x in hb.latencies]
    ref_ms = [x * 1000 for x in stats["healthz (reference)"].latencies]
    offered = len(agents) / args.interval
    print(f"\nheartbeats: offered {offered:.1f}/s, completed {len(hb_ms) / wall:.1f}/s"
          + (f"; p50 heartbeat / p50 healthz = {statistics.median(hb_ms) / statistics.median(ref_ms):.2f}x"
             if hb_ms and ref_ms else ""))  # fmt: skip
    if hb.due:  # agents start at random phases: no thundering herd at t=0
        per_window = [0] * (int(max(hb.due) / 0.1) + 1)
        for t in hb.due:
            per_window[int(t / 0.1)] += 1
        expected = offered * 0.1
        print(f"arrival spread: due per 100 ms window mean {statistics.mean(per_window):.1f} "
              f"(offered {expected:.1f}), max {max(per_window)} = {max(per_window) / expected:.2f}x, "
              f"first second {sum(per_window[:10])} (offered {offered:.0f})")  # fmt: skip
    n = max(1, len(hb_ms) + hb.errors)
    print(f"CPU over {wall:.0f} s (2 cores = 200%), user+sys (sys) s, % of one core:")
    for i, (user, system) in enumerate(per_server):
        print(f"  central process {i + 1}: {user + system:6.1f} ({system:.1f}) "
              f"{100 * (user + system) / wall:4.0f}%")  # fmt: skip
    print(f"  central, all:       {srv:6.1f}       {100 * srv / wall:4.0f}%  "
          f"{1000 * srv / n:.2f} ms/heartbeat (incl. /healthz)")  # fmt: skip
    if args.postgres:
        print(f"  PostgreSQL:         {pg:6.1f}       {100 * pg / wall:4.0f}%  "
              f"{1000 * pg / n:.2f} ms/heartbeat")  # fmt: skip
    print(f"  load generator:     {gen:6.1f} ({gen_sys:.1f}) {100 * gen / wall:4.0f}%  "
          f"{1e6 * gen / n:.0f} µs/heartbeat")  # fmt: skip
    other = machine - srv - pg - gen
    print(f"  rest of the machine:{other:6.1f}       {100 * other / wall:4.0f}%  (other processes)")
    print(f"server RSS {rss / 2**20:.0f} MB"
          + ("" if args.postgres else f", SQLite files {db_size / 2**20:.1f} MB"))  # fmt: skip
    ok = bool(hb_ms) and _pct(hb_ms, 0.99) < 100 and hb.errors == 0
    print(f"target p99 < 100 ms and 0 errors: {'met' if ok else 'NOT met'}")
    return ok


# -- uploads: S3 vs filesystem ----------------------------------------------------------


async def _upload_round(port: int, token: str, blobs: list[bytes], connections: int) -> tuple[float, int]:
    """Upload ``blobs`` over ``connections`` keep-alive connections: (seconds, errors)."""
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for blob in blobs:
        queue.put_nowait(blob)
    errors = 0

    async def worker() -> None:
        nonlocal errors
        conn = RawConnection("127.0.0.1", port)
        while not queue.empty():
            blob = queue.get_nowait()
            sha = hashlib.sha256(blob).hexdigest()
            head = _head("PUT", f"/api/v1/objects/{sha}", "central", token,
                         "application/octet-stream")  # fmt: skip
            try:
                status, _ = await conn.request(head, blob)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                status = 0
            if status != 201:
                errors += 1
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return time.perf_counter() - t0, errors


def run_uploads(args: argparse.Namespace) -> bool:
    from tests.s3server import start_seaweedfs

    size = int(args.upload_mb * 1024**2)
    rounds = args.rounds
    per_round = args.uploads // rounds
    with contextlib.ExitStack() as stack:
        s3 = stack.enter_context(start_seaweedfs())
        bucket = s3.new_bucket("bench")
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sf-bench-up-")))
        objects = ObjectsSettings(backend="s3", endpoint=s3.endpoint, bucket=bucket,
                                  region=s3.region, access_key_id=s3.access_key_id,
                                  secret_access_key=s3.secret_access_key)  # fmt: skip
        inits = {
            "filesystem": initialize(tmp / "fs", admin_password="bench"),
            "s3": initialize(tmp / "s3", admin_password="bench", objects=objects),
        }
        dirs = [inits["filesystem"].settings.data_dir, inits["s3"].settings.data_dir]
        servers, ports = stack.enter_context(_centrals(dirs, None))
        port = dict(zip(inits, ports, strict=True))
        token = {}
        for name, init in inits.items():
            r = httpx.post(f"http://127.0.0.1:{port[name]}/api/v1/enroll", timeout=10,
                           headers={"Authorization": f"Bearer {init.enrollment_token}"},
                           json={"host": "bench", "os": "Linux", "version": "1"})  # fmt: skip
            token[name] = r.json()["agent_token"]
        base = os.urandom(size)
        counter = 0

        def fresh(n: int) -> list[bytes]:
            nonlocal counter
            out = []
            for _ in range(n):
                counter += 1
                out.append(counter.to_bytes(16, "big") + base[16:])
            return out

        pid = {name: servers[i].pid for i, name in enumerate(inits)}
        weed_cpu0 = _tree_cpu([s3.proc.pid])
        cpu0 = {n: _proc_cpu_rss(p)[0] for n, p in pid.items()}
        rates: dict[str, list[float]] = {"filesystem": [], "s3": []}
        errors = {"filesystem": 0, "s3": 0}
        asyncio.run(_upload_round(port["s3"], token["s3"], fresh(8), 4))  # warm-up
        asyncio.run(_upload_round(port["filesystem"], token["filesystem"], fresh(8), 4))
        for r_index in range(rounds):
            order = ["filesystem", "s3"] if r_index % 2 == 0 else ["s3", "filesystem"]
            for name in order:
                seconds, errs = asyncio.run(
                    _upload_round(port[name], token[name], fresh(per_round), args.connections)
                )
                rates[name].append(per_round * size / seconds / 2**20)
                errors[name] += errs
        cpu = {n: _proc_cpu_rss(p)[0] - cpu0[n] for n, p in pid.items()}
        weed_cpu = _tree_cpu([s3.proc.pid]) - weed_cpu0

    print(f"\n{_machine_line()}")
    print(f"uploads of {args.upload_mb:g} MB: {per_round * rounds} per backend in {rounds} interleaved "
          f"rounds of {per_round}, {args.connections} connections; one central process per backend "
          f"(SQLite); S3 = SeaweedFS 4.48 `weed mini` on loopback, same disk")  # fmt: skip
    header = f"{'backend':<12}{'uploads':>8}{'errors':>8}{'median MB/s':>13}{'min':>8}{'max':>8}{'central CPU s':>15}"
    print(header)
    print("-" * len(header))
    for name in ("filesystem", "s3"):
        print(f"{name:<12}{per_round * rounds:>8}{errors[name]:>8}{statistics.median(rates[name]):>13.1f}"
              f"{min(rates[name]):>8.1f}{max(rates[name]):>8.1f}{cpu[name]:>15.1f}")  # fmt: skip
    print(f"(SeaweedFS server CPU during the S3 rounds: {weed_cpu:.1f} s)")
    ratio = statistics.median(rates["s3"]) / statistics.median(rates["filesystem"])
    ok = ratio >= 0.5 and errors["s3"] == 0 and errors["filesystem"] == 0
    print(f"S3 / filesystem throughput = {ratio:.2f}x   target >= 0.50x, 0 errors: "
          f"{'met' if ok else 'NOT met'}")  # fmt: skip
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scenario", choices=["heartbeats", "uploads", "all"], default="heartbeats",
                        help="what to measure (default: heartbeats)")  # fmt: skip
    parser.add_argument("--agents", type=int, default=2000, help="simulated agents (default: 2000)")
    parser.add_argument("--interval", type=float, default=30.0, help="heartbeat period in s (default: 30)")
    parser.add_argument("--duration", type=float, default=120.0, help="measured time in s (default: 120)")
    parser.add_argument("--connections", type=int, default=32,
                        help="client keep-alive connections in all (default: 32)")  # fmt: skip
    parser.add_argument("--processes", type=int, default=1, help="central processes sharing the database (default: 1)")
    parser.add_argument("--postgres", action="store_true", help="use a throw-away PostgreSQL cluster (default: SQLite)")
    parser.add_argument("--settle", type=float, default=0.0,
                        help="seconds to wait after enrollment before measuring (default: 0)")  # fmt: skip
    parser.add_argument("--client", choices=["raw", "httpx"], default="raw",
                        help="heartbeat generator: raw asyncio HTTP/1.1 (default) or the previous httpx one")  # fmt: skip
    parser.add_argument("--uploads", type=int, default=1000, help="uploads per backend (default: 1000)")
    parser.add_argument("--upload-mb", type=float, default=0.5, help="upload size in MB (default: 0.5)")
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds per backend (default: 10)")
    args = parser.parse_args()
    ok = True
    if args.scenario in ("heartbeats", "all"):
        ok = run_heartbeats(args) and ok
    if args.scenario in ("uploads", "all"):
        args.connections = min(args.connections, 8)
        ok = run_uploads(args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
