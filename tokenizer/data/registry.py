"""The data sources ``data.source`` names, one registration each, and the calls that read a
split through them.

A fixed name (``shapes``, ``parquet``, ...) is registered below with what it is (generated
or read from files, the modality it always holds, whether ``data.streaming`` can read it,
whether it reads ``data.path``) and how its rows are loaded. Any other name is a local
Parquet file or folder (:data:`LOCAL_PARQUET`) when it looks like one, else a dataset on
the Hugging Face Hub (:data:`HUB`). :func:`source_entry` resolves a name to its entry.

Adding a source is one ``register(DataSource(...))`` call below; tests/test_sources.py
builds a tiny split of every registered source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from torch.utils.data import Dataset

from engine.registry import register_entry
from tokenizer.config import DataConfig
from tokenizer.data.procedural import ShapesDataset, TonesDataset
from tokenizer.data.sources import (
    drop_split_name_labels,
    is_local_parquet,
    load_split,
    scan_audiofolder,
    shard_files,
    split_base,
)


@dataclass(frozen=True)
class DataSource:
    """One kind of data ``data.source`` can name.

    ``procedural``: generated on demand from ``data.seed`` (any size, no files);
    ``generate(cfg, split)`` returns the split's dataset. Every other source loads a table
    of rows: ``builder(cfg, split)`` gives the ``datasets.load_dataset`` arguments (but the
    split) and a short description of where the data is, for sources read through a
    ``datasets`` builder (the map-style table, and the stream when ``streamable``);
    ``table(cfg, split)`` loads the map-style table itself where that takes more (folder
    scans, label fixes). ``modality``: what the source always holds (None: read from the
    data). ``local``: it reads local files, from ``data.path`` when ``reads_path`` (else
    the name is the path); ``files(cfg, split)`` lists the files behind a split.
    """

    name: str
    procedural: bool = False
    modality: Optional[str] = None
    streamable: bool = False
    local: bool = False
    reads_path: bool = False
    generate: Optional[Callable[[DataConfig, str], Dataset]] = None
    builder: Optional[Callable[[DataConfig, str], tuple[dict[str, Any], str]]] = None
    table: Optional[Callable[[DataConfig, str], tuple[Any, str]]] = None
    files: Optional[Callable[[DataConfig, str], list[str]]] = None


SOURCES: dict[str, DataSource] = {}


def register(source: DataSource) -> DataSource:
    """Make ``source`` available as ``data.source: <source.name>``."""
    return register_entry(SOURCES, source, "data.source")


def source_entry(name: str) -> DataSource:
    """The entry ``data.source: name`` reads through: a registered name, else a local
    Parquet file or folder, else a hub dataset."""
    if name in SOURCES:
        return SOURCES[name]
    return LOCAL_PARQUET if is_local_parquet(name) else HUB


def data_location(cfg: DataConfig) -> Optional[str]:
    """The local file or folder ``cfg`` reads (``data.path``, or the source name when that
    is the path); None for generated and hub data."""
    entry = source_entry(cfg.source)
    if not entry.local:
        return None
    return cfg.path if entry.reads_path else cfg.source


# -- how rows are loaded ----------------------------------------------------------------------

def builder_args(cfg: DataConfig, split: str) -> tuple[dict[str, Any], str]:
    """The ``datasets.load_dataset`` arguments (but the split) for a source read through a
    ``datasets`` builder, and a short description of where the data is."""
    entry = source_entry(cfg.source)
    if entry.builder is None:
        raise ValueError(f"data.source {cfg.source!r}: not read through a datasets builder")
    return entry.builder(cfg, split)


def load_table(cfg: DataConfig, split: str):
    """-> (HF ``datasets.Dataset`` of ``split``, a short description of where it came from)."""
    import datasets

    entry = source_entry(cfg.source)
    if entry.procedural:
        raise ValueError(f"data.source {cfg.source!r}: generated data has no table of rows")
    if entry.table is not None:
        table, where = entry.table(cfg, split)
    else:
        kwargs, where = entry.builder(cfg, split)
        table = load_split(cfg, kwargs, split, where)
    if not isinstance(table, datasets.Dataset):
        raise ValueError(f"{where}: split {split!r} did not load as one map-style dataset")
    return table, where


def _procedural_size(cfg: DataConfig, split: str) -> int:
    return cfg.num_train if split == cfg.train_split else cfg.num_eval


def _shards(kind: str, ext: str, from_path: bool):
    """The builder of a source whose splits are ``.{ext}`` shard files read by the
    ``datasets`` builder ``kind``, found under ``data.path`` (``from_path``) or the name."""

    def builder(cfg: DataConfig, split: str) -> tuple[dict[str, Any], str]:
        path = cfg.path if from_path else cfg.source
        if not path:
            raise ValueError(f"data.path: source {kind!r} needs a {kind} file or folder")
        files = shard_files(path, split, ext)
        return {"path": kind, "data_files": {split_base(split): files}}, f"{kind} {path}"

    return builder


def _shard_list(ext: str, from_path: bool):
    def files(cfg: DataConfig, split: str) -> list[str]:
        return shard_files(cfg.path if from_path else cfg.source, split, ext)

    return files


def _folder(cfg: DataConfig) -> Path:
    """``data.path`` of a folder source, checked to be a folder."""
    if not cfg.path:
        raise ValueError(f"data.path: source {cfg.source!r} needs a folder (data_dir)")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{cfg.path}: no such folder for source {cfg.source!r}")
    return root


def _folder_files(cfg: DataConfig, split: str) -> list[str]:
    return sorted(str(p) for p in _folder(cfg).rglob("*") if p.is_file())


def _builder_split(root: Path, split: str) -> str:
    """The name datasets' imagefolder builder gives the split folder ``split`` names. The
    builder recognises split folders by keyword (datasets.data_files.SPLIT_KEYWORDS) and
    files val/, valid/ and dev/ under 'validation', eval/ and testing/ under 'test'; the
    split is named by its folder here, so data.eval_split=val reads DIR/val/ (ImageNet's
    layout). Two folders the builder would merge into one split are refused."""
    from datasets.data_files import SPLIT_KEYWORDS

    base = split_base(split)
    folders = sorted(d.name for d in root.iterdir() if d.is_dir())
    if base not in folders:
        return split
    for name, words in SPLIT_KEYWORDS.items():
        if base in words:
            merged = [f for f in folders if f in words]
            if len(merged) > 1:
                raise ValueError(f"{root}: the folders {', '.join(f + '/' for f in merged)} are one split "
                                 f"({str(name)!r}) to the datasets library's imagefolder; keep one of them")
            return str(name) + (split[split.index("["):] if "[" in split else "")  # the slice kept
    keywords = sorted({w for words in SPLIT_KEYWORDS.values() for w in words})
    raise ValueError(f"{root}: imagefolder reads split folders by name ({', '.join(keywords)}), and {base}/ "
                     f"is none of them: rename it, or hold out a slice such as data.eval_split='train[90%:]'")


def _imagefolder_table(cfg: DataConfig, split: str):
    root = _folder(cfg)
    where = f"{cfg.source} {cfg.path}"
    base = split_base(split)
    # the same layout advice audiofolder gives (scan_audiofolder)
    hint = (f" (without DIR/{base}/ folders every image is in split 'train'; make a "
            f"{base}/ folder, or hold out a slice such as data.eval_split='train[90%:]')")
    table = load_split(cfg, {"path": "imagefolder", "data_dir": str(root)}, _builder_split(root, split), where,
                       unknown_split_hint=hint)
    return drop_split_name_labels(table, root), where


def _audiofolder_table(cfg: DataConfig, split: str):
    return scan_audiofolder(_folder(cfg), split), f"{cfg.source} {cfg.path}"


# -- the sources ----------------------------------------------------------------------------

register(DataSource(
    "shapes", procedural=True, modality="image",
    generate=lambda cfg, split: ShapesDataset(_procedural_size(cfg, split), cfg.image_size,
                                              cfg.channels, cfg.seed, split)))
register(DataSource(
    "tones", procedural=True, modality="audio",
    generate=lambda cfg, split: TonesDataset(_procedural_size(cfg, split), cfg.audio, cfg.seed, split)))
register(DataSource(
    "parquet", streamable=True, local=True, reads_path=True,
    builder=_shards("parquet", "parquet", from_path=True), files=_shard_list("parquet", from_path=True)))
register(DataSource(
    "webdataset", streamable=True, local=True, reads_path=True,
    builder=_shards("webdataset", "tar", from_path=True), files=_shard_list("tar", from_path=True)))
register(DataSource(
    "imagefolder", modality="image", local=True, reads_path=True, table=_imagefolder_table,
    files=_folder_files))
register(DataSource(
    "audiofolder", modality="audio", local=True, reads_path=True, table=_audiofolder_table,
    files=_folder_files))

# not fixed names: what any other data.source is (source_entry picks one)
LOCAL_PARQUET = DataSource(
    "<local parquet path>", streamable=True, local=True,
    builder=_shards("parquet", "parquet", from_path=False), files=_shard_list("parquet", from_path=False))
# a hub name; needs the network or a populated HF cache
HUB = DataSource("<hub dataset>", streamable=True,
                 builder=lambda cfg, split: ({"path": cfg.source}, cfg.source))
