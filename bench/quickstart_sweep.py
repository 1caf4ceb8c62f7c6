"""Benchmark: where the quickstart's ten minutes buy sample quality.

    python bench/quickstart_sweep.py --track image [--variants NAME ...] [--jobs 2]
    python bench/quickstart_sweep.py --track image --report-only
    python bench/quickstart_sweep.py --track audio --decoder-noise shipped

Each variant is `hqvae pipeline configs/quickstart.yaml` for one track (the other set to
null) with a few key=value overrides; the table gives the track's wall time per stage, the
FID of its samples against decoded uniformly random codes and real held-out data (and how far
the samples are from random towards real), the class accuracy of the class-conditional samples
and the prior's held-out bits per token. Variants with a `base` reuse that variant's run
folder, so the pipeline redoes only the stages their overrides change (sampling settings:
samples and scores). `--jobs 2` runs two variant groups at once on one torch thread each
(timings are then per-thread, comparable within the table, not with the quickstart's own).
Each run is also scored by :func:`level_swap` (which level the prior cannot write, and the
FID a perfect prior would reach); `--decoder-noise VARIANT` measures :func:`decoder_noise` on
a finished run (would sampling the decoder's likelihood restore lost texture?). Results are
kept in RUNS/TRACK/FOLDER/sweep_NAME.json;
`--report-only` rewrites the table from them (and adds level swaps that are missing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import write_section  # noqa: E402  (bench/, beside this script)

# name -> (base variant or None, what changes, overrides of the track's section)
VARIANTS: dict[str, dict[str, tuple]] = {
    "image": {
        "2k": (None, "the image track before this sweep: 2,000 training images",
               ["data.num_train=2000"]),
        "2k-topk32": ("2k", "top-k 32 sampling", ["sample.top_k=32"]),
        "2k-topp0.9": ("2k", "top-p 0.9 sampling", ["sample.top_p=0.9"]),
        "20k": (None, "20,000 training images (procedural: they cost only their rendering)",
                ["data.num_train=20000"]),
        "20k-cfg2": ("20k", "classifier-free guidance 2", ["sample.cfg_scale=2.0"]),
        "20k-t0.8": ("20k", "temperature 0.8", ["sample.temperature=0.8", "sample.cfg_scale=1.0"]),
        "20k-prior3x": (None, "a prior trained 3x longer", [
            "data.num_train=20000", "prior.train.steps=3600", "prior.train.ckpt_every=1200"]),
        "20k-prior-wide": (None, "a 4-layer, 128-wide prior (4.6x the parameters)", [
            "data.num_train=20000", "prior.model.n_layer=4", "prior.model.n_embd=128"]),
        "prior-constant-lr": (None, "the prior at a constant learning rate (no warm-up, no cosine decay)", [
            "prior.train.schedule=constant", "prior.train.warmup_steps=0"]),
        "20k-K32": (None, "32 bottom codes instead of 512", [
            "data.num_train=20000", "tokenizer.model.layers.1.codebook_size=32"]),
        "20k-K8": (None, "8 bottom codes: the bottom can hold edges, not colours", [
            "data.num_train=20000", "tokenizer.model.layers.1.codebook_size=8"]),
        "20k-vqvae2": (None, "the deterministic twin: VQ-VAE-2 with code restarts", [
            "data.num_train=20000", "tokenizer.model.preset=vqvae2",
            "tokenizer.model.quantizer.restart_threshold=1.0"]),
        "rsqvae": (None, "RSQ-VAE, two residual depths on one 8x8 grid (the quickstart's earlier hierarchy)", [
            "tokenizer.model.preset=rsqvae", "tokenizer.model.depth=2",
            "tokenizer.model.quantizer.tau_decay=1.0e-3", "tokenizer.model.quantizer.tau_min=0.1"]),
        "hqvae": (None, "the mixed HQ-VAE: injected 4x4 and 8x8, then a residual 8x8",
                  ["tokenizer.model.preset=hqvae"]),
        "llama": (None, "a Llama prior (rotary positions: 'the code above' is one relative offset)",
                  ["prior.model.arch=llama"]),
        "20k-llama": (None, "the same on 20,000 images", ["data.num_train=20000", "prior.model.arch=llama"]),
        "ds2": (None, "finer codes: 16x16 bottom, 8x8 top (each bottom code a 2x2 patch)",
                ["tokenizer.model.downsample=2"]),
        "ds2-seed1": (None, "the same, tokenizer and prior seed 1", [
            "tokenizer.model.downsample=2", "tokenizer.train.seed=1", "prior.train.seed=1", "sample.seed=1"]),
        "20k-prior-wide-long": (None, "what it would take: the 4-layer 128-wide prior for 8,000 steps "
                                "(a 46-minute prior stage on one thread, 25x the shipped one)", [
            "data.num_train=20000", "prior.model.n_layer=4", "prior.model.n_embd=128",
            "prior.train.steps=8000", "prior.train.ckpt_every=2000"]),
    },
    "audio": {
        "shipped": (None, "the audio track as configured before this sweep (no guidance)", ["sample.cfg_scale=1.0"]),
        "cfg2": ("shipped", "classifier-free guidance 2", ["sample.cfg_scale=2.0"]),
        "seed1": ("shipped", "sampling seed 1", ["sample.seed=1"]),
        "cfg2-seed1": ("shipped", "guidance 2, sampling seed 1", ["sample.cfg_scale=2.0", "sample.seed=1"]),
        "seed2": ("shipped", "sampling seed 2", ["sample.seed=2"]),
        "cfg2-seed2": ("shipped", "guidance 2, sampling seed 2", ["sample.cfg_scale=2.0", "sample.seed=2"]),
        "prior2x": (None, "a prior trained 2x longer", ["prior.train.steps=2400", "prior.train.ckpt_every=1200",
                                                        "sample.cfg_scale=1.0"]),
        "8k": (None, "8,000 training clips instead of 1,000", ["data.num_train=8000", "sample.cfg_scale=1.0"]),
        "ds4": (None, "finer codes: 16x16 bottom, 8x8 top (room for a noise burst's texture)",
                ["tokenizer.model.downsample=4"]),
    },
}
OTHER = {"image": "audio", "audio": "image"}


def track_overrides(track: str, overrides: list[str]) -> list[str]:
    """Section keys -> pipeline keys: `data.x` is the tokenizer's, `prior.x`, `sample.x`... as is."""
    stage_keys = ("tokenizer.", "prior.", "sample.", "score.", "classifier.", "encode.")
    out = []
    for o in overrides:
        key = o if o.startswith(stage_keys) else f"tokenizer.{o}"
        out.append(f"{track}.{key}")
    return out


