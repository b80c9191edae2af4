"""The chaos cipher v1 in numpy, written to read like ``cipher/SPEC.md`` §1.

This module is the reference: ``tests/vectors/make_chaos_vectors.py`` generates the
vectors with it, every C kernel (``cipher/csrc/``) is checked against it, and
``cipher.chaos`` runs it where the C extension was not built (an install without a C
compiler). It also holds the parts of the cipher every path shares: the constants, the
HKDF key schedule, the logistic maps' parameters and health check, and the layout.

Encryption loops over rows, each row one vector over lanes; decryption is whole-array,
since every row's predecessor is ciphertext. Not constant time (numpy table lookups).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from cipher import _gf

KEY_SIZE = 32
NONCE_SIZE = 16

# HKDF-SHA256 info labels (salt = nonce, ikm = image key).
LABEL_SBOX = b"scanfort chaos v1 sbox"
LABEL_STREAM = b"scanfort chaos v1 stream"
LABEL_GF = b"scanfort chaos v1 gf"

# Logistic-map parameters: r in [R_MIN, R_MIN + R_SPAN), x0 in [X_MIN, X_MIN + X_SPAN).
R_MIN = 3.99
R_SPAN = 0.0099
X_MIN = 0.0625
X_SPAN = 0.875
SBOX_TRANSIENT = 1000  # iterations discarded before the S-box stream is sampled
STREAM_LANES = 256  # parallel logistic maps of the byte stream generator
STREAM_LANE_STEP = 2.0**-32  # seed spacing between generator lanes
STREAM_TRANSIENT = 64  # iterations discarded: 2^-32 spacing grows to O(1) in ~32 steps
QUANT = 2.0**32  # a sample is the low byte of floor(x * 2^32)
# Health check of every derived map: the first HEALTH_SAMPLES samples after the transient
# must take at least HEALTH_MIN_DISTINCT distinct values (random bytes: 162 ± 4). An orbit
# caught in one of the narrow periodic windows that remain in [3.99, 4) (e.g. period 5 near
# r = 3.99028) takes at most its period; such a map is derived again with a counter.
HEALTH_SAMPLES = 256
HEALTH_MIN_DISTINCT = 128
MAX_DERIVATIONS = 256
SBOX_SAMPLES = 34  # A1 (16 samples), c1, A2 (16), c2

MIN_ROWS = 64  # lanes are chosen so that there are at least this many rows
MAX_LANE_BITS = 16
TAIL_EXTRA_ROWS = 2  # the tail pass covers log2(L) + 2 rows


@dataclass(frozen=True)
class Layout:
    n: int  # bytes
    lane_bits: int  # k = log2(L)
    lanes: int  # L
    rows: int  # R
    last: int  # lanes used in the last row (1..L)
    tail_start: int  # first row of the tail pass

    @property
    def stream_len(self) -> int:
        """Stream bytes per image: iv_f, key_f, iv_b, key_b (L each), row_f, row_b (R each)."""
        return 4 * self.lanes + 2 * self.rows


@dataclass(frozen=True)
class Params:
    sbox: np.ndarray  # uint8[256]
    inv_sbox: np.ndarray  # uint8[256]
    iv_f: np.ndarray  # uint8[L] initial row of the forward pass
    key_f: np.ndarray  # uint8[L] lane whitening, forward and tail passes
    iv_b: np.ndarray  # uint8[L] initial row of the backward pass
    key_b: np.ndarray  # uint8[L] lane whitening, backward pass
    row_f: np.ndarray  # uint8[R] row whitening, forward and tail passes
    row_b: np.ndarray  # uint8[R] row whitening, backward pass
    mul_f: np.ndarray  # uint8[256] multiplication by g_f in GF(2^8)
    mul_b: np.ndarray  # uint8[256] multiplication by g_b in GF(2^8)


# --------------------------------------------------------------------------- keying (§1.2–1.5)


def prk(key: bytes, nonce: bytes) -> bytes:
    """HKDF-SHA256 extract (RFC 5869): salt = nonce, input key material = image key."""
    return hmac.digest(bytes(nonce), bytes(key), "sha256")


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 expand (RFC 5869) of ``prk`` with ``info`` to ``length`` bytes."""
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([i]), "sha256")
        out, i = out + block, i + 1
    return out[:length]


