"""Datasets for the tokenizer: built-in procedural data and anything HF ``datasets`` reads.

Every dataset yields ``{"x": FloatTensor (C, H, W) in [-1, 1], "label": int}`` (label -1
when the data has none); audio becomes its spectrogram image (1, F, frames). Nothing is
held in memory: the procedural sets compute item ``i`` on demand from a seed, and HF
datasets keep their Arrow files memory-mapped while each row is decoded in
``__getitem__`` (so DataLoader workers share the work). Every dataset exposes
``modality`` ('image' | 'audio'), ``num_classes`` (None when unknown) and ``shape``.
"""

from __future__ import annotations

import glob
import io
import itertools
import math
import re
import warnings
import zlib
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from soundfile import available_formats as sf_formats
from torch.utils.data import Dataset

from tokenizer.audio import Spectrogram, fit_length, read_audio, resample
from tokenizer.config import AudioConfig, DataConfig

# ---------------------------------------------------------------------------------------
# shared helpers


def data_shape(cfg: DataConfig) -> tuple[int, int, int]:
    """(C, H, W) of one model input."""
    return cfg.shape


def _split_key(split: str) -> int:
    """A stable integer per split name: it seeds the procedural sets, so 'train' and
    'test' draw from disjoint random streams (``hash`` is salted per process, crc32 is not)."""
    return zlib.crc32(split.encode("utf-8"))


def _item_rng(seed: int, split_key: int, index: int) -> np.random.Generator:
    # SeedSequence mixes the three words, so neighbouring items and seeds are independent
    return np.random.default_rng([seed % 2**63, split_key, index])


class _LazySpectrogram:
    """Builds the Spectrogram on first use and leaves it out of pickles: datasets travel to
    spawned DataLoader workers as a config, not as tensors to share."""

    def __init__(self, cfg: AudioConfig):
        self.cfg = cfg
        self._module: Optional[Spectrogram] = None

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        if self._module is None:
            self._module = Spectrogram(self.cfg)
        with torch.no_grad():
            return self._module(wave)

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "_module": None}