def run_variant(track: str, name: str, runs: Path, threads: int, config: str) -> dict:
    base, what, overrides = VARIANTS[track][name]
    folder = runs / track / (base or name)
    # a variant on a base is the base's settings plus its own (the folder's stages then match)
    settings = (VARIANTS[track][base][2] if base else []) + overrides
    cmd = ["hqvae", "pipeline", config, f"run_dir={folder}", f"{OTHER[track]}=null", "report=false",
           *track_overrides(track, settings)]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = runs / track / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        rc = subprocess.call(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"{track}/{name}: pipeline exit code {rc}; see {log}")
    summary = json.loads((folder / "summary.json").read_text())["tracks"][track]
    fid = json.loads((folder / track / "fid.json").read_text())
    prior = json.loads((folder / track / "prior" / "eval.json").read_text())
    tok = json.loads((folder / track / "tokenizer" / "eval" / "eval.json").read_text())
    result = {
        "name": name, "base": base, "what": what, "overrides": overrides, "threads": threads,
        "wall_s": wall,
        "seconds": {k: v["seconds"] for k, v in summary.items() if isinstance(v, dict) and "seconds" in v},
        "status": {k: v["status"] for k, v in summary.items() if isinstance(v, dict) and "status" in v},
        "fid": {k: fid[k]["fid"] for k in ("samples", "random", "real")},
        "accuracy": fid["samples"].get("accuracy"), "accuracy_real": fid["real"].get("accuracy"),
        "classes": fid.get("classes"),
        "bits": [prior["levels"][k]["bits_per_token"] for k in sorted(prior["levels"])],
        "codes_used": [la["codes_used"] for la in tok["layers"]],
        "psnr": tok["psnr"],
        "swap": level_swap(folder, track, threads) if not base else None,
    }
    (folder / f"sweep_{name}.json").write_text(json.dumps(result, indent=2))
    print(f"{track}/{name}: {wall:.0f}s, FID {result['fid']['samples']:.1f}, accuracy {result['accuracy']}")
    return result


