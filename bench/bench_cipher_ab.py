"""Before/after on this machine: the chaos kernels of a base commit against this tree's.

``python bench/bench_cipher_ab.py [BASE] [ROUNDS]`` (BASE defaults to ``main``) exports
BASE with ``git archive`` into a temporary directory, builds its C extension there, then
alternates fresh processes of the base and of this tree for ROUNDS rounds (default 5).
Each process measures, on the same synthetic CT slice and radiograph as ``scanfort
bench``, AES-256-GCM and the kernels both trees have (GFNI/AVX-512 where the CPU has it,
the AES-NI kernels where both trees name them, and the table kernel), each the median of
interleaved repeats with a fresh key per operation; the table prints the median over rounds and the after/before ratio. The issue's
targets "GFNI kernels / the table kernel no slower than today" are the ratios here.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs in the tree under test. argv: "base" or "after". A tree from before issue 13
# selects its native kernel with SCANFORT_CHAOS_GFNI at call time; later trees by name.
CHILD = r"""
import hashlib, itertools, json, os, statistics, sys, time
import numpy as np
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cipher import chaos
tree = sys.argv[1]
if not hasattr(chaos, "kernels"):  # a tree from before issue 13
    native = chaos._native
    gfni = bool(native is not None and native.GFNI)
    def run(op, data, key, nonce, kernel):
        os.environ["SCANFORT_CHAOS_GFNI"] = "1" if kernel == "gfni" else "0"
        return (chaos._encrypt_with if op == "encrypt" else chaos._decrypt_with)(data, key, nonce, "native")
    kernels = ["gfni", "table"] if gfni else ["table"]
else:  # named kernels: GFNI as "gfni" (comparable with the old tree), the AES-NI ones by name
    names = {"gfni": "gfni-avx512", "vaes-avx2": "vaes-avx2", "aesni-avx2": "aesni-avx2", "aesni-sse": "aesni-sse", "table": "table"}
    def run(op, data, key, nonce, kernel):
        return (chaos._encrypt_with if op == "encrypt" else chaos._decrypt_with)(data, key, nonce, names[kernel])
    kernels = [k for k, name in names.items() if name in chaos.kernels()]
keys = itertools.cycle([(hashlib.sha256(b"ab key %d" % i).digest(), hashlib.sha256(b"ab nonce %d" % i).digest()[:16]) for i in range(256)])
rng = np.random.default_rng(0)
out = {}
for case, shape in (("CT slice 512x512 u16", (512, 512)), ("radiograph 3000x3000 u16", (3000, 3000))):
    img = rng.integers(0, 4096, shape, dtype=np.uint16)
    raw = img.tobytes()
    ct = chaos.encrypt(img, *next(keys))
    fns = {("AES-256-GCM", "encrypt"): lambda: AESGCM(next(keys)[0]).encrypt(bytes(12), raw, None)}
    for k in kernels:
        for op, data in (("encrypt", img), ("decrypt", ct)):
            fns[(k, op)] = (lambda op=op, data=data, k=k: run(op, data, *next(keys), k))
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    start = time.perf_counter()
    while time.perf_counter() - start < float(sys.argv[2]) or len(times[("AES-256-GCM", "encrypt")]) < 5:
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    out[case] = {f"{k} {op}": statistics.median(ts) * 1e3 for (k, op), ts in times.items()}
print(json.dumps(out))
"""


def _export(base: str, into: Path) -> Path:
    tree = into / "base"
    tree.mkdir()
    archive = into / "base.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", base], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=tree, check=True, capture_output=True)
    return tree


def _child(tree: Path, which: str, seconds: float) -> dict[str, dict[str, float]]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, "-c", CHILD, which, str(seconds)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True, timeout=1200)
    result: dict[str, dict[str, float]] = json.loads(out.stdout)
    return result


def main(argv: list[str]) -> int:
    base = argv[1] if len(argv) > 1 else "main"
    rounds = int(argv[2]) if len(argv) > 2 else 5
    with tempfile.TemporaryDirectory() as tmp:
        base_tree = _export(base, Path(tmp))
        runs: dict[str, list[dict[str, dict[str, float]]]] = {"base": [], "after": []}
        for _ in range(rounds):  # alternated, so drift and neighbours hit both alike
            runs["base"].append(_child(base_tree, "base", 0.5))
            runs["after"].append(_child(ROOT, "after", 0.5))
    print(f"before = {base}, after = this tree; medians over {rounds} alternated rounds of fresh processes (ms)")
    print(f"{'case':26} {'operation':22} {'before':>9} {'after':>9} {'after/before':>13}")
    for case in runs["base"][0]:
        for what in [w for w in runs["base"][0][case] if w in runs["after"][0][case]]:  # kernels both trees have
            before = statistics.median(r[case][what] for r in runs["base"])
            after = statistics.median(r[case][what] for r in runs["after"])
            print(f"{case:26} {what:22} {before:9.3f} {after:9.3f} {after / before:13.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
