"""Edge agent benchmark (a benchmark, never a timed test): prints a table.

1. Burst: 1000 synthetic CT slices (512×512, 16-bit) dropped into the watched folder at
   once (renamed in from a staging dir) → time until the local receiver acknowledged all
   of them, throughput, p50/p99 latency from settled to acknowledged, agent CPU seconds
   and peak RSS.
2. Idle: agent CPU over 60 s with nothing to do.
3. Steady: 20 slices/s for 30 s → p50/p99 settled→acknowledged latency.
4. Idle with an archive (``--archive 20000,200000``): the folder keeps that many files
   already sent (``after_ack = "keep"``, 100 per study folder, recorded ``done`` in the
   journal as the agent leaves them), nothing new arrives; agent CPU over ``--archive-idle``
   seconds at the default ``reconcile_seconds = 60``, against an empty folder measured in
   the same run (the reference).

The agent runs as its own process (``scanfort agent run``) with its protect workers as
child processes; CPU and peak RSS are summed over all of them (each process's own peak,
so the sum is an upper bound). The receiver is the central's object-upload API on
loopback, in this process.

Usage: .venv/bin/python bench/bench_agent.py [--slices 1000] [--idle 60] [--steady 30]
       [--archive 20000,200000 --archive-idle 130]   (``--slices 0`` for the archive only)
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cipher import keys  # noqa: E402
from tests.helpers import TOKEN, Receiver, child_pids, ct_slice, write_config  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def cpu_seconds(pid: int) -> float:
    """CPU of the agent and its live workers (the workers live as long as the agent)."""
    return _cpu(pid) + sum(_cpu(c) for c in child_pids(pid))


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_rss_mb(pid: int) -> tuple[float, float, list[float]]:
    """(sum of the peaks of the agent and its workers, the agent's peak, each worker's)."""
    own = _status_kb(pid, "VmHWM") / 1024
    workers = [_status_kb(c, "VmHWM") / 1024 for c in child_pids(pid)]
    return own + sum(workers), own, workers


def rss_note(pid: int) -> tuple[str, str]:
    total, own, workers = peak_rss_mb(pid)
    return f"{total:.0f} MB", (f"agent {own:.0f} MB + {len(workers)} worker(s) "
                               f"{' + '.join(f'{w:.0f}' for w in workers)} MB; target < 150")


def latencies(journal: Path) -> dict[int, float]:
    """item id → seconds from settled to the last destination's acknowledgement."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT i.id, MAX(d.done_at) - i.settled_at FROM items i JOIN deliveries d "
            "ON d.item_id = i.id WHERE i.state = 'done' GROUP BY i.id").fetchall()
    finally:
        db.close()
    return {int(i): float(lat) for i, lat in rows}


