"""Scans-per-hour bar chart as inline SVG (no JavaScript, no external assets)."""

from __future__ import annotations

import time

from markupsafe import Markup, escape

_W, _H = 720, 180
_LEFT, _BOTTOM, _TOP = 40, 24, 12


def scans_per_hour_svg(buckets: list[int], now: float) -> Markup:
    """Bars for ``buckets`` (oldest first, one per clock hour, the last holding ``now``)."""
    n = len(buckets)
    peak = max(max(buckets, default=0), 1)
    plot_w = _W - _LEFT - 8
    plot_h = _H - _BOTTOM - _TOP
    slot = plot_w / max(n, 1)
    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" '
        f'aria-label="scans per hour over the last {n} hours" xmlns="http://www.w3.org/2000/svg">',
        f'<line x1="{_LEFT}" y1="{_TOP + plot_h}" x2="{_W - 8}" y2="{_TOP + plot_h}" stroke="#889"/>',
        f'<text x="{_LEFT - 6}" y="{_TOP + 4}" text-anchor="end" font-size="11" fill="#556">{peak}</text>',
        f'<text x="{_LEFT - 6}" y="{_TOP + plot_h}" text-anchor="end" font-size="11" fill="#556">0</text>',
    ]
    for i, count in enumerate(buckets):
        height = plot_h * count / peak
        x = _LEFT + i * slot + 1
        y = _TOP + plot_h - height
        hour_start = (int(now // 3600) - (n - 1 - i)) * 3600
        label = time.strftime("%H:%M", time.localtime(hour_start))
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(slot - 2, 1):.1f}" '
            f'height="{height:.1f}" fill="#2f6fb3"><title>{escape(label)}: {count} scans</title></rect>'
        )
        if i % 4 == 0 or i == n - 1:
            parts.append(
                f'<text x="{x + slot / 2:.1f}" y="{_H - 6}" text-anchor="middle" font-size="10" '
                f'fill="#556">{escape(label)}</text>'
            )
    parts.append("</svg>")
    return Markup("".join(parts))