def multipliers(prk: bytes) -> tuple[int, int]:
    """(g_f, g_b): the forward and backward GF(2^8) multipliers, in [2, 255]."""
    g = expand(prk, LABEL_GF, 2)
    return 2 + g[0] % 254, 2 + g[1] % 254


def _unit(b: bytes) -> float:
    """8 big-endian bytes → a double in [0, 1) with 53 random bits (exact)."""
    return (int.from_bytes(b, "big") >> 11) * 2.0**-53


def map_params(b: bytes) -> tuple[float, float]:
    """16 bytes → (x0, r) of a logistic map, in the documented ranges."""
    x0 = X_MIN + X_SPAN * _unit(b[:8])
    r = R_MIN + R_SPAN * _unit(b[8:16])
    return x0, r


def scalar_samples(x0: float, r: float, count: int) -> np.ndarray:
    """``count`` samples of one logistic map after SBOX_TRANSIENT discarded steps."""
    x = x0
    for _ in range(SBOX_TRANSIENT):
        x = (r * x) * (1.0 - x)
    out = []
    for _ in range(count):  # a few hundred steps per image, not per pixel
        x = (r * x) * (1.0 - x)
        out.append(int(x * QUANT) & 0xFF)
    return np.array(out, dtype=np.uint8)


def stream_samples(x0: float, r: float, count: int) -> np.ndarray:
    """``count`` bytes from STREAM_LANES logistic maps iterated together.

    Lane ``j`` starts at ``x0 + j·2^-32``; after STREAM_TRANSIENT discarded iterations each
    iteration yields one byte per lane, lane order within an iteration.
    """
    x = x0 + np.arange(STREAM_LANES, dtype=np.float64) * STREAM_LANE_STEP
    for _ in range(STREAM_TRANSIENT):
        x = (r * x) * (1.0 - x)
    steps = -(-count // STREAM_LANES)
    out = np.empty((steps, STREAM_LANES), dtype=np.uint8)
    for t in range(steps):
        x = (r * x) * (1.0 - x)
        out[t] = (x * QUANT).astype(np.uint64) & 0xFF
    return out.reshape(-1)[:count]


def distinct(samples: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(samples, minlength=256)))


_Samples = TypeVar("_Samples", np.ndarray, memoryview)


def healthy_samples(
    prk: bytes,
    label: bytes,
    count: int,
    draw: Callable[[float, float, int], _Samples],
    distinct: Callable[[_Samples], int],
) -> _Samples:
    """Samples of the first derived map that passes the health check (SPEC §1.3).

    Attempt ``a`` uses the HKDF label, followed by the byte ``a`` when ``a > 0``; the first
    HEALTH_SAMPLES samples are the check and are not used otherwise. ``prk`` is the HKDF
    pseudorandom key of the image key and nonce; ``draw`` and ``distinct`` are this
    module's numpy functions or the C extension's.
    """
    for attempt in range(MAX_DERIVATIONS):
        info = label if attempt == 0 else label + bytes([attempt])
        x0, r = map_params(expand(prk, info, 16))
        out = draw(x0, r, HEALTH_SAMPLES + count)
        if distinct(out[:HEALTH_SAMPLES]) >= HEALTH_MIN_DISTINCT:
            return out[HEALTH_SAMPLES:]
    raise RuntimeError("no chaotic logistic map found for this key")  # ~never: each try fails w.p. < 1 %


