"""``hqvae report RUN_DIR``: one static HTML page about a pipeline run that opens offline.

The page (``RUN/report.html``, see :mod:`hqvae.layout`) shows, per track: the sample grid
beside the random-codes baseline, audio players for generated clips, reconstructions beside
originals, per-layer codebook usage, training curves, a metrics table and the configs that
produced it all. Plots are inline SVG drawn by :func:`svg_plot` / :func:`svg_bars` (no
plotting library, no scripts, no external CSS or fonts); images and audio are referenced
by paths relative to the page, so the run folder can be zipped and moved as a whole.

Anything missing (a track, a stage not run yet, a file that does not parse) is left out or
marked "not run"; the page is still written.
"""

from __future__ import annotations

import datetime
import html
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional
from urllib.parse import quote

from engine.files import write_text_atomic
from hqvae import layout

MAX_CODE_ROWS = 20_000  # rows of the codes' train split read for the code-frequency curves
SAMPLE_PLAYERS = 8  # generated clips given an <audio> player
RANDOM_PLAYERS = 4  # random-baseline clips given an <audio> player
DISPLAY_WIDTH = 560  # small images are zoomed by whole pixels up to this width
MAX_POINTS = 600  # points per plotted series (longer series are thinned)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

esc = html.escape


# ---------------------------------------------------------------------------------------------
# SVG plots


@dataclass
class Series:
    """One plotted series: a line through (x, y), or markers only when ``points``."""

    name: str
    x: Sequence[float]
    y: Sequence[float]
    points: bool = False
    color: Optional[int] = None  # palette index (default: the series' position)


def _fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.2g}"
    return f"{v:.4g}"


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
               if _finite(a) and _finite(b) and (not logy or float(b) > 0)]
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
                     f"{esc(_fmt_num(t))}</text>")
    y_ticks = _log_ticks(y_lo, y_hi) if logy else _nice_ticks(y_lo, y_hi)
    for t in y_ticks:
        label = _fmt_num(10 ** t) if logy else _fmt_num(t)
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
    values = [float(v) for _, vs in series for v in vs if _finite(v)]
    y_hi = max(values + [0.0]) * 1.12 or 1.0

    def py(y: float) -> float:
        return bottom - y / y_hi * (bottom - top)

    parts.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" '
                 f'fill="none" stroke="#999"/>')
    for t in _nice_ticks(0.0, y_hi):
        parts.append(f'<line x1="{left}" y1="{py(t):.1f}" x2="{right}" y2="{py(t):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 4}" y="{py(t) + 3:.1f}" text-anchor="end" font-size="10">'
                     f"{esc(_fmt_num(t))}</text>")
    group = (right - left) / max(len(categories), 1)
    bar = group * 0.8 / max(len(series), 1)
    for c, cat in enumerate(categories):
        x0 = left + c * group + group * 0.1
        for s, (_, vs) in enumerate(series):
            v = float(vs[c]) if c < len(vs) and _finite(vs[c]) else 0.0
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


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ---------------------------------------------------------------------------------------------
# reading the run


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        problems.append(f"{path}: could not be read ({err})")
        return None


def _read_jsonl(path: Path) -> list[dict]:
    rows: list[dict] = []
    if not path.is_file():
        return rows
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a run still writing it
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text(errors="replace") if path.is_file() else None
    except OSError:
        return None


def code_counts(codes_dir: Path, max_rows: int = MAX_CODE_ROWS) -> Optional[dict]:
    """Code frequencies per level over ``max_rows`` rows (spread evenly) of the codes' train split
    (or the first split encoded): {"split", "rows", "levels": [(codebook size, counts)]}."""
    import datasets
    import numpy as np

    from engine.subsets import spread_indices
    from prior.codes import level_column, read_manifest

    manifest = read_manifest(codes_dir)
    splits = [s for s in manifest["splits"] if (codes_dir / s).is_dir()]
    if not splits:
        return None
    split = "train" if "train" in splits else splits[0]
    ds = datasets.load_from_disk(str(codes_dir / split))
    n = min(len(ds), max_rows)
    # rows spread over the split: codes of folder datasets come class by class
    table = ds.select(spread_indices(len(ds), n)).with_format("arrow")[:n]
    levels = []
    for lv, k in enumerate(manifest["codebook_sizes"]):
        column = table[level_column(lv)]
        chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks]
        values = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
        values = values[(values >= 0) & (values < k)]
        levels.append((int(k), np.bincount(values, minlength=k)))
    return {"split": split, "rows": n, "of": len(ds), "levels": levels}


