"""Reading a sample folder: its file names and the functions every reader of a finished
set goes through (scores, the pipeline, the report, benchmarks), so that the layout the
writer (:mod:`sampling.outputs`) produces is spelled out once.

Layout of a sample folder::

    OUT/images/000000.png ...  or  OUT/audio/000000.wav ...
    OUT/grid.png               the first ``grid`` samples (spectrograms for audio)
    OUT/codes.safetensors      the sampled codes, one tensor per level (+ labels)
    OUT/labels.json            {file name: label} for class-conditional samples
    OUT/samples.npz            (``npz``) the uint8 (N, H, W, 3) batch of the ADM evaluator
    OUT/samples.json           settings, identities, counts and timings (written last)
    OUT/.hqvae-partial/        while a set is unfinished: its progress and settings

A set is finished when its samples.json is there; until then only the writer reads it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Union

import numpy as np

RECORD = "samples.json"
LABELS = "labels.json"
CODES = "codes.safetensors"
GRID = "grid.png"
NPZ = "samples.npz"
SAMPLE_FILES = (RECORD, LABELS, CODES, GRID, NPZ)
# the progress of an unfinished set: state.json (settings, samples complete), the codes and
# the ADM batch being filled in, the grid's samples so far
PARTIAL = ".hqvae-partial"
STATE = "state.json"
MEDIA = {"image": ("images", ".png"), "audio": ("audio", ".wav")}
NUMBERED = re.compile(r"(\d{6,})\.(png|wav)")  # a sample's file name (six digits or more)

Folder = Union[str, Path]


def set_file_names(labelled: bool, npz: bool) -> list[str]:
    """The named files (besides its samples) of a set with labels and / or the ADM batch."""
    return [CODES, GRID, RECORD] + ([LABELS] if labelled else []) + ([NPZ] if npz else [])


def media_name(modality: str, index: int) -> str:
    """The file of sample ``index`` inside its set's folder (``images/000003.png``)."""
    sub, ext = MEDIA[modality]
    return f"{sub}/{index:06d}{ext}"


def media_dir(folder: Folder, modality: str) -> Path:
    """The folder of a set's samples of ``modality`` (``images`` or ``audio``)."""
    return Path(folder) / MEDIA[modality][0]


def media_folder(folder: Folder, sub: str, extensions: tuple[str, ...]) -> Path:
    """The folder of samples that scores read from ``folder``, which may be a sample set
    or any folder of files: ``folder/sub`` (``images``, ``audio``) when it exists and
    ``folder`` holds no such files of its own, else ``folder``. The set's own files
    (grid.png) are not its samples."""
    folder = Path(folder)
    own = any(p.suffix.lower() in extensions and p.name not in SAMPLE_FILES
              for p in folder.iterdir() if p.is_file())
    return folder / sub if (folder / sub).is_dir() and not own else folder


def read_json(path: Path) -> Optional[dict]:
    """A JSON object from ``path`` (None: missing, unreadable or not an object)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_sample_record(record: Optional[dict]) -> bool:
    """Whether ``record`` is a samples.json this tool wrote (its count and tokenizer)."""
    return record is not None and "num_samples" in record and "tokenizer_identity" in record


def read_record(folder: Folder) -> Optional[dict]:
    """The samples.json record of the finished set in ``folder`` (None: there is none)."""
    record = read_json(Path(folder) / RECORD)
    return record if is_sample_record(record) else None


def is_unfinished(folder: Folder) -> bool:
    """Whether ``folder`` holds the progress of an unfinished set (a run continues it)."""
    return (Path(folder) / PARTIAL / STATE).is_file()


def labels_path(folder: Folder) -> Optional[Path]:
    """The set's labels.json (None: the set has no labels, or ``folder`` is no set)."""
    path = Path(folder) / LABELS
    return path if path.is_file() else None


def read_labels(folder: Folder) -> Optional[dict[str, int]]:
    """{file name: class id} of a labelled set (None: no labels.json)."""
    path = labels_path(folder)
    return None if path is None else json.loads(path.read_text())


def class_names(folder: Folder) -> Optional[list[str]]:
    """The class names the set's labels index (recorded from the prior; None: none)."""
    names = (read_json(Path(folder) / RECORD) or {}).get("class_names")
    return list(names) if isinstance(names, list) else None


def media_files(folder: Folder, modality: Optional[str] = None) -> list[Path]:
    """The set's sample files that are there, in sample order: the numbered files of its
    modality (the record's, else ``modality``, else image), and with a record only the
    ``num_samples`` it wrote. Other files in the media folder (a user's own) are never
    samples."""
    record = read_record(folder)
    modality = modality or (record or {}).get("modality") or "image"
    sub, ext = MEDIA[modality]
    count = int(record["num_samples"]) if record is not None and record.get("modality", "image") == modality else None
    where = media_dir(folder, modality)
    if not where.is_dir():
        return []
    found = {}
    for path in where.iterdir():
        m = NUMBERED.fullmatch(path.name)
        if m and "." + m.group(2) == ext and path.name == f"{int(m.group(1)):06d}{ext}":
            found[int(m.group(1))] = path
    return [found[i] for i in sorted(found) if count is None or i < count]


def read_codes(folder: Folder) -> dict:
    """The sampled codes: ``level_0`` .. (N, h_l, w_l) int64 tensors, and ``label`` (N,)
    for a labelled set."""
    # torch only when codes are read: the report and the CLI open folders without it
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / CODES))


def read_npz(folder: Folder) -> np.ndarray:
    """The uint8 (N, H, W, 3) batch of samples.npz (written with ``npz``)."""
    with np.load(Path(folder) / NPZ) as data:
        return data["arr_0"]
