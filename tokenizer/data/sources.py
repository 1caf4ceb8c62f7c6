"""Where a split's rows come from: local Parquet files and folders, WebDataset .tar shards,
imagefolder / audiofolder trees and hub names, loaded as one memory-mapped HF
``datasets.Dataset`` (or read as a stream: tokenizer/data/streaming.py). Which of these
a ``data.source`` is: tokenizer/data/registry.py."""

from __future__ import annotations

import glob
import itertools
import re
import warnings
from pathlib import Path
from typing import Any

from soundfile import available_formats as sf_formats

from tokenizer.config import DataConfig

_SPLIT_WORDS = ("train", "test", "validation", "valid", "val", "eval", "dev")


def split_base(split: str) -> str:
    """'train[:90%]' -> 'train': files are matched by name, the slice goes to datasets."""
    return split.split("[", 1)[0].strip()


def parquet_files(path: str, split: str) -> list[str]:
    """The parquet files behind ``split`` under ``path``: :func:`shard_files`."""
    return shard_files(path, split, "parquet")


def shard_files(path: str, split: str, ext: str) -> list[str]:
    """The ``.{ext}`` files (parquet, tar) behind ``split`` under ``path`` (a file or a folder).

    A folder is searched (and then its ``data/`` subfolder, the hub's layout) for
    ``{split}.{ext}``, ``{split}-*.{ext}`` (shards) and ``{split}/*.{ext}``.
    A single file serves every split.
    """
    base = split_base(split)
    root = Path(path).expanduser()
    if root.is_file():
        stem = root.name[: -len(f".{ext}")] if root.name.endswith(f".{ext}") else root.stem
        word = re.split(r"[-_.]", stem, maxsplit=1)[0].lower()
        if word in _SPLIT_WORDS and word != base.lower():
            warnings.warn(
                f"{root}: one file serves every split, so split {split!r} reads this "
                f"{word!r} file; point data.path at the folder to pick files by split name",
                stacklevel=4,
            )
        return [str(root)]
    if not root.is_dir():
        raise FileNotFoundError(f"{path}: no such {ext} file or folder")
    esc = glob.escape(base)
    for folder in (root, root / "data"):
        found: list[str] = []
        for pattern in (f"{esc}.{ext}", f"{esc}-*.{ext}", f"{esc}/*.{ext}"):
            found += glob.glob(str(folder / pattern))
        if found:
            return sorted(set(found))
    present = sorted(str(p.relative_to(root)) for p in root.rglob(f"*.{ext}"))
    listing = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "") or "none"
    hint = ""
    if not present and ext == "parquet":  # a folder of media files given as a plain path
        suffixes = {f.suffix.lower() for f in itertools.islice(root.rglob("*.*"), 2000)}
        for kind, known in (("image", _IMAGE_SUFFIXES), ("audio", _AUDIO_SUFFIXES)):
            if suffixes & known:
                hint = (f"; it holds {kind} files: read it as data.source={kind}folder "
                        f"data.path={path}")
                if kind == "image":
                    hint += f" (hqvae fid: --ref imagefolder:{base} --path {path})"
                break
    raise FileNotFoundError(
        f"{path}: no {ext} files for split {base!r} (looked for {base}.{ext}, "
        f"{base}-*.{ext}, {base}/*.{ext}, also under data/); {ext} files found: {listing}{hint}"
    )


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif"}


def is_local_parquet(source: str) -> bool:
    """Whether a ``data.source`` name is a local Parquet file or folder (else a hub name)."""
    p = Path(source).expanduser()
    return source.endswith(".parquet") or p.is_dir()


