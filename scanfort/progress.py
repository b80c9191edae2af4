"""Feedback for long command-line work, on stderr.

On a terminal: one bar line redrawn in place (count, percent, rate, time left). Otherwise —
output to a file or a pipe, or ``--quiet`` / ``--json`` — one summary line at most every
``interval`` seconds, so a log of a long run shows it moving without a line per file.
A run of one item prints nothing. Messages printed through :meth:`Progress.write` never
tear the bar.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "style_for"]

STYLES = ("bar", "lines", "off")


def style_for(stream: TextIO, *, quiet: bool = False, json: bool = False) -> str:
    """``bar`` for an interactive terminal, ``lines`` for logs, pipes, --quiet and --json."""
    if quiet or json:
        return "lines"
    try:
        return "bar" if stream.isatty() else "lines"
    except (AttributeError, ValueError):
        return "lines"


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _size(nbytes: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} B"


class Progress:
    """Progress of ``total`` items of work labelled ``label`` (thread-safe).

    ``total=None``: the amount is not known in advance (a study streamed from an archive);
    counts and rates are shown, no percentage or time left.
    """

    WIDTH = 24

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None, *,
                 style: str | None = None, unit: str = "files", interval: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self.total = total
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        chosen = style or style_for(self.stream)
        if chosen not in STYLES:
            raise ValueError(f"unknown progress style {chosen!r}")
        self.style = "off" if total is not None and total <= 1 else chosen
        self.interval = interval
        self.clock = clock
        self.done = 0
        self.failed = 0
        self.nbytes = 0
        self._start = clock()
        self._last_line = self._start
        self._drawn = False
        self._lock = threading.Lock()
        if self.style == "lines":  # a log shows at once that the work started
            amount = f"{total} {unit}" if total is not None else unit
            self.stream.write(f"scanfort: {label}: {amount} to do\n")
            self.stream.flush()

    # ------------------------------------------------------------------ reporting

    def advance(self, n: int = 1, *, nbytes: int = 0, failed: bool = False) -> None:
        """Count ``n`` items done (``nbytes`` of input); redraw or print a line when due."""
        with self._lock:
            self.done += n
            self.nbytes += nbytes
            self.failed += n if failed else 0
            if self.style == "bar":
                self._draw()
            elif self.style == "lines":
                now = self.clock()
                if now - self._last_line >= self.interval and (
                        self.total is None or self.done < self.total):
                    self._last_line = now
                    self.stream.write(f"scanfort: {self.label}: {self.summary(now)}\n")
                    self.stream.flush()

    def write(self, text: str) -> None:
        """Print ``text`` (a whole line) without tearing the bar; the bar is redrawn."""
        with self._lock:
            self._clear()
            self.stream.write(text if text.endswith("\n") else text + "\n")
            if self.style == "bar" and self.done:
                self._draw()
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            self._clear()
            self.stream.flush()

    # ------------------------------------------------------------------ text

    def summary(self, now: float | None = None) -> str:
        """``500/2000 files (25 %), 210.3 MB, 52.1 files/s, about 29 s left``."""
        now = self.clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        if self.total is None:
            parts = [f"{self.done} {self.unit}"]
        else:
            percent = 100 * self.done // max(self.total, 1)
            parts = [f"{self.done}/{self.total} {self.unit} ({percent} %)"]
        if self.nbytes:
            parts.append(_size(self.nbytes))
        if self.failed:
            parts.append(f"{self.failed} failed")
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self.total is not None and 0 < self.done < self.total and rate > 0:
            parts.append(f"about {_duration((self.total - self.done) / rate)} left")
        return ", ".join(parts)

    def _draw(self) -> None:
        if self.total is None:
            spot = self.done % self.WIDTH
            bar = "." * spot + "#" + "." * (self.WIDTH - spot - 1)
        else:
            filled = self.WIDTH * self.done // max(self.total, 1)
            bar = "#" * filled + "." * (self.WIDTH - filled)
        self.stream.write(f"\r\x1b[2K[{bar}] {self.summary()}")
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[2K")
            self._drawn = False
