"""The report's sections: per track its stage status, samples, reconstructions, metrics
(the curves are in :mod:`hqvae.report.curves`) and stage configs; and the run summary."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hqvae import layout
from hqvae.report.curves import curves_section
from hqvae.report.html import (
    NamedValues,
    Page,
    details,
    esc,
    finite,
    flatten,
    kv_table,
    not_run,
    pre,
    table,
)
from hqvae.report.run_files import read_json, read_text
from sampling.sample_reader import GRID, LABELS, RECORD, media_files

SAMPLE_PLAYERS = 8  # generated clips given an <audio> player
RANDOM_PLAYERS = 4  # random-baseline clips given an <audio> player


def _status(tdir: Path, track: str, stage: str) -> str:
    if (tdir / layout.DONE[stage]).is_file():
        return "done"
    return "partial" if (tdir / layout.DONE[stage].split("/")[0]).exists() else "missing"


def _has_classifier(tdir: Path, track: str) -> bool:
    """Audio always trains one (audio FID); an image track only when its config has one."""
    return track == "audio" or (tdir / "classifier").exists()


def _stages(tdir: Path, track: str) -> list[str]:
    return [s for s in layout.STAGES if s != "classifier" or _has_classifier(tdir, track)]


def _status_table(page: Page, track: str) -> str:
    tdir = page.run / track
    cells = []
    for stage in _stages(tdir, track):
        st = _status(tdir, track, stage)
        word = {"done": "done", "partial": "started, not finished", "missing": "not run"}[st]
        cells.append(f'<td class="status-{st}">{esc(stage)}: {esc(word)}</td>')
    return f'<table><tr>{"".join(cells)}</tr></table>'


def _labels(samples: Path, problems: list[str]) -> tuple[dict, list]:
    labels = read_json(samples / LABELS, problems)
    record = read_json(samples / RECORD, problems)
    names = record.get("class_names") if isinstance(record, dict) else None
    return (labels if isinstance(labels, dict) else {}), (names if isinstance(names, list) else [])


def _sample_section(page: Page, track: str) -> None:
    tdir = page.run / track
    page.add("<h3>Samples</h3>")
    figs = []
    for stage, caption in (("samples", "samples from the priors"),
                           ("random", "baseline: uniformly random codes")):
        grid = tdir / stage / GRID
        if grid.is_file():
            figs.append(page.image(grid, f"{caption} ({page.rel_name(grid)})"))
        else:
            figs.append(f'<figure><p class="notrun">{esc(caption)}: not run</p></figure>')
    page.add("<div>", *figs, "</div>")
    if track == "audio":
        for stage, limit, caption in (("samples", SAMPLE_PLAYERS, "Generated clips"),
                                      ("random", RANDOM_PLAYERS, "Random-codes clips")):
            folder = tdir / stage
            wavs = media_files(folder, "audio")
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
        record = read_json(tdir / stage / RECORD, page.problems)
        if isinstance(record, dict):
            page.add(details(f"{stage}/{RECORD}: sampling settings", kv_table(record)))


def _clip_number(path: Path) -> int:
    m = re.match(r"clip(\d+)_", path.name)
    return int(m.group(1)) if m else 0


def _reconstruction_section(page: Page, track: str) -> None:
    ev = page.run / track / "tokenizer" / "eval"
    page.add("<h3>Reconstructions</h3>")
    if not ev.is_dir():
        page.add(not_run("tokenizer evaluation"))
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
                row.append(100.0 * used / k_size if finite(used) and finite(k_size) and k_size else None)
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
        return kv_table(fid) if isinstance(fid, dict) else ""
    keys: list[str] = []
    flat = []
    for _, result in columns:
        f = {}
        for k, v in flatten(result):
            if k.startswith("accuracy.") and k not in ("accuracy.accuracy", "accuracy.num_examples"):
                continue  # per-class lists: in the raw file below
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                f[k] = v
                if k not in keys:
                    keys.append(k)
        flat.append(f)
    order = ["fid", "kid", "kid_mean", "kid_std", "precision", "recall", "accuracy", "accuracy.accuracy"]
    keys.sort(key=lambda k: (order.index(k) if k in order else len(order)))
    rows = [[k, *(f.get(k) for f in flat)] for k in keys]
    return table(["metric", *(name for name, _ in columns)], rows)


def _metrics_section(page: Page, track: str) -> None:
    tdir = page.run / track
    page.add("<h3>Metrics</h3>")
    p = page.problems
    ev = read_json(tdir / layout.DONE["tokenizer"], p)
    page.add("<h4>Tokenizer</h4>")
    if isinstance(ev, dict):
        rows = _scalars(ev)
        train = ev.get("train")
        if isinstance(train, dict):
            rows += [(f"train.{k}", v) for k, v in _scalars(train)]
        page.add(table(("metric", "value"), rows))
        layers = [la for la in ev.get("layers") or [] if isinstance(la, dict)]
        if layers:
            keys, lrows = _layer_rows(layers)
            page.add("<p class=\"muted\">Per layer: codebook collapse shows as low perplexity / few "
                     "codes used; layer collapse as a substitution gain near 1 (injected layers) or "
                     "no error drop with depth (residual layers).</p>", table(keys, lrows))
    else:
        page.add(not_run("tokenizer evaluation"))

    page.add("<h4>Priors</h4>")
    prior = read_json(tdir / layout.DONE["prior"], p)
    levels = prior.get("levels") if isinstance(prior, dict) else None
    if isinstance(levels, dict) and levels:
        rows = []
        for key in sorted(levels, key=lambda k: int(k) if str(k).isdigit() else 0):
            lv = levels[key] if isinstance(levels[key], dict) else {}
            bpt, uni = lv.get("bits_per_token"), lv.get("uniform_bits")
            shape = lv.get("shape")
            rows.append([lv.get("level", key), "×".join(map(str, shape)) if isinstance(shape, list) else shape,
                         lv.get("codebook_size"), bpt, uni,
                         bpt / uni if finite(bpt) and finite(uni) and uni else None,
                         lv.get("steps"), lv.get("seconds"), lv.get("parameters")])
        page.add(table(("level", "grid", "K", "bits/token (held out)", "uniform log2 K",
                         "ratio", "steps", "seconds", "parameters"), rows))
    else:
        page.add(not_run("priors"))

    if _has_classifier(tdir, track):
        page.add("<h4>Classifier (features of audio FID)</h4>" if track == "audio" else
                 "<h4>Classifier (class accuracy of the samples; its accuracy on held-out data)</h4>")
        clf = read_json(tdir / layout.DONE["classifier"], p)
        if isinstance(clf, dict):
            rows = _scalars(clf)
            if isinstance(clf.get("train"), dict):
                rows += [(f"train.{k}", v) for k, v in _scalars(clf["train"])]
            page.add(table(("metric", "value"), rows))
            per = clf.get("per_class_accuracy")
            if isinstance(per, list) and per:
                page.add(table(["class", *map(str, range(len(per)))], [["accuracy", *per]]))
        else:
            page.add(not_run("classifier"))

    fid = read_json(tdir / layout.DONE["fid"], p)
    accuracy = " / class accuracy" if isinstance(fid, dict) and "classifier" in fid else ""
    page.add(f"<h4>FID{accuracy} of the samples and of the random-codes baseline</h4>"
             if track == "image" else "<h4>Audio FID / accuracy of the samples and the baseline</h4>")
    if fid is not None:
        page.add(_fid_table(fid))
        if isinstance(fid, dict) and not finite(fid.get("fid")):
            rest = _scalars(fid)
            if rest:
                page.add(table(("", "value"), rest))
        page.add(details("fid.json", pre(json.dumps(fid, indent=2))))
    else:
        page.add(not_run("FID"))


def _config_section(page: Page, track: str) -> None:
    tdir = page.run / track
    items = []
    for rel in ("tokenizer/config.yaml", "codes/codes.json", "prior/config.yaml", "prior/prior.json",
                "classifier/config.yaml"):
        text = read_text(tdir / rel)
        if text is not None:
            items.append(details(f"{track}/{rel}", pre(text)))
    if items:
        page.add("<h3>Stage configs</h3>", *items)


def track_section(page: Page, track: str) -> None:
    page.add(f'<h2 id="{track}">{esc(track.capitalize())} track</h2>', _status_table(page, track))
    _sample_section(page, track)
    _reconstruction_section(page, track)
    _metrics_section(page, track)
    curves_section(page, track)
    _config_section(page, track)


def run_summary(summary: Any) -> str:
    """summary.json: per track, one row per stage (status, seconds, the rest) and the
    headline numbers; any other keys as a key / value table."""
    if not isinstance(summary, dict):
        return pre(json.dumps(summary, indent=2))
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
                    rows.append([stage, info.get("status"), info.get("seconds"), NamedValues(rest) if rest else None])
                else:
                    rows.append([stage, info, None, None])
            parts.append(f"<h4>{esc(str(name))}</h4>")
            if rows:
                parts.append(table(("stage", "status", "seconds", "details"), rows))
            if isinstance(headline, dict) and headline:
                parts.append(table(("headline", "value"), flatten(headline)))
    rest = {k: v for k, v in summary.items() if not (k == "tracks" and isinstance(tracks, dict))}
    if rest:
        parts.append(kv_table(rest))
    return "".join(parts)
