"""The adversarial part of a VQGAN-style objective: a PatchGAN discriminator (Isola et al.
2017, "Image-to-Image Translation with Conditional Adversarial Networks"), its hinge or
non-saturating losses, and the adaptive weight of Esser et al. 2021 ("Taming Transformers
for High-Resolution Image Synthesis")."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        # 32 groups where the width allows, else the largest power of 2 that divides it
        return nn.GroupNorm(math.gcd(32, channels), channels)
    return nn.Identity()


class PatchDiscriminator(nn.Module):
    """A real/fake logit per overlapping patch: ``layers`` stride-2 4x4 convs (widths
    doubling up to 8x ``channels``), one stride-1 4x4 conv, and a 1-channel 4x4 output conv;
    LeakyReLU(0.2) between them, normalisation on all but the first and last."""

    def __init__(self, in_channels: int, channels: int = 64, layers: int = 3, norm: str = "batch"):
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        c = channels
        for i in range(1, layers + 1):
            c_out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            blocks += [nn.Conv2d(c, c_out, 4, stride=stride, padding=1, bias=norm == "none"),
                       _norm(norm, c_out), nn.LeakyReLU(0.2)]
            c = c_out
        blocks.append(nn.Conv2d(c, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*blocks)
        for m in self.modules():  # DCGAN's initialisation, which PatchGAN discriminators keep
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def discriminator_loss(real: torch.Tensor, fake: torch.Tensor, kind: str) -> torch.Tensor:
    """The discriminator's loss on real and fake logits: hinge, mean(relu(1 - real)) +
    mean(relu(1 + fake)), or non-saturating, mean(softplus(-real)) + mean(softplus(fake));
    halved, as the average of the two halves."""
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
    return 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())


def generator_loss(fake: torch.Tensor, kind: str) -> torch.Tensor:
    """The generator's adversarial loss on the fake logits: -mean(fake) (hinge) or
    mean(softplus(-fake)) (non-saturating)."""
    return -fake.mean() if kind == "hinge" else F.softplus(-fake).mean()


def adaptive_weight(reconstruction: torch.Tensor, adversarial: torch.Tensor, last_layer: torch.Tensor,
                    max_weight: float | torch.Tensor = 1e4) -> torch.Tensor:
    """||d rec / d w|| / (||d adv / d w|| + 1e-4) at the decoder's last weight ``w``, clamped
    to [0, max_weight] and detached: it makes the adversarial gradient at the output the
    size of the reconstruction's, whatever the reconstruction loss's scale (MSE or the SQ
    objective's log-likelihood, whose gradient is D_x / (2 MSE) times larger; the caller
    scales ``max_weight`` by the same factor so that the clamp binds alike for both)."""
    g_rec = torch.autograd.grad(reconstruction, last_layer, retain_graph=True)[0]
    g_adv = torch.autograd.grad(adversarial, last_layer, retain_graph=True)[0]
    ratio = g_rec.norm() / (g_adv.norm() + 1e-4)
    return torch.minimum(ratio, torch.as_tensor(max_weight, dtype=ratio.dtype, device=ratio.device)).detach()