def _image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """HWC (or HW) uint8 -> float (C, H, W) in [-1, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()
    return x / 127.5 - 1.0


def _check_modality(cfg: DataConfig, found: str, where: str) -> None:
    """The model's input shape comes from ``cfg.shape``, which follows
    ``cfg.resolved_modality``; data of the other modality would only fail later as an
    obscure shape mismatch, so stop here and say which key to set."""
    expected = cfg.resolved_modality
    if found != expected:
        how = (
            f"data.modality is {cfg.modality!r}"
            if cfg.modality is not None
            else f"data.modality is unset and resolves to {expected!r} for source {cfg.source!r}"
        )
        raise ValueError(
            f"{where} holds {found} data but {how}; set data.modality={found} "
            f"(the model input shape {cfg.shape} is derived from it)"
        )


# ---------------------------------------------------------------------------------------
# built-in: shapes


class ShapesDataset(Dataset):
    """Procedural images of one coloured shape on a varied background; label = shape.

    Item ``i`` is drawn from a numpy Generator seeded by (seed, split, i): deterministic,
    any size, nothing stored. Shapes are rendered with 4x4 (or 2x2 for large images)
    supersampling, so edges are anti-aliased like natural images rather than binary masks.
    """

    CLASSES = ("circle", "square", "triangle", "ring", "cross")
    modality = "image"

    def __init__(
        self,
        size: int,
        image_size: int = 32,
        channels: int = 3,
        seed: int = 0,
        split: str = "train",
    ):
        if size < 1 or image_size < 4 or channels not in (1, 3):
            raise ValueError(
                f"ShapesDataset: need size >= 1, image_size >= 4, channels 1 or 3; "
                f"got {size}, {image_size}, {channels}"
            )
        self.size = size
        self.image_size = image_size
        self.channels = channels
        self.seed = seed
        self.split = split
        self._key = _split_key(split)
        self.num_classes = len(self.CLASSES)
        self.class_names = list(self.CLASSES)
        self.shape = (channels, image_size, image_size)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"ShapesDataset: index {index} out of range for size {self.size}")
        label = index % self.num_classes  # exactly balanced classes
        rgb = self.render(_item_rng(self.seed, self._key, index), label)
        if self.channels == 1:
            rgb = rgb @ np.array([0.299, 0.587, 0.114])
        return {"x": _image_to_tensor(np.round(rgb * 255).astype(np.uint8)), "label": label}

    # -- rendering -----------------------------------------------------------------------
    @staticmethod
    def _luma(colour: np.ndarray) -> float:
        return float(colour @ np.array([0.299, 0.587, 0.114]))

    def _background(self, rng: np.random.Generator) -> tuple[np.ndarray, list[np.ndarray]]:
        s = self.image_size
        c1, c2 = rng.random(3), rng.random(3)
        yy, xx = np.mgrid[0:s, 0:s] / max(s - 1, 1) - 0.5
        kind = rng.choice(3, p=[0.35, 0.45, 0.2])
        if kind == 0:  # solid
            return np.broadcast_to(c1, (s, s, 3)).copy(), [c1]
        if kind == 1:  # linear two-colour gradient in a random direction
            phi = rng.uniform(0, 2 * math.pi)
            t = np.clip(xx * math.cos(phi) + yy * math.sin(phi) + 0.5, 0, 1)
        else:  # radial gradient around a random point
            cx, cy = rng.uniform(-0.3, 0.3, size=2)
            t = np.clip(np.hypot(xx - cx, yy - cy) / 0.8, 0, 1)
        return c1 * (1 - t[..., None]) + c2 * t[..., None], [c1, c2]

    def _shape_colour(self, rng: np.random.Generator, backdrop: list[np.ndarray]) -> np.ndarray:
        """A colour whose luminance differs from every background colour, so the shape stays
        visible in grey too; falls back to black or white when the draws keep failing."""
        lumas = [self._luma(c) for c in backdrop]
        for _ in range(32):
            colour = rng.random(3)
            if min(abs(self._luma(colour) - v) for v in lumas) >= 0.25:
                return colour
        return np.zeros(3) if np.mean(lumas) > 0.5 else np.ones(3)

    def _coverage(self, rng: np.random.Generator, label: int) -> np.ndarray:
        s = self.image_size
        ss = 4 if s <= 64 else 2
        radius = rng.uniform(0.2, 0.42) * s
        margin = 0.75 * radius
        cx, cy = rng.uniform(margin, s - margin, size=2)
        theta = rng.uniform(0, 2 * math.pi)
        coords = (np.arange(s * ss) + 0.5) / ss
        dx = coords[None, :] - cx
        dy = coords[:, None] - cy
        u = math.cos(theta) * dx + math.sin(theta) * dy
        v = -math.sin(theta) * dx + math.cos(theta) * dy
        r = np.hypot(dx, dy)
        name = self.CLASSES[label]
        if name == "circle":
            mask = r <= radius
        elif name == "square":
            mask = np.maximum(np.abs(u), np.abs(v)) <= 0.78 * radius
        elif name == "triangle":
            # equilateral: three half-planes at the inradius (R/2) with normals 120 deg apart
            mask = np.ones_like(r, dtype=bool)
            for k in range(3):
                a = theta + 2 * math.pi * k / 3
                mask &= dx * math.cos(a) + dy * math.sin(a) <= 0.5 * radius
        elif name == "ring":
            mask = (r <= radius) & (r >= rng.uniform(0.45, 0.65) * radius)
        else:  # cross
            w = rng.uniform(0.22, 0.35) * radius
            au, av = np.abs(u), np.abs(v)
            mask = ((au <= w) & (av <= radius)) | ((av <= w) & (au <= radius))
        return mask.reshape(s, ss, s, ss).mean(axis=(1, 3))

    def render(self, rng: np.random.Generator, label: int) -> np.ndarray:
        """One HWC float image in [0, 1]."""
        background, backdrop = self._background(rng)
        colour = self._shape_colour(rng, backdrop)
        cover = self._coverage(rng, label)[..., None]
        image = background * (1 - cover) + colour * cover
        if rng.random() < 0.3:  # light sensor-like noise on some images
            image = image + rng.normal(0.0, rng.uniform(0.01, 0.04), size=image.shape)
        return np.clip(image, 0.0, 1.0)


# ---------------------------------------------------------------------------------------
# built-in: tones


class TonesDataset(Dataset):
    """Procedural audio clips of ``num_samples`` samples as spectrogram images; label = kind.

    Kinds: a harmonic note with an ADSR envelope; a pitch glide (exponential chirp with a
    few harmonics); a band-pass noise burst; a pair of notes one after the other. All
    partials stay below 0.45 x the sample rate, so nothing aliases. Deterministic per
    (seed, split, index) like :class:`ShapesDataset`.
    """

    CLASSES = ("note", "glide", "noise", "pair")
    modality = "audio"

    def __init__(self, size: int, audio: AudioConfig, seed: int = 0, split: str = "train"):
        if size < 1:
            raise ValueError(f"TonesDataset: size must be >= 1, got {size}")
        audio.validate()
        self.size = size
        self.audio = audio
        self.seed = seed
        self.split = split
        self._key = _split_key(split)
        self.num_classes = len(self.CLASSES)
        self.class_names = list(self.CLASSES)
        self.shape = (1, audio.num_bins, audio.num_frames)
        self.spectrogram = _LazySpectrogram(audio)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"TonesDataset: index {index} out of range for size {self.size}")
        label = index % self.num_classes
        wave = self.waveform(index)
        return {"x": self.spectrogram(torch.from_numpy(wave)), "label": label}

    def waveform(self, index: int) -> np.ndarray:
        """The clip behind item ``index`` (float32, ``num_samples`` long, peak <= 0.9)."""
        rng = _item_rng(self.seed, self._key, index)
        kind = self.CLASSES[index % self.num_classes]
        n, sr = self.audio.num_samples, self.audio.sample_rate
        if kind == "note":
            wave = self._note(rng, *self._span(rng, n, 0.4, 0.85))
        elif kind == "glide":
            wave = self._glide(rng, *self._span(rng, n, 0.5, 0.9))
        elif kind == "noise":
            wave = self._noise(rng, *self._span(rng, n, 0.2, 0.7))
        else:
            first_end = int(n * rng.uniform(0.4, 0.55))
            f0 = self._pitch(rng)
            interval = rng.integers(3, 13) * (1 if rng.random() < 0.5 else -1)
            f1 = float(np.clip(f0 * 2 ** (interval / 12), 80.0, 0.2 * sr))
            wave = self._note(rng, int(n * rng.uniform(0.0, 0.08)), first_end, f0=f0)
            wave += self._note(rng, first_end, n - int(n * rng.uniform(0.0, 0.08)), f0=f1)
        peak = np.abs(wave).max()
        wave = wave / max(peak, 1e-9) * rng.uniform(0.25, 0.9)
        if rng.random() < 0.5:  # a faint noise floor, as real recordings have
            wave = wave + rng.normal(0.0, 10 ** rng.uniform(-4, -2.7), size=n)
        return wave.astype(np.float32)

    # -- building blocks ---------------------------------------------------------------------
    @staticmethod
    def _span(rng: np.random.Generator, n: int, lo: float, hi: float) -> tuple[int, int]:
        length = int(n * rng.uniform(lo, hi))
        start = int(rng.integers(0, max(1, n - length)))
        return start, start + length

    def _pitch(self, rng: np.random.Generator) -> float:
        top = min(880.0, self.audio.sample_rate / 8)
        return float(math.exp(rng.uniform(math.log(100.0), math.log(max(top, 101.0)))))

    def _adsr(self, rng: np.random.Generator, length: int) -> np.ndarray:
        sr = self.audio.sample_rate
        attack = rng.uniform(0.003, 0.06) * sr
        decay = rng.uniform(0.03, 0.2) * sr
        release = rng.uniform(0.04, 0.3) * sr
        sustain = rng.uniform(0.3, 0.85)
        # squeeze the stages into short notes so the envelope always ends at zero
        scale = min(1.0, 0.95 * length / (attack + decay + release))
        a, d, r = attack * scale, decay * scale, release * scale
        points = [0.0, a, a + d, max(a + d, length - r), length]
        return np.interp(np.arange(length), points, [0.0, 1.0, sustain, sustain, 0.0])

    def _harmonics(
        self, rng: np.random.Generator, phase: np.ndarray, freq: np.ndarray, max_partials: int
    ) -> np.ndarray:
        """Sum of partials k * phase with a random spectral tilt. A partial fades out over
        the band below 0.45 x sample rate instead of switching off there: a hard switch in
        a glide is a click, a broadband vertical line in the spectrogram."""
        limit = 0.45 * self.audio.sample_rate
        fade = 0.1 * limit
        tilt = rng.uniform(0.7, 2.0)
        out = np.zeros_like(phase)
        for k in range(1, max_partials + 1):
            gain = np.clip((limit - k * freq) / fade, 0.0, 1.0)
            if not gain.any():
                break
            out += gain * np.sin(k * phase + rng.uniform(0, 2 * math.pi)) / k**tilt
        return out

    def _note(
        self, rng: np.random.Generator, start: int, end: int, f0: Optional[float] = None
    ) -> np.ndarray:
        n, sr = self.audio.num_samples, self.audio.sample_rate
        f0 = self._pitch(rng) if f0 is None else f0
        length = end - start
        t = np.arange(length) / sr
        vibrato = 1 + rng.uniform(0, 0.006) * np.sin(2 * math.pi * rng.uniform(4, 7) * t)
        freq = f0 * vibrato
        phase = 2 * math.pi * np.cumsum(freq) / sr
        wave = np.zeros(n)
        wave[start:end] = self._harmonics(rng, phase, freq, 12) * self._adsr(rng, length)
        return wave

    def _glide(self, rng: np.random.Generator, start: int, end: int) -> np.ndarray:
        n, sr = self.audio.num_samples, self.audio.sample_rate
        length = end - start
        lo, hi = 100.0, 0.3 * sr
        f_a = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        # aim for an octave or more of travel (turning round at the range ends) so that a
        # glide never looks like a steady note
        octaves = rng.uniform(1.0, 2.5) * (1 if rng.random() < 0.5 else -1)
        f_b = float(np.clip(f_a * 2**octaves, lo, hi))
        if abs(math.log2(f_b / f_a)) < 1.0:
            f_b = f_a / 2 ** abs(octaves) if f_b > f_a else f_a * 2 ** abs(octaves)
            f_b = float(np.clip(f_b, lo, hi))
        freq = f_a * (f_b / f_a) ** (np.arange(length) / max(length - 1, 1))
        phase = 2 * math.pi * np.cumsum(freq) / sr
        wave = np.zeros(n)
        wave[start:end] = self._harmonics(rng, phase, freq, int(rng.integers(1, 4)))
        wave[start:end] *= self._adsr(rng, length)
        return wave

    def _noise(self, rng: np.random.Generator, start: int, end: int) -> np.ndarray:
        n, sr = self.audio.num_samples, self.audio.sample_rate
        length = end - start
        spectrum = np.fft.rfft(rng.normal(size=length))
        freqs = np.fft.rfftfreq(length, 1 / sr)
        centre = math.exp(rng.uniform(math.log(150.0), math.log(0.4 * sr)))
        width = rng.uniform(0.15, 1.2)  # octaves (standard deviation of a log-Gaussian band)
        octaves = np.log2(np.maximum(freqs, 1.0) / centre)
        burst = np.fft.irfft(spectrum * np.exp(-0.5 * (octaves / width) ** 2), n=length)
        t = np.arange(length) / sr
        attack = np.clip(t / rng.uniform(0.001, 0.02), 0, 1)
        envelope = attack * np.exp(-t * rng.uniform(3.0, 25.0))
        wave = np.zeros(n)
        wave[start:end] = burst * envelope
        return wave


# ---------------------------------------------------------------------------------------
# HF datasets: locating and loading


_SPLIT_WORDS = ("train", "test", "validation", "valid", "val", "eval", "dev")


def _split_base(split: str) -> str:
    """'train[:90%]' -> 'train': files are matched by name, the slice goes to datasets."""
    return split.split("[", 1)[0].strip()


def _parquet_files(path: str, split: str) -> list[str]:
    """The parquet files behind ``split`` under ``path`` (a file or a folder).

    A folder is searched (and then its ``data/`` subfolder, the hub's layout) for
    ``{split}.parquet``, ``{split}-*.parquet`` (shards) and ``{split}/*.parquet``.
    A single file serves every split.
    """
    base = _split_base(split)
    root = Path(path).expanduser()
    if root.is_file():
        stem = root.name[: -len(".parquet")] if root.name.endswith(".parquet") else root.stem
        word = re.split(r"[-_.]", stem, maxsplit=1)[0].lower()
        if word in _SPLIT_WORDS and word != base.lower():
            warnings.warn(
                f"{root}: one file serves every split, so split {split!r} reads this "
                f"{word!r} file; point data.path at the folder to pick files by split name",
                stacklevel=3,
            )
        return [str(root)]
    if not root.is_dir():
        raise FileNotFoundError(f"{path}: no such parquet file or folder")
    esc = glob.escape(base)
    for folder in (root, root / "data"):
        found: list[str] = []
        for pattern in (f"{esc}.parquet", f"{esc}-*.parquet", f"{esc}/*.parquet"):
            found += glob.glob(str(folder / pattern))
        if found:
            return sorted(set(found))
    present = sorted(str(p.relative_to(root)) for p in root.rglob("*.parquet"))
    listing = ", ".join(present[:20]) + (" ..." if len(present) > 20 else "") or "none"
    hint = ""
    if not present:  # a folder of media files given as a plain path (read as Parquet)
        suffixes = {f.suffix.lower() for f in itertools.islice(root.rglob("*.*"), 2000)}
        for kind, known in (("image", _IMAGE_SUFFIXES), ("audio", _AUDIO_SUFFIXES)):
            if suffixes & known:
                hint = (f"; it holds {kind} files: read it as data.source={kind}folder "
                        f"data.path={path}")
                if kind == "image":
                    hint += f" (hqvae fid: --ref imagefolder:{base} --path {path})"
                break
    raise FileNotFoundError(
        f"{path}: no parquet files for split {base!r} (looked for {base}.parquet, "
        f"{base}-*.parquet, {base}/*.parquet, also under data/); parquet files found: {listing}{hint}"
    )


_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif"}


def _is_local_parquet(source: str) -> bool:
    p = Path(source).expanduser()
    return source.endswith(".parquet") or p.is_dir()


def _load_table(cfg: DataConfig, split: str):
    """-> (HF ``datasets.Dataset``, a short description of where it came from)."""
    import datasets

    source = cfg.source
    base = _split_base(split)
    kwargs: dict[str, Any]
    if source in ("imagefolder", "audiofolder"):
        if not cfg.path:
            raise ValueError(f"data.path: source {source!r} needs a folder (data_dir)")
        if not Path(cfg.path).expanduser().is_dir():
            raise FileNotFoundError(f"{cfg.path}: no such folder for source {source!r}")
        where = f"{source} {cfg.path}"
        if source == "audiofolder":
            return _scan_audiofolder(Path(cfg.path).expanduser(), split), where
        kwargs = {"path": source, "data_dir": str(Path(cfg.path).expanduser())}
    elif source == "parquet" or _is_local_parquet(source):
        path = cfg.path if source == "parquet" else source
        if not path:
            raise ValueError("data.path: source 'parquet' needs a parquet file or folder")
        files = _parquet_files(path, split)
        where = f"parquet {path}"
        kwargs = {"path": "parquet", "data_files": {base: files}}
    else:
        where = source  # a hub name; needs the network or a populated HF cache
        kwargs = {"path": source}
    try:
        table = datasets.load_dataset(**kwargs, split=split)
    except ValueError as err:  # e.g. an unknown split: add which data it was
        hint = ""
        if source == "imagefolder" and "Unknown split" in str(err):
            # the same layout advice audiofolder gives (_scan_audiofolder)
            hint = (f" (without DIR/{base}/ folders every image is in split 'train'; make a "
                    f"{base}/ folder, or hold out a slice such as data.eval_split='train[90%:]')")
        raise ValueError(f"{where}: cannot load split {split!r}: {err}{hint}") from err
    except Exception as err:  # a hub name: no network, no such repository, ...
        if kwargs.get("path") != source:
            raise
        reason = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise ValueError(
            f"data.source {source!r}: not a local file or folder, and it could not be loaded "
            f"from the Hugging Face Hub ({type(err).__name__}: {reason}); for local data set "
            f"data.source to parquet / imagefolder / audiofolder with data.path") from None
    if source == "imagefolder" and isinstance(table, datasets.Dataset):
        table = _drop_split_name_labels(table, Path(cfg.path).expanduser())
    if not isinstance(table, datasets.Dataset):
        raise ValueError(f"{where}: split {split!r} did not load as one map-style dataset")
    return table, where


def _drop_split_name_labels(table, root: Path):
    """HF's imagefolder builder takes the parent folder names as classes; with images directly
    in split folders (root/train/*.png, root/test/*.png) those are the split names, not
    classes. Such a label column is dropped."""
    import datasets

    feat = table.features.get("label")
    if isinstance(feat, datasets.ClassLabel) and feat.names and all(
            name.lower() in _SPLIT_WORDS and (root / name).is_dir() for name in feat.names):
        return table.remove_columns("label")
    return table


def _scan_audiofolder(root: Path, split: str):
    """An audiofolder as a table of file paths (+ labels), built without ``datasets``'
    ``audiofolder`` builder: since datasets 4 that builder encodes every row through
    torchcodec, which needs FFmpeg and is absent here, although only paths are stored.

    Same layout rules as the builder: ``root/<split>/...`` when split folders exist, else
    every file belongs to split 'train'; labels are the parent folder names when there is
    more than one and all files sit at the same depth. Slices (``train[:90%]``) work.
    """
    import datasets

    base = _split_base(split)
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


def _describe_columns(features) -> str:
    return ", ".join(f"{name} ({type(feat).__name__})" for name, feat in features.items())


def _feature_modality(feature) -> Optional[str]:
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Audio):
        return "audio"
    return None


def _raw_media_column(feature) -> bool:
    """Columns that can hold encoded media without HF's Image/Audio type: raw bytes, a file
    path, or the {bytes, path} struct that Image/Audio columns become in parquet files
    written by other tools."""
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype in ("binary", "large_binary", "string", "large_string")
    return isinstance(feature, dict) and set(feature) <= {"bytes", "path"} and "bytes" in feature


# ---------------------------------------------------------------------------------------
# HF datasets: the torch Dataset

MAX_CONSECUTIVE_BAD = 64  # skip_bad_examples gives up (with an error) after this many in a row
WARN_BAD_EXAMPLES = 5  # bad rows named in a warning, per process


class BadExampleError(ValueError):
    """A row that cannot be decoded; the message names the source, split, row and file."""


class HFDataset(Dataset):
    """A map-style view on a memory-mapped HF dataset that decodes one row per item.

    Media columns are switched to ``decode=False`` and decoded here (PIL / soundfile), which
    avoids torchcodec + FFmpeg for audio and lets a bad row fail with its index.
    """

    def __init__(self, table, cfg: DataConfig, split: str, train: bool = False, where: str = ""):
        import datasets

        self.cfg = cfg
        self.split = split
        self.train = train
        self.where = where or cfg.source
        features = table.features
        if cfg.column is not None:
            if cfg.column not in features:
                raise ValueError(
                    f"{self.where}: data.column {cfg.column!r} not found; columns: "
                    f"{_describe_columns(features)}"
                )
            column = cfg.column
            modality = _feature_modality(features[column])
            if modality is None:
                if not _raw_media_column(features[column]):
                    raise ValueError(
                        f"{self.where}: data.column {column!r} is "
                        f"{type(features[column]).__name__}, not an image or audio column"
                    )
                modality = cfg.resolved_modality  # raw bytes / paths: the config says which
        else:
            wanted = cfg.modality
            candidates = [
                (name, _feature_modality(feat))
                for name, feat in features.items()
                if _feature_modality(feat) is not None
                and (wanted is None or _feature_modality(feat) == wanted)
            ]
            if not candidates:
                other = [(name, _feature_modality(feat)) for name, feat in features.items()
                         if _feature_modality(feat) is not None]
                if other:  # only media of the other kind: the modality is what is wrong
                    _check_modality(cfg, other[0][1], f"{self.where} column {other[0][0]!r}")
                kind = f"{wanted} " if wanted else "Image or Audio "
                raise ValueError(
                    f"{self.where}: no {kind}column found; set data.column to one of: "
                    f"{_describe_columns(features)}"
                )
            column, modality = candidates[0]
        _check_modality(cfg, modality, f"{self.where} column {column!r}")
        self.column = column
        self.modality = modality

        label = cfg.label_column
        if label is not None and label not in features and label != DataConfig.label_column:
            # the default "label" is optional; a column the user named must exist
            raise ValueError(
                f"{self.where}: data.label_column {label!r} not found; columns: "
                f"{_describe_columns(features)} (null for no labels)")
        self.label_column = label if label is not None and label in features else None
        self.num_classes: Optional[int] = None
        self.class_names: Optional[list[str]] = None
        if self.label_column is not None:
            feat = features[self.label_column]
            if isinstance(feat, datasets.ClassLabel):
                self.num_classes = feat.num_classes
                self.class_names = list(feat.names)
            elif not (isinstance(feat, datasets.Value) and "int" in feat.dtype):
                raise ValueError(
                    f"{self.where}: label column {self.label_column!r} is {feat}, not a "
                    f"ClassLabel or integer; set data.label_column to another column or null"
                )

        keep = [column] + ([self.label_column] if self.label_column else [])
        table = table.select_columns(keep)
        if modality == "image" and isinstance(features[column], datasets.Image):
            table = table.cast_column(column, datasets.Image(decode=False))
        elif modality == "audio" and isinstance(features[column], datasets.Audio):
            table = table.cast_column(column, datasets.Audio(decode=False))
        self.table = table
        self.shape = cfg.shape
        self.spectrogram = _LazySpectrogram(cfg.audio) if modality == "audio" else None
        self.bad_seen = 0  # bad rows met by this process (DataLoader workers count their own)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._checked(self.table[int(index)], int(index))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Batched row access for DataLoader: one Arrow read per batch, not per item."""
        indices = [int(i) for i in indices]
        batch = self.table[indices]
        return [
            self._checked({key: values[j] for key, values in batch.items()}, index)
            for j, index in enumerate(indices)
        ]

    # -- bad examples -------------------------------------------------------------------------
    def _checked(self, row: dict, index: int) -> dict[str, Any]:
        """Row ``index`` decoded; a bad one raises :class:`BadExampleError` or, with
        ``data.skip_bad_examples``, is replaced by the next good row. Items then carry
        ``bad_examples`` (how many bad rows this one stands in for): the trainer sums it."""
        if not self.cfg.skip_bad_examples:
            return self._item(row, index)
        try:
            item = self._item(row, index)
            item["bad_examples"] = 0
            return item
        except BadExampleError as err:
            self._report_bad(err)
            first = err
        n = len(self.table)
        run = 1  # consecutive bad rows from `index` on
        for offset in range(1, min(n, MAX_CONSECUTIVE_BAD)):
            j = (index + offset) % n
            try:
                item = self._item(self.table[j], j)
            except BadExampleError:
                run += 1  # reported and counted when row j itself is asked for
                continue
            # this row only: every row is asked for once per epoch, so a bad row followed by
            # bad rows is not counted again for each of them
            item["bad_examples"] = 1
            return item
        raise BadExampleError(
            f"{self.where} (split {self.split!r}): {run} consecutive rows from row {index} "
            f"cannot be decoded, too many for data.skip_bad_examples to skip; first: {first}"
        )

    def _report_bad(self, err: Exception) -> None:
        self.bad_seen += 1
        if self.bad_seen <= WARN_BAD_EXAMPLES:
            more = " (further bad rows are counted, not shown)" if self.bad_seen == WARN_BAD_EXAMPLES else ""
            warnings.warn(f"skipped a bad example (data.skip_bad_examples=true): {err}{more}",
                          stacklevel=3)

    def _item(self, row: dict, index: int) -> dict[str, Any]:
        value = row.get(self.column)
        try:
            x = self._image(value, index) if self.modality == "image" else self._audio(value, index)
            if tuple(x.shape) != tuple(self.shape):  # never silently a wrongly-shaped example
                raise ValueError(f"decoded to shape {tuple(x.shape)}, expected {tuple(self.shape)}")
        except Exception as err:
            path = self._cell_path(value)
            where = f" (file {path})" if path else ""
            raise BadExampleError(
                f"{self.where} (split {self.split!r}) row {index}{where}: cannot decode column "
                f"{self.column!r}: {err}"
            ) from err
        label = row[self.label_column] if self.label_column else None
        return {"x": x, "label": -1 if label is None else int(label)}

    @staticmethod
    def _cell_path(value: Any) -> Optional[str]:
        if isinstance(value, dict):
            return value.get("path") or None
        return value if isinstance(value, str) else None

    @staticmethod
    def _unpack(value: Any) -> tuple[Optional[bytes], Optional[str]]:
        """{bytes, path} dict, raw bytes or a path -> (bytes, path)."""
        if isinstance(value, dict):
            return value.get("bytes"), value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value), None
        if isinstance(value, str):
            return None, value
        if value is None:
            raise ValueError("the cell is empty")
        raise TypeError(f"unsupported cell type {type(value).__name__}")

    # -- images ----------------------------------------------------------------------------
    def _image(self, value: Any, index: int) -> torch.Tensor:
        if isinstance(value, Image.Image):
            img = value
        else:
            data, path = self._unpack(value)
            if data is None and not path:
                raise ValueError("the cell holds neither bytes nor a path")
            img = Image.open(io.BytesIO(data) if data is not None else path)
        img.load()
        if img.getexif().get(0x0112, 1) != 1:  # camera JPEGs: upright as HF's decoder makes them
            img = ImageOps.exif_transpose(img)
        img = _convert_mode(img, self.cfg.channels)
        img = _resize(img, self.cfg.image_size, self.cfg.resize, self.train)
        return _image_to_tensor(np.array(img, dtype=np.uint8))  # a writable copy for torch

    # -- audio ------------------------------------------------------------------------------
    def _audio(self, value: Any, index: int) -> torch.Tensor:
        data, path = self._unpack(value)
        name = path or f"row {index}"
        if data is not None:
            wave, rate = read_audio(data, name=name)
        elif path:
            wave, rate = read_audio(path)
        else:
            raise ValueError("the cell holds neither bytes nor a path")
        audio = self.cfg.audio
        x = torch.from_numpy(wave)
        if rate != audio.sample_rate:
            if not audio.resample:
                raise ValueError(
                    f"{name}: sample rate {rate} Hz differs from data.audio.sample_rate="
                    f"{audio.sample_rate} Hz and data.audio.resample is false"
                )
            # The whole clip is resampled before cropping: clips here are seconds long,
            # and cropping first would put the FFT resampler's edge effects inside the crop.
            try:
                x = resample(x, rate, audio.sample_rate)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        mode = audio.crop if (audio.crop != "random" or self.train) else "start"
        x = fit_length(x, audio.num_samples, mode)
        return self.spectrogram(x)


def _convert_mode(img: Image.Image, channels: int) -> Image.Image:
    """Any PIL mode -> 'RGB' (channels 3) or 'L' (channels 1).

    Transparent images are composited on white (how they are usually displayed), not
    reduced to their hidden colour channels; 16-bit and float greys are rescaled to 8 bits
    rather than clipped, which is what a plain ``convert('L')`` would do.
    """
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        elif arr.size and arr.max() > 255:
            arr = arr / (65535.0 / 255.0) if arr.max() <= 65535 else arr / arr.max() * 255
        elif img.mode == "F" and arr.size and arr.max() <= 1.0:
            arr = arr * 255.0
        img = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P" or "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    target = "RGB" if channels == 3 else "L"
    return img if img.mode == target else img.convert(target)


def _resize(img: Image.Image, size: int, mode: str, train: bool) -> Image.Image:
    """Square ``size`` x ``size``: squash ('resize'), or scale the shorter side to ``size`` and
    crop the centre ('center_crop') or a random window ('random_crop' when training)."""
    bicubic = Image.Resampling.BICUBIC
    if mode == "resize":
        return img if img.size == (size, size) else img.resize((size, size), bicubic)
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), bicubic)
    if (nw, nh) == (size, size):
        return img
    if mode == "random_crop" and train:
        # torch's RNG: DataLoader seeds it per worker, so workers crop differently
        left = int(torch.randint(0, nw - size + 1, (1,)))
        top = int(torch.randint(0, nh - size + 1, (1,)))
    else:
        left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


# ---------------------------------------------------------------------------------------
# entry point


def build_dataset(cfg: DataConfig, split: str, train: bool = False) -> Dataset:
    """The dataset for ``split`` (usually ``cfg.train_split`` or ``cfg.eval_split``).

    ``train=True`` allows random crops (``resize: random_crop``, ``audio.crop: random``);
    otherwise every item is deterministic. For the procedural sources the split named
    ``cfg.train_split`` has ``num_train`` items and any other split ``num_eval``.
    Split names may carry a datasets slice, e.g. ``train[:95%]``.
    """
    cfg.validate()
    if cfg.source in ("shapes", "tones"):
        # generated on demand, so any name would "exist": only the usual ones do
        known = dict.fromkeys([cfg.train_split, cfg.eval_split, "train", "validation", "test"])
        if split not in known:
            raise ValueError(f"data: source {cfg.source!r} has the splits {', '.join(map(repr, known))}; "
                             f"got {split!r}")
    if cfg.source == "shapes":
        _check_modality(cfg, "image", "source 'shapes'")
        size = cfg.num_train if split == cfg.train_split else cfg.num_eval
        return ShapesDataset(size, cfg.image_size, cfg.channels, cfg.seed, split)
    if cfg.source == "tones":
        _check_modality(cfg, "audio", "source 'tones'")
        size = cfg.num_train if split == cfg.train_split else cfg.num_eval
        return TonesDataset(size, cfg.audio, cfg.seed, split)
    table, where = _load_table(cfg, split)
    if len(table) == 0:
        raise ValueError(f"{where}: split {split!r} has no rows (an empty dataset)")
    return HFDataset(table, cfg, split=split, train=train, where=where)


def detect_modality(cfg: DataConfig, split: Optional[str] = None) -> str:
    """The modality the data actually holds: ``cfg.modality`` when set, else the kind of
    the named (or first) Image/Audio column of ``split``. Reading the schema is cheap
    (Arrow files are memory-mapped), and it lets an audio Parquet dataset such as FSDD
    work without ``data.modality=audio``."""
    if cfg.modality is not None or cfg.source in ("shapes", "tones"):
        return cfg.resolved_modality
    if cfg.source == "audiofolder":
        return "audio"
    table, _ = _load_table(cfg, split or cfg.train_split)
    features = table.features
    if cfg.column is not None and cfg.column in features:
        return _feature_modality(features[cfg.column]) or cfg.resolved_modality
    for feature in features.values():
        kind = _feature_modality(feature)
        if kind is not None:
            return kind
    return cfg.resolved_modality
