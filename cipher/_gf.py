"""GF(2^8) with the AES polynomial x^8 + x^4 + x^3 + x + 1 (0x11B), and GF(2) 8×8 matrices.

A matrix is 8 row bytes ``A[0..7]``; ``A·x`` has bit ``i`` equal to the parity of
``A[i] & x``. Tables are built once at import with whole-array numpy.
"""

from __future__ import annotations

import numpy as np

POLY = 0x11B


def _exp_log() -> tuple[np.ndarray, np.ndarray]:
    exp = np.zeros(510, dtype=np.int64)
    log = np.zeros(256, dtype=np.int64)
    x = 1
    for i in range(255):  # 255 steps, once per process: the multiplicative group of order 255
        exp[i] = x
        log[x] = i
        x ^= (x << 1) ^ (POLY if x & 0x80 else 0)  # multiply by the generator 0x03
        x &= 0xFF
    exp[255:510] = exp[0:255]
    return exp, log


EXP, LOG = _exp_log()
INV = np.zeros(256, dtype=np.uint8)
INV[1:] = EXP[(255 - LOG[1:]) % 255]
PARITY = (np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).sum(axis=1) & 1).astype(
    np.uint8
)


def mul_table(g: int) -> np.ndarray:
    """uint8[256]: ``g·x`` in GF(2^8) for every ``x``."""
    x = np.arange(256)
    out = np.zeros(256, dtype=np.uint8)
    if g:
        out[1:] = EXP[LOG[g] + LOG[x[1:]]]
    return out


def mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise GF(2^8) product of two uint8 arrays."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    out = EXP[LOG[a] + LOG[b]].astype(np.uint8)
    return np.where((a == 0) | (b == 0), 0, out).astype(np.uint8)


def affine(rows: np.ndarray, c: int, x: np.ndarray) -> np.ndarray:
    """``A·x ⊕ c`` for a uint8 array ``x`` (A given as 8 row bytes)."""
    x = np.asarray(x, dtype=np.uint8)
    out = np.full(x.shape, c, dtype=np.uint8)
    for i in range(8):  # eight output bits, each a vector operation over all of x
        out ^= PARITY[rows[i] & x] << np.uint8(i)
    return out


def rank(rows: np.ndarray) -> int:
    """Rank over GF(2) of the 8×8 matrix given by its row bytes."""
    work = [int(r) for r in rows]
    rank = 0
    for bit in range(8):
        pivot = next((i for i in range(rank, 8) if (work[i] >> bit) & 1), None)
        if pivot is None:
            continue
        work[rank], work[pivot] = work[pivot], work[rank]
        for i in range(8):
            if i != rank and (work[i] >> bit) & 1:
                work[i] ^= work[rank]
        rank += 1
    return rank


def matrix_qword(rows: bytes | np.ndarray) -> int:
    """The 64-bit matrix operand of x86 GF2P8AFFINEQB: row i (output bit i) in byte 7−i."""
    return sum(int(r) << (8 * (7 - i)) for i, r in enumerate(bytes(rows)))


def mul_rows(g: int) -> bytes:
    """Row bytes of the GF(2) matrix of multiplication by ``g`` in GF(2^8)."""
    cols = mul_table(g)[[1 << b for b in range(8)]]
    return bytes(sum(((int(cols[b]) >> i) & 1) << b for b in range(8)) for i in range(8))


def inverse_rows(rows: bytes | np.ndarray) -> bytes:
    """Row bytes of the inverse of an invertible GF(2) matrix."""
    arr = np.frombuffer(bytes(rows), dtype=np.uint8)
    images = affine(arr, 0, np.arange(256, dtype=np.uint8))
    pre = np.empty(256, dtype=np.uint8)
    pre[images] = np.arange(256, dtype=np.uint8)  # pre[A·x] = x
    cols = pre[[1 << b for b in range(8)]]
    return bytes(sum(((int(cols[b]) >> i) & 1) << b for b in range(8)) for i in range(8))
