"""Benchmark: the scalable network against the small one, and MSE against MSE + adversarial,
at CPU scale.

For `sqvae2` and `rsqvae` and their deterministic twins (`vqvae2`, `rqvae`, both with code
restarts) on CIFAR-10 and FSDD, with the networks, codebooks, optimizer and budgets of
`bench/stage1_tokenizers.py` (each run in its own process through that script), three arms:

* ``conv`` — today's network (``model.net: conv``) and the paper's MSE objective;
* ``vqgan`` — the scalable network (``model.net: vqgan``) at matched parameters: of the
  widths (``base_channels``, a constant, VQGAN's or a doubling ``channel_mult``) and
  ``num_res_blocks`` that put encoder + decoder within ±10 % of the conv ones' parameter
  count, the one of fewest FLOPs per example (none within ±10 %: refused);
* ``vqgan-adv`` — the scalable network with the PatchGAN term on (hinge, adaptive weight,
  ``--adv-weight``, from half of the training steps), for the presets in ``--adv-presets``.

Then writes into docs/benchmarks.md one table per dataset (RMSE, PSNR, SSIM, rFID over
``--rfid`` test images, LSD for audio, LPIPS where its VGG16 weights are present, codes in
use) and the paired differences per seed (vqgan − conv, vqgan-adv − vqgan) as mean ± std.

    python bench/tokenizer_quality.py --cifar ../shared/data/cifar10 --fsdd ../shared/data/fsdd \\
      --seeds 0 1 2 --jobs 2 --threads 1

Runs checkpoint every epoch and every result is appended to the results file as it
finishes: the same command run again continues where a killed run stopped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import platform
import statistics
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import stage1_tokenizers  # noqa: E402  (bench/, beside this script)
from pool import Job, read_results, run_pool  # noqa: E402
from sections import CIFAR_HELP, FSDD_HELP, run_command, write_section  # noqa: E402

RESTART = "model.quantizer.restart_threshold=1.0"
CHANNELS_LAST = "train.channels_last=true"
# the discriminator's base width, sized to these ~0.6 M-parameter tokenizers as VQGAN's and
# LlamaGen's PatchGAN is to theirs (2.8 M beside 70 M, 4 %): width 8 gives 11 k (2 layers)
# to 44 k (3 layers) parameters, 2-7 %; the default 64 would outweigh the tokenizer itself
ADV_CHANNELS = 8
PRESETS = ["sqvae2", "vqvae2", "rsqvae", "rqvae"]
TWINS = {"vqvae2", "rqvae"}  # the deterministic twins: trained with code restarts
ARMS = ["conv", "vqgan", "vqgan-adv"]
EPOCHS = {"cifar10": 8, "fsdd": 4}
_STAGE1 = stage1_tokenizers.parser().parse_args([])
BATCH = {"cifar10": _STAGE1.cifar_batch, "fsdd": _STAGE1.fsdd_batch}  # the stage-one benchmark's
TRAIN_EXAMPLES = {"cifar10": 50_000, "fsdd": 2_700}
MARK = "tokenizer-quality-{tag}"
# the candidates of the matched-parameter search: widths (multiples of 4, the GroupNorm
# groups) and residual blocks per resolution
BASES = range(8, 65, 4)
BLOCKS = (1, 2)


def stage1_args(args, dataset: str) -> list[str]:
    """The stage-one benchmark's options that set this dataset's data and budget."""
    flag = "cifar" if dataset == "cifar10" else "fsdd"
    out = ["--datasets", dataset, f"--{flag}", getattr(args, dataset), f"--{flag}-epochs", str(args.epochs[dataset]),
           "--ckpt-every", str(steps_per_epoch(dataset))]
    out += ["--mixed-precision", args.mixed_precision]
    return out + (["--threads", str(args.threads)] if args.threads else [])


def steps_per_epoch(dataset: str) -> int:
    return TRAIN_EXAMPLES[dataset] // BATCH[dataset]  # the loader drops the last partial batch


def tokenizer_config(dataset: str, preset: str, overrides: list[str], args):
    """The configuration the stage-one benchmark trains ``preset`` on ``dataset`` with (its
    own defaults, read from its parser)."""
    from tokenizer.config import load_tokenizer_config

    ns = stage1_tokenizers.parser().parse_args(["--cifar", args.cifar10, "--fsdd", args.fsdd, "--set", *overrides])
    return load_tokenizer_config(None, stage1_tokenizers.overrides_for(dataset, preset, ns, 0))


def net_parameters(model) -> int:
    """Encoder + decoder parameters: what the arms swap (codebooks and code projections are the same)."""
    return sum(p.numel() for net in (model.encoder, model.decoder) for p in net.parameters())


def forward_flops(model, shape) -> int:
    """FLOPs of one example's training forward pass."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad(), warnings.catch_warnings():
        # the SQ temperature schedule warns that it has no run length: this pass only counts FLOPs
        warnings.simplefilter("ignore", UserWarning)
        model(torch.randn(1, *shape))
    return counter.get_total_flops()


