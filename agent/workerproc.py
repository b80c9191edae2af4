"""A protect worker's imports: only what it uses.

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
