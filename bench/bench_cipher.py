"""Chaos cipher vs AES-256-GCM throughput (same as ``scanfort bench``)."""

from __future__ import annotations

import sys

from scanfort.benchmark import main

if __name__ == "__main__":
    sys.exit(main(as_json="--json" in sys.argv))
