"""Typed configuration of stage two: one autoregressive prior per code level.

``model`` is the default for every level; ``levels`` optionally lists per-level settings,
each entry a partial mapping merged over ``model`` (so ``levels: [{}, {n_layer: 8}]``
makes only level 1 deeper). Level 0 is the top of the hierarchy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from engine.config import ConfigError, load_config
from engine.train_config import TrainConfig
from prior.backbones import get_backbone


@dataclass
class LevelModelConfig:
    # transformers backbone, fed through inputs_embeds: a name registered in prior/backbones.py
    arch: str = "gpt2"
    n_layer: int = 4  # transformer layers
    n_head: int = 4  # attention heads per layer
    n_embd: int = 256  # embedding width (a multiple of n_head)
    mlp_ratio: float = 4.0  # MLP width / n_embd
    dropout: float = 0.1  # residual, embedding and attention dropout
    cond_channels: int = 128  # width of the conditioning network (levels below the top)
    cond_blocks: int = 2  # residual conv blocks of the conditioning network
    # token order within a level: 'raster' (rows, left to right) or 'column' (columns, top
    # to bottom: for spectrograms, one time frame after another)
    order: Literal["raster", "column"] = "raster"

    def validate(self) -> None:
        backbone = get_backbone(self.arch)
        for name in ("n_layer", "n_head", "n_embd", "cond_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.cond_blocks < 0:
            raise ConfigError(f"cond_blocks: must be >= 0, got {self.cond_blocks}")
        if self.n_embd % self.n_head:
            raise ConfigError(f"n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")
        if backbone.rotary and (self.n_embd // self.n_head) % 2:
            raise ConfigError(
                f"n_embd: the head size {self.n_embd // self.n_head} must be even for {self.arch}'s rotary embedding"
            )
        if self.mlp_ratio <= 0:
            raise ConfigError(f"mlp_ratio: must be > 0, got {self.mlp_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")


@dataclass
class PriorDataConfig:
    codes: Optional[str] = None  # directory written by `hqvae encode`
    train_split: str = "train"  # split of the codes to train on
    eval_split: Optional[str] = "test"  # held-out split for bits/token; null = none


@dataclass
class PriorEvalConfig:
    max_examples: int = 2000  # held-out examples scored per evaluation
    batch_size: int = 256  # sequences scored at a time

    def validate(self) -> None:
        if self.max_examples < 1 or self.batch_size < 1:
            raise ConfigError("max_examples / batch_size: must be >= 1")


@dataclass
class PriorConfig:
    run_dir: str = "runs/prior"  # output folder: one level_<l>/ per code level
    # tokenizer run the codes came from; when set, its identity must match the codes'
    tokenizer: Optional[str] = None
    data: PriorDataConfig = field(default_factory=PriorDataConfig)  # the codes to model
    model: LevelModelConfig = field(default_factory=LevelModelConfig)  # every level's transformer
    levels: list[LevelModelConfig] = field(default_factory=list)  # per-level, merged over model
    class_cond: bool = False  # condition every level on the label (needs labelled codes)
    label_dropout: float = 0.1  # P(label -> null class) in training, for classifier-free guidance
    # the label enters as the start token; this also adds its embedding to every position's
    # input, as the upper levels' conditioning is (a stronger signal for small priors:
    # docs/benchmarks.md, "FSDD at a longer budget")
    label_every_position: bool = False
    train: TrainConfig = field(  # optimisation of each level (defaults for transformers)
        default_factory=lambda: TrainConfig(
            lr=3e-4, weight_decay=0.01, beta2=0.95, schedule="cosine", warmup_steps=100,
            min_lr_ratio=0.1, clip_grad=1.0,
        )
    )
    eval: PriorEvalConfig = field(default_factory=PriorEvalConfig)  # held-out bits per token

    def validate(self) -> None:
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"label_dropout: must be in [0, 1), got {self.label_dropout}")
        if self.label_every_position and not self.class_cond:
            raise ConfigError("label_every_position: needs class_cond=true (there is no label to add)")

    def level_model(self, level: int) -> LevelModelConfig:
        return self.levels[level] if level < len(self.levels) else self.model


def merge_levels(data: dict) -> dict:
    """Expand each partial ``levels`` entry over ``model`` before type-checking."""
    levels = data.get("levels")
    if not levels:
        return data
    if not isinstance(levels, list):
        raise ConfigError(f"levels: expected a list of per-level model settings, got {levels!r}")
    base = data.get("model") or {}
    if not isinstance(base, dict):
        return data  # from_dict reports the bad `model` with its key
    # `model` is checked before `levels`, so a bad model key is reported as model.<key>,
    # not as the levels.<i>.<key> it was copied into
    data = {"model": base, **{k: v for k, v in data.items() if k != "model"}}
    merged = []
    for i, entry in enumerate(levels):
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise ConfigError(f"levels.{i}: expected a mapping of model settings, got {entry!r}")
        merged.append({**base, **entry})
    data["levels"] = merged
    return data


def load_prior_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PriorConfig:
    return load_config(PriorConfig, path, overrides, prepare=merge_levels)
