"""Benchmark: the sampler's own decode loop against stock transformers ``generate()``.

Tokens/s of drawing top-level codes (level 0: no per-position conditioning, so the very same
weights also run as a stock ``GPT2LMHeadModel`` / ``LlamaForCausalLM``, see prior/stock.py):

* ours: ``cache="none"`` (re-run the prefix each step), ``"dynamic"`` (transformers'
  growing cache), ``"static"`` (preallocated, written in place), ``"static"`` +
  ``compile=True`` (+ CUDA graphs on a GPU);
* stock ``generate()`` with its default dynamic cache and with ``cache_implementation="static"``.

Models: ``gpt2-25m``, an unconditional one-level prior with a 25.6 M-parameter GPT-2
(n_embd 512, 8 layers, 8 heads, codebook 512) over ``--grid`` x ``--grid`` tokens (16: 256
tokens, a 256-px image at factor 16; 32: 1024 tokens, factor 8; random weights: speed does
not depend on them); and the top level of any trained prior passed with ``--prior``.
``--train`` adds the training throughput of the same prior at each length (forward +
backward + AdamW, tokens/s), with and without gradient checkpointing.

Sampling at temperature 1 from the same seed: ours draws identical codes with every
cache (checked); ``generate()`` draws with its own RNG, so its codes are compared greedily
in tests/test_sampler.py instead.

    python bench/prior_decode_speed.py --tag cpu --prior runs/bench_priors/cifar10_sqvae2_tau/prior
    python bench/prior_decode_speed.py --tag cpu-long --grid 16 32 --n 4 --n-none 0 --train
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import device_stats, sync, write_section  # noqa: E402


def synthetic_prior(device: str, grid: int = 16):
    """The 25.6 M-parameter GPT-2 prior: one level, grid x grid codes, K = 512, unconditional."""
    import torch

    from prior.config import load_prior_config
    from prior.pretrained import Prior, build_level

    cfg = load_prior_config(None, ["data.codes=unused", "class_cond=false", "model.arch=gpt2",
                                   "model.n_embd=512", "model.n_layer=8", "model.n_head=8",
                                   "model.dropout=0.0"])
    info = {"tokenizer_identity": "synthetic", "code_shapes": [[grid, grid]], "codebook_sizes": [512],
            "num_classes": None, "class_names": None, "modality": "image"}
    torch.manual_seed(0)
    return Prior(cfg, info, {0: build_level(cfg, info, 0).eval().to(device)})


def measure(name: str, prior, args) -> list[dict]:
    import torch

    from prior.stock import stock_causal_lm, stock_generate
    from sampling.sampler import Sampler

    model = prior.levels[0].eval()
    cuda = args.device.startswith("cuda")
    n = args.n
    labels = (torch.arange(n) % prior.num_classes).to(args.device) if prior.num_classes else None
    params = sum(p.numel() for p in model.parameters())
    rows, codes = [], {}

    def timed(fn, reps: int) -> tuple[float, object]:
        out = fn()  # warm-up (compilation, allocation)
        sync(args.device)
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn()
        sync(args.device)
        return (time.perf_counter() - t0) / reps, out

    ours = [("none", dict(cache="none")), ("dynamic", dict(cache="dynamic")),
            ("static", dict(cache="static")), ("static + compile", dict(cache="static", compile=True, compile_mode="default"))]
    if cuda:
        ours.append(("static + compile (CUDA graphs)",
                     dict(cache="static", compile=True, compile_mode="reduce-overhead")))
    for variant, kwargs in ours:
        if variant == "none" and args.n_none == 0:
            continue
        sampler = Sampler(prior, device=args.device, **kwargs)
        rows_n = args.n_none if variant == "none" else n  # re-running the prefix is slow
        t_first = time.perf_counter()

        def run(sampler=sampler, rows_n=rows_n):
            gen = torch.Generator(args.device).manual_seed(0)
            return sampler.sample_level(0, [], None if labels is None else labels[:rows_n], gen, rows_n)

        run()
        first = time.perf_counter() - t_first
        secs, out = timed(run, args.reps)
        codes[variant] = out.cpu()
        rows.append({"model": name, "params_m": params / 1e6, "tokens": model.length, "n": rows_n,
                     "variant": f"ours: {variant}", "tok_s": rows_n * model.length / secs,
                     "first_call_s": first})
        print(rows[-1], flush=True)
    lm = stock_causal_lm(model)
    for cache in ("dynamic", "static"):
        torch.manual_seed(0)
        t_first = time.perf_counter()
        stock_generate(lm, model, n, labels, cache=cache)
        first = time.perf_counter() - t_first
        secs, _ = timed(lambda c=cache: stock_generate(lm, model, n, labels, cache=c), args.reps)
        rows.append({"model": name, "params_m": params / 1e6, "tokens": model.length, "n": n,
                     "variant": f"stock generate(), {cache} cache", "tok_s": n * model.length / secs,
                     "first_call_s": first})
        print(rows[-1], flush=True)
    base = codes.get("dynamic")
    same = all(torch.equal(c, base) for v, c in codes.items() if v != "none")
    if "none" in codes:  # drawn at its own batch size: compare with the dynamic cache at that size
        k = len(codes["none"])
        ref = Sampler(prior, device=args.device, cache="dynamic").sample_level(
            0, [], None if labels is None else labels[:k], torch.Generator(args.device).manual_seed(0), k)
        same = same and torch.equal(codes["none"], ref.cpu())
    stock = next(r["tok_s"] for r in rows if r["variant"] == "stock generate(), dynamic cache")
    for r in rows:
        r["vs_generate"] = r["tok_s"] / stock
        r["same_codes"] = same if r["variant"].startswith("ours") else None
    return rows


def measure_training(name: str, prior, args) -> list[dict]:
    """Training tokens/s of the prior's top level: forward, backward and an AdamW step on
    random codes, after one warm-up step; with and without gradient checkpointing."""
    import torch

    from prior.codes import level_column

    model = prior.levels[0]
    rows = []
    for checkpointing in (False, True):
        model.train().set_gradient_checkpointing(checkpointing)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        codes = torch.randint(model.codebook_size, (args.n, model.length), device=args.device)
        batch = {level_column(0): codes}

        def step(opt=opt, batch=batch):
            opt.zero_grad(set_to_none=True)
            model(batch)["loss"].backward()
            opt.step()

        step()
        sync(args.device)
        t0 = time.perf_counter()
        for _ in range(args.reps):
            step()
        sync(args.device)
        secs = (time.perf_counter() - t0) / args.reps
        rows.append({"model": name, "tokens": model.length, "n": args.n,
                     "variant": "gradient checkpointing" if checkpointing else "plain",
                     "tok_s": args.n * model.length / secs})
        print(rows[-1], flush=True)
    model.set_gradient_checkpointing(False)
    model.eval()
    return rows


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prior", nargs="*", default=[], help="trained prior runs (their top level is timed)")
    p.add_argument("--no-synthetic", action="store_true", help="skip the 25.6 M GPT-2 model")
    p.add_argument("--n", type=int, default=16, help="sequences per batch")
    p.add_argument("--reps", type=int, default=1, help="timed repetitions after the warm-up call")
    p.add_argument("--n-none", type=int, default=2,
                   help="sequences for the no-cache variant (re-runs the prefix: slow); 0 skips it")
    p.add_argument("--grid", type=int, nargs="+", default=[16],
                   help="code grid sides of the synthetic prior (16: 256 tokens, 32: 1024 tokens)")
    p.add_argument("--train", action="store_true", help="also time training steps at each length")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tag", default="cpu")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()

    from prior.pretrained import Prior

    models = [] if args.no_synthetic else [
        ("gpt2-25m (random weights)", synthetic_prior(args.device, grid)) for grid in args.grid]
    models += [(Path(r).parent.name or r, Prior.from_pretrained(r, device=args.device))
               for r in args.prior]
    rows = [row for name, prior in models for row in measure(name, prior, args)]
    dev = device_stats()["device"]
    lines = ["| model | params | tokens | batch | variant | tokens/s | × generate() | first call s | same codes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        same = "" if r["same_codes"] is None else ("yes" if r["same_codes"] else "**no**")
        lines.append(f"| {r['model']} | {r['params_m']:.1f} M | {r['tokens']} | {r['n']} | {r['variant']} "
                     f"| {r['tok_s']:.0f} | {r['vs_generate']:.2f} | {r['first_call_s']:.1f} | {same} |")
    text = "\n".join([
        f"## Prior decoding: our loop vs stock generate() ({args.tag})", "",
        f"Command: `python bench/prior_decode_speed.py {' '.join(sys.argv[1:])}`; machine: {dev}; "
        f"date {time.strftime('%Y-%m-%d')}.",
        "Top-level codes, temperature 1; tokens/s after one warm-up call (the first call's time, "
        "compilation included, is its own column). 'same codes': every cache of ours drew the "
        "identical codes from one seed. × generate() is against stock generate() with its default "
        "(dynamic) cache on the same weights.", "", *lines])
    if args.train:
        train_rows = [row for name, prior in models for row in measure_training(name, prior, args)]
        text += "\n\nTraining (forward, backward, AdamW step; tokens/s after one warm-up step):\n\n" + "\n".join(
            ["| model | tokens | batch | variant | tokens/s |", "|---|---|---|---|---|"]
            + [f"| {r['model']} | {r['tokens']} | {r['n']} | {r['variant']} | {r['tok_s']:.0f} |" for r in train_rows])
    write_section(Path(args.out), f"prior-decode-{args.tag}", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
