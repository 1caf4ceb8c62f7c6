"""Benchmark: how the Bayesian presets' gap to their deterministic twins moves with budget.

Trains RSQ-VAE against RQ-VAE with code restarts and SQ-VAE-2 against VQ-VAE-2 with code
restarts on CIFAR-10 at several epoch budgets (one run per preset and budget, each from
scratch, so a preset's run-length temperature schedule ends where that budget ends), with
the network, codebooks and optimizer of `bench/stage1_tokenizers.py`, each run in its own
process through that script. Then writes into docs/benchmarks.md a table (test RMSE, codes
used, perplexity, SQ σ² and posterior entropy per budget) and two charts in docs/assets:
test RMSE against training steps, and the learned σ² of each SQ run through training.

    python bench/budget_curve.py --cifar ../shared/data/cifar10 --epochs 2 4 8 16 --jobs 2

``--jobs`` runs that many trainings at once (one torch thread each with ``--threads 1``),
longest first. Every run checkpoints each epoch and the results file is appended run by
run, so the same command run again continues a killed benchmark where it stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pool import Job, read_results, run_pool  # noqa: E402  (bench/, beside this script)
from sections import CIFAR_HELP, run_command, write_section  # noqa: E402
from stage1_tokenizers import parser as stage1_parser  # noqa: E402
from stage1_tokenizers import run_folder  # noqa: E402

RESTART = "model.quantizer.restart_threshold=1.0"
# row name -> (preset, variant, overrides); the deterministic twins run with code restarts,
# the heuristic that made them strongest in the 8-epoch comparison
ENTRIES = {
    "rsqvae": ("rsqvae", "", []),
    "rqvae": ("rqvae", "restart", [RESTART]),
    "sqvae2": ("sqvae2", "", []),
    "vqvae2": ("vqvae2", "restart", [RESTART]),
}
PAIRS = [("rsqvae", "rqvae"), ("sqvae2", "vqvae2")]  # (Bayesian, its deterministic twin)
# one colour per pair, the twin dashed; σ² chart: one colour per layer, the second preset dashed
COLOURS = {"rsqvae": "#1f77b4", "rqvae": "#1f77b4", "sqvae2": "#d62728", "vqvae2": "#d62728"}
LAYER_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2"]
MARK = "budget-curve-{tag}"


def label(name: str) -> str:
    preset, variant, _ = ENTRIES[name]
    return f"{preset} ({variant})" if variant else preset


def child_command(args, name: str, epochs: int, out: Path) -> list[str]:
    preset, variant, overrides = ENTRIES[name]
    cmd = [sys.executable, str(ROOT / "bench" / "stage1_tokenizers.py"), "--datasets", "cifar10",
           "--cifar", args.cifar, "--cifar-epochs", str(epochs), "--runs", f"{args.runs}/e{epochs}",
           "--seed", str(args.seed), "--ckpt-every", str(args.ckpt_every)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if variant:
        cmd += ["--variant", variant, "--set", *overrides]
    return cmd + ["--one", "cifar10", preset, str(out)]


def run_all(args, results_path: Path, done: dict) -> list[str]:
    """Train every (preset, budget) not in ``done``, ``args.jobs`` at a time, longest first."""
    jobs = []
    for e in sorted(args.epochs, reverse=True):
        for name in args.presets:
            if (name, e) not in done:
                out = results_path.with_suffix(f".{name}_e{e}.json")
                jobs.append(Job(key=(name, e), title=f"{label(name)}, {e} epochs", out=out,
                                command=child_command(args, name, e, out), log=Path(args.runs) / f"{name}_e{e}.log"))

    def annotate(job: Job, m: dict) -> None:
        m["name"], m["epochs"] = job.key

    return run_pool(jobs, args.jobs, results_path, done, args.threads, annotate)


def _layers(m: dict, key: str, fmt: str) -> str:
    return " · ".join(format(la[key], fmt) for la in m["layers"])


def table(done: dict, names: list[str], epochs: list[int]) -> str:
    head = ("| preset | epochs | steps | RMSE | PSNR | gap to twin | codes used per layer (of 512) "
            "| perplexity per layer | SQ σ² per layer | SQ posterior entropy per layer (of 6.24 nats) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    twin = {a: b for a, b in PAIRS} | {b: None for _, b in PAIRS}
    for name in names:
        for e in epochs:
            m = done.get((name, e))
            if m is None:
                continue
            other = done.get((twin[name], e)) if twin.get(name) else None
            gap = f"{m['rmse'] - other['rmse']:+.2f}" if other else "–"
            sq = "posterior_entropy" in m["layers"][0]
            lines.append(
                f"| {label(name)} | {e} | {m['train']['steps']} | {m['rmse']:.2f} | {m['psnr']:.2f} | {gap} "
                f"| {_layers(m, 'codes_used', 'd')} | {_layers(m, 'perplexity', '.0f')} "
                f"| {' · '.join(f'{v:.2f}' for v in m['variances']) if sq else '–'} "
                f"| {_layers(m, 'posterior_entropy', '.2f') if sq else '–'} |")
    return "\n".join(lines)


def svg_chart(series: dict[str, list[tuple[float, float]]], title: str, xlabel: str, ylabel: str,
              log2_x: bool, style: dict[str, tuple[str, bool]]) -> str:
    """A line chart as SVG text (no plotting library needed): one polyline per series,
    ``style[name]`` = (colour, dashed)."""
    import math

    w, h, left, right, top, bottom = 640, 380, 64, 170, 36, 48
    pts = [p for s in series.values() for p in s]
    fx = (lambda x: math.log2(x)) if log2_x else (lambda x: x)
    x0, x1 = min(fx(p[0]) for p in pts), max(fx(p[0]) for p in pts)
    y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
    pad = 0.06 * (y1 - y0 or 1.0)
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def sx(x):
        return left + (fx(x) - x0) / (x1 - x0) * (w - left - right)

    def sy(y):
        return top + (y1 - y) / (y1 - y0) * (h - top - bottom)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
           'font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="black"/>',
           f'<text x="{(left + w - right) / 2}" y="{h - 10}" text-anchor="middle">{xlabel}</text>',
           f'<text x="16" y="{(top + h - bottom) / 2}" text-anchor="middle" '
           f'transform="rotate(-90 16 {(top + h - bottom) / 2})">{ylabel}</text>']
    xticks = sorted({p[0] for p in pts}) if log2_x and len({p[0] for p in pts}) <= 8 else \
        [x0 + i * (x1 - x0) / 4 for i in range(5)]
    for x in xticks:
        out.append(f'<line x1="{sx(x):.1f}" y1="{h - bottom}" x2="{sx(x):.1f}" y2="{h - bottom + 4}" stroke="black"/>')
        out.append(f'<text x="{sx(x):.1f}" y="{h - bottom + 17}" text-anchor="middle">{x:.0f}</text>')
    # enough significant digits that the five ticks read differently
    digits = max(3, 2 + math.ceil(math.log10(max(abs(y0), abs(y1), 1e-12) / (y1 - y0))))
    for i in range(5):
        y = y0 + i * (y1 - y0) / 4
        out.append(f'<line x1="{left - 4}" y1="{sy(y):.1f}" x2="{w - right}" y2="{sy(y):.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{left - 7}" y="{sy(y) + 4:.1f}" text-anchor="end">{y:.{digits}g}</text>')
    for i, (name, s) in enumerate(series.items()):
        colour, dashed = style[name]
        dash = ' stroke-dasharray="6 4"' if dashed else ""
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in sorted(s))
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        if len(s) <= 8:
            out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in s]
        ly = top + 10 + 18 * i
        out.append(f'<line x1="{w - right + 10}" y1="{ly}" x2="{w - right + 34}" y2="{ly}" stroke="{colour}" '
                   f'stroke-width="2"{dash}/>')
        out.append(f'<text x="{w - right + 40}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def variance_series(args, name: str, epochs: int) -> dict[str, list[tuple[float, float]]]:
    """σ² of every SQ layer through training, read from the run's metrics.jsonl."""
    preset, variant, _ = ENTRIES[name]
    run = Path(run_folder(f"{args.runs}/e{epochs}", "cifar10", preset, variant, args.seed))
    series: dict[str, list[tuple[float, float]]] = {}
    path = run / "metrics.jsonl"
    if not path.exists():
        return series
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for key, value in rec.items():
            if key.endswith("/var") and rec.get("split") == "train":
                series.setdefault(f"{label(name)} {key.split('/')[0]}", []).append((rec["step"], value))
    return series


