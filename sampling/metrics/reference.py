"""What a FID reference is, for images and audio alike: how it is named on the command line
(:func:`parse_reference`), built (:func:`build_reference_dataset`), fingerprinted
(:func:`fingerprint`) and keyed in the cache (:func:`reference_key`, one rule for both
modalities).

A key holds everything the cached features depend on: the feature network (its identity
and layer), the reference (its data settings and split, or a caller's name for it), the
number of examples, and a fingerprint of the data itself (file sizes and times, Arrow
fingerprints, tensor contents, a procedural generator's source and settings). The key is
stored in the cache file and compared on every read (sampling/metrics/cache.py), so a
changed reference under the same name and count is recomputed, not scored against stale
features.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.utils.data import Dataset

from sampling.metrics.cache import cache_dir, key_digest
from tokenizer.config import DataConfig
from tokenizer.data import HFDataset, build_dataset
from tokenizer.data.registry import LOCAL_PARQUET, data_location, source_entry

# 3: one key rule for image and audio references, stored in the file and checked on read;
# 4: the files fingerprinted are the ones the data source lists (a webdataset's tar shards
# too; a folder's files in name order)
REFERENCE_CACHE_VERSION = 4

# the other command for a reference of the other modality
_COMMAND = {"image": "hqvae fid", "audio": "hqvae audio-fid"}


def parse_reference(text: str, default_split: Optional[str] = "test") -> tuple[str, Optional[str]]:
    """'DATASET[:split]' -> (source, split; ``default_split`` when none is given). A colon
    followed by something path-like (a slash) belongs to the source (``C:/data``)."""
    if ":" in text:
        source, split = text.rsplit(":", 1)
        if source and split and not any(c in split for c in "/\\"):
            return source, split
    return text, default_split


def location(source: str, path: Optional[str]) -> tuple[str, Optional[str]]:
    """Where a data source reads from, so that `parquet` + a path and the same folder given
    as a plain path (read as Parquet), relative or absolute, count as one dataset."""
    entry = source_entry(source)
    if path is not None and entry.reads_path:
        return source, str(Path(path).expanduser().resolve())
    if path is None and entry is LOCAL_PARQUET and Path(source).expanduser().exists():
        return "parquet", str(Path(source).expanduser().resolve())
    return source, path


def build_reference_dataset(data: DataConfig, split: str, modality: str = "image") -> Dataset:
    """The reference split, checked to hold ``modality`` (image or audio); an unknown or
    empty source fails by name."""
    other = "audio" if modality == "image" else "image"
    kinds = {"image": "images", "audio": "audio"}
    wrong = (f"{data.source}: split {split!r} holds {kinds[other]}, not {kinds[modality]}; "
             f"{modality} FID needs {kinds[modality]} ({kinds[other]}: {_COMMAND[other]})")
    if source_entry(data.source).modality == other:  # a source that only ever holds the other kind
        raise ValueError(wrong)
    try:
        dataset = build_dataset(dataclasses.replace(data, modality=modality), split, train=False)
    except FileNotFoundError:
        raise
    except ValueError as err:  # a column of the other kind where this one was asked for
        if f"holds {other} data" in str(err):
            raise ValueError(wrong) from None
        raise
    except OSError as err:  # datasets' ConnectionError for an unknown / unreachable hub name
        raise ValueError(
            f"{data.source}: unknown dataset: not built in (shapes, tones), not a local parquet "
            f"file or folder, and not a hub dataset in the local cache ({err})"
        ) from None
    if getattr(dataset, "modality", modality) != modality:
        raise ValueError(wrong)
    if len(dataset) == 0:
        raise ValueError(f"{data.source}: split {split!r} is empty")
    return dataset


def data_settings(data: DataConfig, split: str) -> dict[str, Any]:
    """The data settings that decide a reference split's items (the ``reference`` part of a
    cache key)."""
    out = {
        "source": data.source, "split": split,
        "path": str(Path(data.path).expanduser().resolve()) if data.path else None,
        "source_path": (str(Path(data.source).expanduser().resolve())
                        if Path(data.source).expanduser().exists() else None),
        "column": data.column, "image_size": data.image_size, "channels": data.channels,
        "resize": data.resize, "seed": data.seed, "num_train": data.num_train,
        "num_eval": data.num_eval, "train_split": data.train_split,
        "skip_bad_examples": data.skip_bad_examples, "modality": data.resolved_modality,
    }
    if data.resolved_modality == "audio":
        out["audio"] = dataclasses.asdict(data.audio)
    return out


# ---------------------------------------------------------------------------------------
# fingerprints of the data


def _file_stats(paths) -> list:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def _hf_fingerprint(dataset: HFDataset, data: DataConfig, split: str) -> list:
    """The Arrow fingerprint, and size and mtime of the Arrow cache files and of the local
    source files (parquet, image or audio folder)."""
    table = dataset.table
    files = [f.get("filename") for f in getattr(table, "cache_files", []) or []]
    entry = source_entry(data.source)
    local = entry.files(data, split) if data_location(data) and entry.files is not None else []
    return [str(getattr(table, "_fingerprint", "")), _file_stats(files) + _file_stats(local)]


def _plain(value: Any, depth: int) -> Any:
    """``value`` as JSON-able data for a fingerprint, or ... for what says nothing about the
    data (modules, caches, callables)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, Path) for v in value):
            return _file_stats(value)  # a folder's files: their sizes and times
        items = [_plain(v, depth) for v in value]
        return [v for v in items if v is not ...]
    if torch.is_tensor(value) or isinstance(value, Dataset):
        return _describe(value, depth + 1) if depth < 4 else ...
    return ...


