"""Charts as inline SVG (no JavaScript, no external assets).

Colours come from CSS classes (``s0``, ``s1``, ``axis``, ``tick``) so the dashboard's
light and dark themes restyle them; each bar or point carries a ``<title>`` tooltip.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

_W, _H = 720, 180
_LEFT, _BOTTOM, _TOP, _RIGHT = 44, 24, 12, 8


def _frame(label: str, peak_text: str, css: str = "") -> list[str]:
    plot_h = _H - _BOTTOM - _TOP
    return [
        f'<svg class="chart {css}" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
        f'<line class="axis" x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_W - _RIGHT}" '
        f'y2="{_TOP + plot_h}"/>',
        f'<text class="tick" x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end">'
        f"{escape(peak_text)}</text>",
        f'<text class="tick" x="{_LEFT - 6}" y="{_TOP + plot_h}" text-anchor="end">0</text>',
    ]


def hourly_bars_svg(
    series: Sequence[tuple[str, list[int]]], now: float, label: str = "per hour"
) -> Markup:
    """Side-by-side bars per clock hour for each ``(name, counts)``; the last hour holds now.

    Bars have classes ``bar`` and the series name (``rect.bar.protected``).
    """
    n = max((len(counts) for _, counts in series), default=0)
    peak = max((max(counts, default=0) for _, counts in series), default=0) or 1
    plot_w = _W - _LEFT - _RIGHT
    plot_h = _H - _BOTTOM - _TOP
    slot = plot_w / max(n, 1)
    width = max((slot - 2) / max(len(series), 1), 1)
    parts = _frame(f"{label} over the last {n} hours", str(peak))
    for i in range(n):
        hour_start = (int(now // 3600) - (n - 1 - i)) * 3600
        stamp = time.strftime("%H:%M", time.localtime(hour_start))
        for j, (name, counts) in enumerate(series):
            count = counts[i] if i < len(counts) else 0
            height = plot_h * count / peak
            x = _LEFT + i * slot + 1 + j * width
            y = _TOP + plot_h - height
            parts.append(
                f'<rect class="bar {escape(name)} s{j}" x="{x:.1f}" y="{y:.1f}" '
                f'width="{width:.1f}" height="{height:.1f}" data-count="{count}">'
                f"<title>{escape(stamp)}: {count} {escape(name)}</title></rect>"
            )
        if i % 4 == 0 or i == n - 1:
            anchor = "end" if i == n - 1 else "middle"
            parts.append(
                f'<text class="tick" x="{_LEFT + i * slot + slot / 2:.1f}" y="{_H - 6}" '
                f'text-anchor="{anchor}">{escape(stamp)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))


def scans_per_hour_svg(buckets: list[int], now: float) -> Markup:
    """Bars for ``buckets`` (oldest first, one per clock hour, the last holding ``now``)."""
    return hourly_bars_svg([("scans", buckets)], now, "scans per hour")


def line_svg(
    values: Sequence[float | None],
    start: float,
    step_s: float,
    *,
    label: str,
    unit: str = "",
    css: str = "",
    stamp_format: str = "%H:%M",
) -> Markup:
    """A line over evenly spaced points (gaps where a value is None)."""
    n = len(values)
    peak = max((v for v in values if v is not None), default=0.0) or 1.0
    plot_w = _W - _LEFT - _RIGHT
    plot_h = _H - _BOTTOM - _TOP
    dx = plot_w / max(n - 1, 1)
    parts = _frame(label, f"{peak:g}{unit}", css)
    runs: list[list[str]] = [[]]
    for i, value in enumerate(values):
        if value is None:
            if runs[-1]:
                runs.append([])
            continue
        x = _LEFT + i * dx
        y = _TOP + plot_h - plot_h * value / peak
        runs[-1].append(f"{x:.1f},{y:.1f}")
    for run in runs:
        if len(run) == 1:
            cx, cy = run[0].split(",")
            parts.append(f'<circle class="line s0" cx="{cx}" cy="{cy}" r="2"/>')
        elif run:
            parts.append(f'<polyline class="line s0" fill="none" points="{" ".join(run)}"/>')
    ticks = 6
    for k in range(ticks + 1):
        i = round(k * (n - 1) / ticks) if n > 1 else 0
        stamp = time.strftime(stamp_format, time.localtime(start + i * step_s))
        anchor = "end" if k == ticks else "middle"  # the last label must not overflow
        parts.append(
            f'<text class="tick" x="{_LEFT + i * dx:.1f}" y="{_H - 6}" text-anchor="{anchor}">'
            f"{escape(stamp)}</text>"
        )
    points = sum(1 for v in values if v is not None)
    parts.append(f'<desc data-points="{points}">{escape(label)}</desc></svg>')
    return Markup("".join(parts))
