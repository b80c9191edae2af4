"""The chaos cipher: vectors on both paths, exact inversion, diffusion, S-box quality."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cipher import _kernels, analysis, chaos
from tests.vectors.make_chaos_vectors import ciphertext_bytes, make_input

VECTORS = json.loads((Path(__file__).parent / "vectors" / "chaos_v1.json").read_text())["vectors"]
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not _kernels.AVAILABLE, reason="numba not installed"))]
KEY = bytes(range(32))
NONCE = bytes(range(100, 116))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("vec", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vectors(vec: dict, backend: str) -> None:
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
    if _kernels.AVAILABLE:
        assert np.array_equal(ct, chaos._encrypt_with(plain, key, nonce, "numba"))
        assert np.array_equal(chaos._decrypt_with(ct, key, nonce, "numba"), plain)
    back = chaos._decrypt_with(ct, key, nonce, "numpy")
    assert back.dtype == plain.dtype and np.array_equal(back, plain)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [1, 63, 64, 127, 128, 129, 4095, 4096 + 63, 65537, 1 << 20, (1 << 22) + 65])
def test_round_trip_layout_edges(n: int, backend: str) -> None:
    """Sizes around lane/row boundaries, ragged last rows (the GFNI kernel's scalar tail)."""
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
    x0, r = chaos._map_params(chaos._hkdf(key, nonce, label, 16))
    first = chaos._scalar_samples(x0, r, 256) if label == chaos.LABEL_SBOX else chaos._stream_bytes(x0, r, 256, False)
    assert len(np.unique(first)) < 16  # periodic orbit: the case the check exists for
    plain = np.random.default_rng(0).integers(0, 256, (300, 300), dtype=np.uint8)
    for backend in ("numpy", "numba") if _kernels.AVAILABLE else ("numpy",):
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
