"""Benchmark: what a tokenizer and a prior cost at 64, 128 and 256 px, to size a GPU run.

For each resolution, in a fresh process each (so peak memory is its own):

* the tokenizer: preset ``--preset`` (default sqvae2, code grids at factors 16 and 8) on the
  scalable network (``model.net: vqgan``, ``--base-channels`` wide, multipliers 1, 1, 2, 2,
  4, attention on the coarsest grid), training steps (forward, backward, AdamW) at batch
  ``--batch``: seconds per step and peak RSS (CPU) or peak allocated memory (GPU);
* the prior of its finest level: (resolution / 8)^2 tokens (64, 256, 1024), a Llama
  backbone of ``--prior-width`` and 4 layers, conditioned on the level above through the
  conditioning network, training steps at batch ``--batch``: seconds per step, tokens/s and
  peak memory.

``--shapes-steps N`` then trains the tokenizer for N steps at 128 px on the generated
``shapes`` data (drawn at that size) through ``hqvae train-tokenizer``'s own entry point and
reports the loss at the start and the end and each layer's codes used, to show that the
network trains at that size and every layer is used.

    python bench/resolution_sweep.py --tag cpu --shapes-steps 300
    python bench/resolution_sweep.py --tag h100 --device cuda --batch 32 --base-channels 128 --prior-width 768
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import device_stats, sync, write_section  # noqa: E402

RESOLUTIONS = (64, 128, 256)


def tokenizer_overrides(args, res: int) -> list[str]:
    return [f"model.preset={args.preset}", "model.downsample=8", "model.net=vqgan", "model.channels=64",
            f"model.net_options.base_channels={args.base_channels}",
            "model.net_options.channel_mult=[1,1,2,2,4]", f"model.net_options.norm_groups={min(32, args.base_channels)}",
            f"data.image_size={res}"]


def peak_mb(device: str) -> float:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def one(kind: str, res: int, args) -> dict:
    """One measurement, in this process (run through a subprocess by main)."""
    import torch

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    from tokenizer.config import load_tokenizer_config
    from tokenizer.model import HQVAE

    cfg = load_tokenizer_config(None, tokenizer_overrides(args, res))
    if kind == "tokenizer":
        model = HQVAE(cfg.model, cfg.data.shape).to(args.device).train()
        params = sum(p.numel() for p in model.parameters())
        x = torch.rand(args.batch, *cfg.data.shape, device=args.device) * 2 - 1

        def loss():
            return model(x)["loss"]
    else:
        from prior.codes import level_column
        from prior.config import load_prior_config
        from prior.pretrained import build_level

        tok = HQVAE(cfg.model, cfg.data.shape)
        shapes = tok.code_shapes
        pcfg = load_prior_config(None, ["data.codes=unused", "class_cond=false", "model.arch=llama",
                                        f"model.n_embd={args.prior_width}", "model.n_layer=4",
                                        f"model.n_head={max(1, args.prior_width // 64)}", "model.dropout=0.0"])
        info = {"tokenizer_identity": "sweep", "code_shapes": [list(s) for s in shapes],
                "codebook_sizes": tok.codebook_sizes, "num_classes": None, "class_names": None,
                "modality": "image"}
        level = len(shapes) - 1
        model = build_level(pcfg, info, level).to(args.device).train()
        params = sum(p.numel() for p in model.parameters())
        batch = {level_column(j): torch.randint(tok.codebook_sizes[j], (args.batch, h * w), device=args.device)
                 for j, (h, w) in enumerate(shapes)}

        def loss():
            return model(batch)["loss"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16, enabled=args.bf16)

    def step():
        opt.zero_grad(set_to_none=True)
        with autocast:
            value = loss()
        value.backward()
        opt.step()

    step()  # warm-up: allocation
    sync(args.device)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync(args.device)
        times.append(time.perf_counter() - t0)
    times.sort()
    secs = times[len(times) // 2]
    out = {"kind": kind, "res": res, "params_m": params / 1e6, "step_s": secs, "peak_mb": peak_mb(args.device)}
    if kind == "prior":
        out["tokens"] = model.length
        out["tok_s"] = args.batch * model.length / secs
    return out


def shapes_run(args) -> dict:
    """N training steps at 128 px on the generated shapes, through train_tokenizer."""
    import tempfile

    from tokenizer.config import load_tokenizer_config
    from tokenizer.train import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_tokenizer_config(None, [
            f"run_dir={tmp}/run", *tokenizer_overrides(args, 128), "data.source=shapes",
            "data.num_train=4096", "data.num_eval=256", f"train.steps={args.shapes_steps}",
            f"train.batch_size={args.batch * 4}", "train.lr=3e-4", "train.log_every=10",
            "train.progress=false", "eval.max_examples=256", "eval.batch_size=32"])
        metrics = train_tokenizer(cfg)
        rows = [json.loads(s) for s in (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"], r["mse"]) for r in rows if r.get("split") == "train"]
    return {"first": losses[0], "last": losses[-1], "rmse": metrics["rmse"],
            "layers": [(la["codes_used"], la["codebook_size"], la["perplexity"]) for la in metrics["layers"]]}


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="sqvae2")
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--prior-width", type=int, default=256)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per measurement")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast")
    p.add_argument("--shapes-steps", type=int, default=0, help="also train this many steps at 128 px on shapes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tag", default="cpu")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--one", nargs=2, metavar=("KIND", "RES"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args)))
        return 0
    passthrough = sys.argv[1:]
    rows = []
    for res in RESOLUTIONS:
        for kind in ("tokenizer", "prior"):
            out = subprocess.run([sys.executable, __file__, *passthrough, "--one", kind, str(res)],
                                 capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"{kind} at {res} px failed:\n{out.stderr[-2000:]}")
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    dev = device_stats()["device"]
    lines = ["| resolution | model | params | tokens | step s | tokens/s | peak MB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        tokens, tok_s = (r["tokens"], f"{r['tok_s']:.0f}") if "tok_s" in r else ("–", "–")
        lines.append(f"| {r['res']} px | {r['kind']} | {r['params_m']:.1f} M | {tokens} | {r['step_s']:.2f} | "
                     f"{tok_s} | {r['peak_mb']:.0f} |")
    text = [f"## Resolution sweep: tokenizer and prior at 64, 128 and 256 px ({args.tag})", "",
            f"Command: `python bench/resolution_sweep.py {' '.join(sys.argv[1:])}`; machine: {dev}; "
            f"date {time.strftime('%Y-%m-%d')}.",
            f"Tokenizer: preset {args.preset}, code grids at factors 16 and 8, scalable network "
            f"{args.base_channels} x [1, 1, 2, 2, 4]. Prior: its finest level (Llama, 4 layers, width "
            f"{args.prior_width}, conditioned on the level above). Batch {args.batch}; median of "
            f"{args.steps} training steps (forward, backward, AdamW) after one warm-up step; "
            f"{'bf16 autocast' if args.bf16 else 'float32'}; each in a fresh process (peak memory: "
            f"{'allocated' if args.device.startswith('cuda') else 'resident set'}).", "", *lines]
    if args.shapes_steps:
        run = shapes_run(args)
        layers = ", ".join(f"{used} of {k} codes (perplexity {ppl:.1f})" for used, k, ppl in run["layers"])
        text += ["", f"Training at 128 px on the generated `shapes` ({args.shapes_steps} steps, batch "
                 f"{args.batch * 4}, lr 3e-4): loss {run['first'][1]:.1f} at step {run['first'][0]} → "
                 f"{run['last'][1]:.1f} at step {run['last'][0]} (MSE {run['first'][2]:.4f} → "
                 f"{run['last'][2]:.4f}); held-out RMSE {run['rmse']:.2f} (0–255); layers top first: {layers}."]
    text = "\n".join(text)
    write_section(Path(args.out), f"resolution-sweep-{args.tag}", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
