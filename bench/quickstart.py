"""Benchmark: the quickstart, end to end, timed — the promise of README's first command.

    python bench/quickstart.py [--run-dir runs/quickstart_bench] [--out docs/benchmarks.md]

Runs `hqvae pipeline configs/quickstart.yaml` from scratch in a fresh run directory with an
empty FID weight cache (so the one-off Inception conversion is inside the time, as on a new
machine), then writes the wall time, per-stage seconds and the scores — samples against
uniformly random codes and against real held-out data — into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sections import write_section  # noqa: E402  (bench/, beside this script)


def track_line(run: Path, track: str) -> str:
    """The tokenizer, class accuracy and prior numbers of one track, from its run folder."""
    fid = json.loads((run / track / "fid.json").read_text())
    ev = json.loads((run / track / "tokenizer" / "eval" / "eval.json").read_text())
    layers = ", ".join(f"layer {i}: perplexity {la['perplexity']:.1f}, {la['codes_used']}/{la['codebook_size']} codes"
                       for i, la in enumerate(ev["layers"]))
    line = f"- {track}: tokenizer PSNR {ev['psnr']:.2f} dB ({layers})"
    if "accuracy" in fid["samples"]:
        # the real data's accuracy is fid.json's, scored as the samples are (audio: after
        # the same Griffin-Lim round trip), not the classifier's own held-out evaluation
        notes = [f"chance {1 / fid['classes']:.2f}"] if "classes" in fid else []
        if "accuracy" in fid["real"]:
            how = "clips through the same Griffin-Lim round trip" if track == "audio" else "images"
            notes.append(f"on real held-out {how} {fid['real']['accuracy']:.2f}")
        line += (f"; the classifier's accuracy on the class-conditional samples {fid['samples']['accuracy']:.2f}"
                 + (f" ({'; '.join(notes)})" if notes else ""))
    prior = json.loads((run / track / "prior" / "eval.json").read_text())
    bits = " · ".join(f"{prior['levels'][k]['bits_per_token']:.2f}/{prior['levels'][k]['uniform_bits']:.0f}"
                      for k in sorted(prior["levels"]))
    return line + f"; prior held-out bits/token {bits}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/quickstart.yaml")
    p.add_argument("--run-dir", default="runs/quickstart_bench")
    p.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    p.add_argument("--keep-cache", action="store_true", help="reuse ~/.cache/hqvae (skip the conversion)")
    args = p.parse_args()

    run = Path(args.run_dir)
    shutil.rmtree(run, ignore_errors=True)
    env = dict(os.environ)
    cache = None
    if not args.keep_cache:
        cache = tempfile.mkdtemp(prefix="hqvae-cache-")
        env["HQVAE_CACHE"] = cache
    cmd = ["hqvae", "pipeline", args.config, f"run_dir={run}"]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, env=env)
    wall = time.perf_counter() - t0
    if cache:
        shutil.rmtree(cache, ignore_errors=True)
    if rc != 0:
        print(f"pipeline failed with exit code {rc}")
        return rc
    summary = json.loads((run / "summary.json").read_text())

    rows = ["| track | stage | seconds |", "|---|---|---|"]
    for track, stages in summary["tracks"].items():
        for stage, info in stages.items():
            if isinstance(info, dict) and "seconds" in info:
                rows.append(f"| {track} | {stage} | {info['seconds']:.1f} |")
    scores = ["| track | metric | samples | uniformly random codes | real held-out data | random ÷ samples |",
              "|---|---|---|---|---|---|"]
    extra = []
    for track in summary["tracks"]:
        fid = json.loads((run / track / "fid.json").read_text())
        metric = "audio FID (classifier)" if track == "audio" else "FID (Inception)"
        scores.append(f"| {track} | {metric} | {fid['samples']['fid']:.2f} | {fid['random']['fid']:.2f} "
                      f"| {fid['real']['fid']:.2f} | {fid['random']['fid'] / fid['samples']['fid']:.1f}× |")
        extra.append(track_line(run, track))
    n = {t: json.loads((run / t / "fid.json").read_text())["samples"]["num"] for t in summary["tracks"]}
    refs = {t: json.loads((run / t / "fid.json").read_text())["reference"]["num"] for t in summary["tracks"]}
    text = "\n".join([
        "## Quickstart",
        "",
        f"Command: `python bench/quickstart.py` (runs `hqvae pipeline {args.config}` from scratch, "
        "with an empty FID weight cache so the one-off Inception conversion is included)  ",
        f"Machine: CPU ({os.cpu_count()} cores), {platform.machine()}, Python {platform.python_version()}; "
        f"date {dt.date.today().isoformat()}.  ",
        f"**Wall time: {wall / 60:.1f} min** (target: ≤ 10 min on 2 CPU cores).",
        "",
        "Scored: " + "; ".join(f"{t}: {n[t]} generated, {n[t]} random-code and {n[t]} real held-out "
                               f"examples, each against {refs[t]} training examples" for t in n) + ".",
        "",
        *scores,
        "",
        *extra,
        "",
        "FID at these sample counts is biased upwards and only comparable within a row: the point "
        "is the gap between generated samples, decoded random codes and real held-out data.",
        "",
        *rows,
    ])
    write_section(Path(args.out), "quickstart", text)
    print(f"quickstart: {wall:.0f}s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
