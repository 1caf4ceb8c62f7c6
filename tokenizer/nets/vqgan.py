"""A scalable encoder / decoder (``model.net: vqgan``) in the style of the tokenizers the field
trains at 256 px and above: VQGAN (Esser et al. 2021, "Taming Transformers for
High-Resolution Image Synthesis"), and the tokenizers of MaskGIT, RQ-VAE and LlamaGen built
on it.

Per resolution a width ``base_channels * channel_mult[i]`` and ``num_res_blocks`` residual
blocks (GroupNorm + SiLU + 3x3 conv, twice), self-attention at the factors ``attn_factors``
names, strided-conv downsampling / nearest-neighbour upsampling between resolutions, and a
middle block (residual, attention, residual) at the coarsest grid of each path. The
encoder exposes features at every factor the hierarchy taps, each through its own output
head (GroupNorm, SiLU, 3x3 conv to ``model.channels``): injected layers read coarser taps,
residual runs share one.

``gradient_checkpointing`` (set by :meth:`tokenizer.model.HQVAE.set_gradient_checkpointing`)
recomputes every residual and attention block in the backward pass instead of keeping its
activations: at 256 px those dominate training memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError
from tokenizer.nets.checkpointing import Checkpointed
from tokenizer.nets.registry import register_net

# the widths of taming-transformers' f16 VQGAN, one per resolution from 1 to 1/16; a path
# with more or fewer resolutions takes this pattern's start and repeats its last value
DEFAULT_MULT = (1, 1, 2, 2, 4)


@dataclass
class VQGANOptions:
    base_channels: int = 128  # width at the input resolution, times channel_mult per resolution
    # one multiplier per resolution from the input (factor 1) to the coarsest code grid:
    # log2(coarsest factor) + 1 entries; unset: DEFAULT_MULT's pattern
    channel_mult: Optional[list[int]] = None
    num_res_blocks: int = 2  # per resolution (the decoder has one more, as VQGAN's)
    # code-grid factors with self-attention after each residual block; unset: the coarsest
    # only (VQGAN at 256 px, factor 16: attention at 16 x 16)
    attn_factors: Optional[list[int]] = None
    mid_attention: bool = True  # attention inside the middle blocks
    norm_groups: int = 32  # GroupNorm groups; every width must be a multiple
    dropout: float = 0.0  # dropout inside the residual blocks

    def validate(self) -> None:
        if not 1 <= self.base_channels <= 4096:
            raise ConfigError(f"base_channels: must be in [1, 4096], got {self.base_channels}")
        # the residual blocks are what widen the features to each resolution's width (and
        # where attention sits): a resolution without one would keep the previous width
        if not 1 <= self.num_res_blocks <= 64:
            raise ConfigError(f"num_res_blocks: must be in [1, 64], got {self.num_res_blocks}")
        if not 1 <= self.norm_groups <= 1024:
            raise ConfigError(f"norm_groups: must be in [1, 1024], got {self.norm_groups}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        for i, m in enumerate(self.channel_mult or []):
            if not 1 <= m <= 64:
                raise ConfigError(f"channel_mult.{i}: must be in [1, 64], got {m}")

    def multipliers(self, levels: int) -> list[int]:
        """One width multiplier per resolution, ``levels`` of them."""
        if self.channel_mult is not None:
            return list(self.channel_mult)
        return [DEFAULT_MULT[min(i, len(DEFAULT_MULT) - 1)] for i in range(levels)]

    def attention_at(self, coarsest: int) -> set[int]:
        return {coarsest} if self.attn_factors is None else set(self.attn_factors)

    def check_factors(self, factors: list[int]) -> None:
        """Refuse options that do not fit the hierarchy's code grids ``factors``."""
        levels = int(math.log2(max(factors))) + 1
        if self.channel_mult is not None and len(self.channel_mult) != levels:
            raise ConfigError(
                f"net_options.channel_mult: {len(self.channel_mult)} multipliers for code grids down to "
                f"factor {max(factors)}; give one per resolution from 1 to {max(factors)} ({levels})")
        for i, f in enumerate(self.attn_factors or []):
            if f < 1 or f & (f - 1) or f > max(factors):
                raise ConfigError(f"net_options.attn_factors.{i}: a power of 2 in [1, {max(factors)}] "
                                  f"(the coarsest code grid), got {f}")
        for i, m in enumerate(self.multipliers(levels)):
            if (self.base_channels * m) % self.norm_groups:
                raise ConfigError(
                    f"net_options.norm_groups: {self.norm_groups} groups do not divide the width "
                    f"{self.base_channels * m} at factor {2 ** i} (base_channels x channel_mult.{i})")


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """GroupNorm, SiLU, 3x3 conv, twice, with a 1x1 skip when the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            group_norm(c_in, groups), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            group_norm(c_out, groups), nn.SiLU(), nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.body(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the positions of a feature map (PyTorch's fused
    scaled-dot-product kernel, so no H*W x H*W matrix is stored where a fused kernel runs)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        y = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.out(y.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _level(c_in: int, c_out: int, n: int, attention: bool, opt: VQGANOptions) -> tuple[list[nn.Module], int]:
    blocks: list[nn.Module] = []
    for _ in range(n):
        blocks.append(ResnetBlock(c_in, c_out, opt.norm_groups, opt.dropout))
        c_in = c_out
        if attention:
            blocks.append(AttentionBlock(c_out, opt.norm_groups))
    return blocks, c_in


def _middle(c: int, opt: VQGANOptions) -> list[nn.Module]:
    blocks: list[nn.Module] = [ResnetBlock(c, c, opt.norm_groups, opt.dropout)]
    if opt.mid_attention:
        blocks.append(AttentionBlock(c, opt.norm_groups))
    blocks.append(ResnetBlock(c, c, opt.norm_groups, opt.dropout))
    return blocks


def _head(c_in: int, c_out: int, groups: int) -> nn.Sequential:
    return nn.Sequential(group_norm(c_in, groups), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))


class VQGANEncoder(Checkpointed):
    """Bottom-up path: {factor: features with ``out_channels`` channels} at each tapped factor."""

    def __init__(self, in_channels: int, out_channels: int, factors: list[int], opt: VQGANOptions):
        super().__init__()
        self.factors = sorted(set(factors))
        coarsest = self.factors[-1]
        levels = int(math.log2(coarsest)) + 1
        widths = [opt.base_channels * m for m in opt.multipliers(levels)]
        attention = opt.attention_at(coarsest)
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        c = widths[0]
        self.levels, self.heads = nn.ModuleList(), nn.ModuleDict()
        for i in range(levels):
            f = 2 ** i
            blocks, c = _level(c, widths[i], opt.num_res_blocks, f in attention, opt)
            if f == coarsest:
                blocks += _middle(c, opt)
            self.levels.append(nn.ModuleList(blocks))
            if f in self.factors:
                self.heads[str(f)] = _head(c, out_channels, opt.norm_groups)
        self.down = nn.ModuleList(Downsample(widths[i]) for i in range(levels - 1))

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        x = self.conv_in(x)
        feats: dict[int, torch.Tensor] = {}
        for i, blocks in enumerate(self.levels):
            x = self.run(blocks, x)
            if str(2 ** i) in self.heads:
                feats[2 ** i] = self.heads[str(2 ** i)](x)
            if i < len(self.down):
                x = self.down[i](x)
        return feats


class VQGANDecoder(Checkpointed):
    """Top-down state at factor ``factor`` -> reconstruction (linear output)."""

    def __init__(self, state_channels: int, out_channels: int, factor: int, opt: VQGANOptions,
                 levels: int):
        super().__init__()
        top = int(math.log2(factor))
        widths = [opt.base_channels * m for m in opt.multipliers(levels)]
        attention = opt.attention_at(2 ** (levels - 1))
        self.conv_in = nn.Conv2d(state_channels, widths[top], 3, padding=1)
        c = widths[top]
        self.levels, self.up = nn.ModuleList(), nn.ModuleList()
        for i in range(top, -1, -1):
            blocks = _middle(c, opt) if i == top else []
            more, c = _level(c, widths[i], opt.num_res_blocks + 1, 2 ** i in attention, opt)
            self.levels.append(nn.ModuleList(blocks + more))
            if i > 0:
                self.up.append(Upsample(c))
        self.head = _head(c, out_channels, opt.norm_groups)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(h)
        for i, blocks in enumerate(self.levels):
            x = self.run(blocks, x)
            if i < len(self.up):
                x = self.up[i](x)
        return self.head(x)

    def last_weight(self) -> nn.Parameter:
        """The output layer's weight (where the adaptive adversarial weight compares gradients)."""
        return self.head[-1].weight


@register_net("vqgan", VQGANOptions)
def build_vqgan(cfg, options: VQGANOptions, in_channels: int, factors: list[int], state_channels: int):
    """VQGAN-style network: per-resolution widths, GroupNorm + SiLU residual blocks, self-attention, middle blocks."""
    levels = int(math.log2(max(factors))) + 1
    encoder = VQGANEncoder(in_channels, cfg.channels, factors, options)
    decoder = VQGANDecoder(state_channels, in_channels, factors[-1], options, levels)
    return encoder, decoder
