"""``scanfort cipher-report`` and ``scanfort bench``."""

from __future__ import annotations

import argparse
from typing import Any


def _report(args: argparse.Namespace) -> int:
    from scanfort import report

    return report.main(args.files, args.json)


def _bench(args: argparse.Namespace) -> int:
    from scanfort import benchmark

    return benchmark.main(args.json, args.min_time)


def register(sub: Any) -> None:
    p = sub.add_parser("cipher-report", help="statistics of the chaos cipher (entropy, NPCR/UACI, S-box quality, speed)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("files", nargs="*", metavar="FILE", help="DICOM files whose pixel data to use (default: bundled samples and a phantom)")
    p.set_defaults(func=_report)
    b = sub.add_parser("bench", help="chaos cipher throughput against AES-256-GCM")
    b.add_argument("--json", action="store_true", help="machine-readable output")
    b.add_argument("--min-time", type=float, default=1.0, help="seconds per measurement (default 1)")
    b.set_defaults(func=_bench)
