"""Decoded media -> model input: PIL mode and size conversion, the [-1, 1] tensor layout,
and the spectrogram front end shared by the procedural and the HF-backed datasets."""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image

from tokenizer.audio import Spectrogram
from tokenizer.config import AudioConfig


class LazySpectrogram:
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


def image_to_tensor(array: np.ndarray) -> torch.Tensor:
    """HWC (or HW) uint8 -> float (C, H, W) in [-1, 1]."""
    if array.ndim == 2:
        array = array[:, :, None]
    x = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()
    return x / 127.5 - 1.0


def convert_mode(img: Image.Image, channels: int) -> Image.Image:
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


def resize_image(img: Image.Image, size: int, mode: str, train: bool) -> Image.Image:
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
