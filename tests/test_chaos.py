"""The chaos cipher: vectors on every backend and kernel, exact inversion, diffusion,
S-box quality, and the native extension's primitives and argument checks."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cipher import _kernels, analysis, chaos
from tests.vectors.make_chaos_vectors import ciphertext_bytes, make_input

try:
    from cipher import _native
except ImportError:
    _native = None  # type: ignore[assignment]

VECTORS = json.loads((Path(__file__).parent / "vectors" / "chaos_v1.json").read_text())["vectors"]
NUMBA = pytest.mark.skipif(not _kernels.AVAILABLE, reason="numba not installed")
# "native-table": the native backend with SCANFORT_CHAOS_GFNI=0 (table kernel on any CPU)
BACKENDS = ["native", "native-table", "numpy", pytest.param("numba", marks=NUMBA)]
KEY = bytes(range(32))
NONCE = bytes(range(100, 116))
NO_GFNI = "CPU without GFNI/AVX-512BW: the native table kernel is used"


def require_native() -> None:
    """Skip without the C extension; under CI (which builds it) its absence is a failure."""
    if _native is None:
        if os.environ.get("CI") == "true":
            pytest.fail("cipher._native is not built under CI (setup.py, needs a C compiler)")
        pytest.skip("cipher._native is not built (pip install -e . with a C compiler)")


@pytest.fixture
def use(monkeypatch: pytest.MonkeyPatch) -> Callable[[str], str]:
    """use(backend) -> the backend name for ``chaos._encrypt_with`` (native-table sets the
    environment switch that the native backend reads at every call)."""

    def pick(backend: str) -> str:
        if backend.startswith("native"):
            require_native()
        monkeypatch.setenv("SCANFORT_CHAOS_GFNI", "0" if backend == "native-table" else "1")
        return backend.removesuffix("-table")

    return pick


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors(vec: dict, backend: str, use) -> None:
    backend = use(backend)
    key, nonce = bytes.fromhex(vec["key"]), bytes.fromhex(vec["nonce"])
    plain = make_input(vec)
    ct = chaos._encrypt_with(plain, key, nonce, backend)
    assert ct.shape == plain.shape and ct.dtype == plain.dtype
    raw = ciphertext_bytes(ct)
    assert hashlib.sha256(raw).hexdigest() == vec["ciphertext_sha256"]
    if "ciphertext_hex" in vec:
        assert raw.hex() == vec["ciphertext_hex"]
    assert chaos.sbox(key, nonce).tobytes().hex() == vec["sbox"]
    assert np.array_equal(chaos._decrypt_with(ct, key, nonce, backend), plain)


def test_vectors_cover_the_required_kinds() -> None:
    names = " ".join(v["name"] for v in VECTORS)
    for word in ("one byte", "odd", "uint16", "RGB", "12-bit", "multi-frame"):
        assert word in names


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 23), min_size=1, max_size=3),
    wide=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    key=st.binary(min_size=32, max_size=32),
    nonce=st.binary(min_size=16, max_size=16),
)
def test_round_trip_and_paths_agree(shape: list[int], wide: bool, seed: int, key: bytes, nonce: bytes) -> None:
    rng = np.random.default_rng(seed)
    dtype = np.uint16 if wide else np.uint8
    plain = rng.integers(0, np.iinfo(dtype).max + 1, size=shape, dtype=dtype)
    ct = chaos._encrypt_with(plain, key, nonce, "numpy")
    for backend in ("numba",) * _kernels.AVAILABLE + ("native",) * (_native is not None):
        assert np.array_equal(ct, chaos._encrypt_with(plain, key, nonce, backend)), backend
        assert np.array_equal(chaos._decrypt_with(ct, key, nonce, backend), plain), backend
    back = chaos._decrypt_with(ct, key, nonce, "numpy")
    assert back.dtype == plain.dtype and np.array_equal(back, plain)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 63, 64, 127, 128, 129, 4095, 4096 + 63, 8191, 65537, 1 << 20, (1 << 22) + 65])
def test_round_trip_layout_edges(n: int, backend: str, use) -> None:
    """Sizes around lane/row boundaries, ragged last rows (the GFNI kernels' partial row)."""
    backend = use(backend)
    plain = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    ct = chaos._encrypt_with(plain, KEY, NONCE, backend)
    assert np.array_equal(ct, chaos._encrypt_with(plain, KEY, NONCE, "numpy"))
    assert np.array_equal(chaos._decrypt_with(ct, KEY, NONCE, backend), plain)
    if n > 16:
        assert (ct != plain).mean() > 0.9


def test_big_endian_and_non_contiguous_inputs() -> None:
    base = np.random.default_rng(3).integers(0, 4096, (40, 30), dtype=np.uint16)
    be = base.astype(">u2")
    ct_be = chaos.encrypt(be, KEY, NONCE)
    assert ct_be.dtype == np.dtype(">u2")
    assert np.array_equal(ct_be.astype("<u2"), chaos.encrypt(base, KEY, NONCE))
    view = base[:, ::2]
    assert np.array_equal(chaos.decrypt(chaos.encrypt(view, KEY, NONCE), KEY, NONCE), view)


def test_empty_array() -> None:
    empty = np.zeros((0, 4), dtype=np.uint16)
    assert chaos.encrypt(empty, KEY, NONCE).shape == (0, 4)


@pytest.mark.parametrize(
    ("data", "key", "nonce", "match"),
    [
        (np.zeros(4, np.uint8), b"short", NONCE, "key must be 32 bytes"),
        (np.zeros(4, np.uint8), KEY, b"x" * 12, "nonce must be 16 bytes"),
        (np.zeros(4, np.float32), KEY, NONCE, "unsupported dtype"),
        (np.zeros(4, np.int16), KEY, NONCE, "unsupported dtype"),
        (np.zeros(4, np.uint32), KEY, NONCE, "unsupported dtype"),
    ],
)
def test_bad_arguments(data: np.ndarray, key: bytes, nonce: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        chaos.encrypt(data, key, nonce)
    with pytest.raises(ValueError, match=match):
        chaos.decrypt(data, key, nonce)


def test_not_an_array() -> None:
    with pytest.raises(ValueError, match="numpy array"):
        chaos.encrypt(b"abc", KEY, NONCE)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- diffusion


@pytest.fixture(scope="module")
def image512() -> np.ndarray:
    return np.random.default_rng(2026).integers(0, 256, (512, 512), dtype=np.uint8)


@pytest.mark.parametrize("position", ["first", "middle", "last", "random"])
def test_one_bit_change_npcr_uaci(image512: np.ndarray, position: str) -> None:
    """A random cipher passes each α = 0.05 test 95 % of the time: check the mean over
    sixteen image keys against the critical values, and that most single trials pass."""
    n = image512.size
    index = {"first": 0, "middle": n // 2 + 256, "last": n - 1, "random": 191_117}[position]
    changed = image512.copy().reshape(-1)
    changed[index] ^= 1
    changed2d = changed.reshape(512, 512)
    lo, hi = analysis.UACI_CRITICAL_512
    results = []
    for trial in range(16):
        key = hashlib.sha256(b"npcr key %d" % trial).digest()
        nonce = hashlib.sha256(b"npcr nonce %d" % trial).digest()[:16]
        results.append(analysis.npcr_uaci(chaos.encrypt(image512, key, nonce), chaos.encrypt(changed2d, key, nonce)))
    npcr = np.array([r[0] for r in results])
    uaci = np.array([r[1] for r in results])
    assert npcr.mean() >= analysis.NPCR_CRITICAL_512
    assert lo <= uaci.mean() <= hi
    passed = (npcr >= analysis.NPCR_CRITICAL_512) & (uaci >= lo) & (uaci <= hi)
    assert passed.sum() >= 10  # ~1.6 of 16 trials fail for an ideal cipher (two α = 0.05 tests)
    assert (npcr < 99.9).all()  # differences must be able to cancel, as in a random cipher


def test_critical_values_match_the_paper() -> None:
    assert analysis.npcr_critical(512 * 512) == pytest.approx(99.5893, abs=1e-4)
    lo, hi = analysis.uaci_critical(512 * 512)
    assert (lo, hi) == (pytest.approx(33.3730, abs=1e-4), pytest.approx(33.5541, abs=1e-4))


def test_not_affine_over_gf2(image512: np.ndarray) -> None:
    rng = np.random.default_rng(5)
    a = image512
    b = rng.integers(0, 256, a.shape, dtype=np.uint8)
    zero = np.zeros_like(a)
    enc = [chaos.encrypt(x, KEY, NONCE) for x in (a ^ b, a, b, zero)]
    residue = enc[0] ^ enc[1] ^ enc[2] ^ enc[3]
    assert (residue != 0).mean() > 0.99  # a pure XOR/XNOR chain would give all zeros


def test_flat_images_encrypt_to_noise() -> None:
    for img in (np.zeros((512, 512), np.uint8), np.full((256, 256), 4095, np.uint16)):
        ct = chaos.encrypt(img, KEY, NONCE)
        assert analysis.entropy(ct) > 7.99
        assert analysis.chi_square(ct) < 2 * analysis.CHI2_CRITICAL
        corr = analysis.correlations(ct)
        assert all(abs(v) < 0.02 for v in corr.values())


def test_black_border_is_hidden() -> None:
    img = np.zeros((512, 512), np.uint16)
    img[128:384, 128:384] = np.random.default_rng(1).integers(0, 4096, (256, 256), dtype=np.uint16)
    ct = chaos.encrypt(img, KEY, NONCE)
    border = ct[:64].view(np.uint8)
    assert analysis.entropy(border) > 7.99


def test_key_and_nonce_sensitivity(image512: np.ndarray) -> None:
    c = chaos.encrypt(image512, KEY, NONCE)
    key2 = bytes([KEY[0] ^ 1]) + KEY[1:]
    nonce2 = NONCE[:-1] + bytes([NONCE[-1] ^ 0x80])
    for k, n in ((key2, NONCE), (KEY, nonce2)):
        npcr, _ = analysis.npcr_uaci(c, chaos.encrypt(image512, k, n))
        assert npcr > 99.5
        wrong = chaos.decrypt(c, k, n)
        assert (wrong != image512).mean() > 0.99


# ----------------------------------------------------------------------- S-boxes


@pytest.mark.parametrize("i", range(6))
def test_sbox_is_optimal_and_per_image(i: int) -> None:
    key = hashlib.sha256(b"k%d" % i).digest()
    nonce = hashlib.sha256(b"n%d" % i).digest()[:16]
    s = chaos.sbox(key, nonce)
    stats = analysis.sbox_stats(s)
    assert stats.bijective
    assert stats.nonlinearity == 112
    assert stats.du == 4
    assert stats.lp == 16 / 256
    assert 0.4 < stats.sac_mean < 0.6 and stats.bic_nl >= 100
    other = chaos.sbox(key, bytes([nonce[0] ^ 1]) + nonce[1:])
    assert not np.array_equal(s, other)


def test_sorted_logistic_sbox_is_weaker_reference() -> None:
    # the construction the issue warns about: rank-order of a logistic sequence
    x, seq = 0.3141, []
    for _ in range(1256):
        x = 3.99 * x * (1 - x)
        seq.append(x)
    weak = np.argsort(np.array(seq[1000:])).astype(np.uint8)
    assert analysis.sbox_stats(weak).nonlinearity < 112


@pytest.mark.skipif(not _kernels.GFNI, reason="CPU without GFNI/AVX-512BW: the table kernel is used")
def test_gfni_and_table_kernels_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = np.random.default_rng(11).integers(0, 65536, (700, 333), dtype=np.uint16)
    fast = chaos._encrypt_with(plain, KEY, NONCE, "numba")
    monkeypatch.setattr(_kernels, "GFNI", False)
    assert np.array_equal(fast, chaos._encrypt_with(plain, KEY, NONCE, "numba"))


@pytest.mark.skipif(not _kernels.GFNI, reason="CPU without GFNI/AVX-512BW: the table kernel is used")
def test_gfni_decrypt_matches_table_decrypt(monkeypatch: pytest.MonkeyPatch) -> None:
    plain = np.random.default_rng(12).integers(0, 256, (1021, 997), dtype=np.uint8)
    ct = chaos.encrypt(plain, KEY, NONCE)
    assert np.array_equal(chaos._decrypt_with(ct, KEY, NONCE, "numba"), plain)
    monkeypatch.setattr(_kernels, "GFNI", False)
    assert np.array_equal(chaos._decrypt_with(ct, KEY, NONCE, "numba"), plain)


@pytest.mark.parametrize(("label", "index"), [(chaos.LABEL_SBOX, 62), (chaos.LABEL_STREAM, 396)])
def test_maps_in_a_periodic_window_are_derived_again(label: bytes, index: int) -> None:
    """r ≈ 3.99029 lies in a period-5 window: the first derived map is rejected by the
    health check and encryption still works (it used to loop forever drawing S-box rows)."""
    key = bytes(range(32))
    nonce = hashlib.sha256(b"window %d" % index).digest()[:16]
    x0, r = chaos._map_params(chaos._expand(chaos._prk(key, nonce), label, 16))
    first = chaos._scalar_samples(x0, r, 256) if label == chaos.LABEL_SBOX else chaos._stream_bytes(x0, r, 256, False)
    assert len(np.unique(first)) < 16  # periodic orbit: the case the check exists for
    plain = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    for backend in ("numpy",) + ("numba",) * _kernels.AVAILABLE + ("native",) * (_native is not None):
        ct = chaos._encrypt_with(plain, key, nonce, backend)
        assert np.array_equal(chaos._decrypt_with(ct, key, nonce, backend), plain)
        assert analysis.entropy(ct) > 7.99
    assert analysis.sbox_stats(chaos.sbox(key, nonce)).nonlinearity == 112


def test_random_keys_never_stall() -> None:
    """Many fresh keys in a row all produce a bijective S-box (bounded work per key)."""
    for i in range(400):
        h = hashlib.sha256(b"stall %d" % i).digest()
        assert len(np.unique(chaos.sbox(h, h[:16]))) == 256


def test_tiny_images_diffuse_like_a_random_cipher() -> None:
    """One lane (< 128 bytes): a two-row chain state keeps differences from vanishing."""
    img = np.random.default_rng(4).integers(0, 256, (3, 3, 3), dtype=np.uint8)
    for position in (0, 13, 26):
        changed = img.copy().reshape(-1)
        changed[position] ^= 1
        results = []
        for t in range(64):
            key = hashlib.sha256(b"tiny %d" % t).digest()
            results.append(analysis.npcr_uaci(chaos.encrypt(img, key, key[:16]), chaos.encrypt(changed.reshape(img.shape), key, key[:16]))[0])
        assert np.mean(results) >= analysis.npcr_critical(img.size)


# ----------------------------------------------------------------------- backends


def test_auto_prefers_native_and_never_imports_numba() -> None:
    """The edge agent's memory budget: with the extension built, ``auto`` runs it and
    numba/llvmlite are never loaded (checked in a fresh interpreter)."""
    require_native()
    code = (
        "import sys, numpy as np, cipher\n"
        "from cipher import chaos\n"
        "img = np.arange(512 * 512, dtype=np.uint16).reshape(512, 512)\n"
        "ct = chaos.encrypt(img, bytes(32), bytes(16))\n"
        "assert (chaos.decrypt(ct, bytes(32), bytes(16)) == img).all()\n"
        "print(chaos._backend(None), sorted(m for m in sys.modules if m.split('.')[0] in ('numba', 'llvmlite')))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCANFORT_CHAOS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["native", "[]"]


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCANFORT_CHAOS_BACKEND", "numpy")
    assert chaos._backend(None) == "numpy" and chaos.kernel() == "numpy"
    assert chaos._backend("native" if _native is not None else "numpy") in chaos.BACKENDS
    with pytest.raises(ValueError, match="unknown chaos backend 'fast'"):
        chaos._backend("fast")
    monkeypatch.setenv("SCANFORT_CHAOS_BACKEND", "auto")
    monkeypatch.setattr(chaos, "_native", None)  # as on an install without a C compiler
    assert chaos._backend(None) == ("numba" if _kernels.AVAILABLE else "numpy")
    with pytest.raises(RuntimeError, match="native chaos kernels are not built"):
        chaos._encrypt_with(np.zeros(4, np.uint8), KEY, NONCE, "native")


def test_native_kernel_follows_the_environment_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    require_native()
    plain = np.random.default_rng(21).integers(0, 4096, (300, 200), dtype=np.uint16)
    monkeypatch.setenv("SCANFORT_CHAOS_GFNI", "0")
    assert chaos.kernel("native") == "native table"
    table = chaos._encrypt_with(plain, KEY, NONCE, "native")
    monkeypatch.setenv("SCANFORT_CHAOS_GFNI", "1")
    assert chaos.kernel("native") == ("native GFNI/AVX-512" if _native.GFNI else "native table")
    assert np.array_equal(chaos._encrypt_with(plain, KEY, NONCE, "native"), table)
    assert np.array_equal(table, chaos._encrypt_with(plain, KEY, NONCE, "numpy"))


def test_native_from_threads_matches_sequential() -> None:
    """The kernels release the GIL; concurrent calls must not disturb each other."""
    require_native()
    rng = np.random.default_rng(31)
    images = [rng.integers(0, 4096, (256, 256 + i), dtype=np.uint16) for i in range(8)]
    keys = [hashlib.sha256(b"thread %d" % i).digest() for i in range(8)]
    expected = [chaos._encrypt_with(img, k, k[:16], "numpy") for img, k in zip(images, keys, strict=True)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda a: chaos._encrypt_with(a[0], a[1], a[1][:16], "native"), zip(images, keys, strict=True)))
        back = list(pool.map(lambda a: chaos._decrypt_with(a[0], a[1], a[1][:16], "native"), zip(got, keys, strict=True)))
    assert all(np.array_equal(g, e) for g, e in zip(got, expected, strict=True))
    assert all(np.array_equal(b, i) for b, i in zip(back, images, strict=True))


# ----------------------------------------------------------------------- native primitives


@pytest.mark.parametrize("i", range(40))
def test_native_maps_are_bit_identical(i: int) -> None:
    """Logistic-map samples from C equal the numpy/Python reference bit for bit (strict
    IEEE doubles, no contraction), for counts that are not multiples of the 256 lanes."""
    require_native()
    h = hashlib.sha256(b"map %d" % i).digest()
    x0, r = chaos._map_params(h[:16])
    count = [0, 1, 255, 256, 257, 5000][i % 6]
    stream = _native.stream_samples(x0, r, count, chaos.STREAM_LANES, chaos.STREAM_LANE_STEP, chaos.STREAM_TRANSIENT, chaos.QUANT)
    assert stream == chaos._stream_bytes(x0, r, count, False).tobytes()
    scalar = _native.scalar_samples(x0, r, 300, chaos.SBOX_TRANSIENT, chaos.QUANT)
    assert scalar == chaos._scalar_samples(x0, r, 300).tobytes()
    if _kernels.AVAILABLE:
        assert stream == chaos._stream_bytes(x0, r, count, True).tobytes()


def test_native_maps_at_the_ends_of_the_ranges() -> None:
    """x0 and r at the edges of their ranges, and r = 4 (x reaches 1.0 and 0.0)."""
    require_native()
    for x0, r in ((chaos.X_MIN, chaos.R_MIN), (chaos.X_MIN + chaos.X_SPAN, chaos.R_MIN + chaos.R_SPAN), (0.5, 4.0), (0.25, 4.0), (0.0, 3.0), (1.0, 3.5)):
        assert _native.scalar_samples(x0, r, 400, chaos.SBOX_TRANSIENT, chaos.QUANT) == chaos._scalar_samples(x0, r, 400).tobytes()
        stream = _native.stream_samples(x0 * 0.99, r, 700, chaos.STREAM_LANES, chaos.STREAM_LANE_STEP, chaos.STREAM_TRANSIENT, chaos.QUANT)
        assert stream == chaos._stream_bytes(x0 * 0.99, r, 700, False).tobytes()


@pytest.mark.parametrize("i", range(12))
def test_native_sbox_matches_the_reference(i: int) -> None:
    require_native()
    key = hashlib.sha256(b"sbox key %d" % i).digest()
    nonce = hashlib.sha256(b"sbox nonce %d" % i).digest()[:16]
    samples = chaos._native_sbox_samples(key, nonce)
    assert len(samples) == chaos.SBOX_SAMPLES
    s, inv = _native.sbox(samples)
    assert s == chaos.sbox(key, nonce).tobytes()
    assert bytes(np.frombuffer(s, np.uint8)[np.frombuffer(inv, np.uint8)]) == bytes(range(256))


def test_native_distinct() -> None:
    require_native()
    assert _native.distinct(b"") == 0
    assert _native.distinct(bytes(300)) == 1
    assert _native.distinct(bytes(range(256)) * 2) == 256
    arr = np.random.default_rng(2).integers(0, 256, 256, dtype=np.uint8)
    assert _native.distinct(arr) == len(np.unique(arr)) == chaos._distinct_numpy(arr)


def _random_job(rng: np.random.Generator, k: int, rows: int, last: int) -> dict:
    L = 1 << k
    return {
        "m": rng.integers(0, 256, rows * L, dtype=np.uint8),
        "st": rng.integers(0, 256, 4 * L + 2 * rows, dtype=np.uint8),
        "sbox_samples": rng.integers(0, 256, chaos.SBOX_SAMPLES, dtype=np.uint8).tobytes(),
        "g_f": int(rng.integers(2, 256)),
        "g_b": int(rng.integers(2, 256)),
        "lane_bits": k,
        "last": last,
        "tail_start": max(1, rows - (k + chaos.TAIL_EXTRA_ROWS)),
    }


GFNI_LAYOUTS = [(6, 1, 64), (6, 1, 1), (6, 2, 63), (6, 70, 1), (7, 64, 100), (8, 65, 255), (10, 3, 513), (12, 66, 4096), (16, 5, 40_000)]
NARROW_LAYOUTS = [(0, 1, 1), (0, 2, 1), (0, 3, 1), (0, 127, 1), (1, 64, 1), (2, 70, 3), (5, 65, 17)]


@pytest.mark.parametrize(("k", "rows", "last"), GFNI_LAYOUTS)
def test_native_gfni_and_table_kernels_agree(k: int, rows: int, last: int) -> None:
    """Both native kernels on arbitrary parameters, including one- and two-row layouts,
    ragged last rows and the smallest GFNI width (64 lanes, every block wraps)."""
    require_native()
    if not _native.GFNI:
        pytest.skip(NO_GFNI)
    rng = np.random.default_rng(k * 1000 + rows)
    job = _random_job(rng, k, rows, last)
    plain = job["m"].copy()
    table, fast = dict(job, m=plain.copy()), dict(job, m=plain.copy())
    assert _native.encrypt(**table, gfni=0) == "table"
    assert _native.encrypt(**fast, gfni=1) == "gfni"
    assert np.array_equal(table["m"], fast["m"])
    assert not np.array_equal(table["m"], plain)
    assert _native.decrypt(**fast, gfni=1) == "gfni"
    assert _native.decrypt(**table, gfni=0) == "table"
    n = (rows - 1) * (1 << k) + last  # the padding lanes of the last row are not data
    assert np.array_equal(fast["m"][:n], plain[:n]) and np.array_equal(table["m"][:n], plain[:n])


@pytest.mark.parametrize("gfni", [0, -1])
@pytest.mark.parametrize(("k", "rows", "last"), GFNI_LAYOUTS + NARROW_LAYOUTS)
def test_native_reading_the_input_matches_in_place(k: int, rows: int, last: int, gfni: int) -> None:
    """With ``src`` the first pass reads the caller's input and fills an uninitialised
    matrix (padding included): same matrix as the passes on a zero-padded copy."""
    require_native()
    job = _random_job(np.random.default_rng(k * 7 + rows), k, rows, last)
    L = 1 << k
    n = (rows - 1) * L + last
    data = job["m"][:n].copy()
    padded = np.zeros(rows * L, np.uint8)
    padded[:n] = data
    in_place = dict(job, m=padded.copy(), gfni=gfni)
    fed = dict(job, m=np.full(rows * L, 0xA5, np.uint8), gfni=gfni, src=data)
    _native.encrypt(**in_place)
    _native.encrypt(**fed)
    assert np.array_equal(fed["m"], in_place["m"])
    assert np.array_equal(data, padded[:n])  # the input is only read
    ct = in_place["m"][:n].copy()
    padded[:n], padded[n:] = ct, 0
    in_place = dict(job, m=padded.copy(), gfni=gfni)
    fed = dict(job, m=np.full(rows * L, 0x5A, np.uint8), gfni=gfni, src=ct)
    _native.decrypt(**in_place)
    _native.decrypt(**fed)
    assert np.array_equal(fed["m"][:n], in_place["m"][:n])
    assert np.array_equal(fed["m"][:n], data)


def test_native_narrow_layouts_use_the_tables() -> None:
    require_native()
    job = _random_job(np.random.default_rng(5), 5, 64, 32)
    assert _native.encrypt(**job) == "table"  # 32 lanes: below one 64-byte block
    if not _native.GFNI:
        with pytest.raises(RuntimeError, match="GFNI"):
            _native.encrypt(**job, gfni=1)


def test_native_rejects_wrong_sizes() -> None:
    """Every size is checked before anything is written: ValueError, buffer untouched."""
    require_native()
    good = _random_job(np.random.default_rng(9), 7, 66, 100)
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
        {"gfni": 2},
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
    with pytest.raises(ValueError):
        _native.sbox(bytes(33))
    step, q = chaos.STREAM_LANE_STEP, chaos.QUANT
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