def _invertible(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """The invertible GF(2) matrix L·U from 16 samples: L unit lower-triangular with free
    bits below the diagonal from ``lower``, U unit upper-triangular from ``upper``."""
    lo = [(int(b) & ((1 << i) - 1)) | (1 << i) for i, b in enumerate(lower)]
    up = [(int(b) & ~((1 << (i + 1)) - 1) & 0xFF) | (1 << i) for i, b in enumerate(upper)]
    rows = []
    for i in range(8):  # row i of L·U is the XOR of the rows t of U selected by bits of L[i]
        acc = 0
        for t in range(8):
            if (lo[i] >> t) & 1:
                acc ^= up[t]
        rows.append(acc)
    return np.array(rows, dtype=np.uint8)


def sbox_tables(key: bytes, nonce: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(S, S⁻¹) of the image keyed by ``key`` and ``nonce`` (SPEC §1.4)."""
    smp = healthy_samples(prk(key, nonce), LABEL_SBOX, SBOX_SAMPLES, scalar_samples, distinct)
    a1, c1 = _invertible(smp[0:8], smp[8:16]), int(smp[16])
    a2, c2 = _invertible(smp[17:25], smp[25:33]), int(smp[33])
    x = np.arange(256, dtype=np.uint8)
    s = _gf.affine(a2, c2, _gf.INV[_gf.affine(a1, c1, x)])
    inv = np.empty(256, dtype=np.uint8)
    inv[s] = x
    return s, inv


def layout(n: int) -> Layout:
    """The rows × lanes layout of ``n`` bytes (SPEC §1.5)."""
    k = 0  # the largest k <= MAX_LANE_BITS with n >= MIN_ROWS * 2^k
    while k < MAX_LANE_BITS and (n >> (k + 1)) >= MIN_ROWS:
        k += 1
    lanes = 1 << k
    rows = -(-n // lanes)
    last = n - (rows - 1) * lanes
    tail_start = max(1, rows - (k + TAIL_EXTRA_ROWS))
    return Layout(n, k, lanes, rows, last, tail_start)


def params(key: bytes, nonce: bytes, lay: Layout) -> Params:
    s, inv = sbox_tables(key, nonce)
    L, R = lay.lanes, lay.rows
    p = prk(key, nonce)
    st = healthy_samples(p, LABEL_STREAM, lay.stream_len, stream_samples, distinct)
    g_f, g_b = multipliers(p)
    return Params(
        sbox=s,
        inv_sbox=inv,
        iv_f=st[0:L],
        key_f=st[L : 2 * L],
        iv_b=st[2 * L : 3 * L],
        key_b=st[3 * L : 4 * L],
        row_f=st[4 * L : 4 * L + R],
        row_b=st[4 * L + R : 4 * L + 2 * R],
        mul_f=_gf.mul_table(g_f),
        mul_b=_gf.mul_table(g_b),
    )


# --------------------------------------------------------------------------- encryption (§1.6)


def _row(
    out: np.ndarray, x: np.ndarray, prev: np.ndarray, cross: np.ndarray, d: int, s_xnor: np.ndarray, mul: np.ndarray
) -> None:
    """out = S[XNOR(x, prev)] + mul[cross[(j+d) mod L]] (x already whitened).

    ``cross`` is ``prev`` itself when L > 1 and the row two steps back when L = 1 (§1.6).
    """
    sv = s_xnor[x ^ prev]
    gp = mul[cross]
    n = out.shape[0] - d
    np.add(sv[:n], gp[d:], out=out[:n])
    np.add(sv[n:], gp[:d], out=out[n:])


def _shift(i: int, k: int) -> int:
    return (1 << (i % k)) if k else 0


def _encrypt_matrix(m: np.ndarray, p: Params, lay: Layout) -> None:
    k, R, last = lay.lane_bits, lay.rows, lay.last
    single = lay.lanes == 1
    s_xnor = p.sbox[np.arange(256, dtype=np.uint8) ^ 0xFF]  # S[~v]: XNOR folded into the table
    # forward pass over rows 0..R-1
    x = m ^ p.key_f[None, :] ^ p.row_f[:, None]
    prev = prev2 = p.iv_f
    for i in range(R):
        _row(m[i], x[i], prev, prev2 if single else prev, _shift(i, k), s_xnor, p.mul_f)
        prev2, prev = prev, m[i]
    # backward pass over rows R-1..0; the unused lanes of the last row hold iv_b
    m[R - 1, last:] = p.iv_b[last:]
    x = m ^ p.key_b[None, :] ^ p.row_b[:, None]
    prev = prev2 = p.iv_b
    tmp = np.empty(lay.lanes, dtype=np.uint8)
    for i in range(R - 1, -1, -1):
        _row(tmp, x[i], prev, prev2 if single else prev, _shift(i, k), s_xnor, p.mul_b)
        width = last if i == R - 1 else lay.lanes
        m[i, :width] = tmp[:width]
        prev2, prev = prev, m[i]
    # tail pass: forward again over the last k+2 rows, chained from the row above
    t0 = lay.tail_start
    x = m[t0:] ^ p.key_f[None, :] ^ p.row_f[t0:, None]
    for i in range(t0, R):
        cross = (m[i - 2] if i >= 2 else p.iv_f) if single else m[i - 1]
        _row(m[i], x[i - t0], m[i - 1], cross, _shift(i, k), s_xnor, p.mul_f)


# --------------------------------------------------------------------------- decryption (§1.7)


def _inv_rows(
    c: np.ndarray, prev: np.ndarray, cross: np.ndarray, shifts: np.ndarray, inv_sbox: np.ndarray, mul: np.ndarray
) -> np.ndarray:
    """Whole-block inverse of rows: v = S⁻¹[c − mul[cross[(j+d) mod L]]], x = XNOR(v, prev)."""
    gp = mul[cross]
    for d in np.unique(shifts):  # at most log2(L) distinct rotations
        sel = shifts == d
        gp[sel] = np.roll(gp[sel], -int(d), axis=1)
    np.subtract(c, gp, out=gp)
    v = inv_sbox[gp]
    np.bitwise_xor(v, prev, out=v)
    return np.bitwise_not(v, out=v)


def _decrypt_matrix(m: np.ndarray, p: Params, lay: Layout) -> None:
    k, R, last = lay.lane_bits, lay.rows, lay.last
    single = lay.lanes == 1
    shifts = np.array([_shift(i, k) for i in range(R)], dtype=np.int64)
    iv_f, iv_b = p.iv_f[None, :], p.iv_b[None, :]
    # undo the tail pass: predecessor of row i is final row i-1 (and i-2 for one lane)
    t0 = lay.tail_start
    if t0 < R:
        prev = m[t0 - 1 : R - 1]
        cross = np.concatenate([iv_f, iv_f, m[:-2]])[t0:R] if single else prev
        x = _inv_rows(m[t0:], prev, cross, shifts[t0:], p.inv_sbox, p.mul_f)
        m[t0:] = x ^ p.key_f[None, :] ^ p.row_f[t0:, None]
    # undo the backward pass: predecessor of row i is row i+1 (iv_b for the last row)
    m[R - 1, last:] = p.iv_b[last:]
    prev = np.concatenate([m[1:], iv_b])
    cross = np.concatenate([m[2:], iv_b, iv_b])[:R] if single else prev
    x = _inv_rows(m, prev, cross, shifts, p.inv_sbox, p.mul_b)
    m[:] = x ^ p.key_b[None, :] ^ p.row_b[:, None]
    # undo the forward pass: predecessor of row i is row i-1 (iv_f for row 0)
    prev = np.concatenate([iv_f, m[:-1]])
    cross = np.concatenate([iv_f, iv_f, m[:-2]])[:R] if single else prev
    x = _inv_rows(m, prev, cross, shifts, p.inv_sbox, p.mul_f)
    m[:] = x ^ p.key_f[None, :] ^ p.row_f[:, None]


def apply(buf: np.ndarray, key: bytes, nonce: bytes, forward: bool) -> np.ndarray:
    """Encrypt (``forward``) or decrypt the non-empty byte string ``buf`` (uint8 array);
    returns a new uint8 array of the same length."""
    lay = layout(buf.size)
    p = params(key, nonce, lay)
    m = np.zeros(lay.rows * lay.lanes, dtype=np.uint8)
    m[: lay.n] = buf
    mat = m.reshape(lay.rows, lay.lanes)
    (_encrypt_matrix if forward else _decrypt_matrix)(mat, p, lay)
    return m[: lay.n]
