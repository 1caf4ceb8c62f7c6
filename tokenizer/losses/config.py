"""The tokenizer's optional training losses (``loss.*``): perceptual (LPIPS) and adversarial
(PatchGAN). Both are off by default; the paper-faithful objective of every preset (MSE, or
the SQ presets' Gaussian log-likelihood) is what trains unless a weight is set."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from engine.config import ConfigError


@dataclass
class PerceptualConfig:
    # weight of LPIPS (Zhang et al. 2018) beside the pixel distortion; 0 = off. It joins the
    # distortion the decoder's likelihood measures: MSE + weight * LPIPS (docs: "Losses")
    weight: float = 0.0
    # VGG16 weights (torchvision's vgg16-397923af.pth, or a .safetensors of the same keys);
    # unset: the local torch hub cache, then the Hugging Face cache (timm/vgg16.tv_in1k).
    # Never downloaded: absent weights are an error naming this key and the files looked for
    vgg_path: Optional[str] = None
    # LPIPS's linear heads (lpips' weights/v0.1/vgg.pth); unset: the installed `lpips` package's
    heads_path: Optional[str] = None

    def validate(self) -> None:
        if not 0 <= self.weight <= 1e4:
            raise ConfigError(f"weight: must be in [0, 1e4] (0 = off), got {self.weight}")


@dataclass
class AdversarialConfig:
    # weight of the generator's adversarial term (after the adaptive weight); 0 = off
    weight: float = 0.0
    loss: Literal["hinge", "non_saturating"] = "hinge"  # the discriminator's and generator's loss
    start_step: int = 0  # optimizer step from which the discriminator trains and the term counts
    # Esser et al. 2021: scale the adversarial term by ||grad rec|| / ||grad adv|| at the
    # decoder's last layer, so it neither drowns nor vanishes beside any reconstruction scale
    adaptive_weight: bool = True
    # upper clamp of that ratio, on the scale of a per-element mean reconstruction loss (the
    # SQ objective's gradient is D / (2 MSE) times larger, and its clamp with it)
    max_adaptive_weight: float = 1e4
    # PatchGAN discriminator (Isola et al. 2017): layers of stride-2 4x4 convs, base width
    layers: int = 3
    channels: int = 64  # width of the first conv, doubled per layer
    norm: Literal["batch", "group", "none"] = "batch"  # normalisation between the convs
    # its own optimizer settings (a parameter group of its own: Adam state, learning rate
    # and schedule apart from the tokenizer's); unset lr: train.lr
    lr: Optional[float] = None
    beta1: float = 0.5  # Adam first-moment decay of the discriminator
    beta2: float = 0.9  # Adam second-moment decay of the discriminator
    schedule: Literal["constant", "same"] = "constant"  # 'same': the tokenizer's train.schedule

    def validate(self) -> None:
        if not 0 <= self.weight <= 1e4:
            raise ConfigError(f"weight: must be in [0, 1e4] (0 = off), got {self.weight}")
        if self.start_step < 0:
            raise ConfigError(f"start_step: must be >= 0, got {self.start_step}")
        if not 1 <= self.layers <= 8:
            raise ConfigError(f"layers: must be in [1, 8], got {self.layers}")
        if not 1 <= self.channels <= 1024:
            raise ConfigError(f"channels: must be in [1, 1024], got {self.channels}")
        if self.lr is not None and not 0 < self.lr <= 1:
            raise ConfigError(f"lr: must be in (0, 1], got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be in [0, 1), got {getattr(self, name)}")
        if self.max_adaptive_weight <= 0:
            raise ConfigError(f"max_adaptive_weight: must be > 0, got {self.max_adaptive_weight}")


@dataclass
class LossConfig:
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)  # LPIPS beside the distortion
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)  # a PatchGAN discriminator

    @property
    def any(self) -> bool:
        """Whether training needs more than the model's own objective."""
        return self.perceptual.weight > 0 or self.adversarial.weight > 0
