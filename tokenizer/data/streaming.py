"""``data.streaming``: a split read as a stream (HF ``datasets`` in streaming mode: Parquet
or WebDataset .tar shards, or a hub dataset), decoded row by row by the same code as the
map-style :class:`~tokenizer.data.hf_dataset.HFDataset`.

Who reads what (our own shard assignment, so that the order does not depend on how
``datasets`` splits work between DataLoader workers, which it does by the worker's id and
which a resumed loader, always starting with worker 0, could not continue):

* each epoch the shards are put in an order drawn from (seed, epoch) (file order with
  ``data.shuffle_buffer: 0``);
* under ``accelerate launch`` with W processes, process p takes the shards p, p + W, ... of
  that order when W divides the shard count, else every shard's rows p, p + W, ... (the
  rule of ``datasets.distributed.split_dataset_by_node``): the processes' shares are
  disjoint either way;
* a process's share is split by whole shards between its *readers*, one per DataLoader
  worker, so no row is read twice; each reader shuffles its rows through a buffer seeded by
  (seed, epoch, process, reader) and starts its next epoch when its shards run out.

A reader's position is (epoch, rows handed out in that epoch); engine/streams.py records
it in checkpoints, and a resumed reader replays its epoch to that row, reading the rows it
skips but not decoding them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Optional

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from tokenizer.config import DataConfig
from tokenizer.data.hf_dataset import MAX_CONSECUTIVE_BAD, BadExampleError, HFDataset, RowDecoding
from tokenizer.data.registry import builder_args
from tokenizer.data.sources import load_split, split_base

READ_BATCH = 64  # rows read from a shard at a time


def open_stream(cfg: DataConfig, split: str):
    """-> (``datasets.IterableDataset``, where it comes from, its row count or None)."""
    import datasets

    kwargs, where = builder_args(cfg, split)
    stream = load_split(cfg, kwargs, split, where, streaming=True)
    if not isinstance(stream, datasets.IterableDataset):
        raise ValueError(f"{where}: split {split!r} did not load as one stream")
    return stream, where, _row_count(stream, kwargs, split)


def _row_count(stream, kwargs: dict, split: str) -> Optional[int]:
    """From the Parquet footers (no row is read), or the split sizes a hub dataset
    declares; None for WebDataset shards and undeclared sizes."""
    base = split_base(split)
    if kwargs["path"] == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.read_metadata(f).num_rows for f in kwargs["data_files"][base])
    splits = stream.info.splits if stream.info is not None else None
    if splits and base in splits and splits[base].num_examples:
        return int(splits[base].num_examples)
    return None


def _shuffled(rows: Iterator[dict], size: int, rng: np.random.Generator) -> Iterator[dict]:
    """A buffer of ``size`` rows: each new row takes the place of a random one, which goes
    out; at the end the rest go out in a random order."""
    buffer: list[dict] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        j = int(rng.integers(size))
        yield buffer[j]
        buffer[j] = row
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


class StreamingDataset(RowDecoding, IterableDataset):
    """A split as a stream of decoded items ``{"x", "label"}`` plus the reader, epoch and
    row each came from (``engine.streams.POSITION_FIELDS``) and, with
    ``data.skip_bad_examples``, ``bad_examples``: the undecodable rows dropped just
    before it.

    For training (:meth:`layout` by the trainer) every reader cycles through epochs
    without end; otherwise (``hqvae encode``) the split is read once, in file order.
    """

    def __init__(self, stream, cfg: DataConfig, split: str, train: bool = False, where: str = "",
                 num_rows: Optional[int] = None):
        features = stream.features
        if features is None and hasattr(stream, "_resolve_features"):
            stream = stream._resolve_features()  # a hub stream that declares no types: its first rows
            features = stream.features
        if features is None:
            raise ValueError(f"{where}: the stream of split {split!r} declares no column types")
        self._pick_columns(features, cfg, split, train, where)
        self.stream = self._raw_columns(stream, features)
        self.num_rows = num_rows
        self.num_shards = stream.num_shards
        self.shuffle_buffer = cfg.resolved_shuffle_buffer if train else 0
        self.seed, self.rank, self.world, self.readers, self.cycle = 0, 0, 1, 1, False
        self.positions: list[tuple[int, int]] = [(0, 0)]
        self.offset = 0

    # -- set by the trainer ------------------------------------------------------------------
    def layout(self, *, seed: int, rank: int = 0, world: int = 1, workers: int = 0,
               cycle: bool = True) -> None:
        """Who reads what: process ``rank`` of ``world``, with one reader per DataLoader
        worker (``workers``; one without), the order drawn from ``seed``."""
        share = self.num_shards // world if self.num_shards % world == 0 else self.num_shards
        readers = max(1, workers)
        if share < readers:
            key = "train.num_workers" if cycle else "--num-workers"
            raise ValueError(
                f"{key}={workers}: each process reads {share} of the {self.num_shards} shard(s) of "
                f"{self.where} split {self.split!r}, and a worker reads whole shards; use at most "
                f"{share} worker(s), or more shard files")
        self.seed, self.rank, self.world, self.readers, self.cycle = seed, rank, world, readers, cycle
        self.positions, self.offset = [(0, 0)] * readers, 0

    def start_at(self, positions: list[tuple[int, int]], offset: int) -> None:
        """Reader r resumes at ``positions[r]`` = (epoch, rows handed out); DataLoader worker
        w plays reader (w + offset) mod readers."""
        self.positions, self.offset = list(positions), offset

    # -- reading -----------------------------------------------------------------------------
    def _shards(self, epoch: int, reader: int) -> tuple[list[int], int]:
        """(the shards ``reader`` of this process reads in ``epoch``, the row stride of the
        process split: 1 when whole shards are split between the processes)."""
        n = self.num_shards
        order = np.arange(n)
        if self.shuffle_buffer:
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
        if n % self.world == 0:
            mine, stride = order[self.rank::self.world], 1
        else:
            mine, stride = order, self.world
        return [int(s) for s in mine[reader::self.readers]], stride

    def _raw_rows(self, epoch: int, reader: int) -> Iterator[dict]:
        """The undecoded rows ``reader`` hands out in ``epoch``, in order."""
        shards, stride = self._shards(epoch, reader)

        def read() -> Iterator[dict]:
            for index in shards:
                # .iter() reads in this process: iterating the dataset itself inside a
                # DataLoader worker would split it again by the worker's id
                shard = self.stream.shard(num_shards=self.num_shards, index=index, contiguous=True)
                row = 0
                for batch in shard.iter(batch_size=READ_BATCH):
                    columns = list(batch)
                    for j in range(len(batch[columns[0]])):
                        if row % stride == self.rank % stride:
                            yield {c: batch[c][j] for c in columns}
                        row += 1

        if not self.shuffle_buffer:
            return read()
        rng = np.random.default_rng([self.seed, epoch, self.rank, reader])
        return _shuffled(read(), self.shuffle_buffer, rng)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        if workers != self.readers:
            raise RuntimeError(f"the stream was laid out for {self.readers} reader(s) and is read "
                               f"by {workers} DataLoader worker(s)")
        reader = ((info.id if info is not None else 0) + self.offset) % self.readers
        epoch, start = self.positions[reader]
        bad = 0  # undecodable rows since the last good one
        while True:
            read = 0
            for i, row in enumerate(self._raw_rows(epoch, reader)):
                read += 1
                if i < start:
                    continue  # replayed to the resume position, not decoded
                try:
                    item = self._item(row, i)
                except BadExampleError as err:
                    if not self.cfg.skip_bad_examples:
                        raise
                    self._report_bad(err)
                    bad += 1
                    if bad >= MAX_CONSECUTIVE_BAD:
                        raise BadExampleError(
                            f"{self.where} (split {self.split!r}): {bad} consecutive rows of the "
                            f"stream cannot be decoded, too many for data.skip_bad_examples to "
                            f"skip; last: {err}") from None
                    continue
                if self.cfg.skip_bad_examples:
                    item["bad_examples"], bad = bad, 0
                item.update(stream_reader=reader, stream_epoch=epoch, stream_row=i)
                yield item
            if not self.cycle:
                return
            if read == 0:  # a reader without rows would look for them for ever
                raise ValueError(
                    f"{self.where} (split {self.split!r}): process {self.rank} reader {reader} "
                    f"found no rows in its shards in epoch {epoch}")
            epoch, start = epoch + 1, 0

    def head(self, n: int) -> HFDataset:
        """The split's first ``n`` rows in file order as a map-style dataset (in memory,
        undecoded): what evaluations read from a stream."""
        import datasets

        rows = list(itertools.islice(iter(self.stream), n))
        if not rows:
            raise ValueError(f"{self.where}: split {self.split!r} has no rows (an empty dataset)")
        table = datasets.Dataset.from_list(rows, features=self.stream.features)
        return HFDataset(table, self.cfg, split=self.split, train=False, where=self.where)
