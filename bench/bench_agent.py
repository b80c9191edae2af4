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

Each burst runs in a fresh agent, once per chaos kernel of ``--kernels`` (the protect
workers pin it: ``cipher_kernel`` in the config), ``--repeats`` times interleaved; the
last run goes on with idle and steady. The reference of each kernel is the protect
workers' own code run alone in one process on the same slices (``protect alone``): the
burst divided by ``--workers`` times it says what the agent around the workers costs.

Usage: .venv/bin/python bench/bench_agent.py [--slices 1000] [--idle 60] [--steady 30]
       [--mode file|dicom] [--kernels default,aesni-avx2] [--repeats 1]
       [--archive 20000,200000 --archive-idle 130]   (``--slices 0`` for the archive only)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cipher import keys  # noqa: E402
from cipher.pseudonym import PseudonymSecret  # noqa: E402
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
    info = Path("/proc/cpuinfo").read_text()
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines()
                if ln.startswith("model name")), "?")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines()
                  if ln.startswith("flags")), [])
    have = ", ".join(f for f in ("gfni", "vaes", "avx512f", "avx2", "aes", "sha_ni")
                     if f in flags) or "none of gfni/vaes/avx2/aes"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return [("machine", f"{os.cpu_count()} cores",
             f"{cpu} ({have}; {'no ' if 'gfni' not in flags else ''}GFNI), "
             f"kernel {os.uname().release}, load average {load} at start")]


def _proc_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of one process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def protect_alone(recipient: str, slices: list[Path], mode: str, kernel: str) -> float:
    """Reference: MB/s of one protect worker's work, in a child process, on these slices
    (the same code as the agent's workers, without the agent around it)."""
    script = (
        "import json, sys, time, tempfile; from pathlib import Path\n"
        "from agent.protect import Protector\n"
        "a = json.loads(sys.argv[1])\n"
        "from cipher.pseudonym import PseudonymSecret\n"
        "sec = Path(tempfile.mkdtemp(prefix='scanfort-bench-ref-')) / 'pseudonym.secret'\n"
        "sec.write_text(PseudonymSecret.generate().encode())\n"
        "p = Protector([a['rcpt']], Path(tempfile.mkdtemp(prefix='scanfort-bench-ref-')),"
        " kernel=a['kernel'] or None)\n"
        "def req(f):\n"
        "    st = Path(f).stat()\n"
        "    return {'path': f, 'size': st.st_size, 'mtime_ns': st.st_mtime_ns,"
        " 'modes': [a['mode']], 'names': {}, 'pseudonym_secret_file': str(sec)}\n"
        "for f in a['files'][:3]:\n"
        "    p.spool.discard([x['name'] for x in p.handle(req(f))['artifacts']])\n"
        "t, n = time.perf_counter(), 0\n"
        "for f in a['files']:\n"
        "    ans = p.handle(req(f)); assert ans['status'] == 'protected', ans\n"
        "    p.spool.discard([x['name'] for x in ans['artifacts']]); n += Path(f).stat().st_size\n"
        "print(n / (time.perf_counter() - t) / 1e6)\n")
    arg = json.dumps({"rcpt": recipient, "files": [str(p) for p in slices], "mode": mode,
                      "kernel": "" if kernel == "default" else kernel})
    out = subprocess.run([sys.executable, "-c", script, arg], cwd=REPO, check=True,
                         capture_output=True, text=True, timeout=300)
    return float(out.stdout.split()[-1])