def width_patterns(levels: int) -> list[list[int]]:
    """Width multipliers per resolution: constant, VQGAN's (1, 1, 2, 2, 4, ...) and doubling."""
    vqgan = [1, 1, 2, 2, 4, 4, 8][:levels]
    doubling = [min(2 ** i, 8) for i in range(levels)]
    return [[1] * levels, vqgan, doubling]


def matched_vqgan(dataset: str, preset: str, args) -> tuple[list[str], float, float]:
    """The vqgan options within ±10 % of the conv network's parameters (encoder + decoder)
    that cost the fewest FLOPs; with their parameter and FLOP ratios to the conv tokenizer."""
    from tokenizer.model import HQVAE

    conv = tokenizer_config(dataset, preset, [], args)
    model = HQVAE(conv.model, conv.data.shape)
    params, flops = net_parameters(model), forward_flops(model, conv.data.shape)
    # one width multiplier per resolution from the input down to the coarsest code grid
    levels = int(math.log2(max(la.factor for la in conv.model.layers))) + 1
    best = None
    for mult in width_patterns(levels):
        for blocks in BLOCKS:
            for base in BASES:
                opts = ["model.net=vqgan", f"model.net_options.base_channels={base}",
                        f"model.net_options.channel_mult=[{','.join(map(str, mult))}]",
                        f"model.net_options.num_res_blocks={blocks}", "model.net_options.norm_groups=4"]
                cfg = tokenizer_config(dataset, preset, opts, args)
                model = HQVAE(cfg.model, cfg.data.shape)
                n = net_parameters(model)
                if abs(n / params - 1) > 0.10:
                    continue
                f = forward_flops(model, cfg.data.shape)
                if best is None or f < best[2] * flops:
                    best = (opts, n / params, f / flops)
    if best is None:
        raise SystemExit(f"{dataset} {preset}: no vqgan width within ±10 % of the conv network's "
                         f"{params} parameters")
    return best


def arm_overrides(dataset: str, preset: str, arm: str, args, matched: dict) -> list[str]:
    over = [RESTART] if preset in TWINS else []
    if arm == "conv":
        return over
    # channels-last: 1.1-1.4x faster steps for these GroupNorm nets on one CPU thread, about
    # even for the conv net; it only reorders float sums
    over += matched[(dataset, preset)][0] + [CHANNELS_LAST]
    if arm == "vqgan-adv":
        # PatchGAN depth: 2 stride-2 layers at 32 px (patches of about half the image), 3 above
        layers = 2 if dataset == "cifar10" else 3
        start = args.epochs[dataset] * steps_per_epoch(dataset) // 2
        over += [f"loss.adversarial.weight={args.adv_weight}", f"loss.adversarial.start_step={start}",
                 f"loss.adversarial.layers={layers}", f"loss.adversarial.channels={ADV_CHANNELS}"]
    return over


def variant(preset: str, arm: str) -> str:
    return f"{arm}-restart" if preset in TWINS else arm


def plan(args, done: dict) -> tuple[list[Job], dict]:
    """The runs not in ``done``, every row's first seed before any row's second (a screen
    comes first); and the matched vqgan network of each (dataset, preset) they need."""
    todo = [(dataset, preset, arm, seed) for seed in args.seeds for dataset in args.datasets
            for preset in args.presets for arm in args.arms
            if (arm != "vqgan-adv" or preset in args.adv_presets) and (dataset, preset, arm, seed) not in done]
    matched = {(d, p): matched_vqgan(d, p, args) for d, p in dict.fromkeys((d, p) for d, p, a, _ in todo if a != "conv")}
    jobs = []
    for key in todo:
        dataset, preset, arm, seed = key
        out = Path(args.runs) / f"{dataset}_{preset}_{arm}_s{seed}.json"
        cmd = [sys.executable, str(ROOT / "bench" / "stage1_tokenizers.py"), *stage1_args(args, dataset),
               "--runs", args.runs, "--seed", str(seed), "--rfid", str(args.rfid),
               "--variant", variant(preset, arm), "--set", *arm_overrides(dataset, preset, arm, args, matched),
               "--one", dataset, preset, str(out)]
        jobs.append(Job(key=key, title=f"{dataset} {preset} {arm} seed {seed}", command=cmd, out=out,
                        log=Path(args.runs) / f"{dataset}_{preset}_{arm}_s{seed}.log"))
    return jobs, matched


