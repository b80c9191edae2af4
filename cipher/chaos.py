"""The ScanFort chaos cipher, version 1 (see ``cipher/SPEC.md``, which is normative).

Per image: a 32-byte image key and a 16-byte nonce feed HKDF-SHA256, which seeds logistic
maps; the maps yield one bijective S-box (an affine equivalent of GF(2^8) inversion, so it
keeps AES's nonlinearity 112 and differential uniformity 4), initial rows and whitening
bytes. The byte image is laid out as ``R`` rows of ``L`` lanes; three chained passes
(forward, backward, forward over the tail) apply ``S[XNOR(x, prev)] + g·prev[j+d]`` row by
row, so every output byte depends nonlinearly on every input byte.

Only ``encrypt``/``decrypt``/``sbox`` are the cipher's API; ``kernel``, ``kernels`` and
``constant_time`` say what runs. Every kernel produces the same bytes: the C extension's
(``cipher/csrc/``: ``gfni-avx512``, ``gfni-avx2``, ``vaes-avx2``, ``aesni-avx2``,
``aesni-sse``, ``neon-aes``, ``table``) and the numpy ``reference`` (``_reference.py``).
``encrypt``/``decrypt`` run the process's kernel, chosen once at first use: the first of
the extension's kernels for this CPU (fastest first) that reproduces a known answer; the
reference, with one warning, where the extension is not built. Tests and benchmarks pass
a kernel explicitly (``_encrypt_with``); a process that must run another one (the agent's
protect workers, told by their parent) pins it with :func:`use_kernel`. Nothing here reads
the environment.
"""

from __future__ import annotations

import hashlib
import warnings
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from cipher import _keying as ref  # the shared parts; the numpy reference is loaded on use

if TYPE_CHECKING:
    import numpy as np

try:  # the C extension, built by `pip install` when a C compiler is present (setup.py)
    from cipher import _native
except ImportError:  # pragma: no cover - exercised where the extension is not built
    _native = None  # type: ignore[assignment]

KEY_SIZE = ref.KEY_SIZE
NONCE_SIZE = ref.NONCE_SIZE
REFERENCE = "reference"

NO_EXTENSION_WARNING = (
    "cipher._native (the chaos cipher's C kernels) is not built: encrypting with the numpy "
    "reference, about 50x slower and not constant time; reinstall with a C compiler "
    "(pip install -e .)"
)

KNOWN_ANSWER_WARNING = (
    "no kernel of cipher._native reproduces the chaos cipher's known answer on this CPU (a "
    "miscompiled build?): encrypting with the numpy reference, about 50x slower"
)

# The known answer every C kernel must reproduce before the process uses it: 16461 bytes
# (256 lanes × 65 rows, a ragged last row of 77 lanes), element i = (i·167 + 13) mod 256.
_KAT_N = 16461
_KAT_KEY = hashlib.sha256(b"scanfort chaos v1 known answer key").digest()
_KAT_NONCE = hashlib.sha256(b"scanfort chaos v1 known answer nonce").digest()[:16]
_KAT_SHA256 = "f261541326728ca0b83903e8854616e8b3e92474e2e727f2c82820b459c004f9"


# --------------------------------------------------------------------------- kernels


def kernels() -> tuple[str, ...]:
    """The kernels this machine can run, fastest first; ``reference`` is always last."""
    return (tuple(_native.KERNELS) if _native is not None else ()) + (REFERENCE,)


def constant_time(name: str) -> bool:
    """Whether kernel ``name`` makes no memory access indexed by secret bytes (the table
    kernel and the numpy reference do)."""
    return _native is not None and name in _native.CONSTANT_TIME


def _kat_input() -> bytes:
    return bytes((i * 167 + 13) & 0xFF for i in range(_KAT_N))


def _passes_known_answer(name: str) -> bool:
    plain = _kat_input()
    ct = bytes(_apply_buffer(plain, _KAT_KEY, _KAT_NONCE, name, True))
    ok = hashlib.sha256(ct).hexdigest() == _KAT_SHA256
    return ok and bytes(_apply_buffer(ct, _KAT_KEY, _KAT_NONCE, name, False)) == plain


