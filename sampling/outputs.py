"""Writing samples to disk: PNG files and a grid for images; WAV files at the dataset's
sample rate (plus a spectrogram grid) for audio; the codes, labels and settings beside them,
in the layout :mod:`sampling.sample_reader` describes and reads.

A set is written batch by batch (:class:`SampleSetWriter`): each batch's files, then its
rows of the codes (and of the ADM batch) in files of the partial-state folder, then that
folder's ``state.json``, which says how many samples are complete. Nothing kept in memory
grows with the number of samples, and a run stopped at any moment (Ctrl-C, SIGKILL) leaves
a folder that the same command continues: samples past ``state.json``'s count are drawn
again from their own seeds, so the finished set is the one an uninterrupted run writes.

Writing into a folder that holds an earlier set replaces that set, deleting exactly the
files it wrote (:mod:`sampling.set_ownership`); a file the new set would overwrite that no
earlier set of this tool wrote is refused before any sampling.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from engine.files import write_atomic, write_text_atomic
from engine.run_dir import write_marker
from sampling.sample_reader import (
    CODES,
    GRID,
    LABELS,
    MEDIA,
    NPZ,
    NUMBERED,
    PARTIAL,
    RECORD,
    STATE,
    media_name,
    read_record,
    set_file_names,
)
from sampling.set_ownership import (
    SetFiles,
    check_sample_dir,
    delete_set,
    finished_set_files,
    read_state,
    remove_temporaries,
    state_files,
)
from sampling.streamed_files import StreamedNpy, StreamedSafetensors, labels_json, npz_from_npy
from tokenizer.audio import write_wav
from tokenizer.media import tile_uint8, to_uint8

_GB = 1e9


def _write_png(array: np.ndarray, path: Path) -> None:
    """One image (H, W, C) uint8, written to a temporary name and renamed."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    write_atomic(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"))


def _write_wav(wave: torch.Tensor, path: Path, rate: int) -> None:
    write_atomic(path, lambda tmp: write_wav(tmp, wave, rate))


# -- the size of a set on disk ---------------------------------------------------------------


