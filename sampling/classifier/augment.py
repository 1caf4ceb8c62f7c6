"""Training-time augmentation that keeps the class: for spectrograms a random time shift,
one time mask, one frequency mask and a random gain; for images a random crop of the
edge-padded image and a horizontal flip (``augment.*`` of the config, each off unless set)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sampling.classifier.config import AugmentConfig


def _span_mask(batch: int, length: int, max_width: int, device: torch.device) -> torch.Tensor:
    """(batch, length) bool: one span per row, width uniform in [0, max_width]."""
    width = torch.randint(0, max_width + 1, (batch, 1), device=device)
    start = (torch.rand(batch, 1, device=device) * (length - width + 1)).floor()
    pos = torch.arange(length, device=device)[None]
    return (pos >= start) & (pos < start + width)


def augment_spectrograms(x: torch.Tensor, cfg: AugmentConfig, db_range: float) -> torch.Tensor:
    """Random time shift, time mask, frequency mask and gain on a (B, C, F, T) batch in
    [-1, 1] (-1 = silence, the dB floor). Uses torch's global RNG on ``x``'s device."""
    b, _, bins, frames = x.shape
    dev = x.device
    if cfg.gain_db:
        gain = (torch.rand(b, 1, 1, 1, device=dev) * 2 - 1) * cfg.gain_db * 2.0 / db_range
        x = torch.where(x > -1.0, (x + gain).clamp(-1.0, 1.0), x)
    if cfg.time_shift:
        shift = torch.randint(-cfg.time_shift, cfg.time_shift + 1, (b, 1), device=dev)
        src = torch.arange(frames, device=dev)[None] - shift  # (B, T) source frame per frame
        valid = (src >= 0) & (src < frames)
        idx = src.clamp(0, frames - 1)[:, None, None, :].expand_as(x)
        x = torch.where(valid[:, None, None, :], x.gather(-1, idx), x.new_tensor(-1.0))
    if cfg.time_mask:
        mask = _span_mask(b, frames, cfg.time_mask, dev)
        x = x.masked_fill(mask[:, None, None, :], -1.0)
    if cfg.freq_mask:
        mask = _span_mask(b, bins, cfg.freq_mask, dev)
        x = x.masked_fill(mask[:, None, :, None], -1.0)
    return x


def augment_images(x: torch.Tensor, cfg: AugmentConfig) -> torch.Tensor:
    """Random crop of the edge-padded image (the shift of a classic CIFAR crop, with no
    black border for the network to learn) and horizontal flip on a (B, C, H, W) batch.
    Uses torch's global RNG on ``x``'s device."""
    b, c, h, w = x.shape
    dev = x.device
    if cfg.crop_padding:
        p = cfg.crop_padding
        padded = F.pad(x, (p, p, p, p), mode="replicate")
        top = torch.randint(0, 2 * p + 1, (b, 1), device=dev) + torch.arange(h, device=dev)
        left = torch.randint(0, 2 * p + 1, (b, 1), device=dev) + torch.arange(w, device=dev)
        rows = torch.arange(b, device=dev)[:, None, None, None]
        chans = torch.arange(c, device=dev)[None, :, None, None]
        x = padded[rows, chans, top[:, None, :, None], left[:, None, None, :]]
    if cfg.flip:
        flip = torch.rand(b, device=dev) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x