_pinned: str | None = None  # set by use_kernel


@lru_cache(maxsize=1)
def kernel() -> str:
    """The kernel :func:`encrypt` and :func:`decrypt` run in this process (chosen once)."""
    if _pinned is not None:
        return _pinned
    if _native is None:
        warnings.warn(NO_EXTENSION_WARNING, RuntimeWarning, stacklevel=3)
        return REFERENCE
    for name in _native.KERNELS:
        if _passes_known_answer(name):
            return name
    warnings.warn(KNOWN_ANSWER_WARNING, RuntimeWarning, stacklevel=3)  # a broken build
    return REFERENCE


def use_kernel(name: str) -> None:
    """Make ``name`` the kernel of :func:`encrypt` and :func:`decrypt` in this process
    instead of the fastest (e.g. to measure what a CPU without GFNI runs). Raise
    :class:`ValueError` unless this CPU runs it and it reproduces the known answer."""
    global _pinned
    if name not in kernels():
        raise ValueError(f"chaos kernel {name!r} is not available on this CPU "
                         f"(available: {', '.join(kernels())})")
    if name != REFERENCE and not _passes_known_answer(name):
        raise ValueError(f"chaos kernel {name!r} does not reproduce the known answer")
    _pinned = name
    kernel.cache_clear()


# --------------------------------------------------------------------------- buffers


def _check(key: bytes, nonce: bytes) -> None:
    if not isinstance(key, (bytes, bytearray)) or len(key) != KEY_SIZE:
        raise ValueError(f"chaos key must be {KEY_SIZE} bytes")
    if not isinstance(nonce, (bytes, bytearray)) or len(nonce) != NONCE_SIZE:
        raise ValueError(f"chaos nonce must be {NONCE_SIZE} bytes")


def _to_bytes(data: np.ndarray) -> np.ndarray:
    import numpy as np

    if not isinstance(data, np.ndarray):
        raise ValueError("chaos cipher input must be a numpy array")
    dt = data.dtype
    if dt.kind != "u" or dt.itemsize not in (1, 2):
        raise ValueError(f"unsupported dtype {dt}: the chaos cipher takes uint8 or uint16 pixels")
    flat = np.ascontiguousarray(data).astype(dt.newbyteorder("<"), copy=False)
    return flat.reshape(-1).view(np.uint8)


def _from_bytes(buf: np.ndarray, like: np.ndarray) -> np.ndarray:
    le = buf.view(like.dtype.newbyteorder("<")).reshape(like.shape)
    return le.astype(like.dtype, copy=True) if le.dtype != like.dtype else le


# --------------------------------------------------------------------------- native path


def _native_stream(x0: float, r: float, count: int) -> memoryview:
    assert _native is not None
    return memoryview(_native.stream_samples(x0, r, count, ref.STREAM_LANES, ref.STREAM_LANE_STEP, ref.STREAM_TRANSIENT, ref.QUANT))


def _native_scalar(x0: float, r: float, count: int) -> memoryview:
    assert _native is not None
    return memoryview(_native.scalar_samples(x0, r, count, ref.SBOX_TRANSIENT, ref.QUANT))


def _native_sbox_samples(prk: bytes) -> bytes:
    """The 34 used samples of the S-box stream; the C kernels build the S-box from them."""
    assert _native is not None
    return bytes(ref.healthy_samples(prk, ref.LABEL_SBOX, ref.SBOX_SAMPLES, _native_scalar, _native.distinct))


def _apply_native(buf: Any, key: bytes, nonce: bytes, forward: bool, name: str) -> memoryview:
    """Derive the parameters and run the passes (or their inverses) in C on a new padded
    matrix, which the first pass fills from ``buf`` (no separate copy); ``buf`` is any
    contiguous byte buffer (bytes, a memoryview, a uint8 array)."""
    if _native is None:
        raise RuntimeError("the native chaos kernels are not built (reinstall with a C compiler: pip install -e .)")
    lay = ref.layout(memoryview(buf).nbytes)
    m = _native.matrix(lay.rows * lay.lanes)  # not zero-filled: the first pass writes it all
    prk = ref.prk(key, nonce)
    st = ref.healthy_samples(prk, ref.LABEL_STREAM, lay.stream_len, _native_stream, _native.distinct)
    run = _native.encrypt if forward else _native.decrypt
    run(m, st, _native_sbox_samples(prk), *ref.multipliers(prk), lay.lane_bits, lay.last, lay.tail_start, name, buf)
    return memoryview(m)[: lay.n]


