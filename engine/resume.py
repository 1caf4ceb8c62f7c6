"""Resuming a run from the newest good checkpoint in its folder (docs/reliability.md,
"Crash and resume").

A checkpoint that fails its checksums is skipped with a warning (and renamed ``*.corrupt``)
in favour of the previous one; ``metrics.jsonl`` is cut back to the resumed step, so every
step appears once.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from engine.checkpoint import clean_stale, load_latest_checkpoint, quarantine, restore_rng
from engine.files import write_text_atomic
from engine.optim import LearningRates
from engine.train_config import TrainConfig

# what a run counts across its resumptions (stored in every checkpoint)
COUNTERS = ("bad_examples_skipped", "nonfinite_steps_skipped")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model (written under another config)."""


@dataclass
class Resumed:
    step: int = 0  # the step the run continues from (0: a fresh run)
    checkpoint: Optional[Path] = None  # the checkpoint it continues from
    corrupt: list[Path] = field(default_factory=list)  # newer ones that failed to load
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    stream: Optional[dict] = None  # a stream's reader positions (engine/streams.py)


def _check_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a checkpoint whose tensor names or shapes differ from the model's, naming the
    keys (instead of torch's size-mismatch traceback)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} in the checkpoint vs {tuple(own[k].shape)} in the model"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the model being trained (written under another "
            f"config?): {'; '.join(parts)}; use another run_dir or delete {path.parent}"
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (the checkpoint a run resumes from): a killed run may
    have logged steps it never checkpointed, and the resumed run logs those steps again. A
    half-written last line (a kill mid-write) goes too. Rewritten atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("step", 0) <= step:
            kept.append(line)
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))


def resume(
    run_dir: Path, accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR, rates: LearningRates, cfg: TrainConfig,
) -> Resumed:
    """Restore model, optimizer, schedule, RNG, loss scale and counters from the newest
    good checkpoint in ``run_dir`` (before ``accelerator.prepare``); a fresh run when there
    is none."""
    main = accelerator.is_main_process
    if main:
        clean_stale(run_dir)  # what a writer killed mid-checkpoint left behind
    accelerator.wait_for_everyone()
    ckpt, path, corrupt = load_latest_checkpoint(run_dir)
    resumed = Resumed(checkpoint=path, corrupt=corrupt)
    if ckpt is not None:
        _check_model_state(model, ckpt["model"], path)
        model.load_state_dict(ckpt["model"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, IndexError) as err:
            raise CheckpointMismatchError(
                f"checkpoint {path}: its optimizer state does not fit this model ({err}); "
                f"use another run_dir or delete {path.parent}"
            ) from None
        scheduler.load_state_dict(ckpt["scheduler"])
        resumed.step = start = int(ckpt["step"])
        if not restore_rng(ckpt, accelerator.process_index):
            # written by fewer processes: no state of this one's to continue, so a fresh
            # seed of its own (deterministic, and unlike every other process's)
            set_seed(cfg.seed + 1_000_003 * start, device_specific=True)
        if accelerator.scaler is not None and "grad_scaler" in ckpt:
            accelerator.scaler.load_state_dict(ckpt["grad_scaler"])  # fp16 loss scale
        for key in COUNTERS:
            resumed.counters[key] = int(ckpt.get("counters", {}).get(key, 0))
        resumed.stream = ckpt.get("stream")
        # a resumed run may ask for more steps or another lr, which reshapes the schedule;
        # the restored optimizer still holds the old schedule's LR for this step
        scheduler.base_lrs = list(rates.base)
        for group, lr in zip(optimizer.param_groups, rates.at(start)):
            group["lr"] = lr
    accelerator.wait_for_everyone()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for bad in corrupt:
            quarantine(bad)
        _truncate_metrics(run_dir / "metrics.jsonl", resumed.step)
    return resumed
