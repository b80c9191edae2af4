"""Benchmark: many simulated agents heartbeating against central services on SQLite or PostgreSQL.

Starts ``scanfort central run`` as separate processes (``--processes N``, sharing one
database) on a fresh data dir, enrolls N agents through the API (spread over the
processes), then every agent sends a realistic heartbeat every INTERVAL seconds (random
phase) for DURATION seconds. Prints client-side latency percentiles and errors, with
``/healthz`` sampled once a second as the in-run reference, and the servers' CPU and RSS.
``--postgres`` runs on a throw-away PostgreSQL cluster on loopback (``tests/pgcluster.py``).

    .venv/bin/python bench/bench_central.py [--agents 2000] [--interval 30] [--duration 120]
    .venv/bin/python bench/bench_central.py --postgres --processes 2 --agents 5000

Targets: p99 < 100 ms and 0 errors for 2,000 agents every 30 s on SQLite (issue 5), and
for 5,000 agents every 30 s on PostgreSQL with two central processes (issue 14).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from service.bootstrap import initialize
from service.store import Store
from tests.pgcluster import throwaway_postgres


@dataclass
class Stats:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[str, int] = field(default_factory=dict)

    def add(self, seconds: float, status: int | str) -> None:
        if status == 200:
            self.latencies.append(seconds)
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
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


async def _timed(
    client: httpx.AsyncClient, stats: Stats, method: str, url: str, **kw: object
) -> httpx.Response | None:
    start = time.perf_counter()
    try:
        response = await client.request(method, url, **kw)  # type: ignore[arg-type]
    except httpx.HTTPError as exc:
        stats.add(time.perf_counter() - start, type(exc).__name__)
        return None
    stats.add(time.perf_counter() - start, response.status_code)
    return response


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
        "counters": {
            "seen": index,
            "protected": index,
            "forwarded": index,
            "quarantined": 0,
            "retries": 1,
        },
        "destinations": [
            {"name": "central", "kind": "central", "pending": depth, "last_success": time.time()},
            {"name": "pacs", "kind": "dicomweb", "pending": 0, "last_success": time.time()},
        ],
        "watcher": {"reconcile_finds": 0, "overflows": 0, "observers_alive": 2},
    }


async def _agent_loop(
    client: httpx.AsyncClient,
    stats: Stats,
    agent: tuple[str, str],
    index: int,
    interval: float,
    end: float,
    started: float,
) -> None:
    rng = random.Random(index)
    agent_id, token = agent
    headers = {"Authorization": f"Bearer {token}"}
    await asyncio.sleep(rng.uniform(0, interval))  # agents start at random phases
    next_at = time.monotonic()
    while next_at < end:
        await _timed(
            client,
            stats,
            "POST",
            "/api/v1/heartbeat",
            json=_heartbeat(agent_id, index, started, rng),
            headers=headers,
        )
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))


async def _reference_loop(client: httpx.AsyncClient, stats: Stats, end: float) -> None:
    while time.monotonic() < end:
        await _timed(client, stats, "GET", "/healthz")
        await asyncio.sleep(1.0)


async def _run(
    urls: list[str], tokens: list[str], interval: float, duration: float, connections: int
) -> dict[str, Stats]:
    per = max(1, connections // len(urls))
    limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(httpx.AsyncClient(base_url=u, limits=limits, timeout=30))
            for u in urls
        ]
        client = clients[0]
        enroll_stats = Stats()
        sem = asyncio.Semaphore(connections)
        agents: list[tuple[str, str]] = []

        async def enroll(i: int, token: str) -> None:
            async with sem:
                r = await _timed(
                    clients[i % len(clients)],
                    enroll_stats,
                    "POST",
                    "/api/v1/enroll",
                    json={"host": f"ws-{i:04d}", "os": "Linux", "version": "0.1.0"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            if r is not None and r.status_code == 200:
                agents.append((r.json()["agent_id"], r.json()["agent_token"]))

        t0 = time.perf_counter()
        await asyncio.gather(*(enroll(i, t) for i, t in enumerate(tokens)))
        print(f"enrolled {len(agents)} agents in {time.perf_counter() - t0:.1f} s", file=sys.stderr)

        hb_stats, ref_stats = Stats(), Stats()
        started = time.time()
        end = time.monotonic() + duration
        await asyncio.gather(
            _reference_loop(client, ref_stats, end),
            *(
                _agent_loop(clients[i % len(clients)], hb_stats, a, i, interval, end, started)
                for i, a in enumerate(agents)
            ),
        )
    return {"enroll": enroll_stats, "heartbeat": hb_stats, "healthz (reference)": ref_stats}


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _start_central(data: Path, db_url: str | None, port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "scanfort", "central", "run", "--data-dir", str(data),
               "--port", str(port), "--log-level", "warning"]
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=2000, help="simulated agents (default: 2000)")
    parser.add_argument("--interval", type=float, default=30.0, help="heartbeat period in s (default: 30)")
    parser.add_argument("--duration", type=float, default=120.0, help="measured time in s (default: 120)")
    parser.add_argument("--connections", type=int, default=100, help="client connection pool size (default: 100)")
    parser.add_argument("--processes", type=int, default=1, help="central processes sharing the database (default: 1)")
    parser.add_argument("--postgres", action="store_true", help="use a throw-away PostgreSQL cluster (default: SQLite)")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="sf-bench-central-"))
        db_url = None
        if args.postgres:
            admin = stack.enter_context(throwaway_postgres(max_connections=300))
            db_url = admin + "/postgres"
        data = Path(tmp) / "central"
        result = initialize(data, db_url=db_url, admin_password="bench")
        store = Store(result.settings.database_url)
        tokens = [store.mint_enrollment_token(3600)[1] for _ in range(args.agents)]
        store.close()
        servers: list[subprocess.Popen[bytes]] = []
        urls: list[str] = []
        try:
            for _ in range(args.processes):
                port = _free_port()
                servers.append(_start_central(data, db_url, port))
                urls.append(f"http://127.0.0.1:{port}")
            for url, server in zip(urls, servers, strict=True):
                if not _wait_ready(url, server):
                    print("central did not start", file=sys.stderr)
                    return 1
            cpu0 = sum(_proc_cpu_rss(s.pid)[0] for s in servers)
            wall0 = time.monotonic()
            stats = asyncio.run(_run(urls, tokens, args.interval, args.duration, args.connections))
            usage = [_proc_cpu_rss(s.pid) for s in servers]
            cpu1, rss = sum(u[0] for u in usage), sum(u[1] for u in usage)
            wall = time.monotonic() - wall0
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                server.wait(15)
        db_size = sum(p.stat().st_size for p in data.glob("central.sqlite3*"))

    backend = "PostgreSQL" if args.postgres else "SQLite"
    print(f"\nCPU: {_cpu_model()}, {os.cpu_count()} cores; kernel {platform.release()}")
    print(
        f"central on {backend} ({args.processes} process{'es' if args.processes > 1 else ''}), "
        f"{args.agents} agents, heartbeat every {args.interval:g} s "
        f"for {args.duration:g} s, {args.connections} client connections"
    )
    header = f"{'request':<22}{'count':>8}{'errors':>8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}"
    print(header)
    print("-" * len(header))
    for name, s in stats.items():
        ms = [x * 1000 for x in s.latencies]
        print(
            f"{name:<22}{len(ms) + s.errors:>8}{s.errors:>8}{_pct(ms, 0.5):>9.1f}"
            f"{_pct(ms, 0.9):>9.1f}{_pct(ms, 0.99):>9.1f}{max(ms, default=float('nan')):>9.1f}"
        )
        if s.statuses:
            print(f"{'':<22}errors by status: {s.statuses}")
    hb = [x * 1000 for x in stats["heartbeat"].latencies]
    ref = [x * 1000 for x in stats["healthz (reference)"].latencies]
    rate = len(hb) / args.duration
    print(
        f"\nheartbeat rate {rate:.1f}/s; p50 heartbeat / p50 healthz = "
        f"{statistics.median(hb) / statistics.median(ref):.2f}x"
        if hb and ref
        else ""
    )
    print(
        f"server CPU {cpu1 - cpu0:.1f} s over {wall:.0f} s ({100 * (cpu1 - cpu0) / wall:.0f}% of a core), "
        f"RSS {rss / 2**20:.0f} MB"
        + ("" if args.postgres else f", SQLite files {db_size / 2**20:.1f} MB")
    )
    ok = bool(hb) and _pct(hb, 0.99) < 100 and stats["heartbeat"].errors == 0
    print(f"target p99 < 100 ms and 0 errors: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
