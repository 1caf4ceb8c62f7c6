"""Writing samples to disk: PNG files and a grid for images; WAV files at the dataset's
sample rate (plus a spectrogram grid) for audio; the codes, labels and settings beside them.

Layout of a sample directory::

    OUT/images/000000.png ...  or  OUT/audio/000000.wav ...
    OUT/grid.png               the first ``grid`` samples (spectrograms for audio)
    OUT/codes.safetensors      the sampled codes, one tensor per level (+ labels)
    OUT/labels.json            {file name: label} for class-conditional samples
    OUT/samples.json           settings, identities, counts and timings

Writing into a folder that holds an earlier sample set replaces that set: its numbered
files and the four files above are removed first (nothing else in the folder is touched),
so a smaller second run never leaves the first run's extra files or labels to be scored.
Any other non-empty folder is refused before sampling: only a set this tool wrote (its
samples.json, or the marker file it writes before the first sample) is ever replaced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors.torch import save_file

from engine.files import write_atomic
from engine.run_dir import OWN_FILES
from tokenizer.audio import write_wav
from tokenizer.media import save_grid, save_png, spectrogram_rows, to_uint8

SAMPLE_FILES = ("samples.json", "labels.json", "codes.safetensors", "grid.png", "samples.npz")
# written into a sample folder before anything else: a set interrupted before its
# samples.json is still provably this tool's to replace
OWNER_MARK = ".hqvae-samples"
_NUMBERED = re.compile(r"\d{6,}")


def media_folder(folder: Path, sub: str, extensions: tuple[str, ...]) -> Path:
    """The folder of a sample set's files (what FID, audio FID and class accuracy read):
    ``folder/sub`` (``images``, ``audio``) when it exists and ``folder`` holds no such files
    of its own, else ``folder``. The set's own files (grid.png) are not its samples."""
    own = any(p.suffix.lower() in extensions and p.name not in SAMPLE_FILES
              for p in folder.iterdir() if p.is_file())
    return folder / sub if (folder / sub).is_dir() and not own else folder


def _is_sample_record(path: Path) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and "num_samples" in record and "tokenizer_identity" in record


def check_sample_dir(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` holds an earlier sample set of this tool's (which writing there
    replaces). A folder that is neither new, empty nor such a set is refused, naming it."""
    out = Path(out_dir)
    if not out.exists():
        return False
    if not out.is_dir():
        raise ValueError(f"sample folder {out}: exists and is not a folder")
    if (out / OWNER_MARK).is_file() or _is_sample_record(out / "samples.json"):
        return True
    if any(p.name not in OWN_FILES for p in out.iterdir()):  # the lock and marker are this tool's
        raise ValueError(
            f"sample folder {out}: not empty and holds no sample set written by hqvae "
            f"(no samples.json); nothing was written. Choose a new or empty folder")
    return False


def clear_samples(out_dir: str | Path) -> int:
    """Remove an earlier sample set written by :func:`write_samples` in ``out_dir`` (its
    numbered PNG/WAV files and ``SAMPLE_FILES``); returns how many files went. samples.json
    goes first, so an interrupted clear never leaves a record describing missing files."""
    out = Path(out_dir)
    removed = 0
    for name in SAMPLE_FILES:
        path = out / name
        if path.is_file():
            path.unlink()
            removed += 1
    for sub, ext in (("images", ".png"), ("audio", ".wav")):
        if (out / sub).is_dir():
            for path in (out / sub).iterdir():
                if path.suffix == ext and _NUMBERED.fullmatch(path.stem) and path.is_file():
                    path.unlink()
                    removed += 1
    return removed


def write_samples(
    out_dir: str | Path,
    decoded: torch.Tensor,
    codes: list[torch.Tensor],
    labels: Optional[torch.Tensor],
    tokenizer,
    *,
    grid: int = 64,
    class_names: Optional[list[str]] = None,
    settings: Optional[dict] = None,
    griffin_lim_iters: Optional[int] = None,
    batch_size: int = 64,
    npz: bool = False,
) -> dict:
    """Write ``decoded`` samples (N, C, H, W) in [-1, 1]; returns the samples.json record.

    ``npz`` (images) also writes ``samples.npz``: the uint8 (N, H, W, 3) batch under
    ``arr_0`` that the ADM / guided-diffusion evaluator reads (the one LlamaGen and others
    report with), grey images repeated to three channels."""
    out = Path(out_dir)
    if npz and tokenizer.modality != "image":
        raise ValueError("--npz: the ADM evaluator's batch holds images; these samples are audio")
    check_sample_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / OWNER_MARK).write_text("sample set written by hqvae (sampling/outputs.py)\n")
    clear_samples(out)  # an earlier, larger set's extra files would be scored with these
    audio = tokenizer.modality == "audio"
    n = decoded.shape[0]
    names: list[str] = []
    if audio:
        rate = tokenizer.config.data.audio.sample_rate
        for lo in range(0, n, batch_size):
            waves = tokenizer.to_waveform(decoded[lo : lo + batch_size].to(tokenizer.device),
                                          n_iter=griffin_lim_iters).cpu()
            for i, wave in enumerate(waves):
                name = f"audio/{lo + i:06d}.wav"
                write_wav(out / name, wave, rate)
                names.append(name)
    else:
        images = to_uint8(decoded)
        for i in range(n):
            name = f"images/{i:06d}.png"
            save_png(images[i], out / name)
            names.append(name)
    if npz:
        batch = to_uint8(decoded)  # (N, H, W, C)
        if batch.shape[-1] == 1:
            batch = np.repeat(batch, 3, axis=-1)
        def save_npz(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
                np.savez(fh, arr_0=batch)

        write_atomic(out / "samples.npz", save_npz)
    shown = decoded[:grid]
    save_grid(spectrogram_rows(shown) if audio else shown, out / "grid.png")
    tensors = {f"level_{lv}": c.contiguous() for lv, c in enumerate(codes)}
    if labels is not None:
        tensors["label"] = labels.contiguous()
    save_file(tensors, str(out / "codes.safetensors"))
    record = {"num_samples": n, "modality": tokenizer.modality, "files": names[:3] + (["..."] if n > 3 else []),
              "tokenizer_identity": tokenizer.identity, **(settings or {})}
    if audio:
        record["sample_rate"] = tokenizer.config.data.audio.sample_rate
    if labels is not None:
        mapping = {Path(name).name: int(label) for name, label in zip(names, labels.tolist())}
        (out / "labels.json").write_text(json.dumps(mapping, indent=1))
        if class_names:
            record["class_names"] = class_names
    (out / "samples.json").write_text(json.dumps(record, indent=2))
    return record
