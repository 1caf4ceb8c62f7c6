"""The small convolutional network (``model.net: conv``, the default): residual blocks, the
bottom-up encoder, the decoder.

Shapes follow the small reference networks of VQ-VAE-2 and SQ-VAE: stride-2 4x4 convs
down, a 3x3 conv, residual blocks (conv3x3 -> conv1x1 bottleneck); transposed 4x4 convs up.
Its sizes are the model section's own keys (channels, res_blocks, res_channels, norm); the
hierarchy's glue (tokenizer/model.py) uses its residual stack and upsampler on every network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from tokenizer.nets.checkpointing import Checkpointed
from tokenizer.nets.registry import register_net


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.Identity()


class ResBlock(nn.Module):
    def __init__(self, channels: int, res_channels: int, norm: str = "none"):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, res_channels, 3, padding=1),
            _norm(norm, res_channels),
            nn.ReLU(),
            nn.Conv2d(res_channels, channels, 1),
            _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def res_stack(channels: int, res_channels: int, n: int, norm: str) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(channels, res_channels, norm) for _ in range(n)], nn.ReLU())


def _log2(n: int) -> int:
    return int(round(math.log2(n)))


def downsampler(c_in: int, c_out: int, factor: int) -> nn.Sequential:
    """log2(factor) stride-2 4x4 convs (half width until the last), then a 3x3 conv."""
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(_log2(factor)):
        layers += [nn.Conv2d(c, c_out // 2, 4, stride=2, padding=1), nn.ReLU()]
        c = c_out // 2
    layers.append(nn.Conv2d(c, c_out, 3, padding=1))
    return nn.Sequential(*layers)


def upsampler(c_in: int, c_out: int, factor: int, mid: int | None = None) -> nn.Sequential:
    """log2(factor) stride-2 transposed 4x4 convs with ReLUs between them."""
    n = _log2(factor)
    if n == 0:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1))
    mid = mid or c_in
    layers: list[nn.Module] = []
    c = c_in
    for i in range(n):
        last = i == n - 1
        layers.append(nn.ConvTranspose2d(c, c_out if last else mid, 4, stride=2, padding=1))
        if not last:
            layers.append(nn.ReLU())
        c = mid
    return nn.Sequential(*layers)


class Encoder(Checkpointed):
    """Bottom-up path: features at every factor the hierarchy needs (finest first)."""

    def __init__(
        self, in_channels: int, channels: int, res_channels: int, res_blocks: int,
        factors: list[int], norm: str = "none",
    ):
        super().__init__()
        self.factors = sorted(set(factors))
        stages = []
        prev_c, prev_f = in_channels, 1
        for f in self.factors:
            stages.append(
                nn.Sequential(
                    downsampler(prev_c, channels, f // prev_f),
                    res_stack(channels, res_channels, res_blocks, norm),
                )
            )
            prev_c, prev_f = channels, f
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        feats = {}
        for f, stage in zip(self.factors, self.stages):
            x = self.run(stage, x)
            feats[f] = x
        return feats


class Decoder(Checkpointed):
    """Top-down state H_L -> reconstruction (linear output: data lives in [-1, 1])."""

    def __init__(
        self, state_channels: int, out_channels: int, channels: int, res_channels: int,
        res_blocks: int, factor: int, norm: str = "none",
    ):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(state_channels, channels, 3, padding=1),
            res_stack(channels, res_channels, res_blocks, norm),
            upsampler(channels, out_channels, factor, mid=channels // 2),
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.run(self.net, h)

    def last_weight(self) -> nn.Parameter:
        """The output layer's weight (where the adaptive adversarial weight compares gradients)."""
        return self.net[-1][-1].weight


@dataclass
class ConvOptions:
    """No options of its own: model.channels, res_blocks, res_channels and norm size it."""


@register_net("conv", ConvOptions)
def build_conv(cfg, options: ConvOptions, in_channels: int, factors: list[int], state_channels: int):
    """Small conv stack of VQ-VAE-2 / SQ-VAE: stride-2 convs, bottleneck residual blocks, no normalisation or attention."""
    encoder = Encoder(in_channels, cfg.channels, cfg.res_channels, cfg.res_blocks, factors, cfg.norm)
    decoder = Decoder(state_channels, in_channels, cfg.channels, cfg.res_channels, cfg.res_blocks,
                      factors[-1], cfg.norm)
    return encoder, decoder