# ---------------------------------------------------------------------------------------------
# HTML pieces

STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;
max-width:1180px;padding:0 18px 40px;color:#222;line-height:1.4}
h1{margin:18px 0 4px}h2{border-bottom:2px solid #ddd;padding-bottom:4px;margin-top:34px}
h3{margin:22px 0 8px}nav a{margin-right:14px}
table{border-collapse:collapse;margin:6px 0 14px;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:0 18px 14px 0;vertical-align:top}
figure img{max-width:100%;height:auto;image-rendering:pixelated;border:1px solid #ccc}
figcaption{font-size:12px;color:#555}
pre{background:#f7f7f7;border:1px solid #e2e2e2;padding:8px;overflow:auto;font-size:12px;max-height:480px}
details{margin:4px 0}summary{cursor:pointer}
.plots svg{margin:0 12px 12px 0;border:1px solid #eee}
.status-done{color:#17823b}.status-partial{color:#b36b00}.status-missing{color:#999}
.notrun{color:#999;font-style:italic}.muted{color:#777;font-size:12px}
.player{display:inline-block;margin:0 14px 10px 0;font-size:12px}
.player audio{display:block;width:260px}
.warn{background:#fff4e0;border:1px solid #f0c070;padding:6px 10px}
"""


class _Details(dict):
    """A stage's extra numbers, shown as named values (``samples fid 231.8 · kid 0.13``)
    rather than as the raw JSON they were recorded in."""

    def html(self) -> str:
        parts = []
        for key, value in _flatten(dict(self)):
            if isinstance(value, float):
                value = _fmt_num(value) if math.isfinite(value) else str(value)
            elif isinstance(value, (dict, list)):
                value = json.dumps(_rounded(value))
            parts.append(f"{esc(key.replace('.', ' '))} <b>{esc(str(value))}</b>")
        return " · ".join(parts)


def _cell(v: Any) -> str:
    if v is None:
        return '<td class="num">–</td>'
    if isinstance(v, _Details):
        return f"<td>{v.html()}</td>"
    if isinstance(v, bool):
        return f"<td>{esc(str(v).lower())}</td>"
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    if isinstance(v, float):
        return f'<td class="num">{esc(_fmt_num(v) if math.isfinite(v) else str(v))}</td>'
    if isinstance(v, (dict, list)):
        return f"<td><code>{esc(json.dumps(_rounded(v)))}</code></td>"
    return f"<td>{esc(str(v))}</td>"


def _rounded(v: Any) -> Any:
    """Floats inside nested lists / dicts cut to 4 significant digits (for display)."""
    if isinstance(v, float) and math.isfinite(v):
        return float(f"{v:.4g}")
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_rounded(x) for x in v]
    return v


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> [(dotted key, leaf)]; lists stay whole."""
    if not isinstance(d, dict):
        return [(prefix or "value", d)]
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.extend(_flatten(v, key))
        else:
            out.append((key, v))
    return out


def _kv_table(d: Any, skip: Sequence[str] = ()) -> str:
    return _table(("key", "value"), [(k, v) for k, v in _flatten(d) if k.split(".")[0] not in skip])


def _pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def _not_run(what: str) -> str:
    return f'<p class="notrun">{esc(what)}: not run</p>'


class _Page:
    """Collects the HTML of one report, with paths made relative to the page."""

    def __init__(self, run_dir: Path, out: Path):
        self.run = run_dir
        self.base = out.parent
        self.parts: list[str] = []
        self.problems: list[str] = []

    def add(self, *chunks: str) -> None:
        self.parts.extend(chunks)

    def url(self, path: Path) -> str:
        try:
            rel = os.path.relpath(path, self.base)
        except ValueError:  # another drive (Windows): no relative path exists
            return path.resolve().as_uri()
        return quote(Path(rel).as_posix())

    def image(self, path: Path, caption: str) -> str:
        size = ""
        try:
            from PIL import Image

            with Image.open(path) as im:
                w, h = im.size
            scale = max(1, min(4, DISPLAY_WIDTH // max(w, 1)))  # small grids: whole-pixel zoom
            size = f' width="{w * scale}" height="{h * scale}"'  # wide ones: CSS fits the page
        except Exception:  # not an image PIL reads: the browser decides
            pass
        return (f'<figure><img src="{esc(self.url(path))}" alt="{esc(caption)}"{size}>'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    def player(self, path: Path, caption: str) -> str:
        return (f'<div class="player">{esc(caption)}'
                f'<audio controls preload="metadata" src="{esc(self.url(path))}"></audio></div>')

    def rel_name(self, path: Path) -> str:
        try:
            return path.relative_to(self.run).as_posix()
        except ValueError:
            return str(path)


# ---------------------------------------------------------------------------------------------
# sections


def _status(tdir: Path, track: str, stage: str) -> str:
    if (tdir / layout.DONE[stage]).is_file():
        return "done"
    return "partial" if (tdir / layout.DONE[stage].split("/")[0]).exists() else "missing"


def _stages(track: str) -> list[str]:
    return [s for s in layout.STAGES if s != "classifier" or track == "audio"]


def _status_table(page: _Page, track: str) -> str:
    tdir = page.run / track
    cells = []
    for stage in _stages(track):
        st = _status(tdir, track, stage)
        word = {"done": "done", "partial": "started, not finished", "missing": "not run"}[st]
        cells.append(f'<td class="status-{st}">{esc(stage)}: {esc(word)}</td>')
    return f'<table><tr>{"".join(cells)}</tr></table>'


def _labels(samples: Path, problems: list[str]) -> tuple[dict, list]:
    labels = _read_json(samples / "labels.json", problems)
    record = _read_json(samples / "samples.json", problems)
    names = record.get("class_names") if isinstance(record, dict) else None
    return (labels if isinstance(labels, dict) else {}), (names if isinstance(names, list) else [])


def _sample_section(page: _Page, track: str) -> None:
    tdir = page.run / track
    page.add("<h3>Samples</h3>")
    figs = []
    for stage, caption in (("samples", "samples from the priors"),
                           ("random", "baseline: uniformly random codes")):
        grid = tdir / stage / "grid.png"
        if grid.is_file():
            figs.append(page.image(grid, f"{caption} ({page.rel_name(grid)})"))
        else:
            figs.append(f'<figure><p class="notrun">{esc(caption)}: not run</p></figure>')
    page.add("<div>", *figs, "</div>")
    if track == "audio":
        for stage, limit, caption in (("samples", SAMPLE_PLAYERS, "Generated clips"),
                                      ("random", RANDOM_PLAYERS, "Random-codes clips")):
            folder = tdir / stage
            wavs = sorted((folder / "audio").glob("*.wav")) if (folder / "audio").is_dir() else []
            if not wavs:
                continue
            labels, names = _labels(folder, page.problems)
            players = []
            for wav in wavs[:limit]:
                label = labels.get(wav.name)
                text = wav.name
                if isinstance(label, int):
                    name = names[label] if 0 <= label < len(names) else None
                    text += f" · label {label}" + (f" ({name})" if name is not None and str(name) != str(label) else "")
                players.append(page.player(wav, text))
            more = f" (first {limit} of {len(wavs)})" if len(wavs) > limit else ""
            page.add(f"<h4>{esc(caption)}{esc(more)}</h4><div>", *players, "</div>")
    for stage in ("samples", "random"):
        record = _read_json(tdir / stage / "samples.json", page.problems)
        if isinstance(record, dict):
            page.add(_details(f"{stage}/samples.json: sampling settings", _kv_table(record)))


def _clip_number(path: Path) -> int:
    m = re.match(r"clip(\d+)_", path.name)
    return int(m.group(1)) if m else 0


def _reconstruction_section(page: _Page, track: str) -> None:
    ev = page.run / track / "tokenizer" / "eval"
    page.add("<h3>Reconstructions</h3>")
    if not ev.is_dir():
        page.add(_not_run("tokenizer evaluation"))
        return
    png = ev / "reconstructions.png"
    if png.is_file():
        page.add(page.image(png, "originals and their reconstructions (tokenizer/eval/reconstructions.png)"))
    rows = []
    for orig in sorted(ev.glob("clip*_original.wav"), key=_clip_number):
        rec = orig.with_name(orig.name.replace("_original.wav", "_reconstructed.wav"))
        row = [page.player(orig, f"{orig.name}")]
        row.append(page.player(rec, rec.name) if rec.is_file() else '<span class="notrun">missing</span>')
        rows.append("<tr><td>" + "</td><td>".join(row) + "</td></tr>")
    if rows:
        page.add("<table><tr><th>original</th><th>tokenize → decode → Griffin-Lim</th></tr>",
                 *rows, "</table>")
    if not png.is_file() and not rows:
        page.add('<p class="notrun">no reconstructions written</p>')


def _layer_rows(layers: list) -> tuple[list[str], list[list[Any]]]:
    keys: list[str] = []
    for la in layers:
        for k, v in la.items():
            if k not in keys and (not isinstance(v, (dict, list)) or k == "grid"):
                keys.append(k)
    if "codes_used" in keys and "codebook_size" in keys:
        keys.insert(keys.index("codes_used") + 1, "used %")
    rows = []
    for la in layers:
        row = []
        for k in keys:
            if k == "used %":
                k_size, used = la.get("codebook_size"), la.get("codes_used")
                row.append(100.0 * used / k_size if _finite(used) and _finite(k_size) and k_size else None)
            elif k == "grid" and isinstance(la.get(k), list):
                row.append("×".join(str(g) for g in la[k]))
            else:
                row.append(la.get(k))
        rows.append(row)
    return keys, rows


def _scalars(d: dict, skip: Sequence[str] = ()) -> list[tuple[str, Any]]:
    return [(k, v) for k, v in d.items()
            if k not in skip and (v is None or isinstance(v, (int, float, str, bool)))]


def _fid_columns(fid: Any) -> list[tuple[str, dict]]:
    """The result dicts inside fid.json (those with a "fid" key), named by where they sit."""
    if not isinstance(fid, dict):
        return []
    if "fid" in fid:
        return [("samples", fid)]
    out = []
    for k, v in fid.items():
        if isinstance(v, dict):
            if "fid" in v or "accuracy" in v:
                out.append((str(k), v))
            else:
                out.extend((f"{k}.{name}", sub) for name, sub in _fid_columns(v))
    return out


def _fid_table(fid: Any) -> str:
    columns = _fid_columns(fid)
    if not columns:
        return _kv_table(fid) if isinstance(fid, dict) else ""
    keys: list[str] = []
    flat = []
    for _, result in columns:
        f = {}
        for k, v in _flatten(result):
            if k.startswith("accuracy.") and k not in ("accuracy.accuracy", "accuracy.num_examples"):
                continue  # per-class lists: in the raw file below
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                f[k] = v
                if k not in keys:
                    keys.append(k)
        flat.append(f)
    order = ["fid", "kid", "kid_mean", "kid_std", "accuracy", "accuracy.accuracy"]
    keys.sort(key=lambda k: (order.index(k) if k in order else len(order)))
    rows = [[k, *(f.get(k) for f in flat)] for k in keys]
    return _table(["metric", *(name for name, _ in columns)], rows)


def _metrics_section(page: _Page, track: str) -> None:
    tdir = page.run / track
    page.add("<h3>Metrics</h3>")
    p = page.problems
    ev = _read_json(tdir / layout.DONE["tokenizer"], p)
    page.add("<h4>Tokenizer</h4>")
    if isinstance(ev, dict):
        rows = _scalars(ev)
        train = ev.get("train")
        if isinstance(train, dict):
            rows += [(f"train.{k}", v) for k, v in _scalars(train)]
        page.add(_table(("metric", "value"), rows))
        layers = [la for la in ev.get("layers") or [] if isinstance(la, dict)]
        if layers:
            keys, lrows = _layer_rows(layers)
            page.add("<p class=\"muted\">Per layer: codebook collapse shows as low perplexity / few "
                     "codes used; layer collapse as a substitution gain near 1 (injected layers) or "
                     "no error drop with depth (residual layers).</p>", _table(keys, lrows))
    else:
        page.add(_not_run("tokenizer evaluation"))

    page.add("<h4>Priors</h4>")
    prior = _read_json(tdir / layout.DONE["prior"], p)
    levels = prior.get("levels") if isinstance(prior, dict) else None
    if isinstance(levels, dict) and levels:
        rows = []
        for key in sorted(levels, key=lambda k: int(k) if str(k).isdigit() else 0):
            lv = levels[key] if isinstance(levels[key], dict) else {}
            bpt, uni = lv.get("bits_per_token"), lv.get("uniform_bits")
            shape = lv.get("shape")
            rows.append([lv.get("level", key), "×".join(map(str, shape)) if isinstance(shape, list) else shape,
                         lv.get("codebook_size"), bpt, uni,
                         bpt / uni if _finite(bpt) and _finite(uni) and uni else None,
                         lv.get("steps"), lv.get("seconds"), lv.get("parameters")])
        page.add(_table(("level", "grid", "K", "bits/token (held out)", "uniform log2 K",
                         "ratio", "steps", "seconds", "parameters"), rows))
    else:
        page.add(_not_run("priors"))

    if track == "audio":
        page.add("<h4>Classifier (features of audio FID)</h4>")
        clf = _read_json(tdir / layout.DONE["classifier"], p)
        if isinstance(clf, dict):
            rows = _scalars(clf)
            if isinstance(clf.get("train"), dict):
                rows += [(f"train.{k}", v) for k, v in _scalars(clf["train"])]
            page.add(_table(("metric", "value"), rows))
            per = clf.get("per_class_accuracy")
            if isinstance(per, list) and per:
                page.add(_table(["class", *map(str, range(len(per)))], [["accuracy", *per]]))
        else:
            page.add(_not_run("classifier"))

    page.add("<h4>FID of the samples and of the random-codes baseline</h4>"
             if track == "image" else "<h4>Audio FID / accuracy of the samples and the baseline</h4>")
    fid = _read_json(tdir / layout.DONE["fid"], p)
    if fid is not None:
        page.add(_fid_table(fid))
        if isinstance(fid, dict) and not _finite(fid.get("fid")):
            rest = _scalars(fid)
            if rest:
                page.add(_table(("", "value"), rest))
        page.add(_details("fid.json", _pre(json.dumps(fid, indent=2))))
    else:
        page.add(_not_run("FID"))


def _train_rows(rows: list[dict], key: str, split: str = "train") -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows
           if r.get("split", "train") == split and _finite(r.get("step")) and _finite(r.get(key))]
    return [a for a, _ in pts], [b for _, b in pts]


def _plot_section(page: _Page, track: str) -> None:
    tdir = page.run / track
    plots: list[str] = []
    # codebook usage from the tokenizer's evaluation
    ev = _read_json(tdir / layout.DONE["tokenizer"], page.problems)
    layers = [la for la in (ev or {}).get("layers") or [] if isinstance(la, dict)] if isinstance(ev, dict) else []
    layers = [la for la in layers if _finite(la.get("codebook_size")) and la["codebook_size"]]
    if layers:
        cats = [f"layer {la.get('layer', i)}" for i, la in enumerate(layers)]
        used = [100.0 * la.get("codes_used", 0) / la["codebook_size"] for la in layers]
        ppl = [100.0 * la.get("perplexity", 0) / la["codebook_size"] for la in layers]
        labels = [[f"{la.get('codes_used', '?')}/{la['codebook_size']}" for la in layers],
                  [f"{la.get('perplexity', 0):.3g}" for la in layers]]
        plots.append(svg_bars(cats, [("codes used, % of K", used), ("perplexity, % of K", ppl)],
                              title="Codebook usage per layer (tokenizer eval)", ylabel="% of codebook",
                              labels=labels))
    # sorted code frequencies from the encoded codes
    codes_dir = tdir / "codes"
    if (codes_dir / "codes.json").is_file():
        try:
            counts = code_counts(codes_dir)
        except Exception as err:  # a codes folder being written, an unreadable dataset: skip
            page.problems.append(f"{codes_dir}: code frequencies not computed ({type(err).__name__}: {err})")
            counts = None
        if counts:
            series = []
            for lv, (k, c) in enumerate(counts["levels"]):
                total = max(int(c.sum()), 1)
                freq = sorted((100.0 * v / total for v in c.tolist() if v > 0), reverse=True)
                series.append(Series(f"level {lv} ({len(freq)}/{k} used)", range(1, len(freq) + 1), freq))
            rows = f"{counts['rows']} of {counts['of']}" if counts["rows"] < counts["of"] else str(counts["rows"])
            plots.append(svg_plot(series, title=f"Code frequency, sorted ({counts['split']} split, {rows} rows)",
                                  xlabel="code rank", ylabel="% of positions", logy=True))
    # training curves
    tok = _read_jsonl(tdir / "tokenizer" / "metrics.jsonl")
    if tok:
        plots.append(svg_plot([Series("train loss", *_train_rows(tok, "loss"))],
                              title="Tokenizer: training loss", xlabel="step", ylabel="loss"))
        if any("mse" in r for r in tok):
            plots.append(svg_plot([Series("train mse", *_train_rows(tok, "mse"))],
                                  title="Tokenizer: reconstruction MSE (train batches)", xlabel="step",
                                  ylabel="mse", logy=True))
    prior_dir = tdir / "prior"
    level_dirs = sorted((d for d in prior_dir.glob("level_*") if d.is_dir()),
                        key=lambda d: int(d.name.split("_")[1]) if d.name.split("_")[1].isdigit() else 0) \
        if prior_dir.is_dir() else []
    loss_series, bpt_series = [], []
    for i, d in enumerate(level_dirs):
        rows = _read_jsonl(d / "metrics.jsonl")
        if not rows:
            continue
        name = d.name.replace("_", " ")
        loss_series.append(Series(name, *_train_rows(rows, "loss"), color=i))
        bpt_series.append(Series(f"{name} train", *_train_rows(rows, "bits_per_token"), color=i))
        ex, ey = _train_rows(rows, "bits_per_token", "eval")
        if ex:
            bpt_series.append(Series(f"{name} held out", ex, ey, points=True, color=i))
    if loss_series:
        plots.append(svg_plot(loss_series, title="Priors: training loss", xlabel="step", ylabel="loss (nats)"))
        plots.append(svg_plot(bpt_series, title="Priors: bits per token", xlabel="step", ylabel="bits/token"))
    clf = _read_jsonl(tdir / "classifier" / "metrics.jsonl") if track == "audio" else []
    if clf:
        ex, ey = _train_rows(clf, "loss", "eval")
        series = [Series("train loss", *_train_rows(clf, "loss"))]
        if ex:
            series.append(Series("eval loss", ex, ey, points=len(ex) < 3, color=1))
        plots.append(svg_plot(series, title="Classifier: loss", xlabel="step", ylabel="loss"))
        ax, ay = _train_rows(clf, "accuracy", "eval")
        tx, ty = _train_rows(clf, "accuracy")
        if ax or tx:
            plots.append(svg_plot([Series("train accuracy", tx, ty), Series("eval accuracy", ax, ay, points=len(ax) < 3, color=1)],
                                  title="Classifier: accuracy", xlabel="step", ylabel="accuracy"))
    page.add("<h3>Codebook usage and training curves</h3>")
    if plots:
        page.add('<div class="plots">', *plots, "</div>")
    else:
        page.add('<p class="notrun">nothing to plot yet</p>')


def _config_section(page: _Page, track: str) -> None:
    tdir = page.run / track
    items = []
    for rel in ("tokenizer/config.yaml", "codes/codes.json", "prior/config.yaml", "prior/prior.json",
                "classifier/config.yaml"):
        text = _read_text(tdir / rel)
        if text is not None:
            items.append(_details(f"{track}/{rel}", _pre(text)))
    if items:
        page.add("<h3>Stage configs</h3>", *items)


def _track_section(page: _Page, track: str) -> None:
    page.add(f'<h2 id="{track}">{esc(track.capitalize())} track</h2>', _status_table(page, track))
    _sample_section(page, track)
    _reconstruction_section(page, track)
    _metrics_section(page, track)
    _plot_section(page, track)
    _config_section(page, track)


def _summary(summary: Any) -> str:
    """summary.json: per track, one row per stage (status, seconds, the rest) and the
    headline numbers; any other keys as a key / value table."""
    if not isinstance(summary, dict):
        return _pre(json.dumps(summary, indent=2))
    parts = []
    tracks = summary.get("tracks")
    if isinstance(tracks, dict):
        for name, stages in tracks.items():
            if not isinstance(stages, dict):
                continue
            rows, headline = [], None
            for stage, info in stages.items():
                if stage == "headline":
                    headline = info
                elif isinstance(info, dict):
                    rest = {k: v for k, v in info.items() if k not in ("status", "seconds")}
                    rows.append([stage, info.get("status"), info.get("seconds"), _Details(rest) if rest else None])
                else:
                    rows.append([stage, info, None, None])
            parts.append(f"<h4>{esc(str(name))}</h4>")
            if rows:
                parts.append(_table(("stage", "status", "seconds", "details"), rows))
            if isinstance(headline, dict) and headline:
                parts.append(_table(("headline", "value"), _flatten(headline)))
    rest = {k: v for k, v in summary.items() if not (k == "tracks" and isinstance(tracks, dict))}
    if rest:
        parts.append(_kv_table(rest))
    return "".join(parts)


def _has_parts(run_dir: Path) -> bool:
    if (run_dir / layout.CONFIG).is_file() or (run_dir / layout.SUMMARY).is_file():
        return True
    return any(layout.stage_path(run_dir, t, s).exists() for t in layout.TRACKS for s in layout.STAGES)


# ---------------------------------------------------------------------------------------------
# entry points


def render_report(run_dir: str | Path, out: Optional[str | Path] = None) -> tuple[Path, str]:
    """The report's HTML and where it belongs (``RUN/report.html`` unless ``out``)."""
    run = Path(run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: " + ("not a directory" if run.exists() else "no such run directory"))
    if not _has_parts(run):
        raise ValueError(
            f"{run}: not a pipeline run directory: none of {layout.CONFIG}, {layout.SUMMARY}, "
            f"or any stage folder under {'/, '.join(layout.TRACKS)}/ (tokenizer, codes, prior, ...) found"
        )
    target = Path(out) if out else run / layout.REPORT
    if target.is_dir():
        target = target / layout.REPORT
    page = _Page(run, target)
    tracks = [t for t in layout.TRACKS if (run / t).is_dir()]
    title = f"HQ-VAE run report: {run.resolve().name}"
    page.add("<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f'<p class="muted">{esc(str(run.resolve()))} · written '
             f"{esc(datetime.datetime.now().strftime('%Y-%m-%d %H:%M'))} by <code>hqvae report</code></p>")
    nav = [f'<a href="#{t}">{t}</a>' for t in tracks] + ['<a href="#config">pipeline config</a>']
    page.add(f"<nav>{''.join(nav)}</nav>")

    summary = _read_json(run / layout.SUMMARY, page.problems)
    page.add("<h2>Run summary</h2>")
    if summary is not None:
        page.add(_summary(summary))
    else:
        page.add(f'<p class="notrun">no {esc(layout.SUMMARY)} (the pipeline has not finished)</p>')
    if not tracks:
        page.add('<p class="notrun">no track folders (image/, audio/) yet</p>')
    for track in tracks:
        _track_section(page, track)

    page.add('<h2 id="config">Pipeline config</h2>')
    text = _read_text(run / layout.CONFIG)
    page.add(_pre(text) if text is not None else f'<p class="notrun">no {esc(layout.CONFIG)}</p>')
    if page.problems:
        page.add('<h2>Problems reading the run</h2><div class="warn"><ul>',
                 *(f"<li>{esc(m)}</li>" for m in page.problems), "</ul></div>")
    page.add("</body></html>")
    return target, "\n".join(page.parts) + "\n"


def write_report(run_dir: str | Path, out: Optional[str | Path] = None) -> Path:
    """Write the report of the pipeline run ``run_dir`` to ``RUN/report.html`` (or ``out``);
    returns its path. Plots are inline SVG: the page needs no asset folder and no network."""
    target, text = render_report(run_dir, out)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(target, text)
    return target


def count_media(text: str) -> dict[str, int]:
    """Images, audio players and plots in a report's HTML (every string in it is escaped,
    so only the page's own tags match)."""
    return {"images": text.count("<img "), "audio": text.count("<audio "),
            "plots": text.count('<svg class="plot"')}