def burst_run(args: argparse.Namespace, recipient: str, master: list[Path], total: int,
              kernel: str, tail: bool) -> dict[str, Any]:
    """One agent process: the burst (and with ``tail`` then idle and steady)."""
    m: dict[str, Any] = {"kernel": kernel}
    top: dict[str, Any] = {} if kernel == "default" else {"cipher_kernel": kernel}
    with tempfile.TemporaryDirectory(prefix="scanfort-bench-") as d, \
            Receiver(keep_objects=False) as rx:
        tmp = Path(d)
        # as enrolled at a site: DICOM mode keys pseudonyms and study keys with its secret
        (tmp / "pseudonym.secret").write_text(PseudonymSecret.generate().encode())
        config = write_config(
            tmp, [recipient], {"central": {"kind": "central", "mode": args.mode}},
            folder={"after_ack": "delete"}, settle_seconds=1.0, reconcile_seconds=60,
            workers=args.workers,
            central={"url": rx.url, "token": TOKEN, "agent_id": "bench", "heartbeat_seconds": 5},
            log_level="warning", pseudonym_secret_file=str(tmp / "pseudonym.secret"), **top)
        assert config.source is not None
        inbox, staging = config.folders[0].path, tmp / "staging"
        staging.mkdir()
        for p in master:  # links: the agent's after_ack deletes the link, not the slice
            os.link(p, staging / p.name)
        log = open(tmp / "agent.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "scanfort", "agent", "run", "--config",
                                 str(config.source)], cwd=REPO, stdout=log, stderr=log)
        try:
            time.sleep(3.0)  # start-up (imports; the workers start with the first files)
            cpu0, (u0, s0) = cpu_seconds(proc.pid), _proc_times(proc.pid)
            me0 = os.times()
            t0, wall0 = time.monotonic(), time.time()
            for p in sorted(staging.iterdir()):
                os.rename(p, inbox / p.name)
            t_end, got = wait_done(config.journal_path, len(master), args.stall)
            me1 = os.times()
            elapsed = t_end - t0
            u1, s1 = _proc_times(proc.pid)
            m.update(got=got, elapsed=elapsed, mb_s=total * got / len(master) / 1e6 / elapsed,
                     cpu_all=cpu_seconds(proc.pid) - cpu0, user=u1 - u0, sys=s1 - s0,
                     receiver=(me1.user + me1.system) - (me0.user + me0.system),
                     lat=list(latencies(config.journal_path).values()),
                     ends=[t - wall0 for t in stage_ends(config.journal_path)],
                     rss=peak_rss_mb(proc.pid), puts=rx.puts, objects=len(rx.sizes))
            try:
                status = json.loads((config.spool_dir / "status.json").read_text())
                m["ran"] = ",".join(status["workers"].get("kernels") or []) or "?"
            except (OSError, ValueError, KeyError):
                m["ran"] = "?"
            if tail and args.idle > 0:
                time.sleep(2.0)
                c0 = cpu_seconds(proc.pid)
                time.sleep(args.idle)
                m["idle"] = (cpu_seconds(proc.pid) - c0) / args.idle * 100
            if tail and args.steady > 0:
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
                m["steady"] = [v for k, v in latencies(config.journal_path).items()
                               if k not in before]
                m["steady_n"] = n
                m["rss"] = peak_rss_mb(proc.pid)
            time.sleep(6.0)  # one more heartbeat period: buffered events reach the receiver
            m["lost"] = sum("worker" in e.get("message", "") for e in rx.events)
            m["forwarded_events"] = sum(e.get("kind") == "forwarded" for e in rx.events)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
            if proc.returncode not in (0, -signal.SIGTERM):
                sys.stderr.write((tmp / "agent.log").read_text()[-3000:])
    return m


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def burst_rows(args: argparse.Namespace, runs: dict[str, list[dict[str, Any]]],
               refs: dict[str, list[float]], total: int, n: int) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    mb_target = 100.0 if args.mode == "file" else 90.0
    for kernel, ms in runs.items():
        k = f"[{ms[0]['ran']}]" if kernel == "default" else f"[{kernel}]"
        reps = f"median of {len(ms)}" if len(ms) > 1 else "one run"
        mb = med([m["mb_s"] for m in ms])
        ref = med(refs.get(kernel, []))
        parent = med([(m["user"] + m["sys"]) / max(m["got"], 1) * 1000 for m in ms])
        got = min(m["got"] for m in ms)
        rss = max(ms, key=lambda m: m["rss"][0])["rss"]
        lat = [x for m in ms for x in m["lat"]]
        rows += [
            (f"burst {k}: slices acknowledged", f"{got}/{n}",
             f"512×512×16 bit, {args.mode} mode, {total / 1e6:.0f} MB; "
             f"{ms[0]['puts']} PUTs, SHA-256 checked"),
            (f"burst {k}: throughput", f"{mb:.1f} MB/s",
             f"target ≥ {mb_target:.0f} ({'met' if mb >= mb_target else 'NOT met'}); {reps}: "
             + ", ".join(f"{m['mb_s']:.1f}" for m in ms)),
            (f"burst {k}: reference, protect alone", f"{ref:.1f} MB/s",
             f"one worker's code on the same slices, one process; burst = "
             f"{mb / (args.workers * ref) if ref else float('nan'):.2f}× {args.workers} of it"),
            (f"burst {k}: drop → all acknowledged", f"{med([m['elapsed'] for m in ms]):.2f} s",
             "includes 1 s settle; last settled / protected / acknowledged at "
             + " / ".join(f"{med([m['ends'][i] for m in ms]):.2f}" for i in range(3)) + " s"),
            (f"burst {k}: agent-process CPU per slice", f"{parent:.2f} ms",
             f"target ≤ 2 ({'met' if parent <= 2 else 'NOT met'}); the parent besides its "
             f"workers: user {med([m['user'] / max(m['got'], 1) * 1000 for m in ms]):.2f} + "
             f"system {med([m['sys'] / max(m['got'], 1) * 1000 for m in ms]):.2f} ms"),
            (f"burst {k}: CPU, agent + workers", f"{med([m['cpu_all'] for m in ms]):.1f} s",
             f"{med([m['cpu_all'] / m['elapsed'] for m in ms]):.2f} cores; workers "
             f"{med([(m['cpu_all'] - m['user'] - m['sys']) / max(m['got'], 1) * 1000 for m in ms]):.2f}"
             f" ms per slice; the receiver (this process) "
             f"{med([m['receiver'] / max(m['got'], 1) * 1000 for m in ms]):.2f} ms per slice"),
            (f"burst {k}: settled → ack p50 / p99",
             f"{pct(lat, 0.5) * 1000:.0f} / {pct(lat, 0.99) * 1000:.0f} ms",
             "queue wait included"),
            (f"burst {k}: peak RSS, all processes", f"{rss[0]:.0f} MB",
             f"target < 150 ({'met' if rss[0] < 150 else 'NOT met'}); agent {rss[1]:.0f} MB + "
             f"{len(rss[2])} worker(s) {' + '.join(f'{w:.0f}' for w in rss[2])} MB"),
        ]
        for m in ms:
            if "idle" in m:
                rows.append((f"idle {k}: agent CPU over {args.idle:.0f} s",
                             f"{m['idle']:.2f} % of a core",
                             f"target < 0.5 ({'met' if m['idle'] < 0.5 else 'NOT met'})"))
            if "steady" in m:
                p99 = pct(m["steady"], 0.99) * 1000
                rows += [
                    (f"steady {args.rate:.0f}/s {k}: settled → ack p50 / p99",
                     f"{pct(m['steady'], 0.5) * 1000:.0f} / {p99:.0f} ms",
                     f"target p99 < 100 ({'met' if p99 < 100 else 'NOT met'}); "
                     f"{len(m['steady'])}/{m['steady_n']} acknowledged"),
                    (f"whole run {k}: peak RSS, all processes", f"{m['rss'][0]:.0f} MB",
                     f"target < 150 ({'met' if m['rss'][0] < 150 else 'NOT met'}); agent "
                     f"{m['rss'][1]:.0f} MB + workers "
                     f"{' + '.join(f'{w:.0f}' for w in m['rss'][2])} MB"),
                ]
        rows.append((f"burst {k}: protect workers lost / forwarded events",
                     f"{sum(m['lost'] for m in ms)} / "
                     + ", ".join(str(m["forwarded_events"]) for m in ms),
                     "0 lost expected; one forwarded event per acknowledged delivery (per "
                     "run, steady included)"))
    return rows


