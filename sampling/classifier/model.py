"""The classifier network and its persistence.

Network: ``len(model.widths)`` blocks of (conv 3x3 -> norm -> ReLU) x ``convs_per_block``
followed by a 2x2 max-pool, global average pooling, an embedding layer (linear -> ReLU,
``model.embedding_dim`` wide: the FID features) and a linear head (after dropout). Weights
are ``model.safetensors`` with the config and class names in the metadata
(``engine.pretrained``)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError, non_default
from engine.pretrained import WEIGHTS, PretrainedMixin, weights_identity
from sampling.classifier.augment import augment_images, augment_spectrograms
from sampling.classifier.config import ClassifierConfig, ClassifierModelConfig

# the kind tag of the weights, per modality: audio classifiers keep the tag they always had,
# so run folders and Hub copies written before images were supported load unchanged
KINDS = {"audio": "hqvae-audio-classifier", "image": "hqvae-image-classifier"}


def _norm(cfg: ClassifierModelConfig, channels: int) -> nn.Module:
    if cfg.norm == "group":
        return nn.GroupNorm(cfg.groups, channels)
    return nn.BatchNorm2d(channels)


class Classifier(nn.Module, PretrainedMixin, tags=["classifier"]):
    """CNN on spectrograms or images. ``features(x)``: penultimate embedding (B,
    embedding_dim); ``logits(x)``: (B, num_classes); ``predict(x)``: (B,) class indices.
    ``forward(batch, step)`` is the training objective for the shared loop (``batch``:
    {"x", "label"})."""

    kinds = tuple(KINDS.values())
    what = "a classifier"

    def __init__(self, config: ClassifierConfig, class_names: Optional[Sequence[str]] = None):
        super().__init__()
        self.modality = config.data.resolved_modality
        self.kind = KINDS[self.modality]  # the tag its weights carry
        m = config.model
        if m.num_classes is None:
            raise ConfigError("model.num_classes: unset (training fills it in from the data)")
        if class_names is not None and len(class_names) != m.num_classes:
            raise ValueError(
                f"class_names: {len(class_names)} names for model.num_classes={m.num_classes}"
            )
        self.config = config
        self.class_names = list(class_names) if class_names is not None else None
        self.input_shape = tuple(config.data.shape)
        audio = config.data.audio
        self.db_range = float(audio.db_max - audio.db_min)
        layers: list[nn.Module] = []
        c_in = self.input_shape[0]
        for width in m.widths:
            for _ in range(m.convs_per_block):
                layers += [nn.Conv2d(c_in, width, 3, padding=1, bias=False), _norm(m, width),
                           nn.ReLU(inplace=True)]
                c_in = width
            layers.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(c_in, m.embedding_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(m.dropout)
        self.head = nn.Linear(m.embedding_dim, m.num_classes)

    # -- construction / persistence ---------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return int(self.config.model.num_classes)

    @property
    def embedding_dim(self) -> int:
        return int(self.config.model.embedding_dim)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @classmethod
    def _load_pretrained(cls, path: Path, device: str | torch.device = "cpu") -> Classifier:
        """``RUN_DIR/model.safetensors`` (or that file itself), in eval mode."""
        path, state, meta, config = cls._read_weights(path, ClassifierConfig)
        names = json.loads(meta["class_names"]) if meta.get("class_names") else None
        return cls._load_state(cls(config, names), state, path, device)

    def _save_pretrained(self, save_directory: Path) -> None:
        extra = {} if self.class_names is None else {"class_names": json.dumps(self.class_names)}
        self._write_weights(save_directory / WEIGHTS, self.state_dict(), extra)

    @property
    def identity(self) -> str:
        """A hash of the network config, the input transform and the weights: audio FID and
        class accuracy are only comparable under one identity (training and data-loading
        settings are left out, and keys at their defaults, so a new option does not change
        existing identities)."""
        spec = {"model": non_default(self.config.model), "shape": list(self.input_shape)}
        if self.modality == "audio":
            spec["audio"] = non_default(self.config.data.audio)
        else:
            spec["image"] = {"resize": self.config.data.resize}
        return weights_identity(spec, self.state_dict())

    def _card_title(self) -> str:
        if self.modality == "audio":
            return f"Audio-FID spectrogram classifier ({self.num_classes} classes)"
        return f"Image classifier ({self.num_classes} classes)"

    def _card_about(self) -> str:
        if self.modality == "audio":
            return ("A small spectrogram CNN whose penultimate features (`features(x)`, "
                    f"{self.embedding_dim}-d) are the feature space of audio FID (hqvae's README, \"Audio FID\"). "
                    "Audio FID compares runs scored with this very classifier (same identity) only.")
        return ("A small image CNN trained on a tokenizer's data: its accuracy on class-conditional "
                "samples says whether a sample shows its class (hqvae's README, \"Class accuracy\"). "
                "Accuracies compare only under this very classifier (same identity).")

    def _card_facts(self) -> dict:
        return {"kind": self.kind, "identity": f"`{self.identity}`",
                "input shape": list(self.input_shape), "classes": self.class_names or self.num_classes,
                "parameters": self.num_parameters()}

    # -- inference ---------------------------------------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[1:]) != self.input_shape:
            inputs, settings = (("spectrograms", "data.audio") if self.modality == "audio"
                                else ("images", "data.image_size / channels"))
            raise ValueError(
                f"{self.modality} classifier: expected {inputs} of shape (B, {', '.join(map(str, self.input_shape))}) "
                f"(its {settings} settings), got {tuple(x.shape)}"
            )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding (B, embedding_dim); for an audio classifier, the audio FID
        features."""
        self._check(x)
        h = self.body(x.float())
        return self.embed(h.mean(dim=(2, 3)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.features(x)))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head(self.dropout(f))

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """(B,) most likely class per input."""
        return self.logits(x).argmax(dim=-1)

    # -- training ----------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        """Cross-entropy on a batch {"x": (B, C, H, W), "label": (B,)} (augmented when
        training). It is ``forward`` so that data-parallel wrappers see the call."""
        x, y = batch["x"], batch["label"]
        if self.training and self.config.augment.active:
            if self.modality == "audio":
                x = augment_spectrograms(x.float(), self.config.augment, self.db_range)
            else:
                x = augment_images(x.float(), self.config.augment)
        logits = self.logits(x).float()
        loss = F.cross_entropy(logits, y, label_smoothing=self.config.model.label_smoothing)
        accuracy = (logits.argmax(-1) == y).float().mean()
        return {"loss": loss, "accuracy": accuracy.detach()}


class AudioClassifier(Classifier, tags=["audio-classifier"]):
    """A :class:`Classifier` of spectrograms: what audio FID takes. Loading one refuses an
    image classifier's weights, naming them."""

    kinds = (KINDS["audio"],)
    what = "an audio classifier"

    def __init__(self, config: ClassifierConfig, class_names: Optional[Sequence[str]] = None):
        if config.data.resolved_modality != "audio":
            raise ConfigError(
                f"data.modality: an audio classifier needs audio data, but source "
                f"{config.data.source!r} resolves to {config.data.resolved_modality!r}; "
                f"set data.modality=audio, or build a Classifier")
        super().__init__(config, class_names)


ClassifierLike = Union[Classifier, str, os.PathLike]


def as_classifier(classifier: ClassifierLike, modality: Optional[str] = None) -> Classifier:
    """``classifier`` itself, or loaded from a run folder, weights file or Hub id; with
    ``modality``, one that takes that kind of input (else a one-line error)."""
    if isinstance(classifier, Classifier):
        model = classifier
    else:
        model = (AudioClassifier if modality == "audio" else Classifier).from_pretrained(classifier)
    if modality is not None and model.modality != modality:
        raise ValueError(f"classifier: it classifies {model.modality} "
                         f"({'spectrograms' if model.modality == 'audio' else 'images'}), "
                         f"not {modality}")
    return model



# model cards print ``from <module> import <class>``: name the package, the import path that
# stays put when the modules inside it move (and the one cards written earlier give)
Classifier.__module__ = AudioClassifier.__module__ = "sampling.classifier"
