"""Benchmark: per-level priors on the codes of stage one's benchmark tokenizers.

For each tokenizer run (from bench/stage1_tokenizers.py), encode the train and test splits once
(`prior.codes.encode_split`, the code path of `hqvae encode`), train one class-conditional
prior per level with the same model and step budget through `prior.train.train_prior`
(the code path of `hqvae train-prior`), and report the held-out NLL in bits per token
against the uniform baseline log2 K, with training tokens/s.

    python bench/stage2_priors.py --cifar ../shared/data/cifar10 --fsdd ../shared/data/fsdd \
        --tokenizers runs/bench/cifar10_sqvae2_tau runs/bench/fsdd_sqvae2_tau

Each tokenizer's priors run in their own process (peak memory is theirs); finished
tokenizers are read back from the results file, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import CIFAR_HELP, FSDD_HELP, device_stats, write_section  # noqa: E402  (bench/, beside this script)

DEFAULT_TOKENIZERS = [
    "runs/bench/cifar10_vqvae2_restart", "runs/bench/cifar10_sqvae2_tau",
    "runs/bench/cifar10_rqvae_restart", "runs/bench/cifar10_rsqvae_tau",
    "runs/bench/fsdd_sqvae2_tau", "runs/bench/fsdd_rsqvae_tau",
]


def prior_overrides(args, audio: bool) -> list[str]:
    return [
        f"model.arch={args.arch}", f"model.n_layer={args.n_layer}", f"model.n_embd={args.n_embd}",
        f"model.n_head={args.n_head}", f"model.cond_channels={args.cond_channels}",
        "model.cond_blocks=2", "model.dropout=0.0", "class_cond=true", "label_dropout=0.1",
        f"train.steps={args.fsdd_steps if audio else args.steps}",
        f"train.batch_size={args.fsdd_batch if audio else args.batch}",
        f"train.lr={args.lr}", "train.schedule=cosine", "train.warmup_steps=50",
        "train.min_lr_ratio=0.1", "train.weight_decay=0.01", "train.clip_grad=1.0",
        f"train.mixed_precision={args.mixed_precision}", "train.eval_every=0",
        "train.ckpt_every=0", "train.log_every=50", f"train.seed={args.seed}",
        f"eval.max_examples={args.eval_examples}", *args.set,
    ]


def run_one(tok_run: str, out_dir: Path, args) -> dict:
    import torch

    from prior.codes import encode_split
    from prior.config import load_prior_config
    from prior.train import train_prior
    from tokenizer.data import build_dataset
    from tokenizer.pretrained import Tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tok = Tokenizer.from_pretrained(tok_run, device=device)
    audio = tok.modality == "audio"
    import dataclasses

    data = dataclasses.replace(tok.config.data, path=args.fsdd if audio else args.cifar)
    codes = out_dir / "codes"
    t0 = time.perf_counter()
    for split in (data.train_split, data.eval_split):
        encode_split(tok, build_dataset(data, split), codes, split, batch_size=256,
                     num_workers=args.workers, source={"source": data.source, "path": data.path},
                     tokenizer_run=tok_run)
    encode_s = time.perf_counter() - t0
    del tok
    cfg = load_prior_config(None, [f"run_dir={out_dir / 'prior'}", f"data.codes={codes}", f"tokenizer={tok_run}",
                                   f"data.eval_split={data.eval_split}", *prior_overrides(args, audio)])
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    results = train_prior(cfg)
    m = {"tokenizer": Path(tok_run).name, "modality": "audio" if audio else "image",
         "encode_s": encode_s, "levels": [results["levels"][lv] for lv in sorted(results["levels"])]}
    m.update(device_stats())
    manifest = json.loads((codes / "codes.json").read_text())
    m["train_examples"] = manifest["splits"][data.train_split]["num_examples"]
    return m


def table(results: list[dict]) -> str:
    head = ("| tokenizer | level | grid | K | held-out bits/token | uniform log2 K | ratio "
            "| train tokens/s | params |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for m in results:
        for la in m["levels"]:
            lines.append(
                f"| {m['tokenizer']} | {la['level']} | {la['shape'][0]}×{la['shape'][1]} "
                f"| {la['codebook_size']} | {la['bits_per_token']:.3f} | {la['uniform_bits']:.3f} "
                f"| {la['bits_per_token'] / la['uniform_bits']:.2f} | {la['tokens_per_s']:.0f} "
                f"| {la['parameters'] / 1e6:.2f} M |"
            )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizers", nargs="+", default=DEFAULT_TOKENIZERS, help="tokenizer run dirs")
    p.add_argument("--cifar", default="../shared/data/cifar10", help=CIFAR_HELP)
    p.add_argument("--fsdd", default="../shared/data/fsdd", help=FSDD_HELP)
    from prior.backbones import BACKBONES

    p.add_argument("--arch", default="gpt2", choices=sorted(BACKBONES))
    p.add_argument("--n-layer", type=int, default=3)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--cond-channels", type=int, default=64)
    p.add_argument("--steps", type=int, default=400, help="optimizer steps per image level")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--fsdd-steps", type=int, default=300, help="optimizer steps per audio level")
    p.add_argument("--fsdd-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--mixed-precision", default="no")
    p.add_argument("--eval-examples", type=int, default=2000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--runs", default="runs/bench_priors")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--tag", default="cpu", help="section name in the output file (cpu, h100, ...)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra prior config overrides for every run")
    p.add_argument("--one", nargs=2, metavar=("TOKENIZER_RUN", "JSON_OUT"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.one:
        tok_run, json_out = args.one
        m = run_one(tok_run, Path(args.runs) / Path(tok_run).name, args)
        Path(json_out).write_text(json.dumps(m))
        return 0

    results_path = Path(args.runs) / f"results_{args.tag}.jsonl"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = {}
    if results_path.exists():
        for line in results_path.read_text().splitlines():
            m = json.loads(line)
            done[m["tokenizer"]] = m
    passthrough = list(sys.argv[1:])
    rows_for = [Path(t).name for t in args.tokenizers]
    for tok_run in args.tokenizers:
        name = Path(tok_run).name
        if name in done:
            continue
        if not (Path(tok_run) / "model.safetensors").is_file():
            print(f"!! {tok_run}: no trained tokenizer there (run bench/stage1_tokenizers.py first)", flush=True)
            continue
        tmp = results_path.with_suffix(f".{name}.json")
        t0 = time.time()
        print(f"== {name}", flush=True)
        rc = subprocess.call([sys.executable, __file__, *passthrough, "--one", tok_run, str(tmp)])
        if rc != 0:
            print(f"!! {name} failed with exit code {rc}", flush=True)
            continue
        m = json.loads(tmp.read_text())
        m["wall_s"] = time.time() - t0
        done[name] = m
        with results_path.open("a") as fh:
            fh.write(json.dumps(m) + "\n")
        tmp.unlink()
        bits = " · ".join(f"{la['bits_per_token']:.2f}" for la in m["levels"])
        print(f"   bits/token per level {bits} ({m['wall_s']:.0f}s)", flush=True)

    rows = [done[name] for name in rows_for if name in done]
    if not rows:
        print("no finished results; nothing written")
        return 1
    cmdline = "python bench/stage2_priors.py " + " ".join(passthrough)
    device = rows[0]["device"]
    parts = [
        f"## Priors: held-out bits per token per level ({args.tag})",
        "",
        f"Command: `{cmdline.strip()}`  ",
        f"Machine: {device}, {platform.machine()}, Python {platform.python_version()}; "
        f"date {dt.date.today().isoformat()}.  ",
        f"Setup: one class-conditional `{args.arch}` prior per level ({args.n_layer} layers, "
        f"width {args.n_embd}, {args.n_head} heads; conditioning network {args.cond_channels} "
        f"channels × 2 blocks), label dropout 0.1, AdamW lr {args.lr} with 50 warm-up steps and "
        f"cosine decay, clip 1.0, mixed precision `{args.mixed_precision}`; images "
        f"{args.steps} steps × batch {args.batch}, audio {args.fsdd_steps} steps × batch "
        f"{args.fsdd_batch}. Held-out = {args.eval_examples} test examples (spread over the split), scored "
        f"with their labels. Codes: the train and test splits encoded once by each tokenizer "
        f"of the tokenizer benchmark above.",
        "",
        table(rows),
        "",
        "ratio = bits/token ÷ log2 K (1.0 = no better than uniform). tokens/s counts the "
        "training tokens of a level's sequences per second of optimisation.",
    ]
    write_section(Path(args.out), f"priors-{args.tag}", "\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
