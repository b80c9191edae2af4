"""Wording shared by every config reader (agent, central, gateway): "did you mean"."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["unknown_key"]


def unknown_key(key: str, known: Iterable[str]) -> str:
    """``unknown key`` plus the closest known key, if one is close: typos get a pointer."""
    close = difflib.get_close_matches(key, sorted(set(known)), n=1, cutoff=0.6)
    return f"unknown key (did you mean {close[0]!r}?)" if close else "unknown key"
