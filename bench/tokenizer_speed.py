"""Benchmark: tokenizer training images/s, eager float32 vs the throughput options.

For every preset at 3x32x32 (the bench/stage1_tokenizers.py matched model: width 64, 2
residual blocks of 32, downsample 4, depth 4), times forward + backward + AdamW steps on
synthetic images with the same model and loss as engine.trainer.train, for: eager fp32,
channels_last, compile, compile+channels_last (+ bf16 autocast on CUDA). Batch 32 on CPU;
32 / 128 / 512 on CUDA. Warm-up steps (compilation included) are not timed.

    python bench/tokenizer_speed.py --tag cpu

The step is passed as a 0-d tensor, as the trainer does under train.compile (a Python int
would be a graph constant and recompile the SQ temperature every step). The loss column is
the mean loss of the timed steps (same seed and data for every variant): the options change
speed, not the objective (compiled random numbers differ, so SQ losses match only roughly).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import device_stats, write_section  # noqa: E402

PRESETS = ["vqvae", "sqvae", "vqvae2", "sqvae2", "rqvae", "rsqvae"]
# name -> (torch.compile mode or None, channels_last, bf16 autocast)
VARIANTS = {"eager": (None, False, False), "channels_last": (None, True, False),
            "compile": ("default", False, False), "compile+channels_last": ("default", True, False),
            "compile+channels_last+bf16": ("default", True, True),
            "compile(reduce-overhead)+channels_last+bf16": ("reduce-overhead", True, True)}
GPU_ONLY = {"compile+channels_last+bf16", "compile(reduce-overhead)+channels_last+bf16"}


def measure(preset: str, batch: int, variant: str, warmup: int, timed: int, blocks: int) -> dict:
    import torch
    import torch._dynamo

    from tokenizer.config import load_tokenizer_config
    from tokenizer.pretrained import Tokenizer

    compiled, cl, bf16 = VARIANTS[variant]
    torch._dynamo.reset()  # each measurement compiles afresh (no cache shared across presets)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = load_tokenizer_config(None, [f"model.preset={preset}", "model.channels=64",
                                       "model.res_blocks=2", "model.res_channels=32",
                                       "model.downsample=4", "model.depth=4"])
    torch.manual_seed(0)
    model = Tokenizer.from_config(cfg).model.to(dev).train()
    if cl:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    fwd = torch.compile(model, mode=compiled) if compiled else model
    x = torch.rand(batch, 3, 32, 32, device=dev) * 2 - 1
    if cl:
        x = x.contiguous(memory_format=torch.channels_last)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()

    step_t = torch.zeros((), dtype=torch.long, device=dev)  # as the trainer: on the device

    def step(i: int) -> torch.Tensor:
        step_t.fill_(i)
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            loss = fwd(x, step=step_t)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    for i in range(warmup):
        step(i)
    # The timed steps run as `blocks` equal blocks and the median block rate is reported:
    # on a shared 2-core machine a burst of other load can halve one block's rate, and a
    # single long timing (the first version of this script) let one burst decide a row.
    losses, rates, i = [], [], warmup
    per_block = max(1, timed // blocks)
    for _ in range(blocks):
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(per_block):
            losses.append(step(i))  # kept on device: no sync per step
            i += 1
        if dev == "cuda":
            torch.cuda.synchronize()
        rates.append(batch * per_block / (time.perf_counter() - t0))
    return {"images_per_s": statistics.median(rates), "min": min(rates), "max": max(rates),
            "loss": float(torch.stack(losses).mean()), **device_stats()}


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--timed", type=int, default=100)
    p.add_argument("--blocks", type=int, default=5, help="timed steps split into this many blocks; "
                   "the median block's images/s is reported, with the range beside it")
    p.add_argument("--tag", default="cpu")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    batches = [32, 128, 512] if cuda else [32]
    variants = list(VARIANTS) if cuda else [v for v in VARIANTS if v not in GPU_ONLY]
    lines = ["| preset | batch | variant | images/s | block range | × eager | mean loss | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    device = "?"
    for preset in args.presets:
        for batch in batches:
            base = None
            for variant in variants:
                m = measure(preset, batch, variant, args.warmup, args.timed, args.blocks)
                base = base or m["images_per_s"]
                device = m["device"]
                lines.append(f"| {preset} | {batch} | {variant} | {m['images_per_s']:.0f} "
                             f"| {m['min']:.0f}–{m['max']:.0f} "
                             f"| {m['images_per_s'] / base:.2f} | {m['loss']:.4g} | {m['peak_mem_mb']:.0f} |")
                print(lines[-1], flush=True)
    text = "\n".join([
        f"## Tokenizer training throughput ({args.tag})", "",
        f"Command: `python bench/tokenizer_speed.py {' '.join(sys.argv[1:])}`; machine: {device}; "
        f"date {time.strftime('%Y-%m-%d')}. "
        f"{args.warmup} warm-up + {args.timed} timed steps (forward + backward + AdamW) on "
        f"synthetic 3×32×32 images, timed in {args.blocks} blocks: images/s is the median "
        "block's, the range the slowest and fastest block's; CPU peak memory is the process's "
        "max RSS (cumulative).",
        "" if cuda else "GPU columns (batch 128 / 512, bf16) are not measured here: no GPU was "
        "available. The ≥ 5× over eager fp32 target is a GPU target.", "", *lines])
    write_section(Path(args.out), f"tokenizer-speed-{args.tag}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
