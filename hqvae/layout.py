"""Where `hqvae pipeline` puts things: one run directory, one folder per track.

    RUN/
      pipeline.yaml          the resolved pipeline config (what produced everything below)
      summary.json           stages run / skipped and the headline metrics, per track
      report.html            `hqvae report RUN` (written at the end of the pipeline)
      image/ | audio/        one track per modality
        tokenizer/           a `hqvae train-tokenizer` run (config.yaml, model.safetensors,
                             metrics.jsonl, eval/eval.json, eval/reconstructions.png, eval/*.wav)
        codes/               `hqvae encode` output (codes.json + one dataset per split)
        prior/               a `hqvae train-prior` run (prior.json, eval.json, level_L/...)
        classifier/          a `hqvae train-classifier` run on the tokenizer's data: audio FID's
                             features (audio), class accuracy of the samples (both; optional
                             for images)
        samples/             `hqvae sample` output (images/ or audio/, grid.png, samples.json,
                             labels.json, codes.safetensors)
        random/              the baseline: uniformly random codes decoded, same layout
        fid.json             FID / KID (images) or audio FID (audio) of samples/ and random/
                             against the reference split, and the class accuracy of samples/
                             and of real held-out data

Every stage is finished when its marker file exists (``DONE`` below); `pipeline` skips it then.
"""

from __future__ import annotations

from pathlib import Path

TRACKS = ("image", "audio")
CONFIG = "pipeline.yaml"
SUMMARY = "summary.json"
REPORT = "report.html"

# stage -> folder inside a track, and the file whose presence means "finished"
STAGES = ("tokenizer", "codes", "prior", "classifier", "samples", "random", "fid")
DONE = {
    "tokenizer": "tokenizer/eval/eval.json",
    "codes": "codes/codes.json",
    "prior": "prior/eval.json",
    "classifier": "classifier/eval.json",
    "samples": "samples/samples.json",
    "random": "random/samples.json",
    "fid": "fid.json",
}


def track_dir(run_dir: str | Path, track: str) -> Path:
    if track not in TRACKS:
        raise ValueError(f"track: expected one of {TRACKS}, got {track!r}")
    return Path(run_dir) / track


def stage_path(run_dir: str | Path, track: str, stage: str) -> Path:
    """The folder (or file, for ``fid``) of ``stage`` in ``track``."""
    if stage not in DONE:
        raise ValueError(f"stage: expected one of {STAGES}, got {stage!r}")
    return track_dir(run_dir, track) / DONE[stage].split("/")[0]


def is_done(run_dir: str | Path, track: str, stage: str) -> bool:
    return (track_dir(run_dir, track) / DONE[stage]).is_file()
