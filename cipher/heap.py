"""The C heap of a process that runs the cipher on image-sized buffers (glibc only).

Protecting or restoring a 512×512×16-bit slice allocates a few buffers of its size and
frees them. With glibc's defaults (a 128 KiB mmap threshold that adapts upwards, a trim
threshold of twice that) those pages go back to the system after each image and are
faulted in again for the next: about 100-500 page faults per slice, each 1-2 µs on a
virtual machine, plus the kernel zeroing every page. :func:`keep_pages` fixes both
thresholds above an image's buffers so the next image reuses them; :func:`trimmer` gives
the free ones back when the caller decides to (glibc's ``malloc_trim``).

On other C libraries (musl, Windows, macOS) there is nothing to tune: both do nothing.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _glibc(name: str) -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn: Callable[..., int] = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc (musl has neither)
        return None
    return fn


def keep_pages(mmap_threshold: int, trim_threshold: int) -> bool:
    """Buffers under ``mmap_threshold`` bytes come from the heap (larger ones get their own
    mapping, returned when freed); free memory at the heap's top goes back to the system
    only above ``trim_threshold`` bytes. False where the C library is not glibc."""
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int  # type: ignore[attr-defined]
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
                and mallopt(_M_TRIM_THRESHOLD, trim_threshold))  # fmt: skip


def trimmer() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim(pad)`` (free heap pages back to the system), or None."""
    fn = _glibc("malloc_trim")
    if fn is not None:
        fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int  # type: ignore[attr-defined]
    return fn
