"""A promotion's load probe as a server-side SVG: latency (p50 line, max dots) and success per second.

No JavaScript and nothing from a CDN: the page embeds the `<svg>` as markup. Every value comes from
the root side's answer and is numeric-checked here; text is escaped. The series is
`[second, phase, requests, ok, p50_ms, max_ms]` per second (sandbox/promote/probe.py `series`).
"""

from __future__ import annotations

import html
import math
from typing import Any

W, H = 720, 260
LEFT, RIGHT, TOP = 48, 12, 16
LAT_H = 150  # the latency panel; the success strip sits below it
STRIP_TOP, STRIP_H = TOP + LAT_H + 22, 30
PHASE_FILL = {"before": "#f3f4f6", "during": "#fff7e0", "after": "#eef7ee"}


def _num(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return 0.0
    return float(v)


def _rows(series: Any) -> list[tuple[float, str, float, float, float, float]]:
    out = []
    for row in series if isinstance(series, list) else []:
        if isinstance(row, list) and len(row) == 6:
            sec, phase, n, ok, p50, mx = row
            out.append((_num(sec), str(phase)[:10], _num(n), _num(ok), _num(p50), _num(mx)))
    return out[:900]


def plot(series: Any, title: str = "load probe") -> str:
    rows = _rows(series)
    if not rows:
        return ""
    t_max = max(r[0] for r in rows) + 1
    y_max = max(max(r[5], r[4]) for r in rows) or 1.0
    y_max = _nice(y_max)
    plot_w = W - LEFT - RIGHT

    def x(t: float) -> float:
        return LEFT + plot_w * t / t_max

    def y(ms: float) -> float:
        return TOP + LAT_H - LAT_H * min(ms, y_max) / y_max

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {W} {H}" width="{W}" '
        f'height="{H}" role="img" aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
    ]
    # phase backgrounds
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i][1] != rows[start][1]:
            phase = rows[start][1]
            x0, x1 = x(rows[start][0]), x(rows[i - 1][0] + 1)
            fill = PHASE_FILL.get(phase, "#ffffff")
            parts.append(
                f'<rect x="{x0:.1f}" y="{TOP}" width="{x1 - x0:.1f}" height="{LAT_H}" fill="{fill}"/>'
                f'<text x="{x0 + 3:.1f}" y="{TOP + 11}" font-size="10" fill="#555">'
                f"{html.escape(phase)}</text>"
            )
            start = i
    # axes and gridlines
    for frac in (0, 0.5, 1):
        yy = y(y_max * frac)
        parts.append(
            f'<line x1="{LEFT}" x2="{W - RIGHT}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#ccc"/>'
            f'<text x="{LEFT - 4}" y="{yy + 3:.1f}" font-size="10" text-anchor="end">'
            f"{y_max * frac:g} ms</text>"
        )
    # max latency dots, p50 line
    for r in rows:
        parts.append(f'<circle cx="{x(r[0] + 0.5):.1f}" cy="{y(r[5]):.1f}" r="1.8" fill="#9ab"/>')
    pts = " ".join(f"{x(r[0] + 0.5):.1f},{y(r[4]):.1f}" for r in rows)
    parts.append(f'<polyline points="{pts}" fill="none" stroke="#1f5fbf" stroke-width="1.5"/>')
    # success strip: green when every request of that second succeeded, red otherwise
    bar = plot_w / t_max
    for r in rows:
        good = r[2] > 0 and r[3] >= r[2]
        fill = "#3a3" if good else "#d33"
        parts.append(
            f'<rect x="{x(r[0]):.1f}" y="{STRIP_TOP}" width="{max(bar - 0.5, 0.5):.1f}" '
            f'height="{STRIP_H}" fill="{fill}"><title>{r[0]:g}s: {r[3]:g}/{r[2]:g} ok</title></rect>'
        )
    failed = sum(r[2] - r[3] for r in rows)
    total = sum(r[2] for r in rows)
    parts.append(
        f'<text x="{LEFT}" y="{STRIP_TOP - 5}" font-size="10">success per second: '
        f"{total - failed:g}/{total:g} ok</text>"
        f'<text x="{W - RIGHT}" y="{H - 4}" font-size="10" text-anchor="end">{t_max:g} s</text>'
        f'<text x="{LEFT}" y="{H - 4}" font-size="10">0 s · p50 line, max dots</text></svg>'
    )
    return "".join(parts)


def _nice(v: float) -> float:
    """A round upper bound for the latency axis: 1, 2 or 5 times a power of ten."""
    exp = 10.0 ** math.floor(math.log10(v))
    return next(m * exp for m in (1, 2, 5, 10) if m * exp >= v)