def _pm(values: list[float], digits: int) -> str:
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:+.{digits}f}"
    return f"{statistics.fmean(values):+.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def compared_metrics(done: dict, dataset: str) -> list[tuple[str, str, int, bool]]:
    """The metrics the paired differences take: (record key, name, digits, higher is better)."""
    audio = dataset == "fsdd"
    metrics = [("rmse", "RMSE", 3 if audio else 2, False), ("psnr", "PSNR", 2, True)]
    metrics += [("lsd_db", "LSD dB", 2, False)] if audio else [("ssim", "SSIM", 4, True), ("rfid", "rFID", 2, False)]
    return metrics + ([("lpips", "LPIPS", 4, False)] if any("lpips" in m for m in done.values()) else [])


def differences(done: dict, dataset: str, presets: list[str], seeds: list[int]) -> str:
    """Paired per-seed differences: vqgan − conv and vqgan-adv − vqgan."""
    metrics = compared_metrics(done, dataset)
    head = ("| preset | comparison | seeds | lower RMSE in | "
            + " | ".join(f"Δ {name}" for _, name, _, _ in metrics) + " |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for preset in presets:
        for a, b in (("vqgan", "conv"), ("vqgan-adv", "vqgan")):
            pairs = [(done[(dataset, preset, a, s)], done[(dataset, preset, b, s)]) for s in seeds
                     if (dataset, preset, a, s) in done and (dataset, preset, b, s) in done]
            if not pairs:
                continue
            cells = [_pm([x[k] - y[k] for x, y in pairs if k in x and k in y], d) for k, _, d, _ in metrics]
            used = ",".join(str(x["seed"]) for x, _ in pairs)
            lower = sum(x["rmse"] < y["rmse"] for x, y in pairs)  # seeds where the first arm wins
            lines.append(f"| {preset} | {a} − {b} | {used} | {lower} of {len(pairs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(args, done: dict) -> str:
    """The section, from ``done``: the results of ``args.datasets`` only."""
    # each (dataset, preset)'s vqgan network, as its runs recorded it
    nets = {(m["dataset"], m["name"]): m for m in done.values() if m["arm"] != "conv" and "flops_ratio" in m}
    cmdline = run_command("tokenizer_quality.py", sys.argv[1:])
    device = next(iter(done.values()))["device"]
    parts = [
        f"## Scalable network and adversarial loss at CPU scale ({args.tag})", "",
        f"Command: `{cmdline.strip()}`  ",
        f"Machine: {device}, {platform.machine()}, Python {platform.python_version()}; "
        f"date {dt.date.today().isoformat()}.  ",
        "Setup: `bench/stage1_tokenizers.py`'s (K = 512, D = 64 for every layer, residual depth 4, AdamW "
        f"lr 0.001 constant, mixed precision `{args.mixed_precision}`; the conv arm: width 64, 2 residual blocks of 32 bottleneck channels); "
        + ", ".join(f"{d} {args.epochs[d]} epochs of batch {BATCH[d]}" for d in args.datasets)
        + "; the deterministic twins with code restarts. The vqgan arm per preset (4 GroupNorm groups, "
        "attention at the coarsest code grid and in the middle blocks; of the candidates within ±10 % of "
        "the conv encoder + decoder's parameters, the one of fewest FLOPs per example; trained in "
        "channels-last layout): " + "; ".join(
            f"{d} {p}: base {_opt(m, 'base_channels')} × {_opt(m, 'channel_mult')}, {_opt(m, 'num_res_blocks')} "
            f"block{'' if _opt(m, 'num_res_blocks') == '1' else 's'} ({m['net_params_ratio']:.2f}× the parameters, {m['flops_ratio']:.1f}× the FLOPs)"
            for (d, p), m in nets.items())
        + f". The adversarial arm: PatchGAN of base width {ADV_CHANNELS} (2–7 % of the tokenizer's parameters, "
        f"as VQGAN's is of its own), hinge loss, adaptive weight × {args.adv_weight} "
        "(clamped at 1e4 on the per-element scale), from half of the steps; its discriminator's Adam β = (0.5, 0.9). "
        + (f"rFID over {args.rfid} test images spread over the split. " if args.rfid and "cifar10" in args.datasets else "")
        + ("LPIPS: " + ("reported (VGG16 weights present)." if any("lpips" in m for m in done.values())
                        else "not reported: no VGG16 weights on this machine."))
        + reused(done),
        "",
    ]
    order = {(p, a): i for i, (p, a) in enumerate((p, a) for p in args.presets for a in ARMS)}
    for dataset in args.datasets:
        groups: dict[tuple[str, str], list[dict]] = {}
        for (ds, preset, arm, _), m in done.items():
            if ds == dataset:
                groups.setdefault((preset, arm), []).append(m)
        if not groups:
            continue
        rows = [sorted(g, key=lambda m: m["seed"]) for _, g in sorted(groups.items(), key=lambda kv: order.get(kv[0], 99))]
        parts += [f"### {dataset}" + (" (RMSE in 0–255 pixel units)" if dataset == "cifar10"
                                      else " (RMSE in normalised [-1, 1] units, LSD in dB)"), "",
                  stage1_tokenizers.table(rows, audio=dataset == "fsdd"), "",
                  "Paired differences (same seed; mean ± sample std over the seeds; negative Δ "
                  + ", ".join(n.split()[0] for _, n, _, up in compared_metrics(done, dataset) if not up)
                  + " and positive Δ " + ", ".join(n for _, n, _, up in compared_metrics(done, dataset) if up)
                  + " are improvements; 'lower RMSE in': the seeds in which the first arm of the comparison "
                  "has the lower RMSE):", "",
                  differences(done, dataset, args.presets, args.seeds), ""]
    return "\n".join(parts)


def reused(done: dict) -> str:
    """A sentence naming the rows taken from another benchmark's identical trainings (a record's
    ``source``: the run folder it was trained in), if any."""
    rows = sorted((m["dataset"], m["name"], m["arm"], m["seed"], m["source"]) for m in done.values() if "source" in m)
    if not rows:
        return ""
    images = any(d == "cifar10" for d, *_ in rows)
    return (" Rows trained by another benchmark with the same training settings, seed and code, and read from its "
            "results" + (" (rFID computed on its saved model)" if images else "") + ": "
            + "; ".join(f"{d} {p} {a} seed {s} (`{src}`)" for d, p, a, s, src in rows) + ".")


def _opt(m: dict, name: str) -> str:
    return next(o.split("=", 1)[1] for o in m["overrides"] if o.startswith(f"model.net_options.{name}="))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar", dest="cifar10", default="../shared/data/cifar10", help=CIFAR_HELP)
    p.add_argument("--fsdd", default="../shared/data/fsdd", help=FSDD_HELP)
    p.add_argument("--datasets", nargs="+", default=["cifar10", "fsdd"], choices=list(EPOCHS))
    p.add_argument("--cifar-epochs", type=int, default=EPOCHS["cifar10"])
    p.add_argument("--fsdd-epochs", type=int, default=EPOCHS["fsdd"])
    p.add_argument("--presets", nargs="+", default=PRESETS, choices=PRESETS)
    p.add_argument("--arms", nargs="+", default=ARMS, choices=ARMS)
    p.add_argument("--adv-presets", nargs="+", default=["sqvae2", "rsqvae"], choices=PRESETS,
                   help="presets that also run the vqgan-adv arm")
    p.add_argument("--adv-weight", type=float, default=0.5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rfid", type=int, default=2000, metavar="N",
                   help="rFID over N test images spread over the split (0: off; FID is biased upward at small N, "
                        "so compare rows of one table only)")
    p.add_argument("--mixed-precision", default="no", choices=["no", "bf16", "fp16"],
                   help="train.mixed_precision of every run (bf16 on a GPU)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads per training")
    p.add_argument("--runs", default="runs/quality")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--tag", default="cpu")
    p.add_argument("--report-only", action="store_true", help="write the section from the results file")
    args = p.parse_args()
    args.epochs = {"cifar10": args.cifar_epochs, "fsdd": args.fsdd_epochs}
    for dataset in args.datasets:
        if not args.report_only and not Path(getattr(args, dataset)).is_dir():
            p.error(f"--{'cifar' if dataset == 'cifar10' else 'fsdd'}: {getattr(args, dataset)} is not a folder "
                    "(the dataset as Parquet: train.parquet, test.parquet)")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = Path(args.runs) / f"results_{args.tag}.jsonl"
    results.parent.mkdir(parents=True, exist_ok=True)
    done = {(m["dataset"], m["name"], m["arm"], m["seed"]): m for m in read_results(results)}
    if not args.report_only:
        jobs, matched = plan(args, done)

        def annotate(job: Job, m: dict) -> None:
            m["name"], m["arm"] = job.key[1], job.key[2]
            if m["arm"] != "conv":
                _, m["net_params_ratio"], m["flops_ratio"] = matched[(m["dataset"], m["name"])]

        run_pool(jobs, args.jobs, results, done, args.threads, annotate)
    shown = {key: m for key, m in done.items() if key[0] in args.datasets}
    if not shown:
        print(f"no results for {' '.join(args.datasets)} in {results}; nothing written", file=sys.stderr)
        return 1
    write_section(Path(args.out), MARK.format(tag=args.tag), report(args, shown))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
