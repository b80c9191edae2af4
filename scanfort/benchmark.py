"""``scanfort bench``: chaos-cipher throughput against AES-256-GCM, measured in one run.

Single thread, on synthetic 16-bit images: a 512×512 CT slice and a 3000×3000 radiograph,
on every kernel this CPU runs (each forced by name, so the AES-NI and table kernels are
measured as a CPU without GFNI runs them) and the numpy reference. Every operation uses
a fresh key and nonce, so the per-image setup (S-box, logistic-map stream, parameters) is
always included. The variants of one case and operation are run round-robin (interleaved
repeats) and each figure is the median of its repeats, so drift and other processes on
the machine hit every variant alike. Also measures the peak RSS of a fresh process that
imports ``cipher`` and encrypts one CT slice (the edge agent's memory budget). Prints the
CPU, the kernel ``chaos.encrypt`` runs in this process, the table and every target of
issue 13 beside its measured figure.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cipher import chaos

CASES = {"CT slice 512x512 u16": (512, 512), "radiograph 3000x3000 u16": (3000, 3000)}
CT, RADIOGRAPH = CASES
KEYS = 256  # distinct keys cycled through: a fresh key for every operation
AES_KERNELS = ("vaes-avx2", "aesni-avx2", "aesni-sse", "neon-aes")  # SubBytes between affine maps
GFNI_KERNELS = ("gfni-avx512", "gfni-avx2")
# The figures before issue 13 (README: the same bench on a Rocket Lake Xeon): GFNI kernel
# and table kernel, ms for (case, operation). On another CPU they are only indicative;
# bench/bench_cipher_ab.py compares before and after on the same machine.
BEFORE_GFNI = {(CT, "encrypt"): 0.11, (CT, "decrypt"): 0.12, (RADIOGRAPH, "encrypt"): 2.69, (RADIOGRAPH, "decrypt"): 2.93}
BEFORE_TABLE = {(CT, "encrypt"): 0.59, (CT, "decrypt"): 0.62, (RADIOGRAPH, "encrypt"): 18.7, (RADIOGRAPH, "decrypt"): 21.2}

# Run in a fresh interpreter: import cipher, encrypt one CT slice with the process's
# kernel, report it, whether a JIT got loaded and the peak resident set (VmHWM).
RSS_SCRIPT = """
import json, os, sys
import numpy as np
import cipher
from cipher import chaos
img = np.random.default_rng(0).integers(0, 4096, (512, 512), dtype=np.uint16)
if sys.argv[1] == "default":
    chaos.encrypt(img, os.urandom(32), os.urandom(16))
else:
    chaos._encrypt_with(img, os.urandom(32), os.urandom(16), sys.argv[1])
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"kernel": chaos.kernel() if sys.argv[1] == "default" else sys.argv[1],
                  "jit_loaded": any(m.split(".")[0] in ("numba", "llvmlite") for m in sys.modules),
                  "peak_rss_bytes": int(hwm.split()[1]) * 1024}))
"""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernels() -> list[str]:
    """The kernels measured: every kernel this CPU runs, fastest first, the reference last."""
    return list(chaos.kernels())


def _fresh_keys() -> Callable[[], tuple[bytes, bytes]]:
    keys = itertools.cycle([(hashlib.sha256(b"bench key %d" % i).digest(), hashlib.sha256(b"bench nonce %d" % i).digest()[:16]) for i in range(KEYS)])
    return lambda: next(keys)


def _per_image(op: Callable[..., object], data: Any, *extra: object) -> Callable[[], object]:
    """``op(data, key, nonce, *extra)`` with the next of KEYS distinct keys at each call."""
    draw = _fresh_keys()
    return lambda: op(data, *draw(), *extra)


def _aes_encrypt(raw: bytes, key: bytes, nonce: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce[:12], raw, None)


def _medians(fns: list[Callable[[], object]], min_time: float, min_runs: int) -> list[float]:
    """Median seconds of each of ``fns``, run round-robin until every one has run
    ``min_runs`` times and the round-robin has taken ``min_time`` seconds in all. The
    slow reference gets at most as many rounds as fit, but at least ``min_runs``."""
    for fn in fns:
        fn()  # warm-up: first-touch page faults, caches
    times: list[list[float]] = [[] for _ in fns]
    start = time.perf_counter()
    while len(times[0]) < min_runs or time.perf_counter() - start < min_time:
        for fn, ts in zip(fns, times, strict=True):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [statistics.median(ts) for ts in times]


def run(min_time: float = 1.0, min_runs: int = 5,
        step: Callable[[], None] | None = None) -> list[dict[str, Any]]:
    """One row per (case, operation, kernel) plus the AES-256-GCM row of each case;
    ``step`` is called after each case (progress)."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    measured = kernels()
    fast = [k for k in measured if k != chaos.REFERENCE]
    for name, shape in CASES.items():
        img = rng.integers(0, 4096, shape, dtype=np.uint16)
        raw = img.tobytes()
        mb = img.nbytes / 1e6
        ct = chaos.encrypt(img, *_fresh_keys()())
        fns: list[Callable[[], object]] = [_per_image(_aes_encrypt, raw)]
        labels: list[tuple[str, str]] = [("AES-256-GCM encrypt", "")]
        for op, fn, data in (("encrypt", chaos._encrypt_with, img), ("decrypt", chaos._decrypt_with, ct)):
            for k in fast:
                fns.append(_per_image(fn, data, k))
                labels.append((f"chaos {op}", k))
        secs = _medians(fns, min_time, min_runs)
        # the reference is ~50x slower: measured apart, so it does not stretch the rounds
        for op, fn, data in (("encrypt", chaos._encrypt_with, img), ("decrypt", chaos._decrypt_with, ct)):
            secs += _medians([_per_image(fn, data, chaos.REFERENCE)], 0.0, 3)
            labels.append((f"chaos {op}", chaos.REFERENCE))
        aes_s = secs[0]
        for (what, k), s in zip(labels, secs, strict=True):
            rows.append({"case": name, "what": what, "kernel": k, "constant_time": chaos.constant_time(k) if k else True,
                         "ms": s * 1e3, "mb_s": mb / s, "vs_aes": aes_s / s})
        if step is not None:
            step()
    return rows