def held_out(root: Path, threads: int, n: int | None = None):
    """A finished track's tokenizer, classifier, class names and the first ``n`` (None: all)
    examples of its tokenizer's eval split as (x, labels)."""
    import torch

    from sampling.classifier.model import Classifier
    from tokenizer.data.build import build_dataset
    from tokenizer.pretrained import Tokenizer

    torch.set_num_threads(threads)
    tok = Tokenizer.from_pretrained(root / "tokenizer")
    clf = Classifier.from_pretrained(root / "classifier")
    data = build_dataset(tok.config.data, tok.config.data.eval_split)
    items = [data[i] for i in range(len(data) if n is None else min(n, len(data)))]
    names = clf.class_names or [str(k) for k in range(clf.num_classes)]
    return tok, clf, names, torch.stack([it["x"] for it in items]), torch.tensor([it["label"] for it in items])


def level_swap(folder: Path, track: str, threads: int, n: int = 200) -> dict:
    """Which level loses the class? The track's classifier on decoded held-out codes where one
    level is drawn by the prior (given the real levels above it and the true label) and the
    others are the examples' own: a level whose swap drops the accuracy to chance is one the
    prior cannot yet write. Audio is scored as spectrograms (no Griffin-Lim)."""
    import torch

    from prior.pretrained import Prior
    from sampling.classifier.evaluate import class_accuracy
    from sampling.sampler import Sampler

    root = folder / track
    tok, clf, names, x, y = held_out(root, threads, n)
    sampler = Sampler(Prior.from_pretrained(root / "prior"), tok)
    out = {}
    with torch.no_grad():
        codes = tok.encode(x)
        trip = class_accuracy(clf, tok.decode_codes(codes).clamp(-1, 1), y)
        out["round trip"] = trip["accuracy"]
        out["round trip per class"] = dict(zip(names, trip["per_class_accuracy"]))
        for level in range(len(codes)):
            g = torch.Generator().manual_seed(level)
            drawn = sampler.sample_level(level, codes[:level], y, g, len(y)).view_as(codes[level])
            mixed = codes[:level] + [drawn] + codes[level + 1:]
            out[f"level {level} drawn"] = class_accuracy(clf, tok.decode_codes(mixed).clamp(-1, 1), y)["accuracy"]
        if track == "image":  # the FID a perfect prior would reach: reconstructions, same reference
            from sampling.metrics.distances import metrics_from_features
            from sampling.metrics.image_fid import Reference, extract_features, reference_features

            ref = json.loads((root / "fid.json").read_text())["reference"]
            real, _ = reference_features(Reference(tok.config.data, ref["split"], ref["num"]))
            recon = extract_features(tok.decode_codes(codes).clamp(-1, 1))
            out["round-trip FID"] = metrics_from_features(recon, real)["fid"]
    return out


DECODER_NOISE_SCALES = (0.0, 0.5, 1.0, 2.0)


