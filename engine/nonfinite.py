"""What the training loop does about a NaN / inf loss: ``train.nan_policy``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from engine.checkpoint import CKPT_RE


class NonFiniteLossError(ValueError):
    """Training stopped on a NaN / inf loss (train.nan_policy='stop'). A ValueError, so the
    CLI reports it as an error line (exit status 2), not a traceback."""



class NonFiniteGuard:
    """train.nan_policy (docs/reliability.md, "Numerical faults").

    'stop' adds no per-step host sync: the first bad step is recorded on the device and
    read where the loop syncs anyway (log lines, evaluations, checkpoints, the end); steps
    after it may run, but nothing of theirs is checkpointed, evaluated or logged. 'skip'
    must withhold the very update, so it reads each loss on the host (one sync per
    micro-batch, only under that policy) and puts the buffers back."""

    def __init__(self, policy: str, accelerator: Accelerator, skipped: int, bar: tqdm):
        self.policy, self.accelerator, self.bar = policy, accelerator, bar
        self.bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)
        self.skipped = skipped  # optimizer steps withheld so far, over the whole run
        self.window_ok = True  # 'skip': every micro-batch of this optimizer step was finite
        self.saved_buffers: list[torch.Tensor] | None = None

    def start_micro_batch(self, model: torch.nn.Module) -> None:
        if self.policy == "skip" and self.saved_buffers is None:
            # the forward pass updates buffers (EMA codebooks, BatchNorm statistics): a
            # withheld step must leave them as they were too
            self.saved_buffers = [b.detach().clone() for b in model.buffers()]

    def check(self, loss: torch.Tensor, step: int) -> bool:
        """Whether to backpropagate ``loss`` (False: 'skip' and a non-finite loss)."""
        if self.policy != "skip":
            self.bad_step = torch.where(
                (self.bad_step < 0) & ~torch.isfinite(loss.detach()).all(),
                torch.full_like(self.bad_step, step + 1), self.bad_step,
            )
            return True
        flag = torch.isfinite(loss.detach()).all().float().reshape(1)
        world = self.accelerator.num_processes
        if world > 1:  # every process must agree, or DDP's collectives deadlock
            flag = self.accelerator.reduce(flag, "sum") / world
        finite = bool(flag.item() == 1.0)  # the one host sync of 'skip'
        self.window_ok = self.window_ok and finite
        return finite

    def withhold(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """Drop the gradients and put the buffers back."""
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buf, old in zip(model.buffers(), self.saved_buffers):
                buf.copy_(old)

    def end_step(self, step: int) -> None:
        if not self.window_ok:
            self.skipped += 1
            warnings.warn(f"train: non-finite loss at step {step + 1}; step skipped "
                          f"(train.nan_policy=skip; {self.skipped} so far)", stacklevel=3)
        self.window_ok, self.saved_buffers = True, None

    def stop_if_bad(self, last_good: Optional[Path]) -> None:
        """'stop': raise :class:`NonFiniteLossError` if any process saw a bad loss."""
        if self.policy != "stop":
            return
        found = self.bad_step.reshape(1)
        if self.accelerator.num_processes > 1:
            found = self.accelerator.gather(found)
        found = found[found >= 0]
        if not found.numel():
            return
        self.bar.close()
        kept = f"the last good checkpoint, {last_good}, is intact" if last_good else \
            "no checkpoint had been written yet"
        last_good_step = int(CKPT_RE.match(last_good.name).group(1)) if last_good else 0
        raise NonFiniteLossError(
            f"train: non-finite loss (NaN or inf) at step {int(found.min())}; training stopped and "
            f"nothing after step {last_good_step} was saved; {kept}. Lower train.lr, set "
            f"train.clip_grad, or set train.nan_policy=skip to skip such steps"
        )