def format_bytes(n: float) -> str:
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def sample_bytes(tokenizer, code_tokens: int, *, labelled: bool, npz: bool, block: int = 4096) -> int:
    """Bytes on disk per sample (an estimate, rounded up where the format can vary): its
    PNG (stored nearly uncompressed at worst: a row filter byte, deflate's block headers,
    the chunks) or 16-bit WAV, each rounded up to the file system's block; its codes (int64)
    and label; its labels.json entry; and for ``npz`` its bytes twice (the .npy filled in
    while sampling, then copied into the zip)."""
    c, h, w = tokenizer.input_shape
    if tokenizer.modality == "audio":
        media = 44 + 2 * tokenizer.config.data.audio.num_samples
    else:
        raw = h * (w * c + 1)
        media = raw + 5 * (raw // 16384 + 1) + 100
    media = -(-media // block) * block
    per = media + 8 * code_tokens
    if labelled:
        per += 8 + 20  # the codes' label, '"000000.png": 3,\n' in labels.json
    if npz:
        per += 2 * h * w * 3
    return per


def _freed_bytes(out: Path, files: SetFiles, block: int) -> int:
    """Roughly what deleting a set's files frees (its media files sampled beyond 1,000)."""
    total = sum(-(-(out / n).stat().st_size // block) * block for n in files.names if (out / n).is_file())
    sub, ext = MEDIA[files.modality]
    step = max(1, files.count // 1000)
    seen = sizes = 0
    for i in range(0, files.count, step):
        path = out / sub / f"{i:06d}{ext}"
        if path.is_file():
            sizes += -(-path.stat().st_size // block) * block
        seen += 1
    return total + (sizes * files.count // seen if seen else 0)


def _existing_parent(path: Path) -> Path:
    path = path.resolve()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


# -- the writer ------------------------------------------------------------------------------


class SampleSetWriter:
    """Writes one sample set of ``n`` samples into ``out`` batch by batch, resumably.

    ``settings`` identifies the command (everything that decides the samples: the models,
    n, seed, batch size, sampling settings, device type, ...): an unfinished set in ``out``
    drawn with the same settings is continued (``resume``), one drawn with others is
    replaced, as is a finished set. ``rows`` is the batch partition (every batch starts
    at a multiple of it). ``labelled``: the set has labels (codes' ``label``,
    labels.json). ``flags`` names the settings in messages (``--n`` on the command line).

    :meth:`open` inspects and prepares the folder (before any sampling: it refuses files
    it would overwrite that no set of this tool wrote, and a set the disk cannot hold), then
    :meth:`write_batch` for each batch from :attr:`done` on, then :meth:`finish`."""

    def __init__(self, out: str | Path, tokenizer, n: int, rows: int, *, settings: dict,
                 code_shapes: list[tuple[int, int]], labelled: bool, grid: int = 64, npz: bool = False,
                 griffin_lim_iters: Optional[int] = None, resume: bool = True,
                 flags: Optional[dict] = None, log: Callable[[str], None] = print):
        if npz and tokenizer.modality != "image":
            raise ValueError("--npz: the ADM evaluator's batch holds images; these samples are audio")
        self.out = Path(out)
        self.tokenizer = tokenizer
        self.modality = tokenizer.modality
        self.n, self.rows = int(n), int(rows)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from state.json
        self.code_shapes = [tuple(s) for s in code_shapes]
        self.labelled, self.npz = labelled, npz
        self.grid = min(int(grid), self.n)
        self.griffin_lim_iters = griffin_lim_iters
        self.resume = resume
        self.flags = {"n": "n", "out": "out", **(flags or {})}
        self.log = log
        self.names = set_file_names(labelled, npz)
        tensors = {f"level_{lv}": (self.n, *s) for lv, s in enumerate(self.code_shapes)}
        if labelled:
            tensors["label"] = (self.n,)
        self.codes_file = StreamedSafetensors(tensors)
        c, h, w = tokenizer.input_shape
        self.npy = StreamedNpy((self.n, h, w, 3)) if npz else None
        self.grid_npy = StreamedNpy((self.grid, h, w, c))  # the bytes of the samples grid.png shows
        self.done = 0
        self.seconds = 0.0  # sampling time and tokens of every run that wrote this set
        self.tokens = 0
        self.resumed = 0  # samples already written when this run began
        self.replaced: Optional[str] = None  # "finished" / "unfinished": what this set replaces
        self._fds: dict[str, int] = {}

    @property
    def partial(self) -> Path:
        return self.out / PARTIAL

    def _state(self, clearing: list[SetFiles]) -> dict:
        return {"settings": self.settings, "num_samples": self.n, "modality": self.modality, "rows": self.rows,
                "done": self.done, "names": self.names, "clearing": [c.to_json() for c in clearing],
                "seconds": self.seconds, "tokens": self.tokens}

    def _save_state(self, clearing: list[SetFiles] = ()) -> None:
        write_text_atomic(self.partial / STATE, json.dumps(self._state(list(clearing)), indent=1))

    # -- opening ---------------------------------------------------------------------------
    def open(self) -> int:
        """Prepare the folder; returns how many samples are already written (a continued
        set: batches from ``done // rows`` on remain)."""
        check_sample_dir(self.out)
        state = read_state(self.out)
        record = read_record(self.out)
        finished = finished_set_files(record) if record is not None else None
        clearing = [SetFiles.from_json(d) for d in state["clearing"]] if state else []
        continuing = (self.resume and state is not None and record is None
                      and state["settings"] == self.settings and self._partial_files_fit(state))
        if state is not None and not continuing:
            clearing.append(state_files(state))
            if record is None:
                changed = [k for k in sorted(set(state["settings"]) | set(self.settings))
                           if state["settings"].get(k) != self.settings.get(k)]
                why = (f"drawn with other settings: {', '.join(changed[:6])}" if changed
                       else "its progress files are incomplete")
                self.log(f"{self.out}: replacing the unfinished sample set there ({state['done']} of "
                         f"{state['num_samples']} samples written, {why})")
                self.replaced = "unfinished"
        if finished is not None:
            clearing.append(finished)
            self.replaced = "finished"
        own = state_files(state) if continuing else None
        self._refuse_foreign(clearing + ([own] if own else []))
        self._check_space(clearing, int(state["done"]) if continuing else 0)
        self.out.mkdir(parents=True, exist_ok=True)
        write_marker(self.out, "samples")  # before the first sample: the folder is recognisably ours
        remove_temporaries(self.out, clearing + ([own] if own else []))
        if continuing:
            self.done = self.resumed = int(state["done"])
            self.seconds, self.tokens = float(state.get("seconds", 0.0)), int(state.get("tokens", 0))
            if self.done < self.n or clearing:
                self.log(f"{self.out}: continuing the unfinished sample set there "
                         f"({self.done} of {self.n} samples written)")
        else:
            # recorded first: a run killed while clearing leaves the list of what to delete
            self.partial.mkdir(exist_ok=True)
            for name in (CODES, "samples.npy", "grid.npy"):
                (self.partial / name).unlink(missing_ok=True)
            self._save_state(clearing)
            self.codes_file.create(self.partial / CODES)
            self.grid_npy.create(self.partial / "grid.npy")
            if self.npy is not None:
                self.npy.create(self.partial / "samples.npy")
        for files in clearing:
            delete_set(self.out, files)
        if clearing or not continuing:
            self._save_state()
        if self.done < self.n:
            self._fds["codes"] = os.open(self.partial / CODES, os.O_RDWR)
            self._fds["grid"] = os.open(self.partial / "grid.npy", os.O_RDWR)
            if self.npy is not None:
                self._fds["npy"] = os.open(self.partial / "samples.npy", os.O_RDWR)
        return self.done

    def _partial_files_fit(self, state: dict) -> bool:
        """Whether an unfinished set's progress files are all there, at their sizes."""
        if int(state["done"]) % self.rows and int(state["done"]) != self.n:
            return False
        codes = self.partial / CODES
        if not codes.is_file():  # moved into place by a finish that was stopped
            codes = self.out / CODES
            if int(state["done"]) != self.n:
                return False
        if not codes.is_file() or codes.stat().st_size != self.codes_file.size:
            return False
        for npy, layout in ((self.partial / "samples.npy", self.npy), (self.partial / "grid.npy", self.grid_npy)):
            if layout is not None and not (npy.is_file() and npy.stat().st_size == layout.size):
                return False
        return True

    def _refuse_foreign(self, owned: list[SetFiles]) -> None:
        """Refuse (before anything is written) when a file this set would write is there
        and no set of this tool wrote it: a user's ``images/000099.png`` in a sample folder
        is theirs, whatever its name."""
        for name in self.names:
            if (self.out / name).exists() and not any(name in s.names for s in owned):
                self._refuse(name)
        sub, ext = MEDIA[self.modality]
        folder = self.out / sub
        if not folder.is_dir():
            return
        for entry in os.scandir(folder):
            m = NUMBERED.fullmatch(entry.name)
            if not m or "." + m.group(2) != ext:
                continue
            index = int(m.group(1))
            if index < self.n and entry.name == f"{index:06d}{ext}" and not any(
                    s.owns_media(self.modality, index) for s in owned):
                self._refuse(f"{sub}/{entry.name}")

    def _refuse(self, name: str) -> None:
        raise ValueError(
            f"{self.flags['out']}: {self.out / name} is no file of a sample set recorded there (by its "
            f"samples.json, or the progress of an unfinished set) and this set of {self.n} would overwrite "
            f"it; nothing was written. Move it away or choose another folder")

    def _check_space(self, clearing: list[SetFiles], done: int) -> None:
        """Refuse a set whose files would not fit on --out's file system; say how much a
        large one needs."""
        where = _existing_parent(self.out)
        try:
            block = max(512, os.statvfs(where).f_frsize)
        except (OSError, AttributeError):
            block = 4096
        tokens = sum(h * w for h, w in self.code_shapes)
        per = sample_bytes(self.tokenizer, tokens, labelled=self.labelled, npz=self.npz, block=block)
        c, h, w = self.tokenizer.input_shape
        grid = self.grid * (h + 2) * (w + 2) * c
        needed = (self.n - done) * per + grid + len(self.codes_file.header)
        free = shutil.disk_usage(where).free
        if needed > free:
            free += sum(_freed_bytes(self.out, files, block) for files in clearing)
        flag = self.flags["n"]
        if needed > free:
            raise ValueError(
                f"{flag} {self.n}: the sample set needs about {format_bytes(needed)} of files on the file system "
                f"of {self.out} ({format_bytes(per)} a sample), which has {format_bytes(free)} free; "
                f"lower {flag} or choose another {self.flags['out']}")
        if needed >= LARGE_SET_BYTES:
            self.log(f"{flag} {self.n}: about {format_bytes(needed)} of files to write in {self.out} "
                     f"({format_bytes(free)} free there)")

    # -- writing ---------------------------------------------------------------------------
    def write_batch(self, start: int, decoded: torch.Tensor, codes: list[torch.Tensor],
                    labels: Optional[torch.Tensor], *, seconds: float = 0.0, tokens: int = 0) -> None:
        """Write samples ``start`` .. ``start + len(decoded) - 1`` (``decoded`` (B, C, H, W)
        in [-1, 1]); ``seconds`` / ``tokens``: the sampling time and tokens of this batch.
        The batch counts as written once its files are: state.json is saved last."""
        if start != self.done:
            raise ValueError(f"write_batch: expected the batch starting at sample {self.done}, got {start}")
        take = decoded.shape[0]
        if start + take > self.n or (take != min(self.rows, self.n - start) and self.done < self.n):
            raise ValueError(f"write_batch: {take} samples at {start} do not fit the batches of {self.rows}")
        if (labels is not None) != self.labelled:
            raise ValueError("write_batch: labels are given exactly for a labelled set")
        images = None
        if self.modality == "audio":
            rate = self.tokenizer.config.data.audio.sample_rate
            waves = self.tokenizer.to_waveform(decoded.to(self.tokenizer.device),
                                               n_iter=self.griffin_lim_iters).cpu()
            for i, wave in enumerate(waves):
                _write_wav(wave, self.out / media_name("audio", start + i), rate)
        else:
            images = to_uint8(decoded)  # (B, H, W, C)
            for i in range(take):
                _write_png(images[i], self.out / media_name("image", start + i))
        fd = self._fds["codes"]
        for level, grid in enumerate(codes):
            self.codes_file.write_rows(fd, f"level_{level}", start, grid)
        if labels is not None:
            self.codes_file.write_rows(fd, "label", start, labels)
        os.fsync(fd)
        if self.npy is not None:
            batch = images if images.shape[-1] == 3 else np.repeat(images, 3, axis=-1)
            self.npy.write_rows(self._fds["npy"], start, batch)
            os.fsync(self._fds["npy"])
        if start < self.grid:
            shown = to_uint8(decoded[: self.grid - start]) if images is None else images[: self.grid - start]
            if self.modality == "audio":  # low frequencies at the bottom, as people read them
                shown = shown[:, ::-1]
            self.grid_npy.write_rows(self._fds["grid"], start, shown)
            os.fsync(self._fds["grid"])
        self.done = start + take
        self.seconds += seconds
        self.tokens += tokens
        self._save_state()

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    # -- finishing -------------------------------------------------------------------------
    def finish(self, record: dict, class_names: Optional[list[str]] = None) -> dict:
        """Put the set's own files in place and write samples.json last; ``record`` holds
        the settings to record. Returns samples.json's record. Safe to repeat after a stop
        part way (everything it writes is written again from the partial state)."""
        if self.done != self.n:
            raise ValueError(f"finish: {self.done} of {self.n} samples written")
        self.close()
        codes_path = self.partial / CODES
        if self.labelled:
            src = codes_path if codes_path.is_file() else self.out / CODES
            with open(src, "rb") as fh:
                write_atomic(self.out / LABELS, labels_json(self._labels(fh.fileno())))
        if self.npy is not None:
            write_atomic(self.out / NPZ, lambda tmp: npz_from_npy(self.partial / "samples.npy", tmp))
        grid = np.load(self.partial / "grid.npy")
        write_atomic(self.out / GRID, lambda tmp: Image.fromarray(
            tile_uint8(grid)[..., 0] if grid.shape[-1] == 1 else tile_uint8(grid)).save(tmp, format="PNG"))
        if codes_path.is_file():
            os.replace(codes_path, self.out / CODES)
        files = [media_name(self.modality, i) for i in range(min(3, self.n))] + (["..."] if self.n > 3 else [])
        out = {"num_samples": self.n, "modality": self.modality, "files": files,
               "tokenizer_identity": self.tokenizer.identity, **record}
        if self.modality == "audio":
            out["sample_rate"] = self.tokenizer.config.data.audio.sample_rate
        if self.labelled and class_names:
            out["class_names"] = class_names
        out["set_files"] = self.names  # what replacing this set deletes besides its samples
        write_text_atomic(self.out / RECORD, json.dumps(out, indent=2))
        shutil.rmtree(self.partial)
        return out

    def _labels(self, fd: int) -> Iterator[tuple[str, int]]:
        for lo in range(0, self.n, 65536):
            count = min(self.n, lo + 65536) - lo
            for i, label in enumerate(self.codes_file.read_rows(fd, "label", lo, count).tolist()):
                yield Path(media_name(self.modality, lo + i)).name, label


# a set whose files take this much gets a line saying so before sampling starts
LARGE_SET_BYTES = 1 * _GB


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
    """Write ``decoded`` samples (N, C, H, W) in [-1, 1] held in memory, with their codes
    and labels, as one set (replacing an earlier set there); returns the samples.json record.
    :func:`sampling.sample_set.sample_into` draws, decodes and writes batch by batch instead.

    ``npz`` (images) also writes ``samples.npz``: the uint8 (N, H, W, 3) batch under
    ``arr_0`` that the ADM / guided-diffusion evaluator reads (the one LlamaGen and others
    report with), grey images repeated to three channels."""
    n = decoded.shape[0]
    writer = SampleSetWriter(out_dir, tokenizer, n, min(batch_size, n), settings={"write_samples": True},
                             code_shapes=[tuple(c.shape[1:]) for c in codes], labelled=labels is not None,
                             grid=grid, npz=npz, griffin_lim_iters=griffin_lim_iters, resume=False,
                             log=lambda line: None)
    writer.open()
    try:
        for lo in range(0, n, writer.rows):
            hi = min(n, lo + writer.rows)
            writer.write_batch(lo, decoded[lo:hi], [c[lo:hi] for c in codes],
                               None if labels is None else labels[lo:hi])
    finally:
        writer.close()
    return writer.finish(dict(settings or {}), class_names)