def report(args, done: dict) -> str:
    epochs = sorted(args.epochs)
    names = [n for pair in PAIRS for n in pair if n in args.presets]
    assets = Path(args.assets)
    assets.mkdir(parents=True, exist_ok=True)
    rmse = {label(n): [(done[(n, e)]["train"]["steps"], done[(n, e)]["rmse"]) for e in epochs if (n, e) in done]
            for n in names}
    rmse = {k: v for k, v in rmse.items() if v}
    twins = {label(b) for _, b in PAIRS}
    chart = f"budget_curve_{args.tag}.svg"
    style = {label(n): (COLOURS[n], label(n) in twins) for n in names}
    (assets / chart).write_text(svg_chart(rmse, "CIFAR-10 test RMSE against training budget",
                                          "training steps (batch 128, log scale)", "RMSE (0-255)",
                                          log2_x=True, style=style))
    longest = max((e for e in epochs if any((n, e) in done for n in names)), default=None)
    var_chart = f"budget_curve_{args.tag}_variance.svg"
    variances: dict[str, list[tuple[float, float]]] = {}
    var_style: dict[str, tuple[str, bool]] = {}
    sq_names = [n for n in names if longest is not None and (n, longest) in done
                and "posterior_entropy" in done[(n, longest)]["layers"][0]]
    for k, n in enumerate(sq_names):
        series = variance_series(args, n, longest)
        variances |= series
        var_style |= {name: (LAYER_COLOURS[int(name.rsplit(" l", 1)[1]) % len(LAYER_COLOURS)], k % 2 == 1)
                      for name in series}
    if variances:
        (assets / var_chart).write_text(svg_chart(
            variances, f"Learned σ² through training ({longest} epochs)", "training step", "σ²",
            log2_x=False, style=var_style))
    cmdline = run_command("budget_curve.py", sys.argv[1:])
    stage1 = stage1_parser().parse_args([])  # the children train with the stage-one defaults
    device = next(iter(done.values()))["device"] if done else "?"
    rel = os.path.relpath(assets, Path(args.out).parent)
    parts = [
        f"## The budget curve: Bayesian presets against their deterministic twins ({args.tag})",
        "",
        f"Command: `{cmdline.strip()}`  ",
        f"Machine: {device}, {platform.machine()}, Python {platform.python_version()}; "
        f"date {dt.date.today().isoformat()}.  ",
        f"Setup: CIFAR-10, batch {stage1.cifar_batch}, conv width {stage1.channels}, 2 residual blocks "
        f"(32 bottleneck channels), K = 512 and D = 64 for every layer, residual depth {stage1.depth}, "
        f"AdamW lr {stage1.lr:g} (constant), seed "
        f"{args.seed}, one run per preset and budget, each from scratch (the SQ presets' temperature "
        "schedule spans each run); the deterministic twins with code restarts "
        f"(`{RESTART}`). Evaluation: deterministic encoding of the 10,000 test images. "
        "Gap to twin: the Bayesian preset's RMSE minus its twin's at the same budget.",
        "",
        table(done, names, epochs),
        "",
        f"![test RMSE against training steps]({rel}/{chart})",
    ]
    if variances:
        parts += ["", f"![learned σ² through the {longest}-epoch runs]({rel}/{var_chart})"]
    return "\n".join(parts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default="../shared/data/cifar10", help=CIFAR_HELP)
    p.add_argument("--epochs", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--presets", nargs="+", default=list(ENTRIES), choices=list(ENTRIES),
                   help="rqvae and vqvae2 always run with code restarts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="trainings at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads per training")
    p.add_argument("--ckpt-every", type=int, default=390, help="steps between checkpoints (390: one epoch)")
    p.add_argument("--runs", default="runs/budget")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--assets", default=str(ROOT / "docs" / "assets"))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--report-only", action="store_true", help="write the section from the results file")
    args = p.parse_args()
    if any(e < 1 for e in args.epochs):
        p.error(f"--epochs: every budget must be at least 1 epoch, got {args.epochs}")
    if not args.report_only and not Path(args.cifar).is_dir():
        p.error(f"--cifar: {args.cifar} is not a folder (CIFAR-10 as Parquet: train.parquet, test.parquet)")
    results_path = Path(args.runs) / f"results_{args.tag}.jsonl"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {(m["name"], m["epochs"]): m for m in read_results(results_path) if m.get("seed", 0) == args.seed}
    if not args.report_only:
        run_all(args, results_path, done)
    if not done:
        print(f"no results in {results_path}; nothing written", file=sys.stderr)
        return 1
    write_section(Path(args.out), MARK.format(tag=args.tag), report(args, done))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
