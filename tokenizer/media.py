"""Writing model tensors as PNG images and grids (PIL + numpy; no torchvision)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def quantize_uint8(x: torch.Tensor) -> torch.Tensor:
    """Values in [-1, 1] -> uint8 0..255, rounded, same layout: the one pixel mapping that
    PNGs, grids and FID inputs share."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def dequantize_uint8(x: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """uint8 0..255 (..., C, H, W) -> float in [-1, 1], the inverse of
    :func:`quantize_uint8` up to its 1/127.5 step. With ``channels`` 1, an image saved as
    RGB keeps its first channel: a grey image (a spectrogram) written as RGB has three
    equal ones."""
    x = x.float() / 127.5 - 1.0
    return x[..., :1, :, :] if channels == 1 and x.dim() >= 3 and x.shape[-3] == 3 else x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) or (N, C, H, W) in [-1, 1] -> uint8 HWC / NHWC arrays (for PIL)."""
    return quantize_uint8(x).cpu().movedim(-3, -1).numpy()


def make_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> one uint8 image (rows of ``nrow``) with white padding."""
    return tile_uint8(to_uint8(x), nrow, pad)


def tile_uint8(imgs: np.ndarray, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """(N, H, W, C) uint8 images -> one uint8 image (rows of ``nrow``) with white padding:
    :func:`make_grid` of images already turned into bytes (a streamed sample set keeps only
    the bytes of the samples its grid shows)."""
    n, h, w, c = imgs.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = np.full((ncol * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0 : y0 + h, x0 : x0 + w] = imgs[i]
    return grid


def save_png(array: np.ndarray, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    Image.fromarray(array).save(path)
    return path


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    return save_png(make_grid(x, nrow), path)


def spectrogram_rows(x: torch.Tensor) -> torch.Tensor:
    """Flip spectrogram images so low frequencies sit at the bottom, as people read them."""
    return torch.flip(x, dims=[-2])
