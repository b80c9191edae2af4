"""numba kernels for the sequential chain of the chaos cipher (the ``fast`` extra).

Same rounds as ``chaos._encrypt_numpy``, one byte at a time inside a compiled loop; the
lanes of a row are independent, so the inner loop has no loop-carried dependency.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from cipher.chaos import _Layout, _Params

try:
    import numba
except ImportError:  # pragma: no cover - exercised where numba is absent
    AVAILABLE = False
else:
    AVAILABLE = True


def _has_gfni() -> bool:
    if not AVAILABLE or os.environ.get("SCANFORT_CHAOS_GFNI", "1") == "0":
        return False
    try:
        import llvmlite.binding as llvm

        features = llvm.get_host_cpu_features()
        return bool(features.get("gfni")) and bool(features.get("avx512bw"))
    except Exception:  # pragma: no cover - unusual llvmlite builds
        return False


GFNI = _has_gfni()


def _pass_py(
    m: np.ndarray,
    first: int,
    stop: int,
    step: int,
    iv: np.ndarray,
    lane_key: np.ndarray,
    row_key: np.ndarray,
    s_xnor: np.ndarray,
    mul: np.ndarray,
    k: int,
    last: int,
    chain_from_matrix: bool,
) -> None:
    R, L = m.shape
    for i in range(first, stop, step):
        if chain_from_matrix or i != first:
            prev = m[i - step]
        else:
            prev = iv
        cross = prev
        if L == 1:  # one lane: the multiplier takes the row two steps back (SPEC §1.6)
            i2 = i - 2 * step
            if chain_from_matrix:
                cross = m[i2] if i2 >= 0 else iv
            else:
                cross = m[i2] if (i2 - first) * step >= 0 else iv
        d = (1 << (i % k)) if k > 0 else 0
        width = last if i == R - 1 and step < 0 else L
        rk = row_key[i]
        row = m[i]
        for j in range(width):
            jj = j + d
            if jj >= L:
                jj -= L
            v = row[j] ^ lane_key[j] ^ rk ^ prev[j]
            row[j] = (s_xnor[v] + mul[cross[jj]]) & 0xFF


def _stream_py(x0: float, r: float, count: int, lanes: int, step: float, transient: int, quant: float) -> np.ndarray:
    """Same bytes as ``chaos._stream_bytes`` (strict IEEE arithmetic: numba does not
    reassociate or contract without fastmath)."""
    x = np.empty(lanes, dtype=np.float64)
    for j in range(lanes):
        x[j] = x0 + j * step
    for _ in range(transient):
        for j in range(lanes):
            x[j] = (r * x[j]) * (1.0 - x[j])
    out = np.empty(count, dtype=np.uint8)
    t = 0
    while t < count:
        for j in range(lanes):
            x[j] = (r * x[j]) * (1.0 - x[j])
            if t + j < count:
                out[t + j] = np.uint64(x[j] * quant) & 0xFF
        t += lanes
    return out


def _unpass_py(
    m: np.ndarray,
    first: int,
    stop: int,
    step: int,
    chain: int,
    iv: np.ndarray,
    lane_key: np.ndarray,
    row_key: np.ndarray,
    inv_s: np.ndarray,
    mul: np.ndarray,
    k: int,
    iv_row: int,
) -> None:
    """Invert one pass in place, visiting rows so that each predecessor (row i+chain) is
    still ciphertext; the row ``iv_row`` takes ``iv`` as its predecessor."""
    R, L = m.shape
    for i in range(first, stop, step):
        prev = iv if i == iv_row else m[i + chain]
        cross = prev
        if L == 1:  # the row two steps back in encryption order, iv before the first
            i2 = i + 2 * chain
            cross = m[i2] if 0 <= i2 < R else iv
        d = (1 << (i % k)) if k > 0 else 0
        rk = row_key[i]
        row = m[i]
        for j in range(L):
            jj = j + d
            if jj >= L:
                jj -= L
            v = inv_s[(row[j] - mul[cross[jj]]) & 0xFF]
            row[j] = ((~(v ^ prev[j])) ^ lane_key[j] ^ rk) & 0xFF


stream_bytes: Any = numba.njit(cache=True, nogil=True)(_stream_py) if AVAILABLE else _stream_py
_pass: Any = numba.njit(cache=True, nogil=True, boundscheck=False)(_pass_py) if AVAILABLE else _pass_py
_unpass: Any = numba.njit(cache=True, nogil=True, boundscheck=False)(_unpass_py) if AVAILABLE else _unpass_py


def decrypt_matrix(m: np.ndarray, p: _Params, lay: _Layout) -> None:
    """In-place decryption of the padded byte matrix (tail, backward, forward undone)."""
    if not AVAILABLE:
        raise RuntimeError("numba is not installed (pip install 'scanfort[fast]')")
    k, R, last = lay.lane_bits, lay.rows, lay.last
    if GFNI and lay.lanes >= 64:
        _decrypt_gfni(m, p, lay)
        return
    inv = p.inv_sbox
    t0 = lay.tail_start
    _unpass(m, R - 1, t0 - 1, -1, -1, p.iv_f, p.key_f, p.row_f, inv, p.mul_f, k, -1)
    m[R - 1, last:] = p.iv_b[last:]
    _unpass(m, 0, R, 1, 1, p.iv_b, p.key_b, p.row_b, inv, p.mul_b, k, R - 1)
    _unpass(m, R - 1, -1, -1, -1, p.iv_f, p.key_f, p.row_f, inv, p.mul_f, k, 0)


def encrypt_matrix(m: np.ndarray, p: _Params, lay: _Layout) -> None:
    """In-place encryption of the padded byte matrix ``m`` (rows × lanes)."""
    if not AVAILABLE:
        raise RuntimeError("numba is not installed (pip install 'scanfort[fast]')")
    k, R, last = lay.lane_bits, lay.rows, lay.last
    s_xnor = p.sbox[np.arange(256, dtype=np.uint8) ^ 0xFF]
    if GFNI and lay.lanes >= 64:
        _encrypt_gfni(m, p, lay, s_xnor)
        return
    _pass(m, 0, R, 1, p.iv_f, p.key_f, p.row_f, s_xnor, p.mul_f, k, last, False)
    m[R - 1, last:] = p.iv_b[last:]
    _pass(m, R - 1, -1, -1, p.iv_b, p.key_b, p.row_b, s_xnor, p.mul_b, k, last, False)
    _pass(m, lay.tail_start, R, 1, p.iv_f, p.key_f, p.row_f, s_xnor, p.mul_f, k, last, True)


def _encrypt_gfni(m: np.ndarray, p: _Params, lay: _Layout, s_xnor: np.ndarray) -> None:
    from cipher import _gf
    from cipher._gfni import gfni_pass

    k, R, L, last = lay.lane_bits, lay.rows, lay.lanes, lay.last
    a1, c1, a2, c2 = p.affine
    c1x = int(_gf.affine(np.frombuffer(a1, np.uint8), c1, np.array([0xFF], np.uint8))[0])
    q1, q2 = np.uint64(_gf.matrix_qword(a1)), np.uint64(_gf.matrix_qword(a2))
    mf, mb = (np.uint64(_gf.matrix_qword(_gf.mul_rows(g))) for g in p.g)
    flat = m.reshape(-1)
    gfni_pass(flat, L, R, 0, R, 1, p.iv_f, p.key_f, p.row_f, s_xnor, p.mul_f, k, last, False, c1x, c2, q1, q2, mf)
    m[R - 1, last:] = p.iv_b[last:]
    gfni_pass(flat, L, R, R - 1, -1, -1, p.iv_b, p.key_b, p.row_b, s_xnor, p.mul_b, k, last, False, c1x, c2, q1, q2, mb)
    gfni_pass(flat, L, R, lay.tail_start, R, 1, p.iv_f, p.key_f, p.row_f, s_xnor, p.mul_f, k, last, True, c1x, c2, q1, q2, mf)


def _decrypt_gfni(m: np.ndarray, p: _Params, lay: _Layout) -> None:
    from cipher import _gf
    from cipher._gfni import gfni_unpass

    k, R, L, last = lay.lane_bits, lay.rows, lay.lanes, lay.last
    a1, c1, a2, c2 = p.affine
    a1i, a2i = _gf.inverse_rows(a1), _gf.inverse_rows(a2)
    b1 = int(_gf.affine(np.frombuffer(a1i, np.uint8), 0, np.array([c1], np.uint8))[0])
    b2 = int(_gf.affine(np.frombuffer(a2i, np.uint8), 0, np.array([c2], np.uint8))[0])
    q1, q2 = np.uint64(_gf.matrix_qword(a1i)), np.uint64(_gf.matrix_qword(a2i))
    mf, mb = (np.uint64(_gf.matrix_qword(_gf.mul_rows(g))) for g in p.g)
    flat = m.reshape(-1)
    t0 = lay.tail_start
    gfni_unpass(flat, L, R - 1, t0 - 1, -1, -1, p.iv_f, p.key_f, p.row_f, k, -1, b2, b1, q2, q1, mf)
    m[R - 1, last:] = p.iv_b[last:]
    gfni_unpass(flat, L, 0, R, 1, 1, p.iv_b, p.key_b, p.row_b, k, R - 1, b2, b1, q2, q1, mb)
    gfni_unpass(flat, L, R - 1, -1, -1, -1, p.iv_f, p.key_f, p.row_f, k, 0, b2, b1, q2, q1, mf)
