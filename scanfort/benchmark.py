"""``scanfort bench``: chaos-cipher throughput against AES-256-GCM, measured in one run.

Single thread, best of several repeats, on synthetic 16-bit images: a 512×512 CT slice and
a 3000×3000 radiograph, on every backend this install has (native C extension, numba,
numpy). Every operation uses a fresh key and nonce, so the per-image setup (S-box,
logistic-map stream, parameters) is always included. Also measures, per backend, the peak
RSS of a fresh process that imports ``cipher`` and encrypts one CT slice (the edge agent's
memory budget). Prints a table and the ratios the targets refer to.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cipher import chaos

CASES = {"CT slice 512x512 u16": (512, 512), "radiograph 3000x3000 u16": (3000, 3000)}
KEYS = 256  # distinct keys cycled through: more than the S-box cache holds

# Run in a fresh interpreter per backend: import cipher, encrypt one CT slice, report the
# kernel that ran, whether numba got loaded and the peak resident set (VmHWM).
RSS_SCRIPT = """
import json, os, sys
import numpy as np
import cipher
from cipher import chaos
img = np.random.default_rng(0).integers(0, 4096, (512, 512), dtype=np.uint16)
chaos.encrypt(img, os.urandom(32), os.urandom(16))
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"kernel": chaos.kernel(), "numba_loaded": "numba" in sys.modules,
                  "peak_rss_bytes": int(hwm.split()[1]) * 1024}))
"""


def backends() -> list[str]:
    """The backends this install can run, fastest first (imports numba if installed)."""
    from cipher import _kernels

    return ["native"] * (chaos._native is not None) + ["numba"] * _kernels.AVAILABLE + ["numpy"]


def label(backend: str) -> str:
    """``native, GFNI`` / ``numba, table`` / ``numpy``: the backend and its kernel here."""
    kernel = chaos.kernel(backend)
    return kernel.replace(" GFNI/AVX-512", ", GFNI").replace(" table", ", table")


def _best(fn: Callable[[], object], min_time: float = 1.0, min_runs: int = 5) -> float:
    fn()  # warm-up (numba loading, caches)
    best, spent, runs = float("inf"), 0.0, 0
    while spent < min_time or runs < min_runs:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def _fresh_keys() -> Callable[[], tuple[bytes, bytes]]:
    keys = itertools.cycle([(hashlib.sha256(b"bench key %d" % i).digest(), hashlib.sha256(b"bench nonce %d" % i).digest()[:16]) for i in range(KEYS)])
    return lambda: next(keys)


def _per_image(op: Callable[..., object], data: Any, *extra: object) -> Callable[[], object]:
    """``op(data, key, nonce, *extra)`` with the next of KEYS distinct keys at each call."""
    draw = _fresh_keys()
    return lambda: op(data, *draw(), *extra)


@contextmanager
def _gfni_off(off: bool) -> Iterator[None]:
    """SCANFORT_CHAOS_GFNI=0 while measuring the native table kernel on a GFNI CPU."""
    saved = os.environ.get("SCANFORT_CHAOS_GFNI")
    if off:
        os.environ["SCANFORT_CHAOS_GFNI"] = "0"
    try:
        yield
    finally:
        if off:
            if saved is None:
                del os.environ["SCANFORT_CHAOS_GFNI"]
            else:
                os.environ["SCANFORT_CHAOS_GFNI"] = saved


def variants() -> list[tuple[str, bool]]:
    """(backend, GFNI switched off) pairs to measure: every backend as configured, plus the
    native table kernel where the native backend would use GFNI (it is what CPUs without
    GFNI run)."""
    out = [(be, False) for be in backends()]
    if chaos._native is not None and "GFNI" in chaos.kernel("native"):
        out.insert(1, ("native", True))
    return out


def _aes_encrypt(raw: bytes, key: bytes, nonce: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce[:12], raw, None)


def run(min_time: float = 1.0, min_runs: int = 5) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    rows: list[dict[str, Any]] = []
    measured = variants()
    for name, shape in CASES.items():
        img = rng.integers(0, 4096, shape, dtype=np.uint16)
        raw = img.tobytes()
        mb = img.nbytes / 1e6
        aes_s = _best(_per_image(_aes_encrypt, raw), min_time, min_runs)
        rows.append({"case": name, "what": "AES-256-GCM encrypt", "kernel": "", "ms": aes_s * 1e3, "mb_s": mb / aes_s, "vs_aes": 1.0})
        for op, fn in (("encrypt", chaos._encrypt_with), ("decrypt", chaos._decrypt_with)):
            data = img if op == "encrypt" else chaos.encrypt(img, os.urandom(32), os.urandom(16))
            for be, off in measured:
                with _gfni_off(off):
                    s = _best(_per_image(fn, data, be), min_time, min_runs)
                    what, kernel = f"chaos {op} ({label(be)})", chaos.kernel(be)
                rows.append({"case": name, "what": what, "kernel": kernel, "ms": s * 1e3, "mb_s": mb / s, "vs_aes": aes_s / s})
    return rows


def peak_rss(backend: str) -> dict[str, Any] | None:
    """Peak RSS (bytes) of a fresh ``python -c`` that imports cipher and encrypts one CT
    slice on ``backend``; None where it cannot be measured (no /proc, frozen binary)."""
    if getattr(sys, "frozen", False) or not Path("/proc/self/status").exists():
        return None
    env = dict(os.environ, SCANFORT_CHAOS_BACKEND=backend)
    out = subprocess.run([sys.executable, "-c", RSS_SCRIPT], env=env, capture_output=True, text=True, timeout=600, check=True)
    return {"backend": backend} | json.loads(out.stdout)


def render(rows: list[dict[str, Any]], rss: list[dict[str, Any]]) -> str:
    out = ["single thread; every operation with a fresh key and nonce (per-image setup included)"]
    hdr = f"{'case':26} {'operation':30} {'ms':>9} {'MB/s':>9} {'x AES-GCM':>10}"
    out += [hdr, "-" * len(hdr)]
    for r in rows:
        out.append(f"{r['case']:26} {r['what']:30} {r['ms']:9.2f} {r['mb_s']:9.1f} {r['vs_aes']:10.3f}")
    if rss:
        out.append("")
        out.append("peak RSS of a fresh process that imports cipher and encrypts one CT slice:")
        for r in rss:
            numba = ", numba loaded" if r["numba_loaded"] else ""
            out.append(f"  {r['backend']:7} {r['peak_rss_bytes'] / 1e6:6.1f} MB  ({r['kernel']}{numba})")
    out.append("published method: 2-4 s per image; targets: numba >= 0.25x AES-GCM on the radiograph, CT slice <= 2 ms (native <= 0.5 ms), numpy >= 40 MB/s")
    return "\n".join(out)


def main(as_json: bool = False, min_time: float = 1.0) -> int:
    rows = run(min_time)
    rss = [r for r in (peak_rss(be) for be in backends()) if r is not None]
    print(json.dumps({"rows": rows, "peak_rss": rss}, indent=1) if as_json else render(rows, rss))
    return 0