def stage_ends(journal: Path) -> tuple[float, float, float]:
    """Wall-clock times of the last settle, the last protection and the last acknowledgement
    (an item is inserted into the journal when its protection is recorded)."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
    try:
        settled, protected = db.execute(
            "SELECT MAX(settled_at), MAX(discovered_at) FROM items").fetchone()
        acked = db.execute("SELECT MAX(done_at) FROM deliveries").fetchone()[0]
    finally:
        db.close()
    return float(settled), float(protected), float(acked)


def done_count(journal: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=10)
        try:
            return int(db.execute("SELECT COUNT(*) FROM items WHERE state='done'").fetchone()[0])
        finally:
            db.close()
    except sqlite3.Error:
        return 0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def wait_done(journal: Path, n: int, stall: float) -> tuple[float, int]:
    """Wait until ``n`` items are done, or nothing progressed for ``stall`` seconds.

    Returns (time of the last progress, items done) so that a stalled run still reports
    what it measured, and says so.
    """
    last, last_t = -1, time.monotonic()
    while True:
        done = done_count(journal)
        if done != last:
            last, last_t = done, time.monotonic()
        if done >= n:
            return last_t, done
        if time.monotonic() - last_t > stall:
            print(f"bench: stalled at {done} of {n} acknowledged", file=sys.stderr)
            return last_t, done
        time.sleep(0.05)


def _archive(tmp: Path, recipient: str, files: int) -> Path:
    """A config whose folder holds ``files`` kept files, every one ``done`` in the journal."""
    from agent.journal import Journal

    config = write_config(tmp, [recipient], {"share": {"kind": "folder",
                                                        "path": str(tmp / "share")}},
                          folder={"after_ack": "keep"}, reconcile_seconds=60,
                          log_level="warning")
    assert config.source is not None
    inbox = config.folders[0].path
    rows = []
    journal = Journal(config.journal_path)
    now = time.time()
    for i in range(files):
        study = inbox / f"study{i // 100:05d}"
        if i % 100 == 0:
            study.mkdir()
        path = study / f"IMG{i % 100:04d}.dcm"
        path.write_bytes(b"kept")
        st = path.stat()
        rows.append((str(path), st.st_size, st.st_mtime_ns, "00" * 32, config.folders[0].key,
                     journal.file_id(str(path)), "done", now, now, now))
    with journal._tx() as db:  # the bench's shortcut: what a year of runs leaves behind
        db.executemany("INSERT INTO items(path, size, mtime_ns, sha256, folder, file_id, state,"
                       " discovered_at, settled_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                       rows)
    journal.close()
    # directories written just now are listed until their mtime is old enough to trust
    old = time.time() - 3600
    for d in [inbox, *inbox.iterdir()]:
        os.utime(d, (old, old))
    return config.source


def idle_with_archive(recipient: str, files: int, seconds: float) -> tuple[float, float]:
    """(% of a core over ``seconds`` once start-up is over, start-up seconds)."""
    with tempfile.TemporaryDirectory(prefix="scanfort-bench-idle-") as d:
        source = _archive(Path(d), recipient, files)
        log = open(Path(d) / "agent.log", "wb")
        t0 = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "scanfort", "agent", "run", "--config",
                                 str(source)], cwd=REPO, stdout=log, stderr=log)
        try:
            # start-up is over when the agent uses less than 5 % of a core for 2 s
            prev = cpu_seconds(proc.pid)
            while True:
                time.sleep(2.0)
                cur = cpu_seconds(proc.pid)
                if cur - prev < 0.1 or time.monotonic() - t0 > 600:
                    break
                prev = cur
            startup = time.monotonic() - t0
            c0 = cpu_seconds(proc.pid)
            time.sleep(seconds)
            return (cpu_seconds(proc.pid) - c0) / seconds * 100, startup
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def archive_rows(recipient: str, sizes: list[int], seconds: float) -> list[tuple[str, str, str]]:
    """Interleaved: empty reference, then each archive size."""
    ref, _ = idle_with_archive(recipient, 0, seconds)
    rows = [(f"idle, empty folder (reference), {seconds:.0f} s", f"{ref:.2f} % of a core",
             "reconcile_seconds = 60")]
    for n in sizes:
        pct_core, startup = idle_with_archive(recipient, n, seconds)
        rows.append((f"idle, {n} kept files, {seconds:.0f} s", f"{pct_core:.2f} % of a core",
                     f"target < 0.5; {pct_core / ref if ref else float('nan'):.2f}x the "
                     f"reference; start-up {startup:.0f} s"))
    return rows


def platform_rows() -> list[tuple[str, str, str]]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in
                Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
               "?")
    flags = Path("/proc/cpuinfo").read_text()
    gfni = "gfni" if " gfni" in flags else "no GFNI"
    return [("machine", f"{os.cpu_count()} cores", f"{cpu}, {gfni}, kernel {os.uname().release}")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--steady", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2, help="the agent's protect workers")
    ap.add_argument("--mode", default="file", choices=("file", "dicom", "auto"),
                    help="protection mode of the central destination")
    ap.add_argument("--stall", type=float, default=60.0,
                    help="give up after this many seconds without progress")
    ap.add_argument("--archive", default="",
                    help="idle with this many kept files, comma-separated (e.g. 20000,200000)")
    ap.add_argument("--archive-idle", type=float, default=130.0,
                    help="seconds measured per archive size")
    args = ap.parse_args()
    _, recipient = keys.generate_identity()
    rows: list[tuple[str, str, str]] = platform_rows()
    if args.archive:
        rows += archive_rows(recipient, [int(n) for n in args.archive.split(",")],
                             args.archive_idle)
    if args.slices <= 0:
        _print(rows)
        return 0
    with tempfile.TemporaryDirectory(prefix="scanfort-bench-") as d, Receiver(keep_objects=False) as rx:
        tmp = Path(d)
        config = write_config(
            tmp, [recipient], {"central": {"kind": "central", "mode": args.mode}},
            folder={"after_ack": "delete"}, settle_seconds=1.0, reconcile_seconds=60,
            workers=args.workers,
            central={"url": rx.url, "token": TOKEN, "agent_id": "bench", "heartbeat_seconds": 5},
            log_level="warning")
        assert config.source is not None
        inbox, staging = config.folders[0].path, tmp / "staging"
        staging.mkdir()
        print(f"generating {args.slices} slices…", file=sys.stderr)
        total = 0
        for i in range(args.slices):
            data = ct_slice(512, 512, seed=i)
            (staging / f"ct{i:05d}.dcm").write_bytes(data)
            total += len(data)
        # The slices were written just now: flush them, so that the burst starts from files
        # already on disk (a drop of finished scans) and not with half a gigabyte of dirty
        # page cache that the agent's first fsyncs would have to write back first.
        os.sync()
        log = open(tmp / "agent.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "scanfort", "agent", "run", "--config",
                                 str(config.source)], cwd=REPO, stdout=log, stderr=log)
        try:
            time.sleep(3.0)  # start-up (imports; the workers start with the first files)
            cpu0, own0 = cpu_seconds(proc.pid), _cpu(proc.pid)
            t0, wall0 = time.monotonic(), time.time()
            for p in sorted(staging.iterdir()):
                os.rename(p, inbox / p.name)
            t_end, got = wait_done(config.journal_path, args.slices, args.stall)
            elapsed = t_end - t0
            cpu_burst = cpu_seconds(proc.pid) - cpu0
            cpu_parent = _cpu(proc.pid) - own0
            lat = list(latencies(config.journal_path).values())
            ends = [t - wall0 for t in stage_ends(config.journal_path)]
            rows += [
                ("burst: slices acknowledged", f"{got}/{args.slices}",
                 f"512×512×16 bit, {args.mode} mode"),
                ("burst: MB (plaintext)", f"{total * got / args.slices / 1e6:.0f}", ""),
                ("burst: drop → all acknowledged", f"{elapsed:.2f} s", "includes 1 s settle"),
                ("burst: throughput", f"{total * got / args.slices / 1e6 / elapsed:.1f} MB/s",
                 "target ≥ 100 file mode, ≥ 90 dicom mode"),
                ("burst: agent-process CPU per slice", f"{cpu_parent / max(got, 1) * 1000:.2f} ms",
                 "target ≤ 2 ms (the parent, besides its workers)"),
                ("burst: last settled / protected / acknowledged",
                 " / ".join(f"{t:.2f}" for t in ends), "seconds after the drop"),
                ("burst: settled → ack p50", f"{pct(lat, 0.5) * 1000:.0f} ms", ""),
                ("burst: settled → ack p99", f"{pct(lat, 0.99) * 1000:.0f} ms", ""),
                ("burst: agent CPU (all processes)", f"{cpu_burst:.1f} s",
                 f"{cpu_burst / elapsed:.2f} cores; agent {cpu_parent:.1f} s, workers "
                 f"{cpu_burst - cpu_parent:.1f} s"),
                ("burst: agent peak RSS (all processes)", *rss_note(proc.pid)),
                ("receiver: objects", f"{len(rx.sizes)}", f"{rx.puts} PUTs, SHA-256 checked"),
            ]
            if args.idle > 0:
                time.sleep(2.0)
                c0 = cpu_seconds(proc.pid)
                time.sleep(args.idle)
                idle = (cpu_seconds(proc.pid) - c0) / args.idle * 100
                rows.append((f"idle: agent CPU over {args.idle:.0f} s", f"{idle:.2f} % of a core",
                             "target < 0.5 %"))
            if args.steady > 0:
                n = int(args.steady * args.rate)
                before = set(latencies(config.journal_path))
                blobs = [ct_slice(512, 512, seed=100_000 + i) for i in range(n)]
                start = time.monotonic()
                for i, blob in enumerate(blobs):
                    (staging / f"s{i:05d}.dcm").write_bytes(blob)
                    delay = start + i / args.rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    os.rename(staging / f"s{i:05d}.dcm", inbox / f"s{i:05d}.dcm")
                wait_done(config.journal_path, got + n, args.stall)
                lat2 = [v for k, v in latencies(config.journal_path).items() if k not in before]
                rows += [
                    (f"steady {args.rate:.0f}/s: slices acknowledged", f"{len(lat2)}/{n}", ""),
                    (f"steady {args.rate:.0f}/s: settled → ack p50",
                     f"{pct(lat2, 0.5) * 1000:.0f} ms", ""),
                    (f"steady {args.rate:.0f}/s: settled → ack p99",
                     f"{pct(lat2, 0.99) * 1000:.0f} ms", "target < 100"),
                    ("agent peak RSS (whole run, all processes)", *rss_note(proc.pid)),
                ]
            time.sleep(6.0)  # one more heartbeat period: buffered events reach the receiver
            lost = sum("worker" in e.get("message", "") for e in rx.events)
            rows.append(("protect workers lost (killed or crashed)", f"{lost}", "0 expected"))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            if proc.returncode not in (0, -signal.SIGTERM):
                sys.stderr.write((tmp / "agent.log").read_text()[-3000:])
    _print(rows)
    return 0


def _print(rows: list[tuple[str, str, str]]) -> None:
    width = max(len(r[0]) for r in rows)
    vwidth = max(len(r[1]) for r in rows)
    print(f"| {'measure':<{width}} | {'value':>{vwidth}} | note |")
    print(f"|{'-' * (width + 2)}|{'-' * (vwidth + 2)}|------|")
    for name, value, note in rows:
        print(f"| {name:<{width}} | {value:>{vwidth}} | {note} |")


if __name__ == "__main__":
    raise SystemExit(main())
