"""Benchmark: the six tokenizer presets with matched architecture, codebooks and step budget.

Trains every preset on CIFAR-10 and on FSDD (any Parquet paths), each in its own process
(so peak memory is its own), through the same `train_tokenizer` entry users run, then
writes one table per dataset into docs/benchmarks.md (between markers, so other
benchmarks' sections stay).

    python bench/stage1_tokenizers.py --cifar ../shared/data/cifar10 --fsdd ../shared/data/fsdd

Numbers: RMSE / PSNR on the test split (images: 0-255 pixel units; audio: normalised
spectrogram units + log-spectral distance in dB), per-layer perplexity and codes used,
the layer-collapse measures, for SQ layers the posterior entropy and learned sigma^2,
training examples/s and peak memory. ``--seeds 0 1 2`` trains each preset once per seed
and reports mean ± std over the seeds (rows of one preset and variant are grouped).

``--datasets shapes tones`` trains the quickstart's own tokenizers instead (the tokenizer
sections of configs/quickstart.yaml, network and budget unchanged) with the preset swapped,
to see which hierarchy keeps every layer in use on that data;
``--threads`` sets the torch thread count of each run (the outcome has depended on it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import CIFAR_HELP, FSDD_HELP, device_stats, write_section  # noqa: E402  (bench/, beside this script)

PRESETS = ["vqvae", "sqvae", "vqvae2", "sqvae2", "rqvae", "rsqvae"]  # the default set
ROW_ORDER = [*PRESETS, "hqvae"]  # the mixed HQ-VAE runs when asked for (--presets hqvae)
MARK = "tokenizers-{tag}"
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
QUICKSTART_TRACKS = {"shapes": "image", "tones": "audio"}  # dataset -> quickstart track


def quickstart_base(dataset: str, runs: str) -> str:
    """The quickstart track's tokenizer config as a file, without its preset and the
    quantizer settings tuned for that preset (the swapped-in preset's defaults apply)."""
    import yaml

    section = yaml.safe_load(QUICKSTART.read_text())[QUICKSTART_TRACKS[dataset]]["tokenizer"]
    section["model"].pop("preset", None)
    section["model"].pop("quantizer", None)
    path = Path(runs) / f"quickstart_{dataset}_tokenizer.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(section, sort_keys=False))
    return str(path)


def overrides_for(dataset: str, preset: str, args, seed: int) -> list[str]:
    if dataset in QUICKSTART_TRACKS:  # the quickstart's network, data and budget as they are
        return [f"model.preset={preset}", f"train.seed={seed}", "train.eval_every=0",
                f"train.ckpt_every={args.ckpt_every}", "train.log_every=50", *args.set]
    common = [
        f"model.preset={preset}", f"model.channels={args.channels}", "model.res_blocks=2",
        "model.res_channels=32", f"model.depth={args.depth}", f"train.lr={args.lr}",
        "train.eval_every=0", "train.log_every=50",
        f"train.seed={seed}", f"eval.max_examples={args.eval_examples}",
        f"train.mixed_precision={args.mixed_precision}", f"train.ckpt_every={args.ckpt_every}",
        *args.set,
    ]
    if dataset == "cifar10":
        return common + [
            "data.source=parquet", f"data.path={args.cifar}", "data.image_size=32",
            "model.downsample=4", f"train.epochs={args.cifar_epochs}",
            f"train.batch_size={args.cifar_batch}", f"train.num_workers={args.workers}",
        ]
    return common + [
        "data.source=parquet", f"data.path={args.fsdd}", "data.modality=audio", "model.downsample=8",
        f"train.epochs={args.fsdd_epochs}", f"train.batch_size={args.fsdd_batch}",
        f"train.num_workers={args.workers}", "eval.batch_size=32",
    ]


def run_one(dataset: str, preset: str, run_dir: str, overrides: list[str], base: str | None = None,
            threads: int | None = None, rfid: int = 0) -> dict:
    import torch

    from tokenizer.config import load_tokenizer_config
    from tokenizer.train import train_tokenizer

    if threads:
        torch.set_num_threads(threads)
    cfg = load_tokenizer_config(base, [f"run_dir={run_dir}", *overrides])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    metrics = train_tokenizer(cfg)
    metrics.update(device_stats())  # before rFID: peak memory is the training's
    if rfid and cfg.data.resolved_modality == "image":
        from sampling.metrics.image_fid import reconstruction_fid
        from tokenizer.pretrained import Tokenizer

        tok = Tokenizer.from_pretrained(run_dir)
        r = reconstruction_fid(tok, cfg.data, cfg.data.eval_split, max_examples=rfid,
                               batch_size=cfg.eval.batch_size)
        metrics["rfid"], metrics["rfid_examples"] = r["rfid"], r["examples"]
    metrics["preset"], metrics["dataset"] = preset, dataset
    metrics["threads"] = torch.get_num_threads()
    return metrics


def _mean(values: list[float]) -> float:
    return statistics.fmean(values)


def _pm(values: list[float], digits: int) -> str:
    """'m' for one value, 'm ± s' (sample standard deviation) for several."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{_mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def layer_cells(runs: list[dict], digits: int) -> dict[str, str]:
    """Per-layer cells of one preset's runs (one per seed): means over the seeds."""
    m = runs[0]
    n_layers = len(m["layers"])
    per = [[r["layers"][i] for r in runs] for i in range(n_layers)]
    sizes = {la["codebook_size"] for la in m["layers"]}
    grids = " + ".join(f"{la['grid'][0]}×{la['grid'][1]}" + ("" if len(sizes) == 1 else f" (K {la['codebook_size']})")
                       for la in m["layers"])
    if len(sizes) == 1:
        grids += f" (K {sizes.pop()})"
    usage = " · ".join(f"{_mean([la['perplexity'] for la in ls]):.1f} ({_mean([la['codes_used'] for la in ls]):.0f})"
                       for ls in per)
    if all(la["kind"] == "residual" for la in m["layers"]) and n_layers > 1:
        collapse = "depth 1..L: " + " → ".join(
            f"{_mean([la['rmse_depth'] for la in ls]):.{digits}f}" for ls in per)
    else:
        collapse = "substituted: " + " · ".join(
            f"{_mean([la['rmse_substituted'] for la in ls]):.{digits}f}" for ls in per)
    cells = {"grids": grids, "usage": usage, "collapse": collapse, "entropy": "–", "variance": "–"}
    if "posterior_entropy" in m["layers"][0]:
        cells["entropy"] = " · ".join(
            f"{_mean([la['posterior_entropy'] for la in ls]):.2f}" for ls in per) + \
            f" of {math.log(m['layers'][0]['codebook_size']):.2f}"
    if m.get("variances"):
        cells["variance"] = " · ".join(
            f"{_mean([r['variances'][i] for r in runs]):.3g}" for i in range(len(m["variances"])))
    return cells


def table(groups: list[list[dict]], audio: bool) -> str:
    """One row per preset (and variant); ``groups`` holds each row's runs, one per seed."""
    # columns only some results have (SSIM joined the evaluation later; rFID with --rfid;
    # LPIPS where its weights are present): shown when any row has them, '–' where absent
    optional = [(key, name, d) for key, name, d in (("ssim", "SSIM", 4), ("rfid", "rFID", 2), ("lpips", "LPIPS", 4))
                if any(key in r for runs in groups for r in runs)]
    head = ("| preset | seeds | codes | params | RMSE | PSNR |" + "".join(f" {name} |" for _, name, _ in optional)
            + (" LSD dB |" if audio else ""))
    head += (" per-layer perplexity (codes used of K) | layer collapse (RMSE) | SQ posterior "
             "entropy (nats) | SQ σ² | train ex/s | peak MB |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for runs in groups:
        m = runs[0]
        digits = 3 if audio else 2  # audio errors are in [-1, 1] units, images in 0-255
        c = layer_cells(runs, digits)
        seeds = ",".join(str(r.get("seed", 0)) for r in runs)
        row = (f"| {m['preset']} | {seeds} | {c['grids']} | {m['train']['parameters'] / 1e6:.2f} M "
               f"| {_pm([r['rmse'] for r in runs], digits)} | {_pm([r['psnr'] for r in runs], 2)} |")
        for key, _, d in optional:
            row += f" {_pm([r[key] for r in runs], d) if all(key in r for r in runs) else '–'} |"
        if audio:
            row += f" {_pm([r.get('lsd_db', float('nan')) for r in runs], 2)} |"
        row += (f" {c['usage']} | {c['collapse']} | {c['entropy']} | {c['variance']} "
                f"| {_mean([r['train']['examples_per_s'] for r in runs]):.0f} "
                f"| {max(r['peak_mem_mb'] for r in runs):.0f} |")
        lines.append(row)
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """The command line; its defaults are the benchmark's settings (other bench scripts that
    train through this one read them from here)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", default="../shared/data/cifar10", help=CIFAR_HELP)
    p.add_argument("--fsdd", default="../shared/data/fsdd", help=FSDD_HELP)
    p.add_argument("--datasets", nargs="+", default=["cifar10", "fsdd"],
                   choices=["cifar10", "fsdd", *QUICKSTART_TRACKS])
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--depth", type=int, default=4, help="residual depth of rqvae / rsqvae")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--cifar-epochs", type=int, default=2)
    p.add_argument("--cifar-batch", type=int, default=128)
    p.add_argument("--fsdd-epochs", type=int, default=4)
    p.add_argument("--fsdd-batch", type=int, default=32)
    p.add_argument("--eval-examples", type=int, default=10000)
    p.add_argument("--mixed-precision", default="no")
    p.add_argument("--rfid", type=int, default=0, metavar="N",
                   help="also report the rFID of image tokenizers over N test images spread over the "
                        "split (0: off; the reference features are cached after the first run)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--ckpt-every", type=int, default=0,
                   help="steps between checkpoints (0: only at the end); a killed benchmark run "
                        "then continues from its last checkpoint when the command is run again")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per run (default: torch's own choice)")
    p.add_argument("--seed", type=int, default=None, help="one seed (same as --seeds N)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train every preset once per seed; the table reports mean ± std (default: 0)")
    p.add_argument("--runs", default="runs/bench")
    p.add_argument("--results", default=None, help="JSON lines file of raw results")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--tag", default="cpu", help="section name in the output file (cpu, h100, ...)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every run (a variant of the presets)")
    p.add_argument("--variant", default="", help="name of the variant (suffix of rows and run dirs)")
    p.add_argument("--report-only", action="store_true",
                   help="write the section from the results file; train nothing")
    p.add_argument("--one", nargs=3, metavar=("DATASET", "PRESET", "JSON_OUT"), help=argparse.SUPPRESS)
    return p


def run_folder(runs: str, dataset: str, preset: str, variant: str, seed: int) -> str:
    """Where one run of the benchmark trains (seed 0 keeps the single-seed benchmark's name)."""
    return f"{runs}/{dataset}_{preset}" + (f"_{variant}" if variant else "") + (f"_s{seed}" if seed else "")


def main() -> int:
    p = parser()
    args = p.parse_args()
    if args.seed is not None and args.seeds is not None:
        p.error("give --seed or --seeds, not both")
    seeds = args.seeds if args.seeds is not None else [0 if args.seed is None else args.seed]

    def run_dir(dataset: str, preset: str, seed: int) -> str:
        return run_folder(args.runs, dataset, preset, args.variant, seed)

    if args.one:
        dataset, preset, json_out = args.one
        (seed,) = seeds
        base = quickstart_base(dataset, args.runs) if dataset in QUICKSTART_TRACKS else None
        m = run_one(dataset, preset, run_dir(dataset, preset, seed), overrides_for(dataset, preset, args, seed),
                    base, args.threads, args.rfid)
        if args.variant:
            m["preset"] = f"{preset} ({args.variant})"
        m["overrides"] = list(args.set)
        m["seed"] = seed
        Path(json_out).write_text(json.dumps(m))
        return 0

    results_path = Path(args.results or f"{args.runs}/results_{args.tag}.jsonl")
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if results_path.exists():  # resume a partly finished benchmark
        for line in results_path.read_text().splitlines():
            m = json.loads(line)
            done[(m["dataset"], m["preset"], m.get("seed", 0))] = m
    # the parent's own seed options are replaced by one --seed per child process
    passthrough, skip = [], False
    for a in sys.argv[1:]:
        if a in ("--seed", "--seeds"):
            skip = True
            continue
        if skip and a.lstrip("-").isdigit():
            continue
        skip = False
        passthrough.append(a)
    names = {pr: f"{pr} ({args.variant})" if args.variant else pr for pr in args.presets}
    for dataset in [] if args.report_only else args.datasets:
        for preset in args.presets:
            for seed in seeds:
                if (dataset, names[preset], seed) in done:
                    continue
                tmp = results_path.with_suffix(f".{dataset}_{preset}_s{seed}.json")
                t0 = time.time()
                cmd = [sys.executable, __file__, *passthrough, "--seed", str(seed), "--one", dataset, preset, str(tmp)]
                print(f"== {dataset} {names[preset]} seed {seed}", flush=True)
                env = dict(os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
                rc = subprocess.call(cmd, env=env)
                if rc != 0:
                    print(f"!! {dataset} {preset} seed {seed} failed with exit code {rc}", flush=True)
                    continue
                m = json.loads(tmp.read_text())
                m["wall_s"] = time.time() - t0
                done[(dataset, m["preset"], seed)] = m
                with results_path.open("a") as fh:
                    fh.write(json.dumps(m) + "\n")
                tmp.unlink()
                print(f"   rmse {m['rmse']:.3f} psnr {m['psnr']:.2f} ({m['wall_s']:.0f}s)", flush=True)

    cmdline = "python bench/stage1_tokenizers.py " + " ".join(sys.argv[1:])
    device = next(iter(done.values()))["device"] if done else "?"
    parts = [
        f"## Tokenizers: presets with matched architecture and budget ({args.tag})",
        "",
        f"Command: `{cmdline.strip()}`  ",
        f"Machine: {device}, {platform.machine()}, Python {platform.python_version()}; "
        f"date {dt.date.today().isoformat()}.  ",
        (f"Setup: conv width {args.channels}, 2 residual blocks (32 bottleneck channels), "
         f"K = 512 and D = 64 for every layer, residual depth {args.depth}, AdamW lr {args.lr} "
         f"(constant), seeds as listed per row (mean ± sample std over them), mixed precision "
         f"`{args.mixed_precision}`. "
         f"Evaluation: deterministic encoding of {args.eval_examples} test examples (the whole split "
         "when it is no larger; else spread evenly over it) "
         "(variant rows: see the notes under the tables).")
        if not set(args.datasets) <= set(QUICKSTART_TRACKS) else
        ("Setup: each track's tokenizer section of configs/quickstart.yaml (network, data, steps, "
         "batch, lr and evaluation set unchanged) with `model.preset` swapped and that preset's "
         "own quantizer defaults; seeds as listed per row (mean ± sample std over them); torch "
         "threads per run as named in the row (`t1`, `t2`)."),
        "",
    ]
    for dataset in args.datasets:
        grouped: dict[str, list[dict]] = {}
        for (ds, name, _), m in done.items():
            if ds == dataset:
                grouped.setdefault(name, []).append(m)
        rows = [sorted(g, key=lambda m: m.get("seed", 0)) for g in grouped.values()]
        # the presets in their usual order, then the variant rows in the order they were run
        rows.sort(key=lambda g: (bool(g[0].get("overrides")),
                                 0 if g[0].get("overrides") else ROW_ORDER.index(g[0]["preset"].split(" ")[0])))
        if not rows:
            continue
        if dataset in QUICKSTART_TRACKS:
            parts.append(f"### {dataset} (the quickstart's {QUICKSTART_TRACKS[dataset]} tokenizer: "
                         "configs/quickstart.yaml's network, data and steps; only the preset "
                         "changes; RMSE in " + ("0–255 pixel units)" if dataset == "shapes"
                                                 else "normalised [-1, 1] units, LSD in dB)"))
        elif dataset == "cifar10":
            parts.append(f"### CIFAR-10 ({args.cifar_epochs} epochs, batch {args.cifar_batch}; "
                         "RMSE in 0–255 pixel units)")
        else:
            parts.append(f"### FSDD ({args.fsdd_epochs} epochs, batch {args.fsdd_batch}; 128×128 "
                         "log-magnitude spectrograms, RMSE in normalised [-1, 1] units, LSD in dB)")
        parts += ["", table(rows, audio=dataset in ("fsdd", "tones")), ""]
    variants = sorted({(m["preset"], " ".join(m.get("overrides", []))) for m in done.values()
                       if m.get("overrides")})
    for name, over in variants:
        parts.append(f"Row `{name}`: the same run with `--set {over}`.  ")
    parts.append("Layer collapse: for residual stacks, RMSE decoding with depths 1..L (each "
                 "depth should lower it); otherwise RMSE when a layer's codes are replaced by "
                 "draws from its own code histogram (higher = the layer carries more).")
    write_section(Path(args.out), MARK.format(tag=args.tag), "\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
