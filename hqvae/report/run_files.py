"""Reading a pipeline run's files for the report: JSON, JSONL and text that may be missing
or cut short by a run still writing them, and the code frequencies of its encoded codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

MAX_CODE_ROWS = 20_000  # rows of the codes' train split read for the code-frequency curves


def read_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        problems.append(f"{path}: could not be read ({err})")
        return None


def read_jsonl(path: Path) -> list[dict]:
    rows: list[dict] = []
    if not path.is_file():
        return rows
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a run still writing it
        if isinstance(row, dict):
            rows.append(row)
    return rows


def read_text(path: Path) -> Optional[str]:
    try:
        return path.read_text(errors="replace") if path.is_file() else None
    except OSError:
        return None


def code_counts(codes_dir: Path, max_rows: int = MAX_CODE_ROWS) -> Optional[dict]:
    """Code frequencies per level over ``max_rows`` rows (spread evenly) of the codes' train split
    (or the first split encoded): {"split", "rows", "levels": [(codebook size, counts)]}."""
    # imported on use: only a run with codes needs datasets and torch to be reported
    import datasets
    import numpy as np

    from engine.subsets import spread_indices
    from prior.codes import level_column, read_manifest

    manifest = read_manifest(codes_dir)
    splits = [s for s in manifest["splits"] if (codes_dir / s).is_dir()]
    if not splits:
        return None
    split = "train" if "train" in splits else splits[0]
    ds = datasets.load_from_disk(str(codes_dir / split))
    n = min(len(ds), max_rows)
    # rows spread over the split: codes of folder datasets come class by class
    table = ds.select(spread_indices(len(ds), n)).with_format("arrow")[:n]
    levels = []
    for lv, k in enumerate(manifest["codebook_sizes"]):
        column = table[level_column(lv)]
        chunks = [c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks]
        values = np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)
        values = values[(values >= 0) & (values < k)]
        levels.append((int(k), np.bincount(values, minlength=k)))
    return {"split": split, "rows": n, "of": len(ds), "levels": levels}