def decoder_noise(folder: Path, track: str, threads: int, seed: int = 0) -> list[dict]:
    """Would drawing from the SQ-VAE decoder's Gaussian likelihood, instead of decoding its
    mean, give back the texture a round trip smooths away (the audio track's noise bursts)?
    The classifier on the held-out examples' reconstructions plus N(0, (s·σ)²) per value, σ²
    the decoder variance at its ML value (the held-out mean squared error, as training sets
    it), for s in DECODER_NOISE_SCALES; then with an oracle per-value σ: the local (3×3) mean
    of the example's own squared error, the most a learned per-value variance could know."""
    import torch
    import torch.nn.functional as F

    from sampling.classifier.evaluate import class_accuracy

    tok, clf, names, x, y = held_out(folder / track, threads)
    rows = []
    with torch.no_grad():
        recon = tok.decode_codes(tok.encode(x))
        err = (recon - x).pow(2)
        sigma = err.mean().sqrt()
        g = torch.Generator().manual_seed(seed)
        draws = [(f"{s:g} σ", s * sigma) for s in DECODER_NOISE_SCALES]
        draws.append(("oracle local σ", F.avg_pool2d(err, 3, 1, 1, count_include_pad=False).sqrt()))
        for what, std in draws:
            noisy = (recon + std * torch.randn(recon.shape, generator=g)).clamp(-1, 1)
            acc = class_accuracy(clf, noisy, y)
            rows.append({"noise": what, "sigma": float(sigma), "accuracy": acc["accuracy"],
                         "per_class": dict(zip(names, acc["per_class_accuracy"]))})
    return rows


def decoder_noise_table(track: str, variant: str, rows: list[dict]) -> str:
    names = list(rows[0]["per_class"])
    out = [f"## Quickstart sweep ({track}): drawing from the decoder's likelihood",
           "",
           f"Command: `python bench/quickstart_sweep.py --track {track} --decoder-noise {variant}`  ",
           f"Machine: CPU ({os.cpu_count()} cores); date {dt.date.today().isoformat()}. The {variant} run's "
           f"classifier on its {track} tokenizer's held-out reconstructions plus Gaussian noise of standard "
           f"deviation s·σ (σ = {rows[0]['sigma']:.3f}, the decoder's ML standard deviation: the held-out "
           "RMSE), and with an oracle per-value σ (the local 3×3 mean of each example's own squared "
           "error). Spectrograms, no Griffin-Lim.",
           "",
           "| noise added | class accuracy | " + " | ".join(names) + " |",
           "|---|---|" + "---|" * len(names)]
    for r in rows:
        out.append(f"| {r['noise']} | {r['accuracy']:.2f} | "
                   + " | ".join(f"{v:.2f}" for v in r["per_class"].values()) + " |")
    return "\n".join(out)


