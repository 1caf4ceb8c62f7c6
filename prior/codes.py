"""Code extraction: a dataset split encoded once by a tokenizer into an HF dataset on disk.

Layout of a codes directory::

    CODES_DIR/codes.json     manifest: tokenizer identity, code shapes, codebook sizes,
                             classes, and one entry per encoded split
    CODES_DIR/<split>/       ``datasets`` dataset (Arrow, memory-mapped when read):
                             columns level_0 .. level_{L-1} (flattened raster grids) [+ label]

The tokenizer identity (a hash of its config and weights) travels with the codes, the
priors trained on them and the samplers built from those priors, so codes of one
tokenizer are never modelled or decoded by another unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm.auto import tqdm

from engine.config import ConfigError, validate
from engine.files import write_text_atomic
from engine.run_dir import check_folder
from tokenizer.data import build_dataset, build_stream

MANIFEST = "codes.json"


class IdentityError(ValueError):
    """Codes, priors and tokenizers that do not belong together."""


def level_column(level: int) -> str:
    return f"level_{level}"


def check_identity(expected: str, found: str, what: str, hint: str = "") -> None:
    if expected != found:
        raise IdentityError(
            f"{what} belongs to tokenizer {found}, not to tokenizer {expected}"
            + (f"; {hint}" if hint else "")
        )


def read_manifest(codes_dir: str | Path) -> dict:
    path = Path(codes_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{codes_dir}: no {MANIFEST}; not a codes directory written by `hqvae encode`"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    for key in ("tokenizer_identity", "code_shapes", "codebook_sizes", "splits"):
        if key not in manifest:
            raise ValueError(f"{path}: missing key {key!r}")
    return manifest


def check_codes_dir(codes_dir: str | Path, split: str) -> None:
    """Refuse to write codes where that would replace what this tool did not write: the
    folder must be new, empty, or a codes directory (it holds codes.json), and a ``split``
    folder in it that the manifest does not list must be a dataset this tool saved."""
    codes_dir = Path(codes_dir)
    # the folder: new, empty or a codes directory of ours (the rule every output folder follows)
    if not check_folder(codes_dir, "codes", "codes folder") or not (codes_dir / MANIFEST).is_file():
        return
    final = codes_dir / split
    listed = split in read_manifest(codes_dir)["splits"]
    if final.exists() and not listed and not (final / "state.json").is_file():
        raise ValueError(
            f"codes folder {codes_dir}: {final} was not written by this tool; nothing was "
            f"written. Move it away or choose another folder")


def _write_json_atomic(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2))


def _code_dtype(codebook_size: int) -> str:
    return "int16" if codebook_size <= 32767 else "int32"


@torch.no_grad()
def encode_split(
    tokenizer,
    dataset: Dataset,
    codes_dir: str | Path,
    split: str,
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    max_examples: Optional[int] = None,
    source: Optional[dict] = None,
    overwrite: bool = False,
    progress: bool = True,
    tokenizer_run: Optional[str | Path] = None,
) -> dict:
    """Encode ``dataset`` (items {"x", "label"}) with ``tokenizer`` into ``codes_dir/split``.

    Returns the split's manifest entry. A split already encoded by the same tokenizer is
    kept unless ``overwrite``; a codes directory of another tokenizer is refused.
    ``dataset`` may be a stream (``data.streaming``): read once, ``max_examples`` then
    takes its first rows.
    ``tokenizer_run`` (where the tokenizer was loaded from) is recorded so samplers can
    find it.
    """
    import datasets

    codes_dir = Path(codes_dir)
    identity = tokenizer.identity
    manifest_path = codes_dir / MANIFEST
    check_codes_dir(codes_dir, split)
    if manifest_path.is_file():
        manifest = read_manifest(codes_dir)
        check_identity(
            identity, manifest["tokenizer_identity"], f"codes directory {codes_dir}",
            "write these codes to another --out directory",
        )
        if split in manifest["splits"] and (codes_dir / split).is_dir() and not overwrite:
            return manifest["splits"][split]
    else:
        manifest = {
            "tokenizer_identity": identity,
            "code_shapes": [list(s) for s in tokenizer.code_shapes],
            "codebook_sizes": list(tokenizer.codebook_sizes),
            "layer_kinds": [layer.kind for layer in tokenizer.config.model.layers],
            "modality": tokenizer.modality,
            "input_shape": list(tokenizer.input_shape),
            "num_classes": None,
            "class_names": None,
            "splits": {},
        }
    if tokenizer_run is not None:
        manifest["tokenizer_run"] = str(Path(tokenizer_run).resolve())
    streaming = isinstance(dataset, IterableDataset)
    if streaming:
        dataset.layout(seed=0, workers=num_workers, cycle=False)  # one pass, in file order
        n = max_examples if dataset.num_rows is None else min(dataset.num_rows, max_examples or dataset.num_rows)
        empty = next(iter(dataset.stream), None) is None
    else:
        n = len(dataset) if max_examples is None else min(len(dataset), max_examples)
        empty = n == 0
    if empty or n == 0:
        raise ValueError(f"split {split!r}: the dataset is empty; nothing to encode")
    has_label = getattr(dataset, "label_column", "label") is not None
    sizes = tokenizer.codebook_sizes
    lengths = [h * w for h, w in tokenizer.code_shapes]
    columns = {
        level_column(lv): datasets.Sequence(datasets.Value(_code_dtype(k)), length=lengths[lv])
        for lv, k in enumerate(sizes)
    }
    if has_label:
        columns["label"] = datasets.Value("int64")
    features = datasets.Features(columns)

    source_rows = dataset if streaming else torch.utils.data.Subset(dataset, range(n))
    loader = DataLoader(source_rows, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    label_max = [-1]
    written, skipped = [0], [0]
    tokenizer.model.eval()

    def rows():
        bar = tqdm(total=n, desc=f"encode {split}", unit="ex", disable=not progress, dynamic_ncols=True)
        taken = 0
        for batch in loader:
            if streaming:
                if n is not None and taken + len(batch["x"]) > n:  # max_examples: the first rows
                    batch = {k: v[: n - taken] for k, v in batch.items()}
                taken += len(batch["x"])
            bar.update(len(batch["x"]))
            stand_in = batch.get("bad_examples")
            if streaming and stand_in is not None:
                # a stream drops an undecodable row itself: the item after it is no copy
                skipped[0] += int(stand_in.sum())
            elif stand_in is not None and bool(stand_in.any()):
                # data.skip_bad_examples puts the next good row in place of an undecodable
                # one; that row is encoded at its own index, so its stand-in copy is dropped
                # (else the prior would train on a duplicate)
                keep = stand_in == 0
                skipped[0] += int((~keep).sum())
                batch = {k: v[keep] for k, v in batch.items()}
                if not len(batch["x"]):
                    continue
            codes = tokenizer.encode(batch["x"])
            flat = [c.flatten(1).cpu().numpy() for c in codes]
            labels = batch["label"].tolist() if has_label else None
            for i in range(len(batch["x"])):
                row: dict[str, Any] = {level_column(lv): flat[lv][i] for lv in range(len(flat))}
                if has_label:
                    row["label"] = labels[i]
                    label_max[0] = max(label_max[0], labels[i])
                yield row
            written[0] += len(batch["x"])
            if streaming and n is not None and taken >= n:
                break
        bar.close()

    codes_dir.mkdir(parents=True, exist_ok=True)
    if not manifest_path.is_file():
        # the manifest goes first: a folder that a killed run leaves behind is provably ours
        _write_json_atomic(manifest_path, manifest)
    cache = codes_dir / f".cache-{split}"
    tmp = codes_dir / f".tmp-{split}"
    for p in (cache, tmp):
        shutil.rmtree(p, ignore_errors=True)
    t0 = time.perf_counter()
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # ours above shows the encoding itself
    try:
        table = datasets.Dataset.from_generator(
            rows, features=features, cache_dir=str(cache),
            # the generator closes over the tokenizer, which datasets cannot hash
            fingerprint=f"{identity}-{split}-{n}-{time.time_ns()}",
        )
        table.save_to_disk(str(tmp))
    except datasets.exceptions.DatasetGenerationError as err:
        # datasets wraps whatever the generator raised (a bad row naming its file, a
        # tokenizer error) in "An error occurred while generating the dataset": the
        # cause is the error to report, as training reports it
        shutil.rmtree(cache, ignore_errors=True)
        if err.__cause__ is not None:
            raise err.__cause__ from None
        raise
    except KeyboardInterrupt:  # the split is not written: its partial rows go too
        for p in (cache, tmp):
            shutil.rmtree(p, ignore_errors=True)
        raise
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    del table
    shutil.rmtree(cache, ignore_errors=True)
    final = codes_dir / split
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)

    if has_label:
        known = getattr(dataset, "num_classes", None)
        found = known if known is not None else label_max[0] + 1
        if found > 0:
            manifest["num_classes"] = max(manifest.get("num_classes") or 0, found)
            names = getattr(dataset, "class_names", None)
            if names and len(names) == manifest["num_classes"]:
                manifest["class_names"] = list(names)
    entry = {
        "num_examples": written[0],
        "bad_examples_skipped": skipped[0],
        "has_label": has_label,
        "seconds": time.perf_counter() - t0,
        "source": source or {},
    }
    manifest["splits"][split] = entry
    _write_json_atomic(manifest_path, manifest)
    return entry


def check_encoding(tokenizer, data, codes_dir: str | Path, splits: Sequence[str]) -> None:
    """Refuse, before any encoding, data that the tokenizer cannot encode and a ``codes_dir``
    that is not ours to write (see :func:`check_codes_dir`). ``data``: a tokenizer
    ``DataConfig``."""
    validate(data)
    if data.shape != tokenizer.input_shape:
        raise ConfigError(f"data: shape {data.shape} differs from the tokenizer's {tokenizer.input_shape}")
    for split in dict.fromkeys(splits):
        check_codes_dir(codes_dir, split)


def encode_splits(
    tokenizer,
    data,
    codes_dir: str | Path,
    splits: Sequence[str],
    *,
    batch_size: int = 256,
    num_workers: int = 0,
    max_examples: Optional[int] = None,
    overwrite: bool = False,
    tokenizer_run: Optional[str | Path] = None,
    log: Optional[Callable[[str], None]] = None,
) -> dict[str, dict]:
    """Encode the ``splits`` of ``data`` (a tokenizer ``DataConfig``) into ``codes_dir``, one
    :func:`encode_split` each; returns their manifest entries. The one encoding step behind
    `hqvae encode` and the pipeline's ``encode`` stage: both record the same source."""
    check_encoding(tokenizer, data, codes_dir, splits)
    source = {"source": data.source, "path": data.path, "column": data.column}
    entries = {}
    for split in dict.fromkeys(splits):
        entry = encode_split(
            tokenizer, (build_stream if data.streaming else build_dataset)(data, split, train=False),
            codes_dir, split, batch_size=batch_size,
            num_workers=num_workers, max_examples=max_examples, source=source, overwrite=overwrite,
            tokenizer_run=tokenizer_run,
        )
        entries[split] = entry
        if log is not None:
            bad = entry.get("bad_examples_skipped", 0)
            skipped = f" ({bad} bad rows skipped: data.skip_bad_examples)" if bad else ""
            log(f"{split}: {entry['num_examples']} examples{skipped} -> {Path(codes_dir) / split}")
    return entries


