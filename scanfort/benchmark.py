"""``scanfort bench``: chaos-cipher throughput against AES-256-GCM, measured in one run.

Single thread, best of several repeats, on synthetic 16-bit images: a 512×512 CT slice and
a 3000×3000 radiograph. Prints a table and the ratios the targets refer to.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cipher import _kernels, chaos

CASES = {"CT slice 512x512 u16": (512, 512), "radiograph 3000x3000 u16": (3000, 3000)}


def _best(fn: Callable[[], object], min_time: float = 1.0, min_runs: int = 5) -> float:
    fn()  # warm-up (numba compilation, caches)
    best, spent, runs = float("inf"), 0.0, 0
    while spent < min_time or runs < min_runs:
        t = time.perf_counter()
        fn()
        dt = time.perf_counter() - t
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return best


def run(min_time: float = 1.0) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    key, nonce = os.urandom(32), os.urandom(16)
    aes = AESGCM(os.urandom(32))
    rows: list[dict[str, Any]] = []
    backends = ["numba", "numpy"] if _kernels.AVAILABLE else ["numpy"]
    for name, shape in CASES.items():
        img = rng.integers(0, 4096, shape, dtype=np.uint16)
        raw = img.tobytes()
        mb = img.nbytes / 1e6
        aes_s = _best(partial(aes.encrypt, nonce[:12], raw, None), min_time)
        rows.append({"case": name, "what": "AES-256-GCM encrypt", "ms": aes_s * 1e3, "mb_s": mb / aes_s, "vs_aes": 1.0})
        for be in backends:
            s = _best(partial(chaos._encrypt_with, img, key, nonce, be), min_time)
            rows.append({"case": name, "what": f"chaos encrypt ({be})", "ms": s * 1e3, "mb_s": mb / s, "vs_aes": aes_s / s})
        ct = chaos.encrypt(img, key, nonce)
        for be in backends:
            s = _best(partial(chaos._decrypt_with, ct, key, nonce, be), min_time)
            rows.append({"case": name, "what": f"chaos decrypt ({be})", "ms": s * 1e3, "mb_s": mb / s, "vs_aes": aes_s / s})
    return rows


def render(rows: list[dict[str, Any]]) -> str:
    kernel = "GFNI/AVX-512" if _kernels.GFNI else ("table" if _kernels.AVAILABLE else "none")
    head = f"single thread; numba kernel: {kernel}"
    hdr = f"{'case':26} {'operation':24} {'ms':>9} {'MB/s':>9} {'x AES-GCM':>10}"
    out = [head, hdr, "-" * len(hdr)]
    for r in rows:
        out.append(f"{r['case']:26} {r['what']:24} {r['ms']:9.2f} {r['mb_s']:9.1f} {r['vs_aes']:10.3f}")
    out.append("published method: 2-4 s per image; targets: numba >= 0.25x AES-GCM on the radiograph, CT slice <= 2 ms, numpy >= 40 MB/s")
    return "\n".join(out)


def main(as_json: bool = False, min_time: float = 1.0) -> int:
    rows = run(min_time)
    print(json.dumps(rows, indent=1) if as_json else render(rows))
    return 0