def table(track: str, results: list[dict], runs: Path, jobs: int) -> str:
    rows = ["| variant | change | stages run (s) | FID samples | random codes | real | round-trip FID | of the way | "
            "class accuracy | level swap: round trip / each level drawn, top first | prior bits/token | codes used | PSNR |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        ran = {k: s for k, s in r["seconds"].items() if r["status"].get(k) == "ran"}
        secs = " + ".join(f"{k} {s:.0f}" for k, s in ran.items())
        f = r["fid"]
        way = (f["random"] - f["samples"]) / (f["random"] - f["real"])
        acc = "–" if r["accuracy"] is None else f"{r['accuracy']:.3f}"
        over = ", ".join(f"`{o}`" for o in r["overrides"]) or "–"
        base = f" (on {r['base']})" if r["base"] else ""
        swap = r.get("swap") or {}
        recon_fid = f"{swap['round-trip FID']:.1f}" if "round-trip FID" in swap else "–"
        swap = " / ".join(f"{v:.2f}" for k, v in swap.items() if "round trip" == k or "drawn" in k) or "–"
        rows.append(f"| {r['name']}{base} | {r['what']}: {over} | {secs} | {f['samples']:.1f} | {f['random']:.1f} "
                    f"| {f['real']:.1f} | {recon_fid} | {way:.2f} | {acc} | {swap} | {' · '.join(f'{b:.2f}' for b in r['bits'])} "
                    f"| {' · '.join(map(str, r['codes_used']))} | {r['psnr']:.2f} |")
    chance = next((1 / r["classes"] for r in results if r.get("classes")), None)
    return "\n".join([
        f"## Quickstart sweep ({track})",
        "",
        f"Command: `python bench/quickstart_sweep.py --track {track} --jobs {jobs} --runs {runs}`  ",
        f"Machine: CPU ({os.cpu_count()} cores), {platform.machine()}, Python {platform.python_version()}; "
        f"date {dt.date.today().isoformat()}; torch threads per run: "
        f"{', '.join(sorted({str(r['threads']) for r in results}))}.  ",
        "Each row: configs/quickstart.yaml's " + track + " track with the overrides named (keys of the "
        "track's sections; `data.*` is the tokenizer's). 'of the way' = (random − samples) ÷ (random − real) "
        "FID; the target is ≥ 0.7. Class accuracy: the track's classifier on the class-conditional samples"
        + (f" (chance {chance:.2f})" if chance else "") + ". Stage seconds are the pipeline's own timings "
        "for the stages that ran (a variant on a base reruns only what its overrides change). Level swap "
        "(`level_swap`): class accuracy of 200 held-out examples decoded from their own codes, then with "
        "each level in turn drawn by the prior (true label, real levels above); round-trip FID: those "
        "examples' reconstructions against the same reference (images): what a perfect prior would reach.",
        "",
        *rows,
    ])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--track", choices=sorted(VARIANTS), required=True)
    p.add_argument("--variants", nargs="*", help="names (default: all of the track's, in order)")
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--runs", default="runs/quickstart_sweep")
    p.add_argument("--jobs", type=int, default=1, help="variant groups at once (each on 2 / jobs threads)")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--decoder-noise", metavar="VARIANT",
                   help="only measure decoder_noise on this variant's finished run (its own section)")
    args = p.parse_args()

    if args.decoder_noise:
        if args.decoder_noise not in VARIANTS[args.track]:
            p.error(f"unknown variant {args.decoder_noise!r}; known: {', '.join(VARIANTS[args.track])}")
        base = VARIANTS[args.track][args.decoder_noise][0] or args.decoder_noise
        rows = decoder_noise(Path(args.runs) / args.track / base, args.track, os.cpu_count() or 2)
        write_section(Path(args.out), f"quickstart-decoder-noise-{args.track}",
                      decoder_noise_table(args.track, args.decoder_noise, rows))
        print(f"wrote {args.out}")
        return 0

    variants = VARIANTS[args.track]
    names = args.variants or list(variants)
    unknown = [n for n in names if n not in variants]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; known: {', '.join(variants)}")
    runs = Path(args.runs)
    if not args.report_only:
        # a group: a variant and the ones built on it, run one after another in its folder
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(variants[n][0] or n, []).append(n)
        threads = max(1, (os.cpu_count() or 2) // args.jobs)

        def run_group(members: list[str]) -> None:
            for n in members:
                run_variant(args.track, n, runs, threads, args.config)

        with ThreadPoolExecutor(args.jobs) as pool:
            for fut in [pool.submit(run_group, g) for g in groups.values()]:
                fut.result()
    results = []
    for n in variants:
        path = runs / args.track / (variants[n][0] or n) / f"sweep_{n}.json"
        if path.is_file():
            result = json.loads(path.read_text())
            if not result["base"] and "round trip per class" not in (result.get("swap") or {}):
                # from a run made before level_swap measured all it does now
                result["swap"] = level_swap(path.parent, args.track, os.cpu_count() or 2)
                path.write_text(json.dumps(result, indent=2))
            results.append(result)
    if not results:
        print("no results yet")
        return 1
    write_section(Path(args.out), f"quickstart-sweep-{args.track}", table(args.track, results, runs, args.jobs))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
