"""`hqvae pipeline CONFIG`: tokenizer -> encode -> priors -> sample -> FID -> report, in one run.

Every stage writes into the run directory (layout: ``hqvae/layout.py``) and is skipped when
its finished output is there, so re-running the same command resumes where a previous run
stopped (and the training stages resume from their checkpoints)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.config import to_dict
from engine.devices import resolve_device
from engine.run_dir import hold_folder
from hqvae import layout
from hqvae.pipeline import stages as stage_fns
from hqvae.pipeline.config import (
    PipelineConfig,
    TrackConfig,
    check_classifier_runs,
    check_sample_labels,
    check_trackers,
    stage_configs,
)
from hqvae.pipeline.resume import (
    check_run_dir,
    codes_done,
    fresh_folder,
    prior_levels_todo,
    read_json,
    recorded_identity,
    samples_match,
    save_config,
    tokenizer_identity,
    write_json,
)
from hqvae.pipeline.summary import headline
from hqvae.report import check_report_target, write_report


def _device(cfg: PipelineConfig) -> str:
    return resolve_device(cfg.device, "device")


def run_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print) -> dict:
    """Run every stage that is not finished yet; returns (and writes) the run summary."""
    check_run_dir(cfg)
    check_trackers(cfg)
    check_sample_labels(cfg)
    check_classifier_runs(cfg)
    if cfg.report:  # the report is written last: a file there that is not one is refused first
        check_report_target(Path(cfg.run_dir) / layout.REPORT)
    with hold_folder(cfg.run_dir, "pipeline", "run_dir"):  # a second pipeline on this run_dir is refused
        return _run_stages(cfg, log)


def _run_stages(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run / layout.CONFIG)
    device = _device(cfg)
    summary: dict[str, Any] = {"run_dir": str(run), "tracks": {}}
    t_start = time.perf_counter()
    for name in layout.TRACKS:
        if getattr(cfg, name) is not None:
            summary["tracks"][name] = run_track(cfg, name, device, log)
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    write_json(run / layout.SUMMARY, summary)
    if cfg.report:
        summary["report"] = str(write_report(run))
    return summary


def run_track(cfg: PipelineConfig, name: str, device: str, log: Callable[[str], None] = print) -> dict:
    """The stages of one track, top to bottom; returns {stage: {"status", "seconds", ...}}."""
    track: TrackConfig = getattr(cfg, name)
    sc = stage_configs(cfg, name)
    root: Path = sc["root"]
    data = sc["tokenizer"].data
    stages: dict[str, Any] = {}

    def stage(key: str, done: bool, fn: Callable[[], dict]) -> None:
        if done:
            log(f"== {name}: {key} (finished earlier, skipped)")
            stages[key] = {"status": "skipped"}
            return
        log(f"== {name}: {key}")
        t0 = time.perf_counter()
        result = fn() or {}
        stages[key] = {"status": "ran", "seconds": round(time.perf_counter() - t0, 2), **result}

    stage("tokenizer", layout.is_done(cfg.run_dir, name, "tokenizer"), lambda: stage_fns.run_tokenizer(sc["tokenizer"]))
    # codes and priors belong to one tokenizer (its identity: config + weights); those of an
    # earlier tokenizer in this run directory (re-trained after its folder was removed) are
    # redone rather than reused, or sampling would refuse them halfway through the run
    tok_id = tokenizer_identity(root / "tokenizer")
    codes_ok = recorded_identity(root / "codes" / "codes.json") in (None, tok_id)
    stage("encode", codes_ok and codes_done(root / "codes", (data.train_split, data.eval_split)),
          lambda: stage_fns.run_encode(sc["tokenizer"], track, fresh_folder(root / "codes", codes_ok, log), device))
    num_levels = len(json.loads((root / "codes" / "codes.json").read_text())["codebook_sizes"])
    prior_ok = recorded_identity(root / "prior" / "prior.json") in (None, tok_id)
    if not prior_ok:
        fresh_folder(root / "prior", False, log)
    todo = prior_levels_todo(root / "prior", num_levels)
    stage("prior", not todo and layout.is_done(cfg.run_dir, name, "prior"), lambda: stage_fns.run_prior(sc["prior"], todo))
    if track.classifier is not None and track.score.enabled and not track.score.classifier_run:
        stage("classifier", layout.is_done(cfg.run_dir, name, "classifier"),
              lambda: stage_fns.run_classifier(sc["classifier"]))
    # samples and scores follow the sampling / scoring settings: redo them when those change
    wanted = to_dict(track.sample)
    upstream = {k for k in ("tokenizer", "encode", "prior") if stages[k]["status"] == "ran"}
    for key, rand in (("samples", False), ("random", True)):
        stale = upstream - ({"prior"} if rand else set())  # the baseline never reads the prior
        stage(key, samples_match(root / key, wanted, rand) and not stale,
              lambda rand=rand: stage_fns.run_samples(track, root, device, random_codes=rand))
    resampled = any(stages[k]["status"] == "ran" for k in ("samples", "random"))
    if resampled and not track.score.enabled:
        (root / "fid.json").unlink(missing_ok=True)  # it scored samples that are gone
    if track.score.enabled:
        prev = read_json(root / "fid.json") or {}
        # the classifier belongs to the scores: one removed or replaced takes its
        # accuracies (and, for audio, its FID) with it
        scored = {"sample": wanted, "score": to_dict(track.score),
                  "classifier": stage_fns.classifier_run(track, root)}
        # fid.json written before the settings named the classifier names it at its top
        prev_scored = {"classifier": prev.get("classifier"), **prev.get("settings", {})}

        def score() -> dict:
            out = stage_fns.run_score(track, sc["tokenizer"], root, name, device, log)
            out["settings"] = scored
            write_json(root / "fid.json", out)
            return {"samples": out["samples"], "random": out["random"]}

        # a re-trained classifier scores the same samples differently
        fresh = not any(stages.get(k, {}).get("status") == "ran" for k in ("samples", "random", "classifier"))
        stage("score", fresh and "settings" in prev and prev_scored == scored, score)
    stages["headline"] = headline(root)
    return stages
