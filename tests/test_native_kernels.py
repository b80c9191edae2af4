"""The C extension ``cipher._native`` directly: logistic maps and S-box bit-identical to
the reference, every kernel on arbitrary parameters against the table kernel, reading the
caller's input, and the argument checks."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from cipher import _reference as ref
from cipher import chaos
from tests.helpers import cipher_core_sources

_native = chaos._native
if _native is None:  # pragma: no cover - CI builds the extension
    if os.environ.get("CI") == "true":
        raise RuntimeError("cipher._native is not built under CI (setup.py, needs a C compiler)")
    pytest.skip("cipher._native is not built (pip install -e . with a C compiler)", allow_module_level=True)

VECTOR_KERNELS = [k for k in _native.KERNELS if k != "table"]
ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "cipher" / "csrc"


@pytest.mark.parametrize("i", range(40))
def test_maps_are_bit_identical(i: int) -> None:
    """Logistic-map samples from C equal the numpy/Python reference bit for bit (strict
    IEEE doubles, no contraction), for counts that are not multiples of the 256 lanes."""
    h = hashlib.sha256(b"map %d" % i).digest()
    x0, r = ref.map_params(h[:16])
    count = [0, 1, 255, 256, 257, 5000][i % 6]
    stream = _native.stream_samples(x0, r, count, ref.STREAM_LANES, ref.STREAM_LANE_STEP, ref.STREAM_TRANSIENT, ref.QUANT)
    assert stream == ref.stream_samples(x0, r, count).tobytes()
    scalar = _native.scalar_samples(x0, r, 300, ref.SBOX_TRANSIENT, ref.QUANT)
    assert scalar == ref.scalar_samples(x0, r, 300).tobytes()


def test_maps_at_the_ends_of_the_ranges() -> None:
    """x0 and r at the edges of their ranges, and r = 4 (x reaches 1.0 and 0.0)."""
    for x0, r in ((ref.X_MIN, ref.R_MIN), (ref.X_MIN + ref.X_SPAN, ref.R_MIN + ref.R_SPAN), (0.5, 4.0), (0.25, 4.0), (0.0, 3.0), (1.0, 3.5)):
        assert _native.scalar_samples(x0, r, 400, ref.SBOX_TRANSIENT, ref.QUANT) == ref.scalar_samples(x0, r, 400).tobytes()
        stream = _native.stream_samples(x0 * 0.99, r, 700, ref.STREAM_LANES, ref.STREAM_LANE_STEP, ref.STREAM_TRANSIENT, ref.QUANT)
        assert stream == ref.stream_samples(x0 * 0.99, r, 700).tobytes()


@pytest.mark.parametrize("i", range(12))
def test_sbox_matches_the_reference(i: int) -> None:
    key = hashlib.sha256(b"sbox key %d" % i).digest()
    nonce = hashlib.sha256(b"sbox nonce %d" % i).digest()[:16]
    samples = chaos._native_sbox_samples(ref.prk(key, nonce))
    assert len(samples) == ref.SBOX_SAMPLES
    s, inv = _native.sbox(samples)
    assert s == ref.sbox_tables(key, nonce)[0].tobytes()
    assert bytes(np.frombuffer(s, np.uint8)[np.frombuffer(inv, np.uint8)]) == bytes(range(256))


def test_distinct() -> None:
    assert _native.distinct(b"") == 0
    assert _native.distinct(bytes(300)) == 1
    assert _native.distinct(bytes(range(256)) * 2) == 256
    assert _native.distinct(bytes([63, 64, 127, 128, 191, 192, 255, 0])) == 8  # the four words' edges
    rng = np.random.default_rng(2)
    for _ in range(20):
        arr = rng.integers(0, 256, 256, dtype=np.uint8)
        assert _native.distinct(arr) == len(np.unique(arr)) == ref.distinct(arr)
    big = rng.integers(0, 200, 1 << 16, dtype=np.uint8)  # long enough to run without the GIL
    assert _native.distinct(big) == len(np.unique(big))


def test_matrix_is_a_new_bytearray_of_the_size_asked() -> None:
    m = _native.matrix(4096)
    assert type(m) is bytearray and len(m) == 4096 and _native.matrix(4096) is not m
    assert _native.matrix(0) == bytearray()
    with pytest.raises(ValueError):
        _native.matrix(-1)
    with pytest.raises(TypeError):
        _native.matrix(1.5)  # type: ignore[arg-type]


def test_kernel_lists() -> None:
    assert _native.KERNELS[-1] == "table" and set(_native.KERNELS) <= set(_native.BUILT)
    assert set(_native.CONSTANT_TIME) == set(_native.BUILT) - {"table"}


def _random_job(rng: np.random.Generator, k: int, rows: int, last: int) -> dict:
    L = 1 << k
    return {
        "m": rng.integers(0, 256, rows * L, dtype=np.uint8),
        "st": rng.integers(0, 256, 4 * L + 2 * rows, dtype=np.uint8),
        "sbox_samples": rng.integers(0, 256, ref.SBOX_SAMPLES, dtype=np.uint8).tobytes(),
        "g_f": int(rng.integers(2, 256)),
        "g_b": int(rng.integers(2, 256)),
        "lane_bits": k,
        "last": last,
        "tail_start": max(1, rows - (k + ref.TAIL_EXTRA_ROWS)),
    }


# (lane bits, rows, lanes in the last row): one- and two-row layouts, ragged last rows,
# every width below, at and above each vector size (16, 32, 64 bytes), one lane; (12, 66, …)
# and (16, 70, …) take the one-sweep decryption with src (sf_core.c, dec_sweep).
LAYOUTS = [
    (0, 1, 1), (0, 2, 1), (0, 3, 1), (0, 127, 1), (1, 64, 1), (2, 70, 3), (3, 5, 8), (4, 66, 16), (4, 3, 9),
    (5, 65, 17), (5, 4, 32), (6, 1, 64), (6, 1, 1), (6, 2, 63), (6, 70, 1), (7, 64, 100), (8, 65, 255),
    (10, 3, 513), (12, 66, 4096), (16, 5, 40_000), (16, 70, 12_345),
]


@pytest.mark.parametrize("kernel", VECTOR_KERNELS)
@pytest.mark.parametrize(("k", "rows", "last"), LAYOUTS)
def test_kernel_matches_the_table_kernel(kernel: str, k: int, rows: int, last: int) -> None:
    """Every vector kernel on arbitrary parameters (random S-box samples, multipliers and
    stream), against the table kernel, both directions."""
    rng = np.random.default_rng(k * 1000 + rows + last)
    job = _random_job(rng, k, rows, last)
    plain = job["m"].copy()
    table, fast = dict(job, m=plain.copy()), dict(job, m=plain.copy())
    _native.encrypt(**table, kernel="table")
    _native.encrypt(**fast, kernel=kernel)
    assert np.array_equal(table["m"], fast["m"])
    assert not np.array_equal(table["m"], plain)
    _native.decrypt(**fast, kernel=kernel)
    _native.decrypt(**table, kernel="table")
    n = (rows - 1) * (1 << k) + last  # the padding lanes of the last row are not data
    assert np.array_equal(fast["m"][:n], plain[:n]) and np.array_equal(table["m"][:n], plain[:n])


@pytest.mark.parametrize("kernel", _native.KERNELS)
@pytest.mark.parametrize(("k", "rows", "last"), LAYOUTS)
def test_reading_the_input_matches_in_place(kernel: str, k: int, rows: int, last: int) -> None:
    """With ``src`` the first pass reads the caller's input and fills an uninitialised
    matrix (padding included): same matrix as the passes on a zero-padded copy."""
    job = _random_job(np.random.default_rng(k * 7 + rows), k, rows, last)
    L = 1 << k
    n = (rows - 1) * L + last
    data = job["m"][:n].copy()
    padded = np.zeros(rows * L, np.uint8)
    padded[:n] = data
    in_place = dict(job, m=padded.copy(), kernel=kernel)
    fed = dict(job, m=np.full(rows * L, 0xA5, np.uint8), kernel=kernel, src=data)
    _native.encrypt(**in_place)
    _native.encrypt(**fed)
    assert np.array_equal(fed["m"], in_place["m"])
    assert np.array_equal(data, padded[:n])  # the input is only read
    ct = in_place["m"][:n].copy()
    padded[:n], padded[n:] = ct, 0
    in_place = dict(job, m=padded.copy(), kernel=kernel)
    fed = dict(job, m=np.full(rows * L, 0x5A, np.uint8), kernel=kernel, src=ct)
    _native.decrypt(**in_place)
    _native.decrypt(**fed)
    assert np.array_equal(fed["m"][:n], in_place["m"][:n])
    assert np.array_equal(fed["m"][:n], data)


def test_unknown_kernels_and_kernels_this_cpu_lacks_are_refused() -> None:
    job = _random_job(np.random.default_rng(5), 5, 64, 32)
    before = job["m"].copy()
    with pytest.raises(ValueError, match="unknown chaos kernel"):
        _native.encrypt(**job, kernel="no-such-kernel")
    # Built but not runnable here (none on a CPU that runs them all, e.g. GFNI + AVX-512).
    for kernel in (k for k in _native.BUILT if k not in _native.KERNELS):
        with pytest.raises(RuntimeError, match="cannot run"):
            _native.encrypt(**job, kernel=kernel)
    assert np.array_equal(job["m"], before)  # nothing written by a refused call


def test_rejects_wrong_sizes() -> None:
    """Every size is checked before anything is written: ValueError, buffer untouched."""
    good = dict(_random_job(np.random.default_rng(9), 7, 66, 100), kernel="table")
    before = good["m"].copy()
    L, R = 128, 66
    bad = [
        {"m": good["m"][:-1]},  # not whole rows
        {"m": good["m"][:0]},  # empty
        {"st": good["st"][:-1]},
        {"st": np.concatenate([good["st"], good["st"][:1]])},
        {"st": b""},
        {"sbox_samples": good["sbox_samples"][:-1]},
        {"sbox_samples": good["sbox_samples"] + b"x"},
        {"last": 0},
        {"last": L + 1},
        {"tail_start": 0},
        {"tail_start": R + 1},
        {"lane_bits": -1},
        {"lane_bits": 31},
        {"lane_bits": 8},  # 256 lanes: 33 rows, so neither the stream nor tail_start fits
        {"g_f": 256},
        {"g_b": -1},
        {"kernel": "numba"},
        {"kernel": ""},
        {"src": good["m"][: 65 * 128 + 99]},  # src holds (R-1)*L + last = 8420 bytes
        {"src": good["m"][: 65 * 128 + 101]},
    ]
    for change in bad:
        for fn in (_native.encrypt, _native.decrypt):
            with pytest.raises(ValueError):
                fn(**dict(good, **change))
            assert np.array_equal(good["m"], before), change
    with pytest.raises(TypeError):  # a read-only matrix
        _native.encrypt(**dict(good, m=good["m"].tobytes()))
    with pytest.raises(TypeError):  # the kernel is not optional
        _native.encrypt(**{k: v for k, v in good.items() if k != "kernel"})
    with pytest.raises(ValueError):
        _native.sbox(bytes(33))
    step, q = ref.STREAM_LANE_STEP, ref.QUANT
    for args in [
        (0.5, 3.99, -1, 256, step, 64, q),  # negative count
        (0.5, 3.99, 10, 0, step, 64, q),  # no lanes
        (0.5, 3.99, 10, 256, step, -1, q),  # negative transient
        (1.5, 3.99, 10, 256, step, 64, q),  # x0 outside [0, 1]
        (float("nan"), 3.99, 10, 256, step, 64, q),
        (0.5, 4.5, 10, 256, step, 64, q),  # r > 4
        (0.5, 3.99, 10, 256, step, 64, 2.0**33),  # quant too large
        (1.0 - 100 * step, 3.99, 10, 256, step, 64, q),  # lane seeds beyond 1
        (0.5, 3.99, 10, 256, -step, 64, q),  # negative spacing
    ]:
        with pytest.raises(ValueError):
            _native.stream_samples(*args)
    with pytest.raises(ValueError):
        _native.scalar_samples(0.5, 3.99, -1, 10, q)
    with pytest.raises(ValueError):
        _native.scalar_samples(0.5, -1.0, 1, 10, q)


def test_byte_stream_is_the_same_on_every_instruction_set(tmp_path: Path) -> None:
    """The byte stream is built once per instruction set (generic, AVX2, AVX-512): the C
    driver compares every version this CPU has with the generic one on random seeds."""
    if shutil.which("gcc") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("gcc missing under CI")
        pytest.skip("gcc not installed")
    exe = tmp_path / "kernel_driver"
    sources = [ROOT / "tests" / "native" / "kernel_driver.c", *cipher_core_sources()]
    subprocess.run(["gcc", "-O3", "-std=c99", "-ffp-contract=off", "-fno-fast-math", "-fno-strict-aliasing", f"-I{CSRC}",
                    *map(str, sources), "-o", str(exe)], check=True, capture_output=True, timeout=300)
    out = subprocess.run([str(exe), "-", "maps", "3000"], capture_output=True, text=True, timeout=300, check=True)
    ok, count, isas = out.stdout.split()
    assert (ok, count) == ("ok", "3000") and int(isas) >= 1
    if "gfni-avx512" in _native.KERNELS:  # an AVX-512 CPU has all three
        assert isas == "3"
