"""The training forward of one micro-batch: autocast, channels-last inputs and
``train.compile``."""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator

from engine.train_config import TrainConfig


class TrainForward:
    """The training forward of one micro-batch, under autocast.

    train.compile: only this forward goes through the compiled wrapper; the prepared model
    (accumulate, clipping, train/eval) and the unwrapped one (checkpoints, evaluation, the
    caller's save) stay the plain modules, so saved keys carry no ``_orig_mod.`` prefix."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, accelerator: Accelerator,
                 batch_key: str | None):
        self.cfg, self.accelerator, self.batch_key = cfg, accelerator, batch_key
        if cfg.compile:
            # the compiled entries of earlier runs in this process (prior levels share
            # LevelPrior.forward) count against dynamo's recompile limit (8 per function);
            # past it training silently runs eager
            torch.compiler.reset()
        self.module = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
        # under compile the step is a device tensor refilled each step: a Python int would
        # be a graph constant (the SQ temperature depends on it), a new tensor a host-to-
        # device copy, and a CPU tensor would keep CUDA graphs from being used
        self.step = torch.zeros((), dtype=torch.long, device=accelerator.device) if cfg.compile else None
        # what the model decides on the host from the step (e.g. whether an adversarial game
        # has started) it learns here, outside the compiled forward
        self.set_step = getattr(accelerator.unwrap_model(model), "set_step", None)

    def __call__(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        if self.set_step is not None:
            self.set_step(step)
        with self.accelerator.autocast():
            inputs = batch[self.batch_key] if self.batch_key else batch
            if self.cfg.channels_last and torch.is_tensor(inputs) and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            if self.step is None:
                return self.module(inputs, step=step)
            self.step.fill_(step)
            return self.module(inputs, step=self.step)
