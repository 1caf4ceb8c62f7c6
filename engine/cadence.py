"""When the training loop evaluates, checkpoints and stops on a signal, and the evaluation
call itself."""

from __future__ import annotations

from collections.abc import Callable

import torch
from accelerate import Accelerator

from engine.signals import StopSignals
from engine.tracking import MetricsLog
from engine.train_config import TrainConfig


def due(every: int, step: int, total: int) -> bool:
    """A periodic evaluation / checkpoint at ``step`` (the end of the run has its own)."""
    return bool(every) and step % every == 0 and step != total


def stop_requested(signals: StopSignals, step: int, cfg: TrainConfig, accelerator: Accelerator) -> bool:
    """Whether a stop signal ends the run after ``step`` (every process agreeing)."""
    if accelerator.num_processes == 1:
        return signals.received is not None
    if step % cfg.log_every:
        return False
    # processes agree at log steps (where they sync anyway), or the checkpoint's
    # collectives would wait on a process that went on training
    flag = torch.tensor([1.0 if signals.received else 0.0], device=accelerator.device)
    return float(accelerator.reduce(flag, "sum")) > 0


def run_evaluation(evaluate: Callable, step: int, model: torch.nn.Module, unwrapped: torch.nn.Module,
                   accelerator: Accelerator, log: MetricsLog) -> dict[str, float]:
    """``evaluate`` on the main process with the model in eval mode, its metrics logged."""
    result: dict[str, float] = {}
    if accelerator.is_main_process:
        model.eval()
        result = evaluate(unwrapped, step)
        model.train()
        log.write({"step": step, "split": "eval", **result})
    accelerator.wait_for_everyone()
    return result
