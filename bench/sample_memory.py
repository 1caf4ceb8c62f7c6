"""Benchmark: does `hqvae sample` hold anything that grows with the number of samples?

Builds a tiny tokenizer (VQ-VAE-2 preset, 32x32 RGB, codes 4x4 and 8x8, random weights:
memory does not depend on them) and a two-level class-conditional GPT-2 prior on disk, then
runs `hqvae sample` as a subprocess at each --n (default 1,000 and 20,000; `--npz` and
`--label cycle`, so every streamed file is written) and reads the subprocess's peak resident
memory from ``os.wait4`` (its own ``ru_maxrss``, not the largest of all children). A set
drawn, decoded and written batch by batch peaks at the same memory whatever n; one held in
memory whole (decoded float32 images, their uint8 copies, the ADM batch) grows with every
sample, which the table shows as MB per 1,000 samples.

    python bench/sample_memory.py --device cpu
    python bench/sample_memory.py --device cuda --tag h100
    python bench/sample_memory.py --compare-src /tmp/old   # also an older source tree's sampler

``--compare-src DIR`` runs the same commands with DIR first on PYTHONPATH (a checkout of an
earlier commit, e.g. ``git worktree add /tmp/old <commit>``), for the before / after rows.
Writes the section ``sample-memory-TAG`` of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import write_section  # noqa: E402  (bench/, beside this script)

from sampling.sample_reader import media_files  # noqa: E402

TOKENIZER = ["model.preset=vqvae2", "model.channels=16", "model.res_channels=8", "model.res_blocks=1",
             "data.image_size=32", "model.downsample=4", "model.layers.0.codebook_size=16",
             "model.layers.1.codebook_size=32"]
PRIOR = ["data.codes=unused", "class_cond=true", "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
         "model.cond_channels=8", "model.cond_blocks=1", "model.dropout=0.0"]


def build_models(root: Path) -> Path:
    """A tokenizer run and a prior run beside it (saved as train-prior saves them); returns
    the prior run."""
    import torch

    from prior.config import load_prior_config
    from prior.pretrained import INFO, Prior, build_level, save_level
    from tokenizer.config import load_tokenizer_config
    from tokenizer.pretrained import Tokenizer

    torch.manual_seed(0)
    tok = Tokenizer.from_config(load_tokenizer_config(None, TOKENIZER))
    tok.save_pretrained(root / "tokenizer")
    cfg = load_prior_config(None, PRIOR)
    info = {"tokenizer_identity": tok.identity, "code_shapes": [list(s) for s in tok.code_shapes],
            "codebook_sizes": tok.codebook_sizes, "num_classes": 10, "class_names": None,
            "modality": tok.modality, "tokenizer_run": str(root / "tokenizer")}
    prior = Prior(cfg, info, {lv: build_level(cfg, info, lv).eval() for lv in range(len(tok.codebook_sizes))})
    run = root / "prior"
    run.mkdir()
    (run / INFO).write_text(json.dumps(info))
    for model in prior.levels.values():
        save_level(model, cfg, info, run)
    return run


def run_sample(prior_run: Path, out: Path, n: int, args, src: str | None) -> dict:
    """`hqvae sample` in a subprocess; its peak RSS (MB) and wall time."""
    cmd = [sys.executable, "-m", "hqvae.cli", "sample", str(prior_run), "--out", str(out), "--n", str(n),
           "--batch-size", str(args.batch_size), "--label", "cycle", "--npz", "--device", args.device]
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    t0 = time.perf_counter()
    with open(out.parent / f"{out.name}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=src or ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed; see {out.parent / (out.name + '.log')}")
    files = len(media_files(out, "image"))
    if files != n:
        raise SystemExit(f"{out}: {files} images, expected {n}")
    return {"n": n, "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": seconds}  # Linux: kB


def commit(tree: Path) -> str:
    """The tree's commit, and whether it holds changes beyond it."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return head + (" + uncommitted changes" if dirty else "")


def machine(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (+ {os.cpu_count()} CPU cores)"
    return f"CPU ({os.cpu_count()} cores)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 20000], help="set sizes (the first is the base)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compare-src", help="also run an older source tree's `hqvae sample` (a checkout)")
    p.add_argument("--compare-label", help="its name in the table (default: its path)")
    p.add_argument("--runs", help="folder for the models and sample sets (default: a temporary one)")
    p.add_argument("--tag", default="cpu")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = p.parse_args()

    with tempfile.TemporaryDirectory(prefix="sample-memory-") as tmp:
        root = Path(args.runs or tmp)
        root.mkdir(parents=True, exist_ok=True)
        prior_run = build_models(root / "models")
        results = {}
        trees = [(f"this tree ({commit(ROOT)})", None)]
        if args.compare_src:
            trees.append((args.compare_label or args.compare_src, args.compare_src))
        for name, src in trees:
            rows = []
            for n in args.n:
                rows.append(run_sample(prior_run, root / f"{'old' if src else 'new'}-{n}", n, args, src))
                print(name, rows[-1], flush=True)
            results[name] = rows

    lines = ["| sampler | n | batch size | peak RSS (MB) | × the first n | seconds | images/s |",
             "|---|---|---|---|---|---|---|"]
    verdicts = []
    for name, rows in results.items():
        base = rows[0]["peak_rss_mb"]
        for r in rows:
            lines.append(f"| {name} | {r['n']:,} | {args.batch_size} | {r['peak_rss_mb']:.0f} | "
                         f"{r['peak_rss_mb'] / base:.3f} | {r['seconds']:.0f} | {r['n'] / r['seconds']:.0f} |")
        ratio = rows[-1]["peak_rss_mb"] / base
        growth = (rows[-1]["peak_rss_mb"] - base) / max(rows[-1]["n"] - rows[0]["n"], 1) * 1000
        verdicts.append(f"{name}: peak at n = {rows[-1]['n']:,} is {ratio:.3f}× the peak at n = {rows[0]['n']:,}"
                        + (" (within 10 %)" if abs(ratio - 1) <= 0.10 else " (**not** within 10 %)")
                        + f"; {growth:+.1f} MB per 1,000 samples")
    command = shlex.join(["python", "bench/sample_memory.py", *sys.argv[1:]])
    text = "\n".join([
        f"## Sampling memory: peak RSS against the number of samples ({args.tag})", "",
        f"Command: `{command}`; machine: {machine(args.device)}; date {time.strftime('%Y-%m-%d')}.",
        "`hqvae sample` (a subprocess; its own peak resident memory from `os.wait4`) with a tiny "
        "tokenizer (VQ-VAE-2 preset, 32×32 RGB, codes 4×4 + 8×8) and a two-level class-conditional "
        "GPT-2 prior (2 layers, width 32), random weights; `--label cycle --npz`, so the images, "
        "codes, labels.json, grid and the ADM batch are all written. At batch size 256 both set "
        "sizes are drawn in batches of 250 rows, so the per-batch memory is the same.", "",
        *lines, "", *[f"* {v}" for v in verdicts]])
    write_section(Path(args.out), f"sample-memory-{args.tag}", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
