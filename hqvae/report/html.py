"""The report page's HTML: its stylesheet, escaping, number format, tables, and the
:class:`Page` that collects the chunks and links images and audio relative to the page."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from html import escape as esc
from pathlib import Path
from typing import Any
from urllib.parse import quote

DISPLAY_WIDTH = 560  # small images are zoomed by whole pixels up to this width


def fmt_num(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.2g}"
    return f"{v:.4g}"


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


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


class NamedValues(dict):
    """A stage's extra numbers, shown as named values (``samples fid 231.8 · kid 0.13``)
    rather than as the raw JSON they were recorded in."""

    def html(self) -> str:
        parts = []
        for key, value in flatten(dict(self)):
            if isinstance(value, float):
                value = fmt_num(value) if math.isfinite(value) else str(value)
            elif isinstance(value, (dict, list)):
                value = json.dumps(_rounded(value))
            parts.append(f"{esc(key.replace('.', ' '))} <b>{esc(str(value))}</b>")
        return " · ".join(parts)


def _cell(v: Any) -> str:
    if v is None:
        return '<td class="num">–</td>'
    if isinstance(v, NamedValues):
        return f"<td>{v.html()}</td>"
    if isinstance(v, bool):
        return f"<td>{esc(str(v).lower())}</td>"
    if isinstance(v, int):
        return f'<td class="num">{v}</td>'
    if isinstance(v, float):
        return f'<td class="num">{esc(fmt_num(v) if math.isfinite(v) else str(v))}</td>'
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


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts -> [(dotted key, leaf)]; lists stay whole."""
    if not isinstance(d, dict):
        return [(prefix or "value", d)]
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.extend(flatten(v, key))
        else:
            out.append((key, v))
    return out


def kv_table(d: Any, skip: Sequence[str] = ()) -> str:
    return table(("key", "value"), [(k, v) for k, v in flatten(d) if k.split(".")[0] not in skip])


def pre(text: str) -> str:
    return f"<pre>{esc(text)}</pre>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def not_run(what: str) -> str:
    return f'<p class="notrun">{esc(what)}: not run</p>'


class Page:
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
