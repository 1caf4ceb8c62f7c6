"""Optimisation settings shared by the tokenizer and every prior (one loop, one config)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from engine.config import ConfigError


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps (unused when `epochs` is set; a steps override is then refused)
    epochs: Optional[int] = None  # if set, steps = epochs * batches per epoch
    batch_size: int = 32  # global batch per optimizer step, before gradient accumulation split
    lr: float = 1e-3  # peak learning rate of AdamW
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.999  # AdamW second-moment decay
    schedule: Literal["constant", "cosine"] = "constant"  # learning-rate schedule after warmup
    warmup_steps: int = 0  # linear warmup from 0 to lr over these steps
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of lr
    grad_accum: int = 1  # micro-batches per optimizer step (batch_size is split across them)
    clip_grad: float = 0.0  # max global grad norm; 0 disables clipping
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"  # fp16 (loss-scaled) needs a GPU; bf16 also on CPU
    seed: int = 0  # seed of initialisation, data order and noise (each process derives its own)
    log_every: int = 50  # steps between metric lines (the only host syncs of the loop)
    eval_every: int = 0  # steps between evaluations; 0 = only at the end
    ckpt_every: int = 1000  # steps between checkpoints; 0 = only at the end
    keep_last: int = 2  # checkpoints retained
    num_workers: int = 0  # DataLoader worker processes
    progress: bool = True  # tqdm progress bar
    # live experiment trackers fed every metrics.jsonl line, with the config as
    # hyperparameters (engine/tracking.py): any of tensorboard, trackio, wandb; [] = none
    report_to: list[str] = field(default_factory=list)
    # a non-finite (NaN / inf) loss: 'stop' raises naming the step and writes no checkpoint
    # of the poisoned state (the last good one stays); 'skip' withholds that optimizer step
    # (no weight, optimizer or buffer update) and counts it as nonfinite_steps_skipped
    nan_policy: Literal["stop", "skip"] = "stop"
    # --- throughput options (off by default; each changes speed only, never the objective) ---
    # wrap the training forward in torch.compile (the saved / evaluated module stays the
    # uncompiled one, so checkpoints keep their plain keys); the first steps pay compilation
    compile: bool = False
    # torch.compile's mode: 'reduce-overhead' adds CUDA graphs (for steps that are bound by
    # kernel launches: small models / batches on a GPU), 'max-autotune' searches kernels
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    # keep conv weights and 4-D input batches in torch.channels_last (NHWC) memory format
    channels_last: bool = False
    # recompute activations in the backward pass instead of storing them (the tokenizer's
    # encoder / decoder blocks, a prior's transformer layers): less memory, more compute
    gradient_checkpointing: bool = False

    def validate(self) -> None:
        import os

        positive = ("steps", "batch_size", "grad_accum", "log_every", "keep_last")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("eval_every", "ckpt_every", "warmup_steps", "num_workers"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"epochs: must be >= 1, got {self.epochs}")
        # bounds that keep a typo from becoming a run that never ends or a fork bomb
        if self.steps > 10**9:
            raise ConfigError(f"steps: at most 1e9, got {self.steps}")
        if self.epochs is not None and self.epochs > 10**6:
            raise ConfigError(f"epochs: at most 1e6, got {self.epochs}")
        cap = max(16, 4 * (os.cpu_count() or 1))
        if self.num_workers > cap:
            raise ConfigError(f"num_workers: at most {cap} (4 per CPU core here), got {self.num_workers}")
        if self.compile_mode != "default" and not self.compile:
            raise ConfigError(f"compile_mode: '{self.compile_mode}' needs compile=true")
        if self.lr <= 0:
            raise ConfigError(f"lr: must be > 0, got {self.lr}")
        if self.clip_grad < 0:
            raise ConfigError(f"clip_grad: must be >= 0, got {self.clip_grad}")
        for name in ("beta1", "beta2"):  # AdamW's own check would fail only when training starts
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay: must be >= 0, got {self.weight_decay}")
        if not 0 <= self.seed < 2**32:  # numpy's seed range (accelerate seeds numpy too)
            raise ConfigError(f"seed: must be in [0, 2**32), got {self.seed}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(
                f"batch_size: {self.batch_size} is not divisible by grad_accum={self.grad_accum}"
            )
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        # the names only: whether a tracker's package is installed matters where the config
        # trains (engine.stage.check_start), not where a saved one is loaded to sample
        from engine.tracking import check_names

        check_names(self.report_to)