def _describe(source: Any, depth: int = 0) -> Any:
    if torch.is_tensor(source):
        t = source.detach().cpu().contiguous()
        digest = hashlib.sha256(t.flatten().view(torch.uint8).numpy().tobytes()).hexdigest()
        return ["tensor", str(t.dtype), list(t.shape), digest]
    if isinstance(source, HFDataset):
        return ["hf", _hf_fingerprint(source, source.cfg, source.split)]
    if isinstance(source, (list, tuple)):  # items held in memory: their contents
        return [_describe(item, depth + 1) for item in source]
    if isinstance(source, dict):
        return {str(k): _describe(v, depth + 1) for k, v in sorted(source.items(), key=lambda kv: str(kv[0]))}
    if source is None or isinstance(source, (bool, int, float, str)):
        return source
    try:
        code = inspect.getsource(type(source))  # a procedural set: its generator
    except (OSError, TypeError):
        code = type(source).__qualname__
    # public attributes: the settings (private ones are derived state, lazily built modules)
    fields = {k: _plain(v, depth) for k, v in sorted(getattr(source, "__dict__", {}).items())
              if not k.startswith("_")}
    return [hashlib.sha256(code.encode()).hexdigest(), {k: v for k, v in fields.items() if v is not ...}]


def fingerprint(source: Union[torch.Tensor, Dataset], data: Optional[DataConfig] = None,
                split: Optional[str] = None) -> str:
    """What cached features of ``source`` depend on besides their key's settings: a tensor's
    contents; for datasets-backed sets the Arrow fingerprint and the size and mtime of the
    Arrow cache files and of the local source files (``data`` / ``split``: the settings it
    was built with, default its own); for other datasets their class's source code, their
    settings and the sizes and times of the files they list (folders of samples)."""
    if isinstance(source, HFDataset) and data is not None:
        described = ["hf", _hf_fingerprint(source, data, split or source.split)]
    else:
        described = _describe(source)
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------------------------
# the cache key


def reference_cache_dir() -> Path:
    """Where reference features are cached: ``$HQVAE_CACHE/fid_ref``."""
    return cache_dir() / "fid_ref"


def reference_key(features: str, reference: dict[str, Any], n: int, data_fingerprint: str) -> dict[str, Any]:
    """The one cache key of reference features, for images and audio: the feature network
    and layer (``features``), the reference's settings or name, the number of examples
    and the data's :func:`fingerprint`."""
    return {"version": REFERENCE_CACHE_VERSION, "features": features, "reference": reference,
            "n": n, "fingerprint": data_fingerprint}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-40:] or "data"


def reference_cache_path(key: dict[str, Any], label: str, root: Optional[Path] = None) -> Path:
    """The cache file of ``key``: ``LABEL-nN-DIGEST.safetensors`` under ``root`` (default
    :func:`reference_cache_dir`); the label is for people, the digest tells keys apart."""
    root = Path(root) if root is not None else reference_cache_dir()
    return root / f"{_slug(label)}-n{key['n']}-{key_digest(key)}.safetensors"
