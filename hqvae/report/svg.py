"""Inline SVG plots for the report: :func:`svg_plot` (lines / markers) and :func:`svg_bars`
(grouped bars); no plotting library, no scripts, no external CSS or fonts."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Optional

from hqvae.report.html import esc, finite, fmt_num

MAX_POINTS = 600  # points per plotted series (longer series are thinned)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Series:
    """One plotted series: a line through (x, y), or markers only when ``points``."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    points: bool = False
    color: Optional[int] = None  # palette index (default: the series' position)


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t += step
    return ticks


def _thin(xs: list[float], ys: list[float], limit: int = MAX_POINTS) -> tuple[list[float], list[float]]:
    if len(xs) <= limit:
        return xs, ys
    k = math.ceil(len(xs) / limit)
    keep = list(range(0, len(xs), k))
    if keep[-1] != len(xs) - 1:
        keep.append(len(xs) - 1)
    return [xs[i] for i in keep], [ys[i] for i in keep]


def _log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks (as log10 values) at 1, 2, 5 x 10^k, or at powers of ten for wide ranges."""
    decades = range(math.floor(lo), math.ceil(hi) + 1)
    for mults in ((1,), (1, 2, 5), (1, 2, 3, 4, 5, 6, 7, 8, 9)):
        ticks = [math.log10(m) + e for e in decades for m in mults]
        ticks = [t for t in ticks if lo - 1e-9 <= t <= hi + 1e-9]
        if len(ticks) >= 3:
            return ticks[:: max(1, len(ticks) // 8)]
    return [math.log10(t) for t in _nice_ticks(10 ** lo, 10 ** hi) if t > 0]  # under a decade


def _frame(width: int, height: int, title: str,
           legend: list[tuple[str, int, bool]]) -> tuple[list[str], int]:
    """The <svg> opening, title and legend row; returns (parts, top of the plot area)."""
    parts = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f"<title>{esc(title)}</title>",
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
        f'<text x="{width / 2:.1f}" y="15" text-anchor="middle" font-size="13" font-weight="bold">'
        f"{esc(title)}</text>",
    ]
    top = 24
    if legend:
        x, y = 64.0, top + 8
        for name, c, marker in legend:
            w = 18 + 6.5 * len(name)
            if x + w > width - 8 and x > 64:
                x, y = 64.0, y + 14
            color = PALETTE[c % len(PALETTE)]
            parts.append(f'<circle cx="{x + 5:.1f}" cy="{y - 3.5:.1f}" r="3.5" fill="#fff" stroke="{color}" '
                         f'stroke-width="2"/>' if marker else
                         f'<rect x="{x:.1f}" y="{y - 7:.1f}" width="10" height="8" fill="{color}"/>')
            parts.append(f'<text x="{x + 13:.1f}" y="{y:.1f}" font-size="11">{esc(name)}</text>')
            x += w + 10
        top = int(y) + 10
    return parts, top


def svg_plot(series: Iterable[Series], *, title: str, xlabel: str = "", ylabel: str = "",
             logy: bool = False, width: int = 460, height: int = 270) -> str:
    """A line / scatter plot as an inline ``<svg class="plot">`` string.

    Non-finite values (and non-positive ones when ``logy``) are dropped; series with no
    points left are left out; with no data at all the plot says so."""
    clean: list[tuple[Series, list[float], list[float]]] = []
    for s in series:
        pts = [(float(a), float(b)) for a, b in zip(s.x, s.y)
               if finite(a) and finite(b) and (not logy or float(b) > 0)]
        if pts:
            xs, ys = _thin([p[0] for p in pts], [math.log10(p[1]) if logy else p[1] for p in pts])
            clean.append((s, xs, ys))
    colors = [s.color if s.color is not None else i for i, (s, _, _) in enumerate(clean)]
    legend = [(s.name, c, s.points) for (s, _, _), c in zip(clean, colors)] if len(clean) > 1 else []
    parts, top = _frame(width, height, title, legend)
    left, right, bottom = 62, width - 12, height - 38
    if not clean:
        parts.append(f'<text x="{width / 2:.1f}" y="{height / 2:.1f}" text-anchor="middle" '
                     f'font-size="12" fill="#888">no data</text></svg>')
        return "".join(parts)
    x_lo = min(min(xs) for _, xs, _ in clean)
    x_hi = max(max(xs) for _, xs, _ in clean)
    y_lo = min(min(ys) for _, _, ys in clean)
    y_hi = max(max(ys) for _, _, ys in clean)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_hi == y_lo:
        pad = abs(y_hi) * 0.1 or 1.0
        y_lo, y_hi = y_lo - pad, y_hi + pad
    else:
        pad = (y_hi - y_lo) * 0.05
        y_lo, y_hi = y_lo - pad, y_hi + pad

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)

    parts.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
                 f'fill="none" stroke="#999"/>')
    for t in _nice_ticks(x_lo, x_hi):
        parts.append(f'<line x1="{px(t):.1f}" y1="{bottom}" x2="{px(t):.1f}" y2="{bottom + 4}" stroke="#999"/>'
                     f'<text x="{px(t):.1f}" y="{bottom + 15}" text-anchor="middle" font-size="10">'
                     f"{esc(fmt_num(t))}</text>")
    y_ticks = _log_ticks(y_lo, y_hi) if logy else _nice_ticks(y_lo, y_hi)
    for t in y_ticks:
        label = fmt_num(10 ** t) if logy else fmt_num(t)
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{right}" y2="{py(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py(t) + 3:.1f}" text-anchor="end" font-size="10">'
                     f"{esc(label)}</text>")
    for (s, xs, ys), c in zip(clean, colors):
        color = PALETTE[c % len(PALETTE)]
        coords = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs, ys))
        if s.points or len(xs) == 1:
            parts.extend(f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="3.5" fill="#fff" '
                         f'stroke="{color}" stroke-width="2"/>' for a, b in zip(xs, ys))
        else:
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{coords}"/>')
    if xlabel:
        parts.append(f'<text x="{(left + right) / 2:.1f}" y="{height - 6}" text-anchor="middle" '
                     f'font-size="11">{esc(xlabel)}</text>')
    if ylabel:
        ylabel = f"{ylabel} (log)" if logy else ylabel
        parts.append(f'<text transform="translate(12 {(top + bottom) / 2:.1f}) rotate(-90)" '
                     f'text-anchor="middle" font-size="11">{esc(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def svg_bars(categories: Sequence[str], series: Sequence[tuple[str, Sequence[float]]], *,
             title: str, ylabel: str = "", labels: Optional[Sequence[Sequence[str]]] = None,
             width: int = 460, height: int = 270) -> str:
    """Grouped bars: one group per category, one bar per series; ``labels`` (per series,
    per category) are written above the bars."""
    legend = [(name, i, False) for i, (name, _) in enumerate(series)] if len(series) > 1 else []
    parts, top = _frame(width, height, title, legend)
    left, right, bottom = 62, width - 12, height - 38
    values = [float(v) for _, vs in series for v in vs if finite(v)]
    y_hi = max(values + [0.0]) * 1.12 or 1.0

    def py(y: float) -> float:
        return bottom - y / y_hi * (bottom - top)

    parts.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
                 f'fill="none" stroke="#999"/>')
    for t in _nice_ticks(0.0, y_hi):
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{right}" y2="{py(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py(t) + 3:.1f}" text-anchor="end" font-size="10">'
                     f"{esc(fmt_num(t))}</text>")
    group = (right - left) / max(len(categories), 1)
    bar = group * 0.8 / max(len(series), 1)
    for c, cat in enumerate(categories):
        x0 = left + c * group + group * 0.1
        for s, (_, vs) in enumerate(series):
            v = float(vs[c]) if c < len(vs) and finite(vs[c]) else 0.0
            x = x0 + s * bar
            color = PALETTE[s % len(PALETTE)]
            parts.append(f'<rect x="{x:.1f}" y="{py(v):.1f}" width="{bar * 0.92:.1f}" '
                         f'height="{bottom - py(v):.1f}" fill="{color}"/>')
            if labels is not None:
                parts.append(f'<text x="{x + bar * 0.46:.1f}" y="{py(v) - 3:.1f}" text-anchor="middle" '
                             f'font-size="10">{esc(labels[s][c])}</text>')
        parts.append(f'<text x="{left + (c + 0.5) * group:.1f}" y="{bottom + 15}" text-anchor="middle" '
                     f'font-size="11">{esc(cat)}</text>')
    if ylabel:
        parts.append(f'<text transform="translate(12 {(top + bottom) / 2:.1f}) rotate(-90)" '
                     f'text-anchor="middle" font-size="11">{esc(ylabel)}</text>')
    parts.append("</svg>")
    return "".join(parts)
