"""``scanfort demo``: the main job on embedded defaults (see README)."""

from __future__ import annotations

import argparse
from typing import Any


def _demo(args: argparse.Namespace) -> int:
    from scanfort import report

    return report.main([], False)


def register(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the demo on embedded defaults")
    p.set_defaults(func=_demo)
