"""What the training loop counts between its log lines, on the device (no host sync per
step): the loss terms of the current window and the bad examples the data replaced."""

from __future__ import annotations

import time
from typing import Any

import torch
from accelerate import Accelerator


class BadExampleCount:
    """Examples the dataset replaced (data.skip_bad_examples: a batch field
    ``bad_examples``), counted on the device: no host sync per batch."""

    def __init__(self, accelerator: Accelerator, resumed: int):
        self.accelerator, self.resumed = accelerator, resumed
        self.count = torch.zeros((), dtype=torch.long, device=accelerator.device)
        self.reported = False  # the data reports them: train lines carry the count

    def add(self, batch: Any) -> None:
        if isinstance(batch, dict) and "bad_examples" in batch:
            self.reported = True
            self.count += batch["bad_examples"].sum()

    def total(self) -> int:
        """The run's count, all processes and resumptions together."""
        n = self.count
        if self.accelerator.num_processes > 1:
            n = self.accelerator.reduce(self.count.reshape(1).clone(), "sum")
        return self.resumed + int(n)


class LossWindow:
    """The loss terms since the last train line, summed on the device (no host sync until
    that line), and the examples seen since."""

    def __init__(self, accelerator: Accelerator, t0: float):
        self.accelerator = accelerator
        self.sums: dict[str, torch.Tensor] = {}
        # steps per term: a term can join mid-window (the adversarial terms from their start step)
        self.counts: dict[str, int] = {}
        self.seen, self.t = 0, t0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
            self.counts[k] = self.counts.get(k, 0) + 1

    def close(self) -> tuple[dict[str, float], float]:
        """(the mean of each term, examples per second) over the window; starts the next."""
        now = time.perf_counter()
        sums = self.sums
        if self.accelerator.num_processes > 1 and sums:
            # the mean over all processes (each saw an equal share of the batch)
            keys = sorted(sums)
            sums = dict(zip(keys, self.accelerator.reduce(torch.stack([sums[k] for k in keys]), "mean").unbind()))
        record = {k: float(v) / self.counts[k] for k, v in sums.items()}
        rate = self.seen / max(now - self.t, 1e-9)
        self.sums, self.counts, self.seen, self.t = {}, {}, 0, now
        return record, rate