class CodesDataset(Dataset):
    """One split of a codes directory, memory-mapped: items {"level_0": LongTensor (N0,),
    ..., "label": long} for the levels asked for. Rows are read in batches (one Arrow read
    per DataLoader batch), never all at once."""

    def __init__(self, codes_dir: str | Path, split: str, levels: Optional[list[int]] = None):
        import datasets

        self.codes_dir = Path(codes_dir)
        self.manifest = read_manifest(codes_dir)
        path = self.codes_dir / split
        if split not in self.manifest["splits"] or not path.is_dir():
            have = ", ".join(sorted(self.manifest["splits"])) or "none"
            raise FileNotFoundError(
                f"{codes_dir}: split {split!r} has not been encoded (encoded splits: {have}); "
                f"run `hqvae encode ... --split {split}`"
            )
        self.split = split
        num_levels = len(self.manifest["codebook_sizes"])
        self.levels = list(range(num_levels)) if levels is None else list(levels)
        for lv in self.levels:
            if not 0 <= lv < num_levels:
                raise ValueError(f"level {lv}: the codes have levels 0..{num_levels - 1}")
        try:
            table = datasets.load_from_disk(str(path))
            if len(table):  # reading a row touches the Arrow data, not just its header
                table[len(table) - 1]
        except Exception as err:  # a truncated or altered .arrow file (pyarrow raises several types)
            raise ValueError(
                f"{path}: the encoded split is damaged ({type(err).__name__}); re-encode it with "
                f"`hqvae encode ... --split {split} --overwrite`") from None
        self.has_label = "label" in table.column_names
        keep = [level_column(lv) for lv in self.levels] + (["label"] if self.has_label else [])
        self.table = table.select_columns(keep).with_format("numpy")

    @property
    def num_classes(self) -> Optional[int]:
        return self.manifest.get("num_classes")

    def label_range(self) -> Optional[tuple[int, int]]:
        """(smallest, largest) label of the split from the Arrow column (no row decoding);
        None without labels."""
        if not self.has_label or len(self.table) == 0:
            return None
        import pyarrow.compute as pc

        mm = pc.min_max(self.table.data.column("label"))
        return int(mm["min"].as_py()), int(mm["max"].as_py())

    def __len__(self) -> int:
        return len(self.table)

    def _rows(self, batch: dict, count: int) -> list[dict[str, torch.Tensor]]:
        cols = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in batch.items()}
        return [{k: v[i] for k, v in cols.items()} for i in range(count)]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([int(index)])[0]

    def __getitems__(self, indices: list[int]) -> list[dict[str, torch.Tensor]]:
        indices = [int(i) for i in indices]
        return self._rows(self.table[indices], len(indices))
