"""Optional training losses of the tokenizer: LPIPS (perceptual) and a PatchGAN (adversarial).

Names load on first use: the config section (tokenizer.losses.config) is read when a config
loads, which does not otherwise import torch."""

import importlib

_EXPORTS = {
    "PatchDiscriminator": "adversarial", "adaptive_weight": "adversarial",
    "discriminator_loss": "adversarial", "generator_loss": "adversarial",
    "AdversarialConfig": "config", "LossConfig": "config", "PerceptualConfig": "config",
    "TokenizerObjective": "objective",
    "LPIPS": "perceptual", "load_lpips": "perceptual", "random_vgg16_state": "perceptual",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tokenizer.losses' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tokenizer.losses.{_EXPORTS[name]}"), name)
