"""Resuming a pipeline run: which stages finished with the settings asked for, whether the
run directory is this pipeline's, and the marker files that tell (layout:
``hqvae/layout.py``). A re-run skips what is done and redoes what its settings changed."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from engine.config import ConfigError, to_dict, yaml_dump, yaml_load
from engine.files import write_text_atomic
from engine.run_dir import check_folder, config_diff, holds_work, read_saved_config
from hqvae import layout
from hqvae.pipeline.config import PipelineConfig
from sampling.sample_reader import read_record

# the sample settings the random-codes baseline depends on
RANDOM_SAMPLE_KEYS = ("n", "batch_size", "seed", "griffin_lim_iters")


def read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json(path: Path, obj: Any) -> None:
    """Write-then-rename: a crash never leaves a half-written marker that reads as done."""
    write_text_atomic(path, json.dumps(obj, indent=2))


def codes_done(codes_dir: Path, splits: Sequence[str]) -> bool:
    manifest = codes_dir / "codes.json"
    if not manifest.is_file():
        return False
    have = json.loads(manifest.read_text()).get("splits", {})
    return all(s in have and (codes_dir / s).is_dir() for s in splits)


def tokenizer_identity(tok_dir: Path) -> str:
    # imported on use: it loads torch, which `hqvae config` starts without
    from tokenizer.pretrained import Tokenizer

    return Tokenizer.from_pretrained(tok_dir).identity


def recorded_identity(manifest: Path) -> Optional[str]:
    """The tokenizer identity a codes.json / prior.json records (None: no such file)."""
    record = read_json(manifest)
    return None if record is None else record.get("tokenizer_identity")


def fresh_folder(folder: Path, keep: bool, log: Callable[[str], None]) -> Path:
    """``folder``, emptied first unless ``keep``: its contents came from another tokenizer."""
    if not keep and folder.exists():
        log(f"   {folder}: made with an earlier tokenizer of this run; redoing it")
        shutil.rmtree(folder)
    return folder


def prior_levels_todo(prior_dir: Path, num_levels: int) -> list[int]:
    """Levels of the prior still to train."""
    return [lv for lv in range(num_levels) if not (prior_dir / f"level_{lv}" / "eval.json").is_file()]


def samples_match(folder: Path, wanted: dict, random_codes: bool) -> bool:
    """Whether the sample set in ``folder`` was drawn with the sample settings ``wanted``."""
    prev = read_record(folder) or {}
    # random codes depend on the tokenizer and on n / seed / batch size, not on the prior
    # or the sampling knobs: changing the temperature must not decode them again
    keys = RANDOM_SAMPLE_KEYS if random_codes else tuple(wanted)
    same = {k: (prev.get("pipeline_sample") or {}).get(k) for k in keys} == {k: wanted[k] for k in keys}
    return same and bool(prev)


def check_run_dir(cfg: PipelineConfig) -> None:
    """A run directory holds one pipeline: refuse another one's (the stages would resume
    from foreign weights); changes to sampling / scoring settings are allowed."""
    run = Path(cfg.run_dir)
    saved = run / layout.CONFIG
    # new, empty or a pipeline run of this tool's (a file named pipeline.yaml proves nothing)
    if not check_folder(run, "pipeline", "run_dir") or not saved.is_file():
        return
    old = read_saved_config(saved)
    new = to_dict(cfg)
    # sampling / scoring settings may change (those stages re-run); more training steps or
    # other evaluation sizes too (the stage resumes, or counts as finished); the encoding
    # batch size changes no code (eval mode, per-example), so finished codes stay
    allowed = ("run_dir", "device", "report") + tuple(
        f"{t}.{s}" for t in layout.TRACKS
        for s in ("sample", "score", "tokenizer.train", "tokenizer.eval", "prior.train", "prior.eval",
                  "classifier.train", "classifier.eval", "encode.batch_size"))
    # a track run alone or added later (`audio=null`) is the same run; its stages skip or run
    changed = [k for k in config_diff(old, new) if not k.startswith(allowed)
               and not (k in layout.TRACKS and (old.get(k) is None or new.get(k) is None))
               and _stage_holds_work(run, k)]
    if changed:
        raise ConfigError(f"run_dir: {run} holds a pipeline run with a different config "
                          f"({', '.join(changed[:5])}); choose another run_dir or delete it")


def _stage_holds_work(run: Path, key: str) -> bool:
    """Whether the stage a changed key ``track.section...`` configures has produced anything.
    A stage that failed before its first checkpoint (a typo'd column, a bad path) protects
    nothing, so its corrected settings are the same run."""
    parts = key.split(".")
    folder = {"tokenizer": "tokenizer", "encode": "codes", "prior": "prior",
              "classifier": "classifier"}.get(parts[1] if len(parts) > 1 else "")
    if parts[0] not in layout.TRACKS or folder is None:
        return True
    return holds_work(run / parts[0] / folder)


def save_config(cfg: PipelineConfig, path: Path) -> None:
    """The config that produced the run directory: a track this invocation leaves out
    (`audio=null`) keeps its earlier section, so bringing it back with other settings is
    refused like any other change to a finished track."""
    new = to_dict(cfg)
    if path.is_file():
        old = yaml_load(path.read_text()) or {}
        for track in layout.TRACKS:
            if new.get(track) is None and old.get(track) is not None:
                new[track] = old[track]
    write_text_atomic(path, yaml_dump(new))  # a kill mid-write must not leave half a config
