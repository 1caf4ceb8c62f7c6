"""Gradient checkpointing for the tokenizer networks."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointed(nn.Module):
    """A network part that runs its blocks one after another and, when
    ``gradient_checkpointing`` is on and it trains, recomputes each block in the backward
    pass instead of keeping its activations (memory for compute: at 256 px the activations
    dominate training memory). Set through :meth:`tokenizer.model.HQVAE.set_gradient_checkpointing`."""

    gradient_checkpointing = False

    def run(self, blocks: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in blocks:
            if not recompute:
                x = block(x)
                continue
            norms = _batch_norms(block)
            if norms and not torch.compiler.is_compiling():
                # a compiled graph recomputes without repeating the buffer updates
                x = checkpoint(block, x, use_reentrant=False,
                               context_fn=functools.partial(_recompute_keeping_stats, norms))
            else:
                x = checkpoint(block, x, use_reentrant=False)
        return x


def _batch_norms(block: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in block.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


class _KeepRunningStats:
    """Rerunning a block in the backward pass would update its BatchNorm running statistics
    a second time (twice the momentum, twice the batch count): keep what the forward left."""

    def __init__(self, norms: list[nn.modules.batchnorm._BatchNorm]):
        self.norms = norms

    def __enter__(self) -> None:
        self.saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
                      for m in self.norms]

    def __exit__(self, *exc) -> bool:
        with torch.no_grad():
            for m, (mean, var, count) in zip(self.norms, self.saved):
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)
        return False  # the recomputation's early stop ends it with an exception: let it through


def _recompute_keeping_stats(norms):
    return contextlib.nullcontext(), _KeepRunningStats(norms)
