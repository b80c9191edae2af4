"""numba kernels for the sequential chain of the chaos cipher (the ``fast`` extra).

Same rounds as ``chaos._encrypt_numpy``, one byte at a time inside a compiled loop; the
lanes of a row are independent, so the inner loop has no loop-carried dependency.
"""

from __future__ import annotations

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
        d = (1 << (i % k)) if k > 0 else 0
        width = last if i == R - 1 and step < 0 else L
        rk = row_key[i]
        row = m[i]
        for j in range(width):
            jj = j + d
            if jj >= L:
                jj -= L
            v = row[j] ^ lane_key[j] ^ rk ^ prev[j]
            row[j] = (s_xnor[v] + mul[prev[jj]]) & 0xFF


_pass: Any = numba.njit(cache=True, nogil=True, boundscheck=False)(_pass_py) if AVAILABLE else _pass_py


def encrypt_matrix(m: np.ndarray, p: _Params, lay: _Layout) -> None:
    """In-place encryption of the padded byte matrix ``m`` (rows × lanes)."""
    if not AVAILABLE:
        raise RuntimeError("numba is not installed (pip install 'scanfort[fast]')")
    k, R, last = lay.lane_bits, lay.rows, lay.last
    s_xnor = p.sbox[np.arange(256, dtype=np.uint8) ^ 0xFF]
    _pass(m, 0, R, 1, p.iv_f, p.key_f, p.row_f, s_xnor, p.mul_f, k, last, False)
    m[R - 1, last:] = p.iv_b[last:]
    _pass(m, R - 1, -1, -1, p.iv_b, p.key_b, p.row_b, s_xnor, p.mul_b, k, last, False)
    _pass(m, lay.tail_start, R, 1, p.iv_f, p.key_f, p.row_f, s_xnor, p.mul_f, k, last, True)
