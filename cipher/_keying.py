"""The chaos cipher v1's shared parts, without numpy: constants, key schedule, layout.

What every path needs (``cipher/SPEC.md`` §1.2–1.5): the constants, the HKDF key schedule,
the logistic maps' parameters and health check, and the rows × lanes layout. The C kernels'
path (:mod:`cipher.chaos`) needs nothing else, so a process that only runs them (the
agent's protect workers) never imports numpy; the numpy reference (:mod:`cipher._reference`)
re-exports these names.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np

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


# --------------------------------------------------------------------------- keying (§1.2–1.5)


def _hmac(key: bytes, msg: bytes) -> bytes:
    """HMAC-SHA256. (``hmac.digest`` releases the GIL even for a few bytes, and a release
    and retake costs two thread wake-ups when other threads want the GIL; ``hmac.new``
    keeps it for messages this short.)"""
    return hmac.new(key, msg, "sha256").digest()


def prk(key: bytes, nonce: bytes) -> bytes:
    """HKDF-SHA256 extract (RFC 5869): salt = nonce, input key material = image key."""
    return _hmac(bytes(nonce), bytes(key))


def expand(prk: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 expand (RFC 5869) of ``prk`` with ``info`` to ``length`` bytes."""
    out, block, i = b"", b"", 1
    while len(out) < length:
        block = _hmac(prk, block + info + bytes([i]))
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


_Samples = TypeVar("_Samples", "np.ndarray", memoryview)


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
    the numpy reference's functions or the C extension's.
    """
    for attempt in range(MAX_DERIVATIONS):
        info = label if attempt == 0 else label + bytes([attempt])
        x0, r = map_params(expand(prk, info, 16))
        out = draw(x0, r, HEALTH_SAMPLES + count)
        if distinct(out[:HEALTH_SAMPLES]) >= HEALTH_MIN_DISTINCT:
            return out[HEALTH_SAMPLES:]
    raise RuntimeError("no chaotic logistic map found for this key")  # ~never: each try fails w.p. < 1 %


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
