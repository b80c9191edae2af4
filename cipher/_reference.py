"""The chaos cipher v1 in numpy, written to read like ``cipher/SPEC.md`` §1.

This module is the reference: ``tests/vectors/make_chaos_vectors.py`` generates the
vectors with it, every C kernel (``cipher/csrc/``) is checked against it, and
``cipher.chaos`` runs it where the C extension was not built (an install without a C
compiler). The parts every path shares (constants, key schedule, layout) are in
:mod:`cipher._keying`, without numpy, and re-exported here.

Encryption loops over rows, each row one vector over lanes; decryption is whole-array,
since every row's predecessor is ciphertext. Not constant time (numpy table lookups).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cipher import _gf
from cipher._keying import (  # noqa: F401 - the shared parts, re-exported
    HEALTH_MIN_DISTINCT,
    HEALTH_SAMPLES,
    KEY_SIZE,
    LABEL_GF,
    LABEL_SBOX,
    LABEL_STREAM,
    MAX_DERIVATIONS,
    MAX_LANE_BITS,
    MIN_ROWS,
    NONCE_SIZE,
    QUANT,
    R_MIN,
    R_SPAN,
    SBOX_SAMPLES,
    SBOX_TRANSIENT,
    STREAM_LANE_STEP,
    STREAM_LANES,
    STREAM_TRANSIENT,
    TAIL_EXTRA_ROWS,
    X_MIN,
    X_SPAN,
    Layout,
    expand,
    healthy_samples,
    layout,
    map_params,
    multipliers,
    prk,
)


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