def _apply_buffer(data: Any, key: bytes, nonce: bytes, name: str, forward: bool) -> Any:
    """:func:`encrypt_bytes` / :func:`decrypt_bytes` with kernel ``name``."""
    _check(key, nonce)
    view = memoryview(data)
    if not view.c_contiguous:
        raise ValueError("chaos cipher input must be a contiguous buffer")
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    if not view.nbytes:
        return b""
    if name == REFERENCE:
        import numpy as np

        from cipher import _reference

        return _reference.apply(np.frombuffer(view, np.uint8), bytes(key), bytes(nonce), forward).data
    return _apply_native(view, bytes(key), bytes(nonce), forward, name)


# --------------------------------------------------------------------------- API


def _apply(data: np.ndarray, key: bytes, nonce: bytes, name: str, forward: bool) -> np.ndarray:
    """Encrypt (``forward``) or decrypt ``data`` with kernel ``name``: the byte API on the
    array's bytes, the result in its shape and dtype."""
    import numpy as np

    buf = _to_bytes(data)
    out = _apply_buffer(buf, key, nonce, name, forward)  # checks the key even for no pixels
    if buf.size == 0:
        return data.copy()
    return _from_bytes(np.frombuffer(out, np.uint8), data)


def _encrypt_with(data: np.ndarray, key: bytes, nonce: bytes, name: str) -> np.ndarray:
    """:func:`encrypt` on kernel ``name`` (one of :func:`kernels`)."""
    return _apply(data, key, nonce, name, True)


def _decrypt_with(data: np.ndarray, key: bytes, nonce: bytes, name: str) -> np.ndarray:
    """:func:`decrypt` on kernel ``name`` (one of :func:`kernels`)."""
    return _apply(data, key, nonce, name, False)


def sbox(key: bytes, nonce: bytes) -> np.ndarray:
    """The 256-entry uint8 S-box of the image keyed by ``key`` and ``nonce``."""
    _check(key, nonce)
    if _native is not None:
        import numpy as np

        s, _ = _native.sbox(_native_sbox_samples(ref.prk(bytes(key), bytes(nonce))))
        return np.frombuffer(s, dtype=np.uint8).copy()
    from cipher import _reference

    return _reference.sbox_tables(bytes(key), bytes(nonce))[0]


def encrypt(data: np.ndarray, key: bytes, nonce: bytes) -> np.ndarray:
    """Encrypt a uint8/uint16 pixel array of any shape; same shape and dtype out.

    ``key`` is a 32-byte image key and ``nonce`` 16 bytes; a key/nonce pair must protect
    one image only. The result is not authenticated: callers add integrity (see SPEC.md).
    """
    return _apply(data, key, nonce, kernel(), True)


def decrypt(data: np.ndarray, key: bytes, nonce: bytes) -> np.ndarray:
    """Exact inverse of :func:`encrypt` for the same key and nonce."""
    return _apply(data, key, nonce, kernel(), False)


def encrypt_bytes(data: Any, key: bytes, nonce: bytes) -> Any:
    """:func:`encrypt` of a byte image, without numpy: ``data`` is any contiguous buffer
    holding the pixels as the cipher sees them (uint8, or uint16 in little-endian byte
    order: the bytes :func:`encrypt` enciphers for a uint16 array). Returns a buffer of
    the same length (a memoryview or bytes)."""
    return _apply_buffer(data, key, nonce, kernel(), True)


def decrypt_bytes(data: Any, key: bytes, nonce: bytes) -> Any:
    """Exact inverse of :func:`encrypt_bytes` for the same key and nonce."""
    return _apply_buffer(data, key, nonce, kernel(), False)
