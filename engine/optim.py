"""The optimizer and learning-rate schedule of the training loop."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

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



@dataclass
class LearningRates:
    """Per parameter group: its base learning rate and its multiplier at each step."""

    base: list[float]
    schedules: list[Callable[[int], float]]

    def at(self, step: int) -> list[float]:
        return [lr * f(step) for lr, f in zip(self.base, self.schedules)]


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, total_steps: int):
    """-> (AdamW, its LambdaLR scheduler, the :class:`LearningRates` of its groups, which
    resume uses to set the LR of the step it continues from). The loop steps the scheduler
    by hand once per optimizer step: a scheduler prepared by Accelerate would step once per
    process.

    One group of ``model``'s trainable parameters, unless the model defines
    ``param_groups(lr)``: then a list of AdamW groups (their own "lr", "betas",
    "weight_decay" where given) each with an optional "schedule" (a step -> multiplier
    function; absent or None: the run's), e.g. a discriminator beside a tokenizer."""
    schedule = lr_lambda(cfg, total_steps)
    make_groups = getattr(model, "param_groups", None)
    groups = (make_groups(cfg.lr) if callable(make_groups)
              else [{"params": [p for p in model.parameters() if p.requires_grad]}])
    schedules = [g.pop("schedule", None) or schedule for g in groups]
    rates = LearningRates([g.setdefault("lr", cfg.lr) for g in groups], schedules)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                  weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedules)
    return optimizer, scheduler, rates


def clip_each_group(accelerator, optimizer, model: torch.nn.Module, max_norm: float) -> None:
    """Clip the gradient norm of each parameter group on its own (train.clip_grad): groups
    are separate models (a discriminator beside a tokenizer), and one norm over both would
    scale each one's step by the other's gradients."""
    groups = [g["params"] for g in optimizer.param_groups]
    if len(groups) == 1:
        accelerator.clip_grad_norm_(model.parameters(), max_norm)
        return
    accelerator.unscale_gradients()  # once: the loss scaler refuses a second unscale per step
    for params in groups:
        torch.nn.utils.clip_grad_norm_(params, max_norm)
