"""The built-in procedural datasets: 'shapes' (images) and 'tones' (audio clips as
spectrograms), computed item by item from a seed, any size, nothing stored on disk.

Rendering is the costly part of these sets (about 0.6 ms an image and 1.8 ms a clip on one
CPU core), and training draws every item many times: a 1,200-step run at batch 32 renders
38,400 clips from a set of 1,000. So each process keeps what it rendered in
:data:`RENDER_CACHE` (bounded; shared by every dataset of the same source, settings, seed and
split, so the pipeline's tokenizer, encode and classifier stages render each item once)."""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import Any, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from tokenizer.config import AudioConfig
from tokenizer.data.transforms import LazySpectrogram, image_to_tensor


def _split_key(split: str) -> int:
    """A stable integer per split name: it seeds the procedural sets, so 'train' and
    'test' draw from disjoint random streams (``hash`` is salted per process, crc32 is not)."""
    return zlib.crc32(split.encode("utf-8"))


def _item_rng(seed: int, split_key: int, index: int) -> np.random.Generator:
    # SeedSequence mixes the three words, so neighbouring items and seeds are independent
    return np.random.default_rng([seed % 2**63, split_key, index])


class RenderCache:
    """Rendered items by (dataset key, index), up to ``limit_bytes`` in all; once full, new
    items are rendered but not kept (what is kept stays: no eviction churn when an epoch is
    larger than the cache)."""

    def __init__(self, limit_bytes: int = 512 * 2**20):
        self.limit_bytes = limit_bytes
        self._items: dict[tuple, Any] = {}
        self.nbytes = 0

    def get(self, key: tuple, index: int):
        return self._items.get((key, index))

    def put(self, key: tuple, index: int, item: Any) -> None:
        size = item.nbytes if isinstance(item, np.ndarray) else item.numel() * item.element_size()
        if self.nbytes + size <= self.limit_bytes:
            self._items[(key, index)] = item
            self.nbytes += size

    def clear(self) -> None:
        self._items.clear()
        self.nbytes = 0


RENDER_CACHE = RenderCache()


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
        # item i depends on these and i only (not on size): sets of any size share renders
        self._cache_key = ("shapes", seed, split, image_size, channels)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"ShapesDataset: index {index} out of range for size {self.size}")
        label = index % self.num_classes  # exactly balanced classes
        pixels = RENDER_CACHE.get(self._cache_key, index)
        if pixels is None:
            rgb = self.render(_item_rng(self.seed, self._key, index), label)
            if self.channels == 1:
                rgb = rgb @ np.array([0.299, 0.587, 0.114])
            pixels = np.round(rgb * 255).astype(np.uint8)  # kept as uint8: 3 KB at 32x32
            RENDER_CACHE.put(self._cache_key, index, pixels)
        return {"x": image_to_tensor(pixels), "label": label}

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
        self.spectrogram = LazySpectrogram(audio)
        self._cache_key = ("tones", seed, split, dataclasses.astuple(audio))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(f"TonesDataset: index {index} out of range for size {self.size}")
        label = index % self.num_classes
        spec = RENDER_CACHE.get(self._cache_key, index)
        if spec is None:
            spec = self.spectrogram(torch.from_numpy(self.waveform(index)))
            RENDER_CACHE.put(self._cache_key, index, spec)
        return {"x": spec.clone(), "label": label}  # a copy: callers may edit their batch

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
