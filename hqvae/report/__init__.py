"""``hqvae report RUN_DIR``: one static HTML page about a pipeline run that opens offline.

The page (``RUN/report.html``, see :mod:`hqvae.layout`) shows, per track: the sample grid
beside the random-codes baseline, audio players for generated clips, reconstructions beside
originals, per-layer codebook usage, training curves, a metrics table and the configs that
produced it all. Plots are inline SVG drawn by :func:`svg_plot` / :func:`svg_bars` (no
plotting library, no scripts, no external CSS or fonts); images and audio are referenced
by paths relative to the page, so the run folder can be zipped and moved as a whole.

Anything missing (a track, a stage not run yet, a file that does not parse) is left out or
marked "not run"; the page is still written.

Modules: :mod:`~hqvae.report.svg` (the plots), :mod:`~hqvae.report.html` (page, tables,
escaping), :mod:`~hqvae.report.run_files` (reading the run), :mod:`~hqvae.report.sections`
and :mod:`~hqvae.report.curves` (the page's sections); the entry points are here.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

from engine.files import write_text_atomic
from hqvae import layout
from hqvae.report.html import STYLE, Page, esc, pre
from hqvae.report.run_files import code_counts, read_json, read_text
from hqvae.report.sections import run_summary, track_section
from hqvae.report.svg import Series, svg_bars, svg_plot

__all__ = ["Series", "code_counts", "count_media", "render_report", "svg_bars", "svg_plot", "write_report"]


# in the head of every report: what lets a later report replace this file (and nothing else)
GENERATOR = '<meta name="generator" content="hqvae report">'


def is_report(path: Path) -> bool:
    """Whether the file ``path`` is a report this tool wrote (its generator tag, or the
    "by hqvae report" line of reports written before the tag)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(4096)
    except OSError:
        return False
    return GENERATOR in head or "by <code>hqvae report</code></p>" in head


def check_report_target(target: Path) -> None:
    """Refuse, before rendering, a report path that holds a file this tool did not write."""
    if target.exists() and not (target.is_file() and is_report(target)):
        raise ValueError(f"--out: {target} exists and is not a report written by hqvae; nothing was "
                         f"written. Choose another file name")


def _has_parts(run_dir: Path) -> bool:
    if (run_dir / layout.CONFIG).is_file() or (run_dir / layout.SUMMARY).is_file():
        return True
    return any(layout.stage_path(run_dir, t, s).exists() for t in layout.TRACKS for s in layout.STAGES)


def render_report(run_dir: str | Path, out: Optional[str | Path] = None) -> tuple[Path, str]:
    """The report's HTML and where it belongs (``RUN/report.html`` unless ``out``)."""
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: " + ("not a directory" if run.exists() else "no such run directory"))
    if not _has_parts(run):
        raise ValueError(
            f"{run}: not a pipeline run directory: none of {layout.CONFIG}, {layout.SUMMARY}, "
            f"or any stage folder under {'/, '.join(layout.TRACKS)}/ (tokenizer, codes, prior, ...) found"
        )
    target = Path(out).expanduser() if out else run / layout.REPORT
    if target.is_dir():
        target = target / layout.REPORT
    check_report_target(target)
    page = Page(run, target)
    tracks = [t for t in layout.TRACKS if (run / t).is_dir()]
    title = f"HQ-VAE run report: {run.resolve().name}"
    page.add("<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', GENERATOR,
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{esc(title)}</h1>",
             f'<p class="muted">{esc(str(run.resolve()))} · written '
             f"{esc(datetime.datetime.now().strftime('%Y-%m-%d %H:%M'))} by <code>hqvae report</code></p>")
    nav = [f'<a href="#{t}">{t}</a>' for t in tracks] + ['<a href="#config">pipeline config</a>']
    page.add(f"<nav>{''.join(nav)}</nav>")

    summary = read_json(run / layout.SUMMARY, page.problems)
    page.add("<h2>Run summary</h2>")
    if summary is not None:
        page.add(run_summary(summary))
    else:
        page.add(f'<p class="notrun">no {esc(layout.SUMMARY)} (the pipeline has not finished)</p>')
    if not tracks:
        page.add('<p class="notrun">no track folders (image/, audio/) yet</p>')
    for track in tracks:
        track_section(page, track)

    page.add('<h2 id="config">Pipeline config</h2>')
    text = read_text(run / layout.CONFIG)
    page.add(pre(text) if text is not None else f'<p class="notrun">no {esc(layout.CONFIG)}</p>')
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
