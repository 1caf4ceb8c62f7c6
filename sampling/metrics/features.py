"""Features of image and audio sets alike: one torch-fidelity loop, one way of spreading a
capped set over its source, one reference cache.

- :class:`SpreadRows`: ``n`` rows spread evenly over a tensor or dataset, as the tensors a
  torch-fidelity extractor takes (each modality converts its items in ``convert``).
- :class:`FeatureSpace`: a registered torch-fidelity extractor (the offline FID Inception
  of sampling/metrics/inception.py, or the audio classifier), the layer read and the
  identity that keys cached features.
- :func:`reference_set_features`: a :class:`ReferenceSet`'s features from the checksummed cache
  under the one key rule of sampling/metrics/reference.py, else computed and kept there.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.utils.data import Dataset
from torch_fidelity.utils import get_featuresdict_from_dataset

from engine.subsets import spread_indices
from sampling.metrics.cache import cached_tensors, check_cache_writable, checksum_path
from sampling.metrics.reference import fingerprint, reference_cache_path, reference_key
from tokenizer.config import DataConfig


def dataset_features(
    dataset: Dataset,
    extractor: torch.nn.Module,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """``{layer: (N, D) features}`` of every item of ``dataset`` (tensors) through a
    torch-fidelity extractor, batched by torch-fidelity's loop. ``num_workers`` > 0 lets it
    decode with its worker pool (it picks the count); 0 decodes in this process."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    # torch-fidelity moves batches with .cuda(): to the current CUDA device, made ours here
    with torch.cuda.device(device) if cuda else contextlib.nullcontext():
        return get_featuresdict_from_dataset(dataset, extractor, batch_size, cuda,
                                             save_cpu_ram=num_workers == 0, verbose=progress)


class SpreadRows(Dataset):
    """``n`` rows spread evenly over a tensor or dataset (a capped set spans the whole
    split), one tensor per item. Dataset items may be tensors or ``{"x": tensor, ...}``
    dicts (every ``tokenizer.data`` dataset); items that stand in for an undecodable row
    (``data.skip_bad_examples``: a copy of the next good row) are recorded in
    ``stand_ins``, as this process read them."""

    def __init__(self, source: Union[torch.Tensor, Dataset], n: Optional[int] = None, name: str = "input"):
        if torch.is_tensor(source):
            source = source.detach().cpu()
        elif not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
            raise ValueError(f"{name}: expected a tensor or a dataset, got {type(source).__name__}")
        self.source = source
        self.name = name
        self.rows = spread_indices(len(source), n)
        self.stand_ins: set[int] = set()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self.rows):
            raise IndexError(f"{self.name}: index {index} out of range for {len(self.rows)} items")
        item = self.source[self.rows[index]]
        if isinstance(item, dict):
            if item.get("bad_examples"):
                self.stand_ins.add(index)
            item = item["x"]
        if not torch.is_tensor(item):
            raise ValueError(f"{self.name} item {index}: expected a tensor, got {type(item).__name__}")
        return self.convert(item)

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        """One item as the extractor takes it (the modality's subclasses convert)."""
        return x


@dataclass
class FeatureSpace:
    """Where a modality's sets are compared: a torch-fidelity ``extractor``, the ``layer``
    read from it (``dim`` wide), the ``identity`` of its weights (cached features are kept
    per identity) and the :class:`SpreadRows` subclass that feeds it."""

    modality: str  # "image" or "audio"
    extractor: torch.nn.Module
    extractor_name: str  # its torch-fidelity registry name
    layer: str
    dim: int
    identity: str
    rows: type = SpreadRows
    device: Union[str, torch.device] = "cpu"
    batch_size: int = 32
    num_workers: int = 0
    progress: bool = False
    dtype: Optional[torch.dtype] = None  # the features' dtype; None: the extractor's

    @property
    def name(self) -> str:
        """``extractor/layer``, as results name their features."""
        return f"{self.extractor_name}/{self.layer}"

    def wrap(self, source: Any, n: Optional[int] = None, name: str = "input") -> SpreadRows:
        """``source`` (a tensor or dataset; already wrapped: as it is) as this space's rows."""
        return source if isinstance(source, SpreadRows) else self.rows(source, n, name)

    def features(self, data: SpreadRows) -> torch.Tensor:
        """(N, dim) features of every row of ``data``."""
        if len(data) == 0:
            raise ValueError(f"{data.name}: nothing to score (no items)")
        feats = dataset_features(data, self.extractor, batch_size=self.batch_size, device=self.device,
                                 num_workers=self.num_workers, progress=self.progress)[self.layer]
        return feats.to(self.dtype) if self.dtype is not None else feats


@dataclass
class ReferenceSet:
    """A reference to score against: ``source`` (a tensor or dataset), ``settings`` (its data
    settings and split, or a caller's name for it: the reference part of the cache key),
    ``label`` (the readable start of its cache file's name), at most ``max_examples`` rows
    spread over it, and the ``data`` / ``split`` it was built from (for its fingerprint)."""

    source: Any
    settings: dict[str, Any]
    label: str
    max_examples: Optional[int] = None
    data: Optional[DataConfig] = None
    split: Optional[str] = None

    @property
    def n(self) -> int:
        """How many rows are scored."""
        return min(len(self.source), self.max_examples) if self.max_examples else len(self.source)


@dataclass
class CacheEntry:
    """Where a reference's features are cached, and the key they are kept under."""

    path: Path
    key: dict[str, Any]


def cache_entry(space: FeatureSpace, ref: ReferenceSet, root: Optional[Path] = None) -> CacheEntry:
    """The cache file and key of ``ref``'s features in ``space`` (the one key rule)."""
    key = reference_key(f"{space.name}@{space.identity}", ref.settings, ref.n,
                        fingerprint(ref.source, ref.data, ref.split))
    return CacheEntry(reference_cache_path(key, ref.label, root), key)


def check_reference_cache(entry: Optional[CacheEntry]) -> None:
    """Fail now, not after the samples' features, when the reference's features are not
    cached yet and the cache cannot take them (a cache that holds them may be read-only)."""
    if entry is not None and not (entry.path.is_file() and checksum_path(entry.path).is_file()):
        check_cache_writable(entry.path.parent)


def reference_set_features(
    space: FeatureSpace, ref: ReferenceSet, entry: Optional[CacheEntry] = None,
) -> tuple[torch.Tensor, int]:
    """``(features, rows skipped)`` of ``ref``'s rows, from the cache file of ``entry`` when
    it holds them under the same key (None: no cache). Rows that stood in for undecodable
    ones are left out: a stand-in (a copy of the next good row, which is scored at its own
    place) would count that example twice and the reference as larger than it is."""
    n = ref.n

    def compute() -> dict[str, torch.Tensor]:
        data = space.wrap(ref.source, n, "reference")
        feats = space.features(data)
        keep = torch.ones(len(feats), dtype=torch.bool)
        keep[sorted(data.stand_ins)] = False
        return {"features": feats[keep], "bad_examples_skipped": torch.tensor([len(data.stand_ins)])}

    def valid(t: dict[str, torch.Tensor]) -> bool:
        count = t.get("bad_examples_skipped")
        return ("features" in t and count is not None and count.numel() == 1
                and tuple(t["features"].shape) == (n - int(count.reshape(-1)[0]), space.dim))

    tensors = cached_tensors(entry.path if entry else None, compute, valid, entry.key if entry else {})
    return tensors["features"], int(tensors["bad_examples_skipped"].reshape(-1)[0])
