"""The entry point: the dataset a config names for a split, and the modality it holds."""

from __future__ import annotations

import dataclasses
from typing import Optional, TypeVar

from torch.utils.data import Dataset

from engine.config import validate
from tokenizer.config import DataConfig
from tokenizer.data.hf_dataset import HFDataset
from tokenizer.data.modality import check_modality, feature_modality
from tokenizer.data.registry import load_table, source_entry
from tokenizer.data.streaming import StreamingDataset, open_stream

C = TypeVar("C")


def data_shape(cfg: DataConfig) -> tuple[int, int, int]:
    """(C, H, W) of one model input."""
    return cfg.shape


def build_dataset(cfg: DataConfig, split: str, train: bool = False) -> Dataset:
    """The dataset for ``split`` (usually ``cfg.train_split`` or ``cfg.eval_split``).

    ``train=True`` allows random crops (``resize: random_crop``, ``audio.crop: random``);
    otherwise every item is deterministic. For the procedural sources the split named
    ``cfg.train_split`` has ``num_train`` items and any other split ``num_eval``.
    Split names may carry a datasets slice, e.g. ``train[:95%]``. A config with
    ``data.streaming`` is refused: see :func:`build_stream` and :func:`eval_dataset`.
    """
    cfg.validate()
    if cfg.streaming:
        raise ValueError(
            f"data.streaming: split {split!r} is needed here with random access, which a stream "
            f"does not have (train-tokenizer, eval-tokenizer and encode read streams); set "
            f"data.streaming=false")
    entry = source_entry(cfg.source)
    if entry.procedural:
        # generated on demand, so any name would "exist": only the usual ones do
        known = dict.fromkeys([cfg.train_split, cfg.eval_split, "train", "validation", "test"])
        if split not in known:
            raise ValueError(f"data: source {cfg.source!r} has the splits {', '.join(map(repr, known))}; "
                             f"got {split!r}")
        check_modality(cfg, entry.modality, f"source {cfg.source!r}")
        return entry.generate(cfg, split)
    table, where = load_table(cfg, split)
    if len(table) == 0:
        raise ValueError(f"{where}: split {split!r} has no rows (an empty dataset)")
    return HFDataset(table, cfg, split=split, train=train, where=where)


def build_stream(cfg: DataConfig, split: str, train: bool = False) -> StreamingDataset:
    """``split`` read as a stream (``data.streaming``): tokenizer/data/streaming.py."""
    cfg.validate()
    stream, where, rows = open_stream(cfg, split)
    if rows == 0:
        raise ValueError(f"{where}: split {split!r} has no rows (an empty dataset)")
    return StreamingDataset(stream, cfg, split, train=train, where=where, num_rows=rows)


def eval_dataset(cfg: DataConfig, split: str, max_examples: int) -> Dataset:
    """The map-style dataset evaluations read: :func:`build_dataset`, or with
    ``data.streaming`` the split's first ``max_examples`` rows (a stream has no rows spread
    through it to pick)."""
    if not cfg.streaming:
        return build_dataset(cfg, split, train=False)
    return build_stream(cfg, split).head(max_examples)


def detect_modality(cfg: DataConfig, split: Optional[str] = None) -> str:
    """The modality the data actually holds: ``cfg.modality`` when set, else the kind of
    the named (or first) Image/Audio column of ``split``. Reading the schema is cheap
    (Arrow files are memory-mapped), and it lets an audio Parquet dataset such as FSDD
    work without ``data.modality=audio``."""
    if cfg.modality is not None or source_entry(cfg.source).modality is not None:
        return cfg.resolved_modality
    if cfg.streaming:  # the schema only: nothing of the split is downloaded
        features = open_stream(cfg, split or cfg.train_split)[0].features or {}
    else:
        features = load_table(cfg, split or cfg.train_split)[0].features
    if cfg.column is not None and cfg.column in features:
        return feature_modality(features[cfg.column]) or cfg.resolved_modality
    for feature in features.values():
        kind = feature_modality(feature)
        if kind is not None:
            return kind
    return cfg.resolved_modality


def resolve_modality(cfg: C) -> C:
    """``cfg`` (a stage config with a ``data`` section: the tokenizer's, the classifier's)
    with ``data.modality`` filled in from the data itself when unset, so the model's input
    shape (and the saved config) match what the dataset holds; checked again."""
    if cfg.data.modality is not None:
        return cfg
    data = dataclasses.replace(cfg.data, modality=detect_modality(cfg.data))
    cfg = dataclasses.replace(cfg, data=data)
    validate(cfg)
    return cfg
