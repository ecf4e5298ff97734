"""Inline SVG line charts for the report: no plotting dependency, no CDN, no images.

Why hand-rendered: the report must be one self-contained file, the charts are plain
time series, and ~150 lines of SVG keep the service image free of matplotlib (~40 MB
with numpy) and render in a few ms instead of a second per chart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")
WIDTH, HEIGHT = 760, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 40


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    xs: Sequence[float]
    ys: Sequence[float | None]  # None: no value at that x (gap)
    dashed: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """Round tick values covering [lo, hi] (1, 2, 5 x 10^k steps)."""
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def _fmt(v: float) -> str:
    if abs(v) >= 1e6:
        return f"{v / 1e6:g}M"
    if abs(v) >= 1e4:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def _path(line: Line, sx: float, sy: float, x0: float, y0: float) -> str:
    parts: list[str] = []
    pen_up = True
    for x, y in zip(line.xs, line.ys, strict=True):
        if y is None:
            pen_up = True
            continue
        px = LEFT + (x - x0) * sx
        py = TOP + (HEIGHT - TOP - BOTTOM) - (y - y0) * sy
        parts.append(f"{'M' if pen_up else 'L'}{px:.1f},{py:.1f}")
        pen_up = False
    return "".join(parts)


def line_chart(
    title: str, lines: Sequence[Line], *, x_label: str = "seconds", y_label: str = ""
) -> str:
    """An SVG line chart; an empty chart says "no data" instead of failing."""
    xs = [x for ln in lines for x in ln.xs]
    ys = [y for ln in lines for y in ln.ys if y is not None]
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'role="img" aria-label="{escape(title)}">'
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" class="title">{escape(title)}</text>'
    )
    if not xs or not ys:
        return (
            head
            + f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">no data</text></svg>'
        )
    x_ticks = nice_ticks(min(xs), max(xs))
    y_ticks = nice_ticks(min(0.0, min(ys)), max(ys))
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    sx = plot_w / ((x1 - x0) or 1)
    sy = plot_h / ((y1 - y0) or 1)
    out = [head]
    for t in y_ticks:
        py = TOP + plot_h - (t - y0) * sy
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{py:.1f}" y2="{py:.1f}" class="grid"/>'
        )
        out.append(f'<text x="{LEFT - 6}" y="{py + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for t in x_ticks:
        px = LEFT + (t - x0) * sx
        out.append(
            f'<text x="{px:.1f}" y="{TOP + plot_h + 16}" text-anchor="middle">{_fmt(t)}</text>'
        )
    out.append(
        f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{escape(x_label)}</text>"
        f'<text x="14" y="{TOP + plot_h / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {TOP + plot_h / 2})">{escape(y_label)}</text>'
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" class="frame"/>'
    )
    for i, ln in enumerate(lines):
        color = PALETTE[i % len(PALETTE)]
        dash = ' stroke-dasharray="5,4"' if ln.dashed else ""
        out.append(
            f'<path d="{_path(ln, sx, sy, x0, y0)}" fill="none" stroke="{color}" '
            f'stroke-width="1.6"{dash}><title>{escape(ln.name)}</title></path>'
        )
        lx = LEFT + 8 + (i % 4) * 170
        ly = TOP + 14 + (i // 4) * 14
        out.append(
            f'<rect x="{lx}" y="{ly - 8}" width="10" height="3" fill="{color}"/>'
            f'<text x="{lx + 14}" y="{ly - 3}" class="legend">{escape(ln.name)}</text>'
        )
    out.append("</svg>")
    return "".join(out)
