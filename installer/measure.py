"""Measure the frozen bundle: size, cold and warm start, time to READY, idle RSS and CPU,
and the peak RSS of a frozen `scanfort encrypt` of one CT slice's worth of data.

    .venv/bin/python installer/measure.py build/dist/scanfort [build/dist/scanfort_*.deb]

"Cold" drops the page cache first when allowed (root on Linux), so the binary and its
libraries are read from disk as on a freshly booted workstation; otherwise it says so.
The idle figures come from the frozen agent hosted as under systemd (`service run-host`
with a notify socket), watching one empty folder, after it sent READY=1.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cipher import keys

IDLE_SECONDS = 30


def tree_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def proc_stats(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds) of a running process from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    return rss_kb * 1024, cpu


def peak_rss_of(argv: list[str], env: dict[str, str]) -> int:
    """Peak RSS (bytes) of a child process run to completion (wait4's ru_maxrss, in KiB)."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{argv[1]} failed: {err.read().decode(errors='replace')}")
    return usage.ru_maxrss * 1024


def main(argv: list[str]) -> int:
    bundle = Path(argv[1]).resolve()
    exe = bundle / "scanfort"
    rows: list[tuple[str, str]] = []
    rows.append(("bundle size on disk", f"{tree_size(bundle) / 1e6:.0f} MB"))
    if len(argv) > 2:
        rows.append((".deb size", f"{Path(argv[2]).stat().st_size / 1e6:.0f} MB"))

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp), "TMPDIR": str(tmp)}
        cold = drop_caches()
        first = timed([str(exe), "--version"], env)
        rows.append((f"start, `scanfort --version` ({'cold' if cold else 'first run'})",
                     f"{first:.2f} s"))
        warm = statistics.median(timed([str(exe), "--version"], env) for _ in range(5))
        rows.append(("start, `scanfort --version` (warm, median of 5)", f"{warm:.2f} s"))

        _, recipient = keys.generate_identity()
        scan = tmp / "slice.bin"
        scan.write_bytes(os.urandom(512 * 512 * 2))  # a 512x512 16-bit CT slice's size
        encrypt = [str(exe), "encrypt", "-r", recipient, "-o", str(tmp / "enc"), str(scan)]
        peak_rss_of(encrypt, env)  # warm the page cache
        shutil.rmtree(tmp / "enc")
        rss = peak_rss_of(encrypt, env)
        rows.append(("peak RSS, `scanfort encrypt` of one 512 KiB file (a CT slice)", f"{rss / 1e6:.0f} MB"))
        (tmp / "in").mkdir()
        cfg = tmp / "agent.toml"
        cfg.write_text(
            f'recipients = ["{recipient}"]\nspool_dir = "{tmp}/spool"\nlog_dir = "{tmp}/logs"\n'
            f'[destinations.out]\nkind = "folder"\npath = "{tmp}/out"\n'
            f'[[folders]]\npath = "{tmp}/in"\ndestinations = ["out"]\n'
        )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp / "notify.sock"))
        sock.settimeout(300)
        cold = drop_caches()
        start = time.perf_counter()
        proc = subprocess.Popen([str(exe), "service", "run-host", "--config", str(cfg)],
                                env=env | {"NOTIFY_SOCKET": str(tmp / "notify.sock")},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
            ready = time.perf_counter() - start
            rows.append((f"service start to READY=1 ({'cold' if cold else 'first run'})",
                         f"{ready:.2f} s"))
            time.sleep(5)  # let start-up work (initial scan, first heartbeat) finish
            _, cpu0 = proc_stats(proc.pid)
            time.sleep(IDLE_SECONDS)
            rss, cpu1 = proc_stats(proc.pid)
            rows.append(("idle RSS (one empty watched folder)", f"{rss / 1e6:.0f} MB"))
            rows.append((f"idle CPU over {IDLE_SECONDS} s",
                         f"{100 * (cpu1 - cpu0) / IDLE_SECONDS:.2f} % of a core"))
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
            sock.close()

    width = max(len(k) for k, _ in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for key, value in rows:
        print(f"| {key.ljust(width)} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
