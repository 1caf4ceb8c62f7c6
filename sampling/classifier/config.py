"""The classifier's configuration: network, augmentation, evaluation and the whole run
(``config.yaml`` of a classifier run, keys as ``hqvae config --kind classifier`` prints them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from engine.config import ConfigError, load_config
from engine.train_config import TrainConfig
from tokenizer.config import DataConfig

# sections that may change between a run and its resumption
RESUMABLE_CHANGES = ("train", "eval", "run_dir")


@dataclass
class ClassifierModelConfig:
    # one conv block per width, each halving F and T (128x128 -> 4x4 with the default five);
    # one conv per block costs a third of two at 128x128 (the first block dominates)
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 128])
    convs_per_block: int = 1  # 3x3 convs in each block before its pooling
    norm: Literal["batch", "group"] = "batch"  # normalisation after every conv
    groups: int = 8  # group norm only: groups per layer (must divide every width)
    embedding_dim: int = 128  # width of the penultimate layer = the audio FID features
    dropout: float = 0.2  # before the linear head (the features are taken before it)
    label_smoothing: float = 0.0  # of the cross-entropy targets; 0 = off
    num_classes: Optional[int] = None  # detected from the training data when unset

    def validate(self) -> None:
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError(f"widths: need at least one positive width, got {self.widths}")
        if self.convs_per_block < 1:
            raise ConfigError(f"convs_per_block: must be >= 1, got {self.convs_per_block}")
        if self.embedding_dim < 1:
            raise ConfigError(f"embedding_dim: must be >= 1, got {self.embedding_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout: must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.num_classes is not None and self.num_classes < 2:
            raise ConfigError(f"num_classes: must be >= 2, got {self.num_classes}")
        if self.norm == "group":
            if self.groups < 1:
                raise ConfigError(f"groups: must be >= 1, got {self.groups}")
            bad = [w for w in self.widths if w % self.groups]
            if bad:
                raise ConfigError(f"groups: {self.groups} does not divide the widths {bad}")


SPECTROGRAM_AUGMENT = ("time_shift", "time_mask", "freq_mask", "gain_db")
IMAGE_AUGMENT = ("crop_padding", "flip")


@dataclass
class AugmentConfig:
    """Training-time augmentation, applied per example on the batch: the spectrogram keys
    for audio data, the image keys for images."""

    # spectrograms
    time_shift: int = 0  # max frames a clip moves left or right (the gap is silence, -1)
    time_mask: int = 0  # max width in frames of one span set to silence
    freq_mask: int = 0  # max height in bins of one band set to silence
    gain_db: float = 0.0  # max random gain in dB, +-; floor (silent) values stay silent
    # images
    crop_padding: int = 0  # random crop of the image padded by this many edge pixels a side
    flip: bool = False  # random horizontal flip (for classes a mirror image keeps)

    def validate(self) -> None:
        for name in ("time_shift", "time_mask", "freq_mask", "crop_padding"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.gain_db < 0:
            raise ConfigError(f"gain_db: must be >= 0, got {self.gain_db}")

    def keys_set(self, names: Sequence[str]) -> list[str]:
        return [n for n in names if getattr(self, n)]

    @property
    def active(self) -> bool:
        return bool(self.keys_set(SPECTROGRAM_AUGMENT + IMAGE_AUGMENT))


@dataclass
class ClassifierEvalConfig:
    max_examples: Optional[int] = None  # examples of the eval split scored; None = all
    batch_size: int = 128  # examples per evaluation batch

    def validate(self) -> None:
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"max_examples: must be >= 1 or null, got {self.max_examples}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class ClassifierConfig:
    run_dir: str = "runs/classifier"  # the run folder (weights, model card, eval.json, checkpoints)
    data: DataConfig = field(default_factory=lambda: DataConfig(source="tones"))  # as the tokenizer's data section
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)  # the network
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # the shared training loop's settings, with the classifier's own defaults
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2000, batch_size=32, lr=1e-3, weight_decay=1e-4)
    )
    eval: ClassifierEvalConfig = field(default_factory=ClassifierEvalConfig)  # held-out scoring

    def validate(self) -> None:
        if self.data.streaming:
            # refused here, not when the dataset is built minutes into a pipeline run
            raise ConfigError("data.streaming: a classifier trains and evaluates on random-access "
                              "data, not streams; set data.streaming=false (in a pipeline the classifier "
                              "reads the tokenizer's data: drop the track's classifier or its streaming)")
        audio = self.data.resolved_modality == "audio"
        _, height, width = self.data.shape
        down = 2 ** len(self.model.widths)
        if height < down or width < down:
            larger = "data.audio.n_fft / num_frames" if audio else "data.image_size"
            raise ConfigError(
                f"model.widths: {len(self.model.widths)} blocks halve the input "
                f"{height}x{width} {len(self.model.widths)} times (needs at least {down}x{down}); "
                f"use fewer widths or a larger {larger}"
            )
        # the other modality's augmentation would be silently ignored: say so instead
        wrong = self.augment.keys_set(IMAGE_AUGMENT if audio else SPECTROGRAM_AUGMENT)
        if wrong:
            hint = "" if self.data.modality else (
                f" (data.modality is unset and resolves to {self.data.resolved_modality!r} for "
                f"source {self.data.source!r}; set it if the data holds the other kind)")
            raise ConfigError(
                f"augment.{wrong[0]}: {'image' if audio else 'spectrogram'} augmentation, but the "
                f"data is {'audio' if audio else 'images'}{hint}; use augment."
                f"{' / '.join(SPECTROGRAM_AUGMENT if audio else IMAGE_AUGMENT)}")
        if audio:
            if self.augment.time_shift >= width or self.augment.time_mask >= width:
                raise ConfigError(
                    f"augment.time_shift / time_mask: must be below the {width} frames of a clip"
                )
            if self.augment.freq_mask >= height:
                raise ConfigError(f"augment.freq_mask: must be below the {height} frequency bins")
        elif self.augment.crop_padding >= min(height, width):
            raise ConfigError(f"augment.crop_padding: must be below the image size {height}x{width}")



def load_classifier_config(
    path: str | Path | None = None, overrides: Sequence[str] = ()
) -> ClassifierConfig:
    """The classifier config of ``path`` (None: the defaults) with ``key=value`` overrides."""
    return load_config(ClassifierConfig, path, overrides)

