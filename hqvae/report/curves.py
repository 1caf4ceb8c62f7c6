"""The "Codebook usage and training curves" section of a track: per-layer codebook usage,
sorted code frequencies and the training curves of each stage, as inline SVG."""

from __future__ import annotations

from hqvae import layout
from hqvae.report.html import Page, finite
from hqvae.report.run_files import code_counts, read_json, read_jsonl
from hqvae.report.svg import Series, svg_bars, svg_plot


def _train_rows(rows: list[dict], key: str, split: str = "train") -> tuple[list[float], list[float]]:
    pts = [(r["step"], r[key]) for r in rows
           if r.get("split", "train") == split and finite(r.get("step")) and finite(r.get(key))]
    return [a for a, _ in pts], [b for _, b in pts]


def curves_section(page: Page, track: str) -> None:
    tdir = page.run / track
    plots: list[str] = []
    # codebook usage from the tokenizer's evaluation
    ev = read_json(tdir / layout.DONE["tokenizer"], page.problems)
    layers = [la for la in (ev or {}).get("layers") or [] if isinstance(la, dict)] if isinstance(ev, dict) else []
    layers = [la for la in layers if finite(la.get("codebook_size")) and la["codebook_size"]]
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
    tok = read_jsonl(tdir / "tokenizer" / "metrics.jsonl")
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
        rows = read_jsonl(d / "metrics.jsonl")
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
    clf = read_jsonl(tdir / "classifier" / "metrics.jsonl")
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
