"""Which files of a sample folder belong to which set: a finished set's are told by its
samples.json (``num_samples`` numbered files of its modality and the named files in
``set_files``), an unfinished set's by its partial state (the samples it completed, the
batch it was writing, its named files). Replacing a set deletes exactly those; anything
else in the folder is left alone. Any other non-empty folder is refused before sampling:
only a set this tool wrote (its samples.json, or the marker file it writes before the
first sample) is ever replaced.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from engine.run_dir import check_folder
from sampling import sample_reader as reader

# write_atomic's temporary names (".NAME.tmp-PID"): left only by a process killed mid-write
_TEMP = re.compile(r"\.(.+)\.tmp-\d+")


def check_sample_dir(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds an earlier sample set of this tool's (which writing there
    replaces, or continues when it is unfinished). The folder itself follows the rule of
    every output folder (``engine.run_dir.check_folder``): new, empty or marked as samples
    (or, from before the marker, holding a set's record); anything else is refused, naming
    it. Within a folder of ours, a file no recorded set wrote is still never overwritten."""
    out = Path(out_dir)
    if not check_folder(out, "samples", "sample folder"):
        return False
    return reader.read_record(out) is not None or reader.is_unfinished(out)


# -- which files a set wrote ---------------------------------------------------------------


@dataclass(frozen=True)
class SetFiles:
    """The files one sample set wrote (or, unfinished, may have written) in its folder:
    the numbered media files 0 .. count-1 of its modality and the named files."""

    modality: str
    count: int
    names: tuple[str, ...]

    def to_json(self) -> dict:
        return {"modality": self.modality, "count": self.count, "names": list(self.names)}

    @staticmethod
    def from_json(d: dict) -> SetFiles:
        return SetFiles(str(d["modality"]), int(d["count"]), tuple(d["names"]))

    def owns_media(self, modality: str, index: int) -> bool:
        return modality == self.modality and index < self.count


def finished_set_files(record: dict) -> SetFiles:
    """The files of the finished set that ``record`` (its samples.json) describes. Records
    written before ``set_files`` existed name no files: their labels.json is told by their
    settings, and a samples.npz beside them is taken for theirs (what replacing did then)."""
    modality = record.get("modality", "image")
    if modality not in reader.MEDIA:
        modality = "image"
    names = record.get("set_files")
    if not isinstance(names, list):
        labelled = "class_names" in record or (
            record.get("label") is not None and record.get("cfg_scale", 1.0) != 0)
        names = reader.set_file_names(labelled, npz=True)
    return SetFiles(modality, int(record.get("num_samples", 0)),
                    tuple(n for n in names if n in reader.SAMPLE_FILES))


def delete_set(out: Path, files: SetFiles) -> int:
    """Delete the files of one set in ``out`` (those present; a missing one was never
    written or is already gone), samples.json first so no record describes missing files;
    returns how many went."""
    removed = 0
    for name in sorted(files.names, key=lambda n: n != reader.RECORD):
        path = out / name
        if path.is_file():
            path.unlink()
            removed += 1
    sub, ext = reader.MEDIA[files.modality]
    folder = out / sub
    if files.count and folder.is_dir():
        for i in range(files.count - 1, -1, -1):  # from the top: what is left stays a prefix
            path = folder / f"{i:06d}{ext}"
            try:
                path.unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def clear_samples(out_dir: str | Path) -> int:
    """Remove the sample set(s) this tool wrote in ``out_dir``, finished or not (exactly
    their files, see :func:`finished_set_files` and the partial state); returns how many
    files went. Files it did not write are never touched."""
    out = Path(out_dir)
    owned = owned_sets(out)
    removed = sum(delete_set(out, files) for files in owned)
    remove_temporaries(out, owned)
    if (out / reader.PARTIAL).is_dir():
        shutil.rmtree(out / reader.PARTIAL)
    return removed


def read_state(out: Path) -> Optional[dict]:
    """The progress record of the unfinished set in ``out`` (None: there is none)."""
    path = out / reader.PARTIAL / reader.STATE
    if not path.exists():
        return None
    state = reader.read_json(path)
    keys = ("settings", "num_samples", "modality", "rows", "done", "names", "clearing")
    if state is None or not all(k in state for k in keys):
        raise ValueError(f"{path}: damaged (not the progress record of an unfinished sample set); "
                         f"move the folder away or remove {out / reader.PARTIAL}")
    return state


def state_files(state: dict) -> SetFiles:
    """The files an unfinished set may have written: the samples it completed, the batch
    it was writing when it stopped, and its named files."""
    count = min(int(state["num_samples"]), int(state["done"]) + int(state["rows"]))
    return SetFiles(state["modality"], count, tuple(state["names"]))


def owned_sets(out: Path) -> list[SetFiles]:
    """Every set of this tool's whose files may be in ``out``."""
    owned = []
    state = read_state(out)
    if state is not None:
        owned += [SetFiles.from_json(d) for d in state["clearing"]] + [state_files(state)]
    record = reader.read_record(out)
    if record is not None:
        owned.append(finished_set_files(record))
    return owned


def remove_temporaries(out: Path, owned: list[SetFiles]) -> None:
    """Temporary files of write_atomic that a killed run left beside files of these sets."""
    for folder in [out] + [out / reader.MEDIA[m][0] for m in reader.MEDIA]:
        if not folder.is_dir():
            continue
        for entry in os.scandir(folder):
            m = _TEMP.fullmatch(entry.name)
            if not m or not entry.is_file():
                continue
            name = m.group(1)
            num = reader.NUMBERED.fullmatch(name)
            if folder == out:
                ours = any(name in s.names for s in owned)
            else:
                modality = "image" if folder.name == "images" else "audio"
                ours = num is not None and any(s.owns_media(modality, int(num.group(1))) for s in owned)
            if ours:
                os.unlink(entry.path)