def peak_rss(kernel: str) -> dict[str, Any] | None:
    """Peak RSS (bytes) of a fresh ``python -c`` that imports cipher and encrypts one CT
    slice with ``kernel`` (``default``: the process's choice); None where it cannot be
    measured (no /proc, frozen binary)."""
    if getattr(sys, "frozen", False) or not Path("/proc/self/status").exists():
        return None
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT, kernel], capture_output=True, text=True, timeout=600, check=True)
    return {"run": kernel} | json.loads(out.stdout)


def _find(rows: list[dict[str, Any]], case: str, op: str, kernel: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["case"] == case and r["what"] == f"chaos {op}" and r["kernel"] == kernel), None)


def targets(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Issue 13's targets with the measured figure beside each (kernels this CPU lacks
    are left out); ``met`` is whether the figure meets the target."""
    out: list[dict[str, Any]] = []

    def add(target: str, r: dict[str, Any] | None, value: float, unit: str, met: bool) -> None:
        if r is not None:
            out.append({"target": target, "kernel": r["kernel"], "measured": f"{value:.3f}{unit}", "met": met})

    for k in AES_KERNELS:
        for op, ratio in (("encrypt", 0.5), ("decrypt", 0.45)):
            r = _find(rows, RADIOGRAPH, op, k)
            if r is not None:
                add(f"radiograph {op} >= {ratio}x AES-256-GCM (AES-NI kernel)", r, r["vs_aes"], "x", r["vs_aes"] >= ratio)
    for k in (chaos.kernel(), *AES_KERNELS):
        r = _find(rows, CT, "encrypt", k)
        if r is not None and not any(t["kernel"] == k and t["target"].startswith("CT slice") for t in out):
            add("CT slice encrypt <= 0.4 ms incl. setup", r, r["ms"], " ms", r["ms"] <= 0.4)
    for kinds, before, what in ((GFNI_KERNELS, BEFORE_GFNI, "GFNI"), (("table",), BEFORE_TABLE, "table")):
        for k in kinds:
            for (case, op), ms in before.items():
                r = _find(rows, case, op, k)
                if r is not None:
                    add(f"{case.split()[0]} {op} {what} <= README before ({ms} ms, Xeon)", r, r["ms"], " ms", r["ms"] <= ms)
    return out


def render(rows: list[dict[str, Any]], rss: list[dict[str, Any]]) -> str:
    out = [
        f"CPU: {cpu_model()}; chaos.encrypt runs the {chaos.kernel()} kernel in this process"
        f" ({'constant time' if chaos.constant_time(chaos.kernel()) else 'NOT constant time'})",
        "single thread; every operation with a fresh key and nonce (per-image setup included);"
        " medians of interleaved repeats; * = not constant time",
    ]
    hdr = f"{'case':26} {'operation':20} {'kernel':13} {'ms':>9} {'MB/s':>9} {'x AES-GCM':>10}"
    out += [hdr, "-" * len(hdr)]
    for r in rows:
        mark = "" if r["constant_time"] else "*"
        out.append(f"{r['case']:26} {r['what']:20} {r['kernel'] + mark:13} {r['ms']:9.2f} {r['mb_s']:9.1f} {r['vs_aes']:10.3f}")
    if rss:
        out.append("")
        out.append("peak RSS of a fresh process that imports cipher and encrypts one CT slice:")
        for r in rss:
            jit = ", a JIT loaded" if r["jit_loaded"] else ""
            out.append(f"  {r['run']:9} {r['peak_rss_bytes'] / 1e6:6.1f} MB  ({r['kernel']}{jit})")
    out.append("")
    out.append("targets (issue 13) beside the measured figures:")
    for t in targets(rows):
        out.append(f"  {'met ' if t['met'] else 'MISS'} {t['target']:58} {t['kernel']:12} {t['measured']}")
    out.append("published method: 2-4 s per image")
    return "\n".join(out)


def main(as_json: bool = False, min_time: float = 1.0) -> int:
    from scanfort.progress import Progress, style_for

    progress = Progress("bench", len(CASES) + 1, sys.stderr, unit="steps",
                        style=style_for(sys.stderr, json=as_json))
    try:
        rows = run(min_time, step=progress.advance)
        rss = [r for r in (peak_rss(k) for k in ("default", chaos.REFERENCE)) if r is not None]
        progress.advance()
    finally:
        progress.close()
    doc = {"cpu": cpu_model(), "kernel": chaos.kernel(), "rows": rows, "peak_rss": rss, "targets": targets(rows)}
    print(json.dumps(doc, indent=1) if as_json else render(rows, rss))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(as_json="--json" in sys.argv))
