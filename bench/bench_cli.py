"""Benchmark: ``scanfort encrypt`` / ``decrypt`` of a 2,000-file folder, serial vs parallel.

Writes N synthetic CT slices (512x512 16-bit DICOM, never real data) and runs the real
command line as a subprocess with ``-j 1`` and ``-j <cpus>``, interleaved, medians printed,
with stderr a pipe (as in a log): the time to the first progress line shows that a long run
is not silent.

    .venv/bin/python bench/bench_cli.py [--files 2000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from scanfort.batch import default_jobs


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def make_inputs(folder: Path, count: int) -> int:
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    ds = pydicom.dcmread(path)
    ds.Rows = ds.Columns = 512
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    rng = np.random.default_rng(7)
    base = rng.integers(0, 2000, (512, 512), dtype=np.uint16)
    total = 0
    for i in range(count):
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{900000 + i}"
        ds.InstanceNumber = i + 1
        ds.PixelData = np.roll(base, i, axis=0).tobytes()
        target = folder / f"series{i // 500:02d}" / f"IMG{i:05d}.dcm"
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
        total += target.stat().st_size
    return total


def run(argv: list[str]) -> tuple[float, float | None, str]:
    """Wall time, time to the first line on stderr, and the last stderr line."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    first: float | None = None
    last = ""
    for line in proc.stderr:
        if first is None and line.strip():
            first = time.perf_counter() - start
        last = line.strip()
    if proc.wait() != 0:
        raise SystemExit(f"failed: {' '.join(argv)}: {last}")
    return time.perf_counter() - start, first, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=2000, help="number of slices")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats")
    args = parser.parse_args()
    exe = [sys.executable, "-m", "scanfort"]
    jobs = default_jobs()
    with tempfile.TemporaryDirectory(prefix="scanfort-bench-cli-") as tmp:
        root = Path(tmp)
        size = make_inputs(root / "in", args.files)
        identity = root / "site.key"
        recipient = subprocess.run([*exe, "keygen", "-o", str(identity)], check=True,
                                   capture_output=True, text=True).stdout.strip()
        times: dict[tuple[str, int], list[float]] = {}
        firsts: dict[tuple[str, int], list[float]] = {}
        for _ in range(args.repeats):
            for j in sorted({1, jobs}):
                for op in ("encrypt", "decrypt"):
                    out = root / f"{op}-{j}"
                    shutil.rmtree(out, ignore_errors=True)
                    if op == "encrypt":
                        argv = [*exe, "encrypt", "-r", recipient, "-j", str(j), "-o", str(out),
                                str(root / "in")]
                    else:
                        argv = [*exe, "decrypt", "-i", str(identity), "-j", str(j), "-o",
                                str(out), str(root / f"encrypt-{j}")]
                    wall, first, last = run(argv)
                    assert f"{args.files} files" in last, last
                    times.setdefault((op, j), []).append(wall)
                    if first is not None:
                        firsts.setdefault((op, j), []).append(first)
            shutil.rmtree(root / "decrypt-1", ignore_errors=True)
        print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; kernel {platform.release()}; "
              f"load average {os.getloadavg()[0]:.2f}")
        print(f"{args.files} CT slices 512x512 u16, {size / 1e6:.0f} MB; medians of "
              f"{args.repeats} interleaved repeats; stderr a pipe (a start line, then progress lines every 5 s)")
        print()
        print("| operation | jobs | wall s | files/s | MB/s | first line on stderr s | speed-up |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for op in ("encrypt", "decrypt"):
            serial = statistics.median(times[(op, 1)])
            for j in sorted({1, jobs}):
                wall = statistics.median(times[(op, j)])
                first_line = (f"{statistics.median(firsts[(op, j)]):.1f}"
                              if (op, j) in firsts else "-")
                print(f"| {op} | {j} | {wall:.1f} | {args.files / wall:.0f} | "
                      f"{size / wall / 1e6:.0f} | {first_line} | {serial / wall:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
