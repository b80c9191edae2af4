"""Bounds of the chaos cipher's passes with the AES-NI kernels on this CPU.

``python bench/bench_cipher_bounds.py`` builds ``tests/native/pass_bench.c`` with the C core
(``cipher/csrc``, the flags of setup.py) and prints, per AES-NI kernel: the cost of one
round per 32 bytes on rows that stay in L1 (TSC cycles: the arithmetic bound), one pass
over a radiograph-sized matrix, a pass that only does a round's loads and stores (the
memory bound of a pass), and the whole encryption and decryption without Python. Minimum
of repeats; x86-64 with gcc only. ``scanfort bench`` measures the same kernels against
AES-256-GCM from Python.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import tempfile
from pathlib import Path

from scanfort.benchmark import cpu_model

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "cipher" / "csrc"
FLAGS = ["-O3", "-std=gnu99", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing"]


def main() -> int:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        print("the AES-NI kernels are x86-64 code")
        return 1
    sources = [ROOT / "tests" / "native" / "pass_bench.c"] + [p for p in sorted(CSRC.glob("*.c")) if p.name != "module.c"]
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "pass_bench"
        subprocess.run(["gcc", *FLAGS, f"-I{CSRC}", *map(str, sources), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe)], check=True, capture_output=True, text=True, timeout=600).stdout
    print(f"CPU: {cpu_model()}; kernel {platform.release()}; single thread, minimum of repeats")
    print(out, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