def load_split(cfg: DataConfig, kwargs: dict[str, Any], split: str, where: str, streaming: bool = False,
               unknown_split_hint: str = ""):
    """``datasets.load_dataset(**kwargs, split=split)`` (a stream with ``streaming``), its
    failures made one line that names the data; ``unknown_split_hint`` is added to the
    error about a split the data does not have."""
    import datasets

    source = cfg.source
    try:
        return datasets.load_dataset(**kwargs, split=split, streaming=streaming)
    except ValueError as err:  # e.g. an unknown split: add which data it was
        hint = unknown_split_hint if "Unknown split" in str(err) else ""
        raise ValueError(f"{where}: cannot load split {split!r}: {err}{hint}") from err
    except Exception as err:  # a hub name: no network, no such repository, ...
        if kwargs.get("path") != source:
            raise
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ValueError(
            f"data.source {source!r}: not a local file or folder, and it could not be loaded "
            f"from the Hugging Face Hub ({type(err).__name__}: {reason}); for local data set "
            f"data.source to parquet / imagefolder / audiofolder with data.path") from None


def drop_split_name_labels(table, root: Path):
    """HF's imagefolder builder takes the parent folder names as classes; with images directly
    in split folders (root/train/*.png, root/test/*.png) those are the split names, not
    classes. Such a label column is dropped."""
    import datasets

    feat = table.features.get("label")
    if isinstance(feat, datasets.ClassLabel) and feat.names and all(
            name.lower() in _SPLIT_WORDS and (root / name).is_dir() for name in feat.names):
        return table.remove_columns("label")
    return table


def scan_audiofolder(root: Path, split: str):
    """An audiofolder as a table of file paths (+ labels), built without ``datasets``'
    ``audiofolder`` builder: since datasets 4 that builder encodes every row through
    torchcodec, which needs FFmpeg and is absent here, although only paths are stored.

    Same layout rules as the builder: ``root/<split>/...`` when split folders exist, else
    every file belongs to split 'train'; labels are the parent folder names when there is
    more than one and all files sit at the same depth. Slices (``train[:90%]``) work.
    """
    import datasets

    base = split_base(split)
    extensions = {f".{fmt.lower()}" for fmt in sf_formats()} | {".opus", ".mp3"}
    folder = root / base
    if not folder.is_dir():
        split_dirs = sorted(
            d.name for d in root.iterdir() if d.is_dir() and d.name.lower() in _SPLIT_WORDS
        )
        if split_dirs:
            raise FileNotFoundError(
                f"{root}: no folder for split {base!r}; split folders found: {', '.join(split_dirs)}"
            )
        if base != "train":
            raise FileNotFoundError(
                f"{root}: has no split folders, so all its files form split 'train' and split "
                f"{base!r} does not exist (a slice such as 'train[90%:]' can serve as one)"
            )
        folder = root
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in extensions and p.is_file())
    if not files:
        raise FileNotFoundError(f"{folder}: no audio files ({', '.join(sorted(extensions))})")
    columns: dict[str, list] = {"audio": [str(p) for p in files]}
    features = {"audio": datasets.Value("string")}
    # labels come from the class folders of every split, as in HF's folder builder: a class
    # missing from one split must not renumber the others, and a one-class split keeps labels
    others = [] if folder == root else sorted(
        d for d in root.iterdir() if d.is_dir() and d.name.lower() in _SPLIT_WORDS and d != folder)
    every = [(folder, p) for p in files] + [
        (r, p) for r in others for p in r.rglob("*") if p.suffix.lower() in extensions and p.is_file()]
    classes = sorted({p.parent.name for _, p in every})
    depths = {len(p.relative_to(r).parts) for r, p in every}
    # class folders sit inside the split folder (or the root): files directly in the split
    # folders would otherwise be labelled with their split's name
    if len(classes) > 1 and len(depths) == 1 and depths.pop() >= 2:
        index = {name: i for i, name in enumerate(classes)}
        columns["label"] = [index[p.parent.name] for p in files]
        features["label"] = datasets.ClassLabel(names=classes)
    table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    # string -> {bytes, path} storage: no decoding, no torchcodec
    table = table.cast_column("audio", datasets.Audio(decode=False))
    if "[" in split:
        spans = datasets.ReadInstruction.from_spec(split).to_absolute({base: len(table)})
        parts = [table.select(range(span.from_, span.to)) for span in spans]
        table = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return table
