"""Training from a stream (``data.streaming``): batches from a torch ``IterableDataset``
whose position is part of every checkpoint, so that a resumed run continues with exactly
the batches the uninterrupted run would have seen (docs/guides/streaming.md;
docs/reliability.md, "Crash and resume").

The dataset reads its data as *readers*, one per DataLoader worker (one without workers),
each with whole shards of the process's share and its own seeded shuffle buffer, cycling
through epochs on its own. A reader's position is (epoch, rows it handed out in that
epoch); every item carries its reader, epoch and row (:data:`POSITION_FIELDS`), so the
position of what was trained on is known here without asking the workers. A resumed
reader replays its epoch up to that row without decoding the rows it skips.

What the dataset provides (``tokenizer.data.streaming.StreamingDataset`` does):
``num_rows`` (the split's row count, or None when unknown), ``layout(seed=, rank=,
world=, workers=)`` and ``start_at(positions, offset)``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, send_to_device
from torch.utils.data import DataLoader, IterableDataset

from engine.train_config import TrainConfig

POSITION_FIELDS = ("stream_reader", "stream_epoch", "stream_row")


def is_stream(dataset: Any) -> bool:
    return isinstance(dataset, IterableDataset)


class StreamBatches:
    """This process's micro-batches from a stream, and the positions of its readers."""

    def __init__(self, dataset: Any, cfg: TrainConfig, accelerator: Accelerator,
                 collate_fn: Callable | None):
        self.dataset, self.cfg, self.accelerator, self.collate_fn = dataset, cfg, accelerator, collate_fn
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.readers = max(1, cfg.num_workers)
        dataset.layout(seed=cfg.seed, rank=self.rank, world=self.world, workers=cfg.num_workers)
        self.positions = [[0, 0] for _ in range(self.readers)]
        self.num_rows: Optional[int] = dataset.num_rows

    def steps_per_epoch(self) -> int:
        """Optimizer steps in one pass over the split's rows; a stream of unknown length
        counts the run (``train.steps``) as its one epoch."""
        if self.num_rows is None:
            if self.cfg.epochs:
                raise ValueError(
                    "train.epochs: the stream's row count is unknown (WebDataset shards, or a hub "
                    "dataset without split sizes), so an epoch has no length; set train.steps")
            return max(1, self.cfg.steps)
        return max(1, self.num_rows // self.cfg.batch_size)

    def restore(self, saved: Optional[dict], step: int, checkpoint: Optional[Path]) -> None:
        """Continue from the positions in the checkpoint ``step`` was resumed from."""
        if step and saved is None:
            raise ValueError(
                f"checkpoint {checkpoint}: it holds no stream position (written with "
                f"data.streaming=false), so a streaming run cannot continue it; use another run_dir")
        if saved is not None:
            if (saved["processes"], saved["workers"]) != (self.world, self.cfg.num_workers):
                raise ValueError(
                    f"checkpoint {checkpoint}: its stream position was recorded by "
                    f"{saved['processes']} process(es) with train.num_workers={saved['workers']}; "
                    f"this run has {self.world} with train.num_workers={self.cfg.num_workers}. A "
                    f"stream resumes by replaying each reader's shards: use the same layout")
            self.positions = [list(p) for p in saved["positions"][self.rank]]
        # the loader asks its workers for batches in turn, starting with worker 0: worker w
        # continues the reader whose turn the uninterrupted run had reached
        offset = (step * self.cfg.grad_accum) % self.readers
        self.dataset.start_at([tuple(p) for p in self.positions], offset)

    def batches(self, micro: int):
        """Micro-batches on the device, without end; the positions follow what is handed out
        (the loop trains on every batch it takes before it saves a checkpoint)."""
        loader = DataLoader(
            self.dataset, batch_size=micro,
            num_workers=self.cfg.num_workers, collate_fn=self.collate_fn,
            # the seed a loader iterator draws at its start comes from this generator, not
            # from the global RNG (a resumed run would shift every later dropout mask)
            generator=torch.Generator().manual_seed(self.cfg.seed),
        )
        for batch in loader:
            reader, epoch, row = (batch.pop(key) for key in POSITION_FIELDS)
            self.positions[int(reader[0])] = [int(epoch[-1]), int(row[-1]) + 1]
            yield send_to_device(batch, self.accelerator.device)

    def state(self) -> dict:
        """The checkpoint's record: every process's reader positions (a collective)."""
        every = gather_object([self.positions]) if self.world > 1 else [self.positions]
        return {"processes": self.world, "workers": self.cfg.num_workers, "positions": every}
