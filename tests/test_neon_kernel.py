"""The ARMv8 NEON + AES kernel, built with Debian's aarch64 cross compiler and run under
qemu-aarch64 by a small C driver (``tests/native/kernel_driver.c``): every vector of
``tests/vectors/chaos_v1.json``, random sizes against this machine's kernels (checked
against the reference in test_chaos.py), and random layouts against the table kernel
compiled for ARM. Skips where the tools are missing, except under CI (the Makefile's DEBS
install qemu-user and gcc-aarch64-linux-gnu)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cipher import _reference as ref
from cipher import chaos
from tests.vectors.make_chaos_vectors import make_input

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "cipher" / "csrc"
VECTORS = json.loads((ROOT / "tests" / "vectors" / "chaos_v1.json").read_text())["vectors"]
CC, QEMU = "aarch64-linux-gnu-gcc", "qemu-aarch64"


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    missing = [tool for tool in (CC, QEMU) if shutil.which(tool) is None]
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{', '.join(missing)} missing under CI (Makefile DEBS: gcc-aarch64-linux-gnu, qemu-user)")
        pytest.skip(f"{', '.join(missing)} not installed (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    exe = tmp_path_factory.mktemp("neon") / "kernel_driver"
    sources = [ROOT / "tests" / "native" / "kernel_driver.c", CSRC / "sf_core.c", CSRC / "sf_maps.c", CSRC / "k_table.c", CSRC / "k_neon.c"]
    # the flags setup.py uses; -static: qemu-aarch64 then needs no ARM sysroot
    cmd = [CC, "-O3", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", "-Wall", "-Werror",
           "-static", f"-I{CSRC}", *map(str, sources), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return exe


def _job(buf: np.ndarray, key: bytes, nonce: bytes) -> bytes:
    """The driver's job for ``buf``: the parameters derived as chaos does (HKDF in Python,
    the logistic maps in C, bit-identical on every platform), then the input."""
    lay = ref.layout(buf.size)
    prk = ref.prk(key, nonce)
    st = ref.healthy_samples(prk, ref.LABEL_STREAM, lay.stream_len, chaos._native_stream, chaos._native.distinct)
    g_f, g_b = ref.multipliers(prk)
    head = b"SFJ1" + struct.pack("<6I", lay.lane_bits, lay.last, lay.tail_start, lay.rows, g_f, g_b)
    return head + bytes(st) + chaos._native_sbox_samples(prk) + buf.tobytes()


def _run(driver: Path, *args: str, stdin: bytes = b"") -> bytes:
    out = subprocess.run([QEMU, str(driver), "neon-aes", *args], input=stdin, capture_output=True, timeout=600, check=False)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout


@pytest.fixture(autouse=True)
def _native_built() -> None:
    if chaos._native is None:  # the jobs' logistic maps come from the host's extension
        if os.environ.get("CI") == "true":
            pytest.fail("cipher._native is not built under CI")
        pytest.skip("cipher._native is not built")


def test_neon_kernel_reproduces_every_vector(driver: Path) -> None:
    jobs, sizes = b"", []
    for vec in VECTORS:
        buf = chaos._to_bytes(make_input(vec))
        jobs += _job(buf, bytes.fromhex(vec["key"]), bytes.fromhex(vec["nonce"]))
        sizes.append(buf.size)
    out = _run(driver, "jobs", stdin=jobs)
    assert len(out) == sum(sizes)
    offset = 0
    for vec, n in zip(VECTORS, sizes, strict=True):
        ct = out[offset : offset + n]
        offset += n
        assert hashlib.sha256(ct).hexdigest() == vec["ciphertext_sha256"], vec["name"]
        if "ciphertext_hex" in vec:
            assert ct.hex() == vec["ciphertext_hex"]


@pytest.mark.parametrize("n", [1, 2, 17, 127, 128, 1000, 4096 + 63, 70_001, (1 << 20) + 3])
def test_neon_kernel_matches_on_random_sizes(driver: Path, n: int) -> None:
    buf = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    key = hashlib.sha256(b"neon %d" % n).digest()
    expected = chaos.encrypt(buf, key, key[:16])  # this CPU's kernel, itself checked against the reference
    assert _run(driver, "jobs", stdin=_job(buf, key, key[:16])) == expected.tobytes()


def test_neon_kernel_against_the_table_kernel_on_random_layouts(driver: Path) -> None:
    """1 … 65536 lanes, ragged last rows, random S-boxes, multipliers and streams; the
    driver also decrypts each one with the NEON kernel."""
    assert _run(driver, "random", "400").split() == [b"ok", b"400"]


@pytest.mark.slow
def test_neon_kernel_on_64_mib(driver: Path) -> None:
    """The largest input of the proof, odd length, under emulation."""
    n = (64 << 20) - 5
    buf = np.random.default_rng(64).integers(0, 256, n, dtype=np.uint8)
    key = hashlib.sha256(b"neon 64 MiB").digest()
    expected = chaos.encrypt(buf, key, key[:16])
    assert _run(driver, "jobs", stdin=_job(buf, key, key[:16])) == expected.tobytes()
