"""Inline SVG charts for the risk report: line charts for weekly trends and horizontal (stacked) bars.

Drawn by hand so the report stays one self-contained file (hospital networks are closed: no chart
library, no fonts, no scripts). Every text that reaches the markup goes through `esc`. Each chart is an
`<svg role="img">` with a <title> and <desc>; the page puts a data table beside it for screen readers
and for copying numbers.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Final

WIDTH: Final = 560
_FONT: Final = 'font-family="system-ui, sans-serif" font-size="11" fill="#334155"'


def esc(value: object) -> str:
    """HTML/SVG-escaped text (quotes too, so it is also safe inside attributes)."""
    return html.escape("" if value is None else str(value), quote=True)


def nice_max(value: float) -> float:
    """The smallest 1, 2, 2.5 or 5 x 10^k that is >= value (1 for nothing)."""
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def ticks(top: float) -> list[float]:
    """Gridline values from 0 to a nice_max: 4 steps for 2 x 10^k, else 5 (so every step is round)."""
    steps = 4 if round(top / 10 ** math.floor(math.log10(top)), 6) == 2 else 5
    return [top * k / steps for k in range(steps + 1)]


def _number(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 10 or value == int(value) else f"{value:.1f}"


def _open(ident: str, title: str, desc: str, width: int, height: int) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-labelledby="{ident}-t {ident}-d" class="chart">'
        f'<title id="{ident}-t">{esc(title)}</title><desc id="{ident}-d">{esc(desc)}</desc>'
    )


def line_chart(
    ident: str,
    title: str,
    desc: str,
    labels: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | None], str]],
    unit: str = "",
) -> str:
    """Weekly values as lines with dots; None leaves a gap. The last value of each line is labelled."""
    width, height, left, right, top, bottom = WIDTH, 230, 44, 56, 14, 34
    values = [v for _, points, _ in series for v in points if v is not None]
    top_value = nice_max(max(values, default=0))
    plot_w, plot_h = width - left - right, height - top - bottom
    step = plot_w / max(len(labels) - 1, 1)

    def x(i: int) -> float:
        return left + i * step

    def y(v: float) -> float:
        return top + plot_h * (1 - v / top_value)

    out = [_open(ident, title, desc, width, height)]
    for k, tick in enumerate(ticks(top_value)):
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            f'stroke="{"#94a3b8" if k == 0 else "#e2e8f0"}"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" {_FONT}>'
            f"{esc(_number(tick))}</text>"
        )
    every = max(1, math.ceil(len(labels) / 7))
    for i, label in enumerate(labels):
        if (len(labels) - 1 - i) % every == 0:
            out.append(
                f'<text x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="middle" {_FONT}>'
                f"{esc(label)}</text>"
            )
    if unit:
        out.append(f'<text x="{left}" y="{height - 4}" {_FONT}>{esc(unit)}</text>')
    for name, points, colour in series:
        runs: list[list[tuple[float, float]]] = [[]]
        for i, v in enumerate(points):
            if v is None:
                runs.append([])
            else:
                runs[-1].append((x(i), y(v)))
        for run in runs:
            if len(run) > 1:
                path = " ".join(f"{px:.1f},{py:.1f}" for px, py in run)
                out.append(
                    f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5" '
                    f'stroke-linejoin="round"/>'
                )
        for i, v in enumerate(points):
            if v is not None:
                out.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{colour}">'
                    f"<title>{esc(name)}, {esc(labels[i])}: {esc(_number(v))}</title></circle>"
                )
        last = next(((i, v) for i, v in reversed(list(enumerate(points))) if v is not None), None)
        if last is not None:
            out.append(
                f'<text x="{x(last[0]) + 7:.1f}" y="{y(last[1]) + 4:.1f}" {_FONT} font-weight="600" '
                f'fill="{colour}">{esc(_number(last[1]))}</text>'
            )
    out.append("</svg>")
    return "".join(out)


def stacked_bars(
    ident: str,
    title: str,
    desc: str,
    rows: Sequence[tuple[str, Sequence[float]]],
    segments: Sequence[tuple[str, str]],
) -> str:
    """Horizontal bars, one per row, each split into segments (name, colour) in order; totals at the end."""
    label_w, bar_h, gap, top = 170, 18, 8, 6
    width = WIDTH
    height = top * 2 + max(len(rows), 1) * (bar_h + gap) + 18
    totals = [sum(values) for _, values in rows]
    scale_max = nice_max(max(totals, default=0))
    plot_w = width - label_w - 50
    out = [_open(ident, title, desc, width, height)]
    for tick in ticks(scale_max):
        gx = label_w + plot_w * tick / scale_max
        out.append(
            f'<line x1="{gx:.1f}" x2="{gx:.1f}" y1="{top}" y2="{height - 18}" stroke="#e2e8f0"/>'
            f'<text x="{gx:.1f}" y="{height - 4}" text-anchor="middle" {_FONT}>'
            f"{esc(_number(tick))}</text>"
        )
    for row, ((label, values), total) in enumerate(zip(rows, totals, strict=True)):
        y = top + row * (bar_h + gap)
        shown = label if len(label) <= 26 else label[:25] + "\u2026"
        out.append(
            f'<text x="{label_w - 8}" y="{y + bar_h - 5}" text-anchor="end" {_FONT}>{esc(shown)}</text>'
        )
        x = float(label_w)
        for (name, colour), value in zip(segments, values, strict=True):
            if value > 0:
                w = plot_w * value / scale_max
                out.append(
                    f'<rect x="{x:.1f}" y="{y}" width="{max(w, 1):.1f}" height="{bar_h}" fill="{colour}">'
                    f"<title>{esc(label)}: {esc(_number(value))} {esc(name)}</title></rect>"
                )
                x += w
        out.append(
            f'<text x="{x + 5:.1f}" y="{y + bar_h - 5}" {_FONT} font-weight="600">'
            f"{esc(_number(total))}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def legend(segments: Sequence[tuple[str, str]]) -> str:
    """An HTML legend of (name, colour) swatches."""
    items = "".join(
        f'<li><span class="swatch" style="background:{colour}"></span>{esc(name)}</li>'
        for name, colour in segments
    )
    return f'<ul class="legend">{items}</ul>'
