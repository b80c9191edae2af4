"""ScanFort: image-level chaos-cipher protection for imaging workstations (command-line layer)."""

from __future__ import annotations

from protocol import __version__

__all__ = ["__version__"]
