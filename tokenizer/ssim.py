"""SSIM, the structural similarity index of Wang, Bovik, Sheikh & Simoncelli (2004), "Image
quality assessment: from error visibility to structural similarity", IEEE TIP 13(4), with the
paper's constants: an 11×11 Gaussian window of σ = 1.5, K1 = 0.01, K2 = 0.03.

The SSIM map is averaged over the positions where the whole window fits inside the image (as
the paper's reference implementation does), then over channels; ``hqvae eval-tokenizer``
reports its mean over images (docs/concepts/metrics.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03


def _gaussian(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    t = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-t.pow(2) / (2 * sigma ** 2))
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 255.0) -> torch.Tensor:
    """Per-image SSIM (B,) of two (B, C, H, W) batches on the scale [0, ``data_range``].

    An image smaller than 11 pixels on a side is scored with the largest odd window that fits
    (the same σ, renormalised) rather than refused: tiny test images have no 11×11 patch.
    """
    if x.dim() != 4 or x.shape != y.shape:
        raise ValueError(f"ssim: needs two (B, C, H, W) batches of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    b, c, h, w = x.shape
    # float64: E[x²] - E[x]² cancels on the 0-255 scale (E[x²] ~ 6e4 against C2 ≈ 58.5), and
    # cuDNN runs float32 convolutions in TF32 by default; MPS has no float64, so the CPU does it
    device = torch.device("cpu") if x.device.type == "mps" else x.device
    x = x.to(device=device, dtype=torch.float64)
    y = y.to(device=device, dtype=torch.float64)
    size = min(WINDOW, h, w)
    size -= 1 - size % 2  # odd, so the window has a centre
    g = _gaussian(size, SIGMA, torch.float64, device)
    # the five local moments in one separable, per-channel ("valid") Gaussian filtering
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    n = stack.shape[1]
    stack = F.conv2d(stack, g.view(1, 1, size, 1).expand(n, 1, size, 1), groups=n)
    stack = F.conv2d(stack, g.view(1, 1, 1, size).expand(n, 1, 1, size), groups=n)
    mx, my, exx, eyy, exy = stack.split(c, dim=1)
    vx, vy, cov = exx - mx * mx, eyy - my * my, exy - mx * my
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    smap = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return smap.mean(dim=(1, 2, 3))
