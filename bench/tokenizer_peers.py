"""Benchmark: training-step time and peak memory at 256x256 of the ``model.net: vqgan``
tokenizer beside the published code of taming-transformers' f16 VQGAN and LlamaGen's VQ-16.

Each peer is paired with our ``vqvae`` preset at factor 16 built to its size: encoder and
decoder of base width 128, channel_mult [1, 1, 2, 2, 4], 2 residual blocks, attention at
factor 16, code head width 256 (their z_channels), and the peer's codebook (taming f16:
K=1024, D=256; LlamaGen VQ-16: K=16384, D=8). Two objectives each:

* ``recon``: reconstruction only. Ours: the preset's MSE + codebook terms. taming: L1 +
  its codebook loss (the nll of its VQLPIPSWithDiscriminator with the perceptual term off).
  LlamaGen: its VQLoss's L2 + codebook terms.
* ``gan+lpips``: the discriminator on from step 0, plus LPIPS weight 1 (both peers' standard
  losses include it). Ours: ``loss.adversarial`` (PatchGAN, hinge, taming's adaptive weight
  at 0.8 / LlamaGen's fixed 0.5) and ``loss.perceptual``. taming: VQLPIPSWithDiscriminator
  (disc_start 0, disc_weight 0.8), stepped as PyTorch Lightning steps it: ``training_step``
  once per optimizer, so the autoencoder runs forward twice per step (the second time with
  its parameters frozen, as Lightning's optimizer toggling leaves them). LlamaGen: VQLoss
  (disc_start 0, disc_weight 0.5) stepped as its vq_train.py does: one forward, a generator
  and a discriminator backward, gradient clipping at 1.0, two Adam steps.

A step is forward + backward + optimizer step(s) on one fixed batch of random images;
the step time is the median of ``--timed`` steps after ``--warmup`` untimed ones. Each
(tokenizer, objective) runs in a fresh subprocess, so its peak memory is its own: on GPU
``torch.cuda.max_memory_allocated``, on CPU the subprocess's max RSS (which includes the
interpreter and torch, a few hundred MB).

The peers' code is not part of this repository; clone it into ``.peers/`` (ignored by git)::

    git clone https://github.com/CompVis/taming-transformers .peers/taming
    git -C .peers/taming checkout 3ba01b241669f5ade541ce990f7650a3b8f65318
    git clone https://github.com/FoundationVision/LlamaGen .peers/llamagen
    git -C .peers/llamagen checkout ce98ec41803a74a90ce68c40ababa9eaeffeb4ec

    python bench/tokenizer_peers.py --threads 1                       # CPU, batch 2
    python bench/tokenizer_peers.py --device cuda --batch 4 --dtype bf16

Run-time shims, so their code runs offline and without the packages it imports but
does not need for a training step (none changes the computation of a step):

* ``torchvision``: replaced by a module whose ``models.vgg16(pretrained=...)`` returns
  VGG16's conv stack with random weights (the same random state our LPIPS gets from
  ``loss.perceptual.vgg_path``): no download, and torchvision need not import. Every
  LPIPS here has a random backbone, which changes its values, not its cost.
* ``pytorch_lightning``: ``LightningModule`` is ``torch.nn.Module`` (taming's VQModel
  subclasses it; the step loop here does what Lightning's would).
* ``main`` (taming's training script, imported by its VQModel for
  ``instantiate_from_config``): a module with that one function.
* taming's LPIPS heads: read from the installed ``lpips`` package (the same file, same
  md5, that taming would download).
* LlamaGen's code-usage buffer (an ``nn.Parameter`` registered as a buffer) is detached
  after construction, as moving the model to a GPU does: on CPU its in-place update
  otherwise fails.
* LlamaGen's code lives in a package named ``tokenizer``, as ours does: its subprocess maps
  the name onto ``.peers/llamagen/tokenizer`` and never imports ours.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sections import write_section  # noqa: E402

PEERS = {
    # name: (folder under --peers-dir, file that must be there, repository, commit measured)
    "taming": ("taming", "taming/models/vqgan.py", "CompVis/taming-transformers",
               "3ba01b241669f5ade541ce990f7650a3b8f65318"),
    "llamagen": ("llamagen", "tokenizer/tokenizer_image/vq_model.py", "FoundationVision/LlamaGen",
                 "ce98ec41803a74a90ce68c40ababa9eaeffeb4ec"),
}
# each peer, the tokenizer of ours sized to it, and the settings of its standard loss
PAIRS = {
    "taming": {"label": "taming VQGAN f16", "ours": "ours f16 K=1024 D=256", "K": 1024, "D": 256,
               "disc_weight": 0.8, "adaptive": True, "clip": 0.0},
    "llamagen": {"label": "LlamaGen VQ-16", "ours": "ours f16 K=16384 D=8", "K": 16384, "D": 8,
                 "disc_weight": 0.5, "adaptive": False, "clip": 1.0},
}
OBJECTIVES = ("recon", "gan+lpips")
SIZE = 256


def missing_peers(peers_dir: Path, names) -> str | None:
    """One line naming each peer folder that is absent and how to get it, or None."""
    missing = [n for n in names if not (peers_dir / PEERS[n][0] / PEERS[n][1]).is_file()]
    if not missing:
        return None
    how = "; ".join(f"git clone https://github.com/{PEERS[n][2]} {peers_dir / PEERS[n][0]} && "
                    f"git -C {peers_dir / PEERS[n][0]} checkout {PEERS[n][3]}" for n in missing)
    return (f"tokenizer_peers: the peers' code is missing: {', '.join(str(peers_dir / PEERS[n][0]) for n in missing)} "
            f"(no {', '.join(PEERS[n][1] for n in missing)}); fetch it with: {how}")


# ---------------------------------------------------------------------------------------
# run-time shims for the peers' imports


def install_shims(vgg_path: str) -> None:
    import torch
    from torch import nn

    def vgg16(pretrained: bool = False, **_):
        layers, c_in = [], 3
        for item in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"):
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c_in, item, 3, padding=1), nn.ReLU(inplace=True)]
                c_in = item
        net = nn.Module()
        net.features = nn.Sequential(*layers)
        net.load_state_dict(torch.load(vgg_path, weights_only=True))
        return net

    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.vgg16 = vgg16
    pl = types.ModuleType("pytorch_lightning")
    pl.LightningModule = nn.Module

    def instantiate_from_config(config):
        module, cls = config["target"].rsplit(".", 1)
        return getattr(importlib.import_module(module), cls)(**config.get("params", {}))

    main = types.ModuleType("main")
    main.instantiate_from_config = instantiate_from_config
    sys.modules.update({"torchvision": tv, "torchvision.models": tv.models, "pytorch_lightning": pl,
                        "main": main})


def lpips_heads() -> str:
    spec = importlib.util.find_spec("lpips")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("tokenizer_peers: the LPIPS heads come from the lpips package: pip install lpips")
    return str(Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / "vgg.pth")


def count(module) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


# ---------------------------------------------------------------------------------------
# one (tokenizer, objective): built and stepped inside its own subprocess


def build_ours(pair: dict, objective: str, vgg_path: str, total_steps: int):
    from engine.optim import build_optimizer
    from tokenizer.config import load_tokenizer_config
    from tokenizer.pretrained import Tokenizer
    from tokenizer.train import perceptual_network, training_objective

    over = ["model.preset=vqvae", "model.net=vqgan", "model.downsample=16", f"data.image_size={SIZE}",
            f"model.layers.0.codebook_size={pair['K']}", f"model.layers.0.codebook_dim={pair['D']}",
            "model.channels=256", "model.net_options.base_channels=128",
            "model.net_options.channel_mult=[1,1,2,2,4]", "model.net_options.num_res_blocks=2",
            "model.net_options.attn_factors=[16]", f"train.clip_grad={pair['clip']}"]
    if objective == "gan+lpips":
        over += ["loss.perceptual.weight=1.0", f"loss.perceptual.vgg_path={vgg_path}",
                 f"loss.adversarial.weight={pair['disc_weight']}",
                 f"loss.adversarial.adaptive_weight={str(pair['adaptive']).lower()}"]
    cfg = load_tokenizer_config(None, over)
    model = Tokenizer.from_config(cfg).model
    trained = training_objective(model, cfg, perceptual_network(cfg))
    disc = getattr(trained, "discriminator", None)
    return trained, count(model), count(disc), cfg.train.clip_grad, build_optimizer(trained, cfg.train, total_steps)[0]


def run_ours(pair, objective, vgg_path, device, total_steps):
    import torch

    trained, params, disc_params, clip, opt = build_ours(pair, objective, vgg_path, total_steps)
    trained.to(device).train()
    step_t = torch.zeros((), dtype=torch.long, device=device)

    def step(i: int, x):
        step_t.fill_(i)
        trained(x, step=step_t)["loss"].backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(trained.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, params, disc_params


def run_taming(peers_dir: Path, objective: str, device):
    import torch

    sys.path.insert(0, str(peers_dir / "taming"))
    import taming.modules.losses.lpips as taming_lpips

    taming_lpips.get_ckpt_path = lambda *a, **k: lpips_heads()
    from taming.models.vqgan import VQModel

    ddconfig = {"double_z": False, "z_channels": 256, "resolution": SIZE, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 1, 2, 2, 4], "num_res_blocks": 2, "attn_resolutions": [16],
                "dropout": 0.0}
    gan = objective == "gan+lpips"
    loss = ({"target": "taming.modules.losses.vqperceptual.VQLPIPSWithDiscriminator",
             "params": {"disc_conditional": False, "disc_in_channels": 3, "disc_start": 0,
                        "disc_weight": PAIRS["taming"]["disc_weight"], "codebook_weight": 1.0}}
            if gan else {"target": "torch.nn.Identity"})
    model = VQModel(ddconfig=ddconfig, lossconfig=loss, n_embed=PAIRS["taming"]["K"],
                    embed_dim=PAIRS["taming"]["D"]).to(device).train()
    ae = [p for name, p in model.named_parameters() if not name.startswith("loss.")]
    opt_ae = torch.optim.Adam(ae, lr=4.5e-6, betas=(0.5, 0.9))  # its configure_optimizers
    disc = model.loss.discriminator if gan else None
    opt_disc = torch.optim.Adam(disc.parameters(), lr=4.5e-6, betas=(0.5, 0.9)) if gan else None

    def step(i: int, x):
        xrec, qloss = model(x)
        if not gan:
            loss = torch.abs(x - xrec).mean() + qloss.mean()
        else:  # Lightning: training_step(optimizer_idx=0), then (optimizer_idx=1) afresh
            loss, _ = model.loss(qloss, x, xrec, 0, i, last_layer=model.get_last_layer(), split="train")
        loss.backward()
        opt_ae.step()
        opt_ae.zero_grad(set_to_none=True)
        if gan:
            for p in ae:  # Lightning's toggle_optimizer: the other optimizer's parameters frozen
                p.requires_grad_(False)
            xrec, qloss = model(x)
            d_loss, _ = model.loss(qloss, x, xrec, 1, i, last_layer=model.get_last_layer(), split="train")
            d_loss.backward()
            opt_disc.step()
            opt_disc.zero_grad(set_to_none=True)
            for p in ae:
                p.requires_grad_(True)

    return step, count(model) - count(model.loss), count(disc)


def run_llamagen(peers_dir: Path, objective: str, device):
    import logging

    import torch

    # their package is named `tokenizer`, as ours: bind the name to their folder here
    pkg = types.ModuleType("tokenizer")
    pkg.__path__ = [str(peers_dir / "llamagen" / "tokenizer")]
    sys.modules["tokenizer"] = pkg
    from tokenizer.tokenizer_image.vq_loss import VQLoss
    from tokenizer.tokenizer_image.vq_model import VQ_16

    pair = PAIRS["llamagen"]
    model = VQ_16(codebook_size=pair["K"], codebook_embed_dim=pair["D"]).to(device).train()
    # its code-usage buffer is registered as an nn.Parameter; `.to('cuda')` turns it into a
    # plain tensor, on CPU it stays a leaf that requires grad and its in-place update fails
    model.quantize.codebook_used = model.quantize.codebook_used.detach()
    gan = objective == "gan+lpips"
    # vq_train.py's defaults; 'recon' builds no VQLoss (its LPIPS and discriminator): its
    # L2 + codebook terms are written out below
    vq_loss = None if not gan else VQLoss(disc_start=0, disc_weight=pair["disc_weight"], disc_type="patchgan", disc_loss="hinge",
                     gen_adv_loss="hinge", image_size=SIZE, perceptual_weight=1.0, reconstruction_weight=1.0,
                     reconstruction_loss="l2", codebook_weight=1.0).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    opt_disc = torch.optim.Adam(vq_loss.discriminator.parameters(), lr=1e-4, betas=(0.9, 0.95)) if gan else None
    logger = logging.getLogger("llamagen")

    def step(i: int, x):
        recons, codebook_loss = model(x)
        if gan:
            loss = vq_loss(codebook_loss, x, recons, optimizer_idx=0, global_step=i + 1,
                           last_layer=model.decoder.last_layer, logger=logger, log_every=10**9)
        else:
            loss = (torch.nn.functional.mse_loss(x, recons)
                    + codebook_loss[0] + codebook_loss[1] + codebook_loss[2])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), pair["clip"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        if gan:
            d_loss = vq_loss(codebook_loss, x, recons, optimizer_idx=1, global_step=i + 1,
                             logger=logger, log_every=10**9)
            d_loss.backward()
            torch.nn.utils.clip_grad_norm_(vq_loss.discriminator.parameters(), pair["clip"])
            opt_disc.step()
            opt_disc.zero_grad(set_to_none=True)

    return step, count(model), count(vq_loss.discriminator) if gan else 0


def worker(spec: dict) -> dict:
    import resource

    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if spec["tokenizer"] != "ours":
        install_shims(spec["vgg_path"])
    torch.manual_seed(0)
    total = spec["warmup"] + spec["timed"]
    if spec["tokenizer"] == "ours":
        sys.path.insert(0, str(ROOT))
        step, params, disc = run_ours(PAIRS[spec["pair"]], spec["objective"], spec["vgg_path"], device, total)
    elif spec["tokenizer"] == "taming":
        step, params, disc = run_taming(Path(spec["peers_dir"]), spec["objective"], device)
    else:
        step, params, disc = run_llamagen(Path(spec["peers_dir"]), spec["objective"], device)
    cuda = device.type == "cuda"
    x = torch.rand(spec["batch"], 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(device) * 2 - 1
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(total):
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["dtype"] == "bf16"):
            step(i, x)
        if cuda:
            torch.cuda.synchronize()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated() / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"params": params, "disc_params": disc, "step_s": statistics.median(times),
            "min_s": min(times), "max_s": max(times), "peak_mb": peak,
            "device": torch.cuda.get_device_name() if cuda else f"CPU ({os.cpu_count()} cores)"}


def spawn(spec: dict) -> dict:
    """Run one configuration in a fresh interpreter; its last stdout line is the result."""
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, cwd=str(ROOT))
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------


def aggregate(label: str, objective: str, runs: list[dict], base_runs: list[dict] | None) -> dict:
    """One table row from a tokenizer's runs, one per round: step time the median of the
    rounds' medians, and its ratio to ours computed within each round (both ran under the
    same load), reported as the median and range over the rounds."""
    row = {"label": label, "objective": objective}
    errors = [m["error"] for m in runs if "error" in m]
    if errors:
        return row | {"error": errors[0]}
    steps = [m["step_s"] for m in runs]
    row |= {"params": runs[0]["params"], "disc_params": runs[0]["disc_params"],
            "step_s": statistics.median(steps), "min_s": min(steps), "max_s": max(steps),
            "peak_mb": max(m["peak_mb"] for m in runs), "rounds": len(runs)}
    if base_runs is None:
        return row | {"ratio": 1.0, "ratio_lo": 1.0, "ratio_hi": 1.0, "mem_ratio": 1.0, "param_ratio": 1.0}
    if any("error" in m for m in base_runs):
        return row
    ratios = [m["step_s"] / b["step_s"] for m, b in zip(runs, base_runs)]
    return row | {"ratio": statistics.median(ratios), "ratio_lo": min(ratios), "ratio_hi": max(ratios),
                  "mem_ratio": row["peak_mb"] / max(b["peak_mb"] for b in base_runs),
                  "param_ratio": row["params"] / base_runs[0]["params"]}


def table(rows: list[dict]) -> list[str]:
    lines = ["| tokenizer | params (enc+quant+dec) | discriminator | objective | step time (s) | "
             "range (s) | × ours (median of rounds) | × ours, range | peak memory (MB) | × ours |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['label']} | – | – | {r['objective']} | failed: {r['error']} | | | | | |")
            continue
        ok = "ratio" in r
        spread = f"{r['ratio_lo']:.2f}–{r['ratio_hi']:.2f}" if ok else "–"
        lines.append(
            f"| {r['label']} | {r['params'] / 1e6:.1f} M | {r['disc_params'] / 1e6:.2f} M | {r['objective']} "
            f"| {r['step_s']:.2f} | {r['min_s']:.2f}–{r['max_s']:.2f} "
            f"| {r['ratio'] if ok else float('nan'):.2f} "
            f"| {spread} "
            f"| {r['peak_mb']:.0f} | {r['mem_ratio'] if ok else float('nan'):.2f} |")
    return lines


def notes(rows: list[dict], cuda: bool, note: str) -> list[str]:
    """What the table shows (the ratios per pair and objective) and what it leaves out."""
    out = []
    for r in rows:
        if r["label"].startswith("ours") or "ratio" not in r:
            continue
        out.append(f"- {r['label']}, {r['objective']}: its step takes {r['ratio']:.2f}× ours "
                   f"(rounds: {r['ratio_lo']:.2f}–{r['ratio_hi']:.2f}) and {r['mem_ratio']:.2f}× our peak "
                   f"memory, at {r['param_ratio']:.3f}× our parameters.")
    out += [
        "- Same cost, different objective: ours minimises MSE where taming's uses L1, and our "
        "VQ codebook is not L2-normalised where LlamaGen's is (a normalisation of 16384×8 "
        "codes, negligible beside the networks). taming's gan+lpips row includes Lightning's "
        "second autoencoder forward (without gradients to the autoencoder); LlamaGen's and "
        "ours run it once.",
        "- Not measured: data loading, EMA weights, multi-GPU, compiled models.",
    ]
    if not cuda:
        out.append("- GPU rows are not measured here (no GPU): on a GPU run "
                   "`python bench/tokenizer_peers.py --device cuda --batch 4 --timed 20` and the same "
                   "with `--dtype bf16 --tag cuda-bf16`.")
    if note:
        out.append(f"- {note}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peers-dir", default=str(ROOT / ".peers"))
    p.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS))
    p.add_argument("--objectives", nargs="+", choices=OBJECTIVES, default=list(OBJECTIVES))
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast (GPU)")
    p.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 4 on GPU")
    p.add_argument("--warmup", type=int, default=None, help="default: 1 on CPU, 5 on GPU")
    p.add_argument("--timed", type=int, default=None, help="default: 3 on CPU, 20 on GPU")
    p.add_argument("--threads", type=int, default=0, help="torch threads per subprocess (0: torch's default)")
    p.add_argument("--rounds", type=int, default=3,
                   help="repetitions of every (ours, peer) pair, interleaved; ratios are taken within a round")
    p.add_argument("--tag", default=None, help="section tag (default: the device type)")
    p.add_argument("--note", default="", help="a sentence about the run added to the notes "
                   "(e.g. other load on the machine)")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    peers_dir = Path(args.peers_dir).resolve()
    error = missing_peers(peers_dir, args.peers)
    if error:
        print(error, file=sys.stderr)
        return 2

    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.device(device).type == "cuda"
    if args.dtype == "bf16" and not cuda:
        print("tokenizer_peers: --dtype bf16 is for --device cuda", file=sys.stderr)
        return 2
    batch = args.batch or (4 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    timed = args.timed or (20 if cuda else 3)

    sys.path.insert(0, str(ROOT))
    from tokenizer.losses import random_vgg16_state

    runs: dict[tuple[str, str, str], list[dict]] = {}
    machine = "?"
    with tempfile.TemporaryDirectory() as tmp:
        vgg_path = str(Path(tmp) / "vgg16_random.pth")
        torch.save(random_vgg16_state(), vgg_path)
        for r in range(args.rounds):
            for peer in args.peers:
                for objective in args.objectives:
                    # each round runs the pair back to back, ours first in even rounds and
                    # the peer first in odd ones, so a drift in the machine's load falls on both
                    for tok in ("ours", peer) if r % 2 == 0 else (peer, "ours"):
                        spec = {"tokenizer": tok, "pair": peer, "objective": objective, "device": device,
                                "dtype": args.dtype, "batch": batch, "warmup": warmup, "timed": timed,
                                "threads": args.threads, "vgg_path": vgg_path, "peers_dir": str(peers_dir)}
                        m = spawn(spec)
                        machine = m.get("device", machine)
                        runs.setdefault((peer, objective, tok), []).append(m)
                        shown = f"{m['step_s']:.2f} s" if "error" not in m else f"failed: {m['error']}"
                        print(f"round {r + 1}/{args.rounds} {tok} ({peer}, {objective}): {shown}", flush=True)
    rows = []
    for peer in args.peers:
        for objective in args.objectives:
            ours = runs[(peer, objective, "ours")]
            rows.append(aggregate(PAIRS[peer]["ours"], objective, ours, None))
            rows.append(aggregate(PAIRS[peer]["label"], objective, runs[(peer, objective, peer)], ours))

    command = "python bench/tokenizer_peers.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    threads = f"{args.threads} torch thread(s) per subprocess" if args.threads else "torch's default threads"
    text = "\n".join([
        f"## Tokenizers beside their peers at 256×256 ({args.tag or torch.device(device).type})", "",
        f"Command: `{command.strip()}`; machine: {machine}, {threads}; date {time.strftime('%Y-%m-%d')}. "
        f"Batch {batch} of random 3×{SIZE}×{SIZE} images, {args.dtype}"
        f"{' autocast' if args.dtype == 'bf16' else ''}; {warmup} warm-up + {timed} timed steps per run "
        f"(forward + backward + optimizer steps), {args.rounds} rounds: each round runs every pair back to "
        "back (ours first in odd rounds, the peer first in even ones). Step time: the median over the "
        "rounds of each run's median step, range the fastest and slowest round; × ours: the ratio "
        "within each round, median and range over the rounds. Each run was a fresh subprocess; peak memory is "
        + ("`torch.cuda.max_memory_allocated`." if cuda else
           "that subprocess's max RSS (interpreter and torch included)."),
        f"Peers: CompVis/taming-transformers at {PEERS['taming'][3][:7]}, FoundationVision/LlamaGen "
        f"at {PEERS['llamagen'][3][:7]}, run from `.peers/` with the shims the script's docstring "
        "lists. Every LPIPS backbone (ours and theirs) had random VGG16 weights: the cost of a "
        "step is that of the pretrained network, its values are not. Ratios are to the ours row "
        "above each peer row (same objective, same codebook).", "",
        *table(rows), "", *notes(rows, cuda, args.note)])
    write_section(Path(args.out), f"tokenizer-peers-{args.tag or torch.device(device).type}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
