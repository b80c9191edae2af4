"""The constant-time claim, checked with memcheck (the ctgrind technique): the C driver
(``tests/native/kernel_driver.c``, built with ``-DSF_CT_CHECK``) marks every secret input
— the byte stream, the S-box samples, the multipliers, the data and the logistic maps'
seeds — as undefined and runs the per-image setup, the maps, the health check's count and
a kernel's passes both ways; valgrind then reports every branch and every memory address
computed from them. The AES-NI kernels must come out clean and the table kernel must be
caught (which shows the check bites). valgrind emulates neither GFNI, VAES nor AVX-512
(its CPUID hides them), so those kernels are covered by their design only; the NEON kernel
shares the AES-NI kernels' code shape (SPEC §1.8). Skips where valgrind or its headers
are missing, except under CI (the Makefile's DEBS install valgrind)."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import cipher_core_sources

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "cipher" / "csrc"
CLEAN = ["aesni-sse", "aesni-avx2"]


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("the AES-NI kernels are x86-64 code")
    header = Path("/usr/include/valgrind/memcheck.h")
    if shutil.which("valgrind") is None or shutil.which("gcc") is None or not header.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("valgrind (with /usr/include/valgrind/memcheck.h) or gcc missing under CI (Makefile DEBS: valgrind)")
        pytest.skip("valgrind or gcc not installed (apt-get install valgrind)")
    exe = tmp_path_factory.mktemp("ct") / "kernel_driver"
    sources = [ROOT / "tests" / "native" / "kernel_driver.c", *cipher_core_sources()]
    # the flags setup.py uses, plus the client requests that mark secrets undefined
    cmd = ["gcc", "-O3", "-g", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", "-Wall",
           "-Werror", "-DSF_CT_CHECK", f"-I{CSRC}", *map(str, sources), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300)
    return exe


def _memcheck(driver: Path, kernel: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["valgrind", "-q", "--error-exitcode=9", str(driver), kernel, "ct"],
                          capture_output=True, text=True, timeout=600, check=False)


@pytest.mark.parametrize("kernel", CLEAN)
def test_aesni_kernels_make_no_secret_dependent_branch_or_access(driver: Path, kernel: str) -> None:
    result = _memcheck(driver, kernel)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.split() == ["ran", kernel]
    assert "uninitialised" not in result.stderr


def test_the_table_kernel_is_caught(driver: Path) -> None:
    result = _memcheck(driver, "table")
    assert result.returncode == 9
    assert "Use of uninitialised value" in result.stderr  # a table index computed from a secret
