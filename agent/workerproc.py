"""A protect worker's process: only the imports it uses, a C heap that keeps its pages.

The agent runs two protect workers beside its own process, and each holds the cipher,
numpy and (for DICOM mode) pydicom. What a worker imports is most of the agent's memory,
so the worker (and only the worker: this is never called in the agent's own process, the
CLI or the gateway) leaves out, before its first file:

- **imports it never uses.** pydicom imports, whenever they are installed, its optional
  pixel codecs (Pillow, pylibjpeg and its plug-ins, GDCM, CharLS) and, for its test-data
  downloader, requests (with urllib3, idna, charset_normalizer, certifi) and tqdm. A
  worker never decodes pixels (DICOM mode enciphers the stored bytes as they are) and
  never downloads: marking those names as absent in ``sys.modules`` makes pydicom's own
  ``try: import … except ImportError`` see a lean installation. About 10 MB per worker.
- **numpy** (about 20 MB): the chaos cipher's C kernels take plain byte buffers
  (``cipher.chaos.encrypt_bytes``) and pydicom needs numpy only for ``pixel_array``. Only
  the numpy reference kernel needs it, run where the C extension is missing or fails its
  known answer: :func:`allow_numpy` lifts the block for such a worker.

and it keeps the C heap's pages (:func:`tune_heap`): a DICOM-mode protection allocates a
few buffers the size of the file and frees them. With glibc's defaults (a 128 KiB mmap
threshold that adapts upwards, a trim threshold of twice that) those pages went back to
the system after each file and were faulted in again for the next, about 480 page faults
per 512×512×16-bit slice, each 1-2 µs on a virtual machine: up to 0.8 ms of a 4-5 ms
protection. With both thresholds fixed above a slice's buffers the next file reuses them;
the peak stays what one protection needs (the parent's ``malloc_trim`` every few files
hands back what an unusually large file left).
"""

from __future__ import annotations

import importlib.util
import sys

#: Top-level modules a protect worker never needs, though pydicom imports them when they
#: are installed (pixel codecs; the test-data downloader's HTTP client and progress bar).
UNUSED_MODULES = ("PIL", "pylibjpeg", "openjpeg", "libjpeg", "rle", "gdcm", "jpeg_ls",
                  "pyjpegls", "requests", "tqdm")


def skip_unused_imports() -> list[str]:
    """Make :data:`UNUSED_MODULES` (and numpy, when the cipher's C kernels are built)
    unimportable in this process (``import`` raises ImportError); those already imported
    are left alone. Returns the names marked."""
    names = list(UNUSED_MODULES)
    if importlib.util.find_spec("cipher._native") is not None:
        names.append("numpy")
    marked = [name for name in names if name not in sys.modules]
    for name in marked:
        sys.modules[name] = None  # type: ignore[assignment]  # the documented way to block
    return marked


def allow_numpy() -> None:
    """Lift the block on numpy (this worker runs the numpy reference kernel)."""
    if "numpy" in sys.modules and sys.modules["numpy"] is None:
        del sys.modules["numpy"]


#: Buffers smaller than this come from the heap (glibc ``M_MMAP_THRESHOLD``); larger
#: ones (multi-frame objects) get their own mapping, returned when freed.
MMAP_THRESHOLD = 4 << 20
#: Free memory at the top of the heap is returned above this (``M_TRIM_THRESHOLD``).
TRIM_THRESHOLD = 8 << 20


def tune_heap() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module's docstring); False where the
    C library is not glibc (nothing to tune)."""
    from cipher import heap  # after skip_unused_imports: the cipher is imported here

    return heap.keep_pages(MMAP_THRESHOLD, TRIM_THRESHOLD)
