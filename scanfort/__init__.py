"""ScanFort: image-level chaos-cipher protection for imaging workstations."""

from __future__ import annotations

__version__ = "0.1.0"