def forwarded_event_cost(recipient: str, n: int = 2000, batch: int = 8) -> tuple[float, float]:
    """CPU µs per acknowledgement recorded the way a sender does (batches of ``batch``),
    without and with its ``forwarded`` event (built, stored in the same transaction, then
    taken out of the outbox as the status thread does; the POST itself not counted);
    medians of 3 interleaved runs, in this process."""
    from agent.journal import Artifact, Journal
    from agent.status import Reporter

    def run(events: bool) -> float:
        with tempfile.TemporaryDirectory(prefix="scanfort-bench-fwd-") as d:
            cfg = write_config(Path(d), [recipient],
                               {"c": {"kind": "folder", "path": str(Path(d) / "o")}})
            journal = Journal(Path(d) / "j.sqlite3")
            reporter = Reporter(cfg, journal)
            ids = [journal.record_protected(
                None, f"/in/{i}", 1, i, "/in", None, f"{i:064x}",
                [Artifact(0, "file", f"{i:020x}.file", "ab" * 32, 1, None)],
                [("c", "file", "pending")], study_keys=["cd" * 32]) for i in range(n)]
            t0 = time.process_time()
            for k in range(0, n, batch):
                journal.deliveries_done("c", [
                    (i, reporter.event_row("forwarded", file_id="ab" * 8, destination="c",
                                           study_keys=["cd" * 32], log_it=False)
                     if events else None) for i in ids[k:k + batch] if i is not None])
            while events and (rows := journal.outbox_peek(500)):
                body = '{"agent_id": "bench", "events": [' + ", ".join(b for _, b in rows)
                assert body
                journal.outbox_remove([e for e, _ in rows])
            cost = (time.process_time() - t0) / n * 1e6
            journal.close()
            return cost

    without, with_ = [], []
    for _ in range(3):
        without.append(run(False))
        with_.append(run(True))
    return med(without), med(with_)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--slices", type=int, default=1000)
    ap.add_argument("--idle", type=float, default=60.0)
    ap.add_argument("--steady", type=float, default=30.0)
    ap.add_argument("--rate", type=float, default=20.0)
    ap.add_argument("--workers", type=int, default=2, help="the agent's protect workers")
    ap.add_argument("--mode", default="file", choices=("file", "dicom", "auto"),
                    help="protection mode of the central destination")
    ap.add_argument("--kernels", default="default,aesni-avx2",
                    help="chaos kernels the protect workers run, one burst each (default: the "
                         "fastest this CPU runs; aesni-avx2: what a CPU without GFNI and VAES "
                         "runs); names this CPU lacks are skipped")
    ap.add_argument("--repeats", type=int, default=1,
                    help="bursts per kernel, interleaved; the table gives medians")
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
    from cipher import chaos

    kernels = [k for k in args.kernels.split(",") if k == "default" or k in chaos.kernels()]
    for k in set(args.kernels.split(",")) - set(kernels):
        rows.append((f"kernel {k}", "skipped", "this CPU cannot run it"))
    with tempfile.TemporaryDirectory(prefix="scanfort-bench-slices-") as d:
        master_dir = Path(d)
        print(f"generating {args.slices} slices…", file=sys.stderr)
        master, total = [], 0
        for i in range(args.slices):
            data = ct_slice(512, 512, seed=i)
            (master_dir / f"ct{i:05d}.dcm").write_bytes(data)
            master.append(master_dir / f"ct{i:05d}.dcm")
            total += len(data)
        # Flushed, so that each burst starts from files already on disk (a drop of finished
        # scans), not with half a gigabyte of dirty page cache its first fsyncs write back.
        os.sync()
        runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kernels}
        refs: dict[str, list[float]] = {k: [] for k in kernels}
        order = [(r, k) for r in range(args.repeats) for k in kernels]
        for i, (r, k) in enumerate(order):
            print(f"burst {r + 1}/{args.repeats}, kernel {k}…", file=sys.stderr)
            refs[k].append(protect_alone(recipient, master[:100], args.mode, k))
            runs[k].append(burst_run(args, recipient, master, total, k,
                                     tail=i == len(order) - 1))
    rows += burst_rows(args, runs, refs, total, args.slices)
    plain, with_event = forwarded_event_cost(recipient)
    rows.append(("acknowledgement recorded, CPU per delivery", f"{with_event:.0f} µs",
                 f"with its forwarded event; {plain:.0f} µs without (reference, same run): "
                 f"+{with_event - plain:.0f} µs per delivery, in this process"))
    rows.append(("load average at the end", " / ".join(f"{x:.2f}" for x in os.getloadavg()),
                 "1 / 5 / 15 min"))
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
