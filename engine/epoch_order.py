"""The training data's order: a seeded permutation per epoch, so that a resumed run sees
exactly the batches the uninterrupted run would have seen."""

from __future__ import annotations

import torch
from torch.utils.data import Sampler

# Above this many rows an epoch's order is computed index by index instead of as one
# randperm: a dataset's declared size (the generated `shapes` / `tones` take any
# data.num_train) must not cost 8 bytes a row before the first step. Sets up to this size
# keep randperm's order.
MAX_MATERIALISED_PERMUTATION = 2**24
_M64 = 2**64 - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of ``x``."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _lazy_permutation(n: int, g: torch.Generator, limit: int):
    """The first ``limit`` entries of a pseudo-random permutation of range(n), seeded by
    ``g``, in constant memory: a 4-round Feistel network is a bijection of the 2^(2h)
    integers of 2h bits, and cycle-walking (applying it again until the value falls below
    n) restricts it to a bijection of range(n)."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    keys = torch.randint(0, 2**62, (4,), generator=g).tolist()
    for i in range(limit):
        x = i
        while True:
            left, right = x >> half, x & mask
            for key in keys:
                left, right = right, left ^ (_mix64(right ^ key) & mask)
            x = (left << half) | right
            if x < n:
                break
        yield x


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch: the data order is a function of (seed, epoch),
    so a resumed run sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0
        # how many of the epoch's rows to hand out: the loop cuts an epoch to the batches it
        # trains on, so no loader (nor accelerate's one-batch look-ahead) reads a row it
        # would not use; the order of those it does use stays the full epoch's
        self.limit = n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.n > MAX_MATERIALISED_PERMUTATION:
            return _lazy_permutation(self.n, g, self.limit)
        return iter(torch.randperm(self.n, generator=g)[: self.limit].tolist())

    def __len__(self) -> int:
        return self.limit
