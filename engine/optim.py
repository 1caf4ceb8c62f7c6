"""The optimizer and learning-rate schedule of the training loop."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.train_config import TrainConfig


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The LR multiplier at each optimizer step: linear warm-up over ``train.warmup_steps``,
    then constant or a cosine down to ``train.min_lr_ratio`` at ``total_steps``."""
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f



def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, total_steps: int):
    """-> (AdamW over ``model``'s trainable parameters, its LambdaLR scheduler, the schedule
    function, which resume uses to set the LR of the step it continues from). The loop
    steps the scheduler by hand once per optimizer step: a scheduler prepared by
    Accelerate would step once per process."""
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
    )
    schedule = lr_lambda(cfg, total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return optimizer, scheduler, schedule
