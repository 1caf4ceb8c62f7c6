"""Gradient checkpointing for the tokenizer networks."""

from __future__ import annotations

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
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        return x
