"""PyInstaller entry point: the frozen ``scanfort`` executable."""

from __future__ import annotations

import multiprocessing

if __name__ == "__main__":
    # A frozen program that (indirectly) uses multiprocessing must call this first.
    multiprocessing.freeze_support()
    from scanfort.cli import main

    raise SystemExit(main())
