"""Stage one entry point: train an HQ-VAE tokenizer from a config, then evaluate it.

Run directory layout::

    RUN_DIR/config.yaml          resolved config (what produced everything below)
    RUN_DIR/metrics.jsonl        training / eval metric lines
    RUN_DIR/checkpoints/step_*/  resumable checkpoints
    RUN_DIR/model.safetensors    final weights (config in the metadata) -> Tokenizer.from_pretrained
    RUN_DIR/eval/                eval.json, reconstructions.png, WAV pairs (audio)
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch

from engine.config import to_dict
from engine.stage import (
    check_start,
    claim_run_dir,
    finish_run,
    seeded,
    start_run,
    train_summary,
    training_splits,
)
from engine.subsets import spread_indices
from engine.tracking import Tracking
from engine.trainer import train
from tokenizer.config import TokenizerConfig
from tokenizer.data import build_dataset, build_stream, eval_dataset, resolve_modality
from tokenizer.evaluate import evaluate_tokenizer, run_evaluation
from tokenizer.losses.objective import TokenizerObjective
from tokenizer.losses.perceptual import LPIPS, load_lpips
from tokenizer.model import HQVAE
from tokenizer.pretrained import Tokenizer

# sections that may change between a run and its resumption (more steps, other eval sizes)
RESUMABLE_CHANGES = ("train", "eval", "run_dir")


def check_rows(dataset, max_examples: int, split: str) -> None:
    """Decode the rows an evaluation will read before training starts: a bad file there
    (with data.skip_bad_examples off) is reported now, naming it, not after the training."""
    from tqdm.auto import tqdm

    rows = spread_indices(len(dataset), max_examples)
    for i in tqdm(rows, desc=f"check {split}", unit="ex", leave=False, disable=len(rows) < 2000):
        dataset[i]


def perceptual_network(cfg: TokenizerConfig) -> Optional[LPIPS]:
    """LPIPS when loss.perceptual is on: loaded before any data is read, so missing weight
    files stop the run at once, naming the key and the files looked for."""
    p = cfg.loss.perceptual
    return load_lpips(p.vgg_path, p.heads_path) if p.weight > 0 else None


def training_objective(model: HQVAE, cfg: TokenizerConfig, lpips: Optional[LPIPS] = None) -> torch.nn.Module:
    """What the trainer trains: the tokenizer itself (its own objective), or with loss.*
    on, a :class:`TokenizerObjective` holding it, LPIPS and the discriminator (checkpoints
    then hold the discriminator too; the exported tokenizer never does)."""
    if not cfg.loss.any:
        return model
    return TokenizerObjective(model, cfg.loss, cfg.data.shape[0], lpips)


def train_tokenizer(cfg: TokenizerConfig) -> dict:
    """Train, save and evaluate; returns the eval metrics ({} on non-main processes)."""
    check_start(cfg, "tokenizer")
    lpips = perceptual_network(cfg)
    cfg = resolve_modality(cfg)
    with claim_run_dir(cfg, RESUMABLE_CHANGES, "tokenizer"):
        return _train_tokenizer(cfg, lpips)


def _train_tokenizer(cfg: TokenizerConfig, lpips: Optional[LPIPS]) -> dict:
    run_dir = Path(cfg.run_dir)
    if cfg.data.streaming:
        train_set = build_stream(cfg.data, cfg.data.train_split, train=True)
        eval_set = eval_dataset(cfg.data, cfg.data.eval_split, cfg.eval.max_examples)
    else:
        train_set, eval_set = training_splits(cfg.data, build_dataset)
    check_rows(eval_set, cfg.eval.max_examples, cfg.data.eval_split)
    tok = seeded(cfg.train.seed, lambda: Tokenizer.from_config(cfg))
    trained = seeded(cfg.train.seed + 1, lambda: training_objective(tok.model, cfg, lpips))
    state = start_run(cfg)
    modality = cfg.data.resolved_modality
    db_range = cfg.data.audio.db_max - cfg.data.audio.db_min

    def periodic_eval(model, step):
        m = evaluate_tokenizer(tok.model, eval_set, modality=modality,
                               max_examples=min(cfg.eval.max_examples, 512),
                               batch_size=cfg.eval.batch_size, db_range=db_range,
                               layer_collapse=False)
        flat = {k: v for k, v in m.items() if isinstance(v, float)}
        for layer in m["layers"]:
            flat[f"l{layer['layer']}/perplexity"] = layer["perplexity"]
            flat[f"l{layer['layer']}/codes_used"] = layer["codes_used"]
        return flat

    tracking = Tracking(cfg.train.report_to, run_dir)
    result = train(
        model=trained, dataset=train_set, cfg=cfg.train, run_dir=run_dir,
        config=to_dict(cfg), evaluate=periodic_eval,
        stats=lambda model, step: model.train_stats(step), desc=f"train {cfg.model.preset or 'hqvae'}",
        final_eval=False,  # the full evaluation below replaces it
        tracking=tracking,
    )
    if not state.is_main_process:
        return {}
    tok.model.cpu()
    tok.save_pretrained(run_dir)
    metrics = run_evaluation(tok, cfg, eval_set, run_dir / "eval", progress=cfg.train.progress)
    metrics["train"] = train_summary(result, tok.model.num_parameters())
    finish_run(run_dir, result, metrics, eval_dir=run_dir / "eval", tracking=tracking)
    return metrics


def format_summary(metrics: dict, run_dir: str | Path) -> str:
    lines = [f"rmse {metrics['rmse']:.3f}  psnr {metrics['psnr']:.2f}"
             + (f"  ssim {metrics['ssim']:.4f}" if "ssim" in metrics else "")
             + (f"  lpips {metrics['lpips']:.4f}" if "lpips" in metrics else "")
             + (f"  lsd {metrics['lsd_db']:.2f} dB" if "lsd_db" in metrics else "")
             + (f"  rfid {metrics['rfid']:.2f} ({metrics.get('rfid_examples', '?')} images)"
                if "rfid" in metrics else "")]
    for la in metrics["layers"]:
        extra = ""
        if "rmse_substituted" in la:
            extra = f"  rmse(substituted) {la['rmse_substituted']:.3f}"
        if "rmse_depth" in la:
            extra += f"  rmse(depth {la['layer'] + 1}) {la['rmse_depth']:.3f}"
        if "posterior_entropy" in la:
            extra += f"  posterior entropy {la['posterior_entropy']:.2f} of {math.log(la['codebook_size']):.2f} nats"
        lines.append(
            f"  layer {la['layer']} ({la['kind']}, {la['grid'][0]}x{la['grid'][1]}): "
            f"perplexity {la['perplexity']:.1f}, codes used {la['codes_used']}/{la['codebook_size']}{extra}"
        )
    lines.append(f"wrote {run_dir}")
    return "\n".join(lines)
