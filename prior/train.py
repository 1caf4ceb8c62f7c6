"""Stage two entry point: train the level priors in turn (or one) on extracted codes.

Each level is its own run of the shared Accelerate loop (``engine.trainer.train``) in
``RUN_DIR/level_<l>``, so a level resumes from its own checkpoints and levels can be
trained on different days or machines. See ``prior.pretrained`` for the layout.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Optional

from engine.config import ConfigError, to_dict
from engine.files import write_text_atomic
from engine.stage import check_start, claim_run_dir, finish_run, seeded, start_run
from engine.tracking import Tracking
from engine.trainer import train
from prior.codes import CodesDataset, IdentityError, check_identity, read_manifest
from prior.config import PriorConfig
from prior.pretrained import INFO, build_level, evaluate_level, level_dir, prior_info, save_level
from tokenizer.pretrained import Tokenizer

# sections that may change between a run and its resumption; a moved codes directory is
# fine (`data`), codes of another tokenizer are not (checked by identity)
RESUMABLE_CHANGES = ("train", "eval", "run_dir", "data", "tokenizer")


def check_inputs(cfg: PriorConfig) -> tuple[dict, dict]:
    """Everything about the codes and tokenizer that can be wrong before training starts
    (the run_dir's own config is checked when it is claimed): returns (manifest, info)."""
    if not cfg.data.codes:  # optional in the config: `hqvae pipeline` fills it in
        raise ConfigError("data.codes: set it to a directory written by `hqvae encode`")
    check_start(cfg, "prior")
    manifest = read_manifest(cfg.data.codes)
    num_levels = len(manifest["codebook_sizes"])
    if len(cfg.levels) > num_levels:
        raise ConfigError(
            f"levels: {len(cfg.levels)} per-level settings for codes with {num_levels} levels"
        )
    for split in (cfg.data.train_split, cfg.data.eval_split):
        if split is not None and split not in manifest["splits"]:
            have = ", ".join(sorted(manifest["splits"])) or "none"
            raise ConfigError(
                f"data: split {split!r} is not in {cfg.data.codes} (encoded splits: {have})"
            )
    if cfg.class_cond:
        for split in (cfg.data.train_split, cfg.data.eval_split):
            if split is None:
                continue
            if not manifest["splits"][split].get("has_label") or not manifest.get("num_classes"):
                raise ConfigError(
                    f"class_cond: the {split!r} codes in {cfg.data.codes} carry no labels; "
                    f"set class_cond=false or encode labelled data"
                )
        # checked here, once, so that the training step need not (a per-step range check
        # is a host sync and splits a compiled graph)
        for split in {cfg.data.train_split, cfg.data.eval_split} - {None}:
            rng = CodesDataset(cfg.data.codes, split, levels=[0]).label_range()
            if rng is not None and not (0 <= rng[0] and rng[1] < manifest["num_classes"]):
                raise ConfigError(
                    f"class_cond: the {split!r} codes in {cfg.data.codes} have labels {rng[0]}..{rng[1]}, "
                    f"outside 0..{manifest['num_classes'] - 1} (unlabelled rows marked -1?); "
                    f"drop those rows before encoding or set class_cond=false"
                )
    if cfg.tokenizer:
        tok = Tokenizer.from_pretrained(cfg.tokenizer)
        check_identity(tok.identity, manifest["tokenizer_identity"], f"codes directory {cfg.data.codes}",
                       f"re-encode the data with `hqvae encode {cfg.tokenizer}`")
    info = prior_info(manifest, cfg.class_cond)
    if cfg.tokenizer:
        info["tokenizer_run"] = str(Path(cfg.tokenizer).resolve())
    info_path = Path(cfg.run_dir) / INFO
    if info_path.is_file():
        old = json.loads(info_path.read_text())
        try:
            check_identity(old["tokenizer_identity"], info["tokenizer_identity"],
                           f"codes directory {cfg.data.codes}")
        except IdentityError as err:
            raise IdentityError(
                f"run_dir {cfg.run_dir!r} holds priors of tokenizer {old['tokenizer_identity']}: "
                f"{err}; choose another run_dir"
            ) from None
    return manifest, info


def train_prior(cfg: PriorConfig, levels: Optional[list[int]] = None) -> dict:
    """Train the given levels (default: all, top first). Returns
    {"levels": {l: metrics}} on the main process, {} on the others."""
    manifest, info = check_inputs(cfg)
    num_levels = len(info["codebook_sizes"])
    levels = list(range(num_levels)) if levels is None else list(levels)
    for level in levels:
        if not 0 <= level < num_levels:
            raise ConfigError(f"--level {level}: the codes have levels 0..{num_levels - 1}")
    with claim_run_dir(cfg, RESUMABLE_CHANGES, "prior"):
        return _train_levels(cfg, info, levels)


def _train_levels(cfg: PriorConfig, info: dict, levels: list[int]) -> dict:
    run_dir = Path(cfg.run_dir)
    state = start_run(cfg, {INFO: info})
    state.wait_for_everyone()

    results: dict[int, dict] = {}
    for level in levels:
        train_set = CodesDataset(cfg.data.codes, cfg.data.train_split, levels=list(range(level + 1)))
        eval_set = None
        if cfg.data.eval_split is not None:
            eval_set = CodesDataset(cfg.data.codes, cfg.data.eval_split, levels=list(range(level + 1)))
        model = seeded(cfg.train.seed + level, functools.partial(build_level, cfg, info, level))

        def periodic_eval(m, step, eval_set=eval_set):
            if eval_set is None:
                return {}
            out = evaluate_level(m, eval_set, cfg.eval.max_examples, cfg.eval.batch_size)
            return {"bits_per_token": out["bits_per_token"]}

        tracking = Tracking(cfg.train.report_to, level_dir(run_dir, level))
        result = train(
            model=model, dataset=train_set, cfg=cfg.train, run_dir=level_dir(run_dir, level),
            config={**to_dict(cfg), "level": level}, evaluate=periodic_eval, batch_key=None,
            desc=f"prior level {level}", final_eval=False, tracking=tracking,
        )
        if state.is_main_process:
            path = save_level(model, cfg, info, run_dir)
            metrics: dict = {"level": level, "shape": list(model.shape),
                             "codebook_size": model.codebook_size}
            if eval_set is not None:
                metrics.update(evaluate_level(model, eval_set, cfg.eval.max_examples, cfg.eval.batch_size))
            metrics.update({
                "steps": result.step, "resumed_from": result.resumed_from,
                "seconds": result.seconds,
                "tokens_per_s": result.examples_per_second * model.length,
                "parameters": model.num_parameters(), "weights": str(path),
                "nonfinite_steps_skipped": result.nonfinite_steps_skipped,
                "processes": result.processes,
            })
            # codes are never bad examples: the level's final line counts skipped steps only
            finish_run(level_dir(run_dir, level), result, metrics, counters=("nonfinite_steps_skipped",),
                       tracking=tracking)
            results[level] = metrics
        model.cpu()
        state.wait_for_everyone()
    if not state.is_main_process:
        return {}
    summary_path = run_dir / "eval.json"
    # the summary is rebuilt from the levels' own eval.json files: a run killed between
    # levels and resumed with the rest must not lose the levels of the first call, and a
    # summary damaged since (or a file that never was one) is replaced, not trusted
    summary = {"tokenizer_identity": info["tokenizer_identity"], "levels": {}}
    for level_eval in sorted(run_dir.glob("level_*/eval.json")):
        summary["levels"][level_eval.parent.name.removeprefix("level_")] = json.loads(level_eval.read_text())
    for level, metrics in results.items():
        summary["levels"][str(level)] = metrics
    write_text_atomic(summary_path, json.dumps(summary, indent=2))
    return {"levels": results}


def format_summary(results: dict, run_dir: str | Path) -> str:
    lines = []
    for level, m in sorted(results["levels"].items()):
        held = (f"held-out {m['bits_per_token']:.3f} bits/token vs uniform {m['uniform_bits']:.3f}"
                if "bits_per_token" in m else "no held-out split")
        lines.append(
            f"  level {level} ({m['shape'][0]}x{m['shape'][1]}, K={m['codebook_size']}): {held}; "
            f"{m['steps']} steps, {m['tokens_per_s']:.0f} tokens/s, {m['parameters'] / 1e6:.2f}M params"
            + (f", {m['processes']} processes" if m.get("processes", 1) > 1 else "")
        )
    lines.append(f"wrote {run_dir}")
    return "\n".join(lines)
