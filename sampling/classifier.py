"""A small CNN classifier of the tokenizer's inputs, for both modalities (README, "Class
accuracy" and "Audio FID").

Audio: Inception-v3 has never seen a spectrogram, so audio FID uses the penultimate features
of a classifier the project trains on the reference data itself (as spoken-digit generation
work does with its own digit classifier). Both modalities: its accuracy on class-conditional
samples says whether a sample shows the class it was drawn for. The input is exactly what
the data pipeline and the tokenizer produce, (C, H, W) in [-1, 1]: a spectrogram image
(1, F, T) of ``data.audio`` settings, or an image (3 or 1, S, S) of ``data.image_size``.

Network: ``len(model.widths)`` blocks of (conv 3x3 -> norm -> ReLU) x ``convs_per_block``
followed by a 2x2 max-pool, global average pooling, an embedding layer (linear -> ReLU,
``model.embedding_dim`` wide: the FID features) and a linear head (after dropout).

Training goes through the shared loop (``engine.trainer.train``) with light augmentation
(``augment.*``, each off unless set) that keeps the class: for spectrograms a random time
shift, one time mask, one frequency mask and a random gain; for images a random crop of the
edge-padded image and a horizontal flip. Run directory::

    RUN_DIR/config.yaml          resolved config (``model.num_classes``, ``data.modality`` from the data)
    RUN_DIR/metrics.jsonl        training / eval metric lines
    RUN_DIR/checkpoints/step_*/  resumable checkpoints
    RUN_DIR/model.safetensors    weights, config + class names in the metadata
    RUN_DIR/README.md            model card (``engine.pretrained``)
    RUN_DIR/eval.json            held-out accuracy, per-class accuracy, confusion matrix
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from engine.config import ConfigError, load_config, non_default, to_dict, validate
from engine.pretrained import WEIGHTS, PretrainedMixin, weights_identity
from engine.subsets import spread_indices
from engine.train_config import TrainConfig
from tokenizer.config import DataConfig

# the kind tag of the weights, per modality: audio classifiers keep the tag they always had,
# so run folders and Hub copies written before images were supported load unchanged
KINDS = {"audio": "hqvae-audio-classifier", "image": "hqvae-image-classifier"}

# sections that may change between a run and its resumption
RESUMABLE_CHANGES = ("train", "eval", "run_dir")


# ---------------------------------------------------------------------------------------
# configuration


@dataclass
class ClassifierModelConfig:
    # one conv block per width, each halving F and T (128x128 -> 4x4 with the default five);
    # one conv per block costs a third of two at 128x128 (the first block dominates)
    widths: list[int] = field(default_factory=lambda: [16, 32, 64, 128, 128])
    convs_per_block: int = 1
    norm: Literal["batch", "group"] = "batch"
    groups: int = 8  # group norm only: groups per layer (must divide every width)
    embedding_dim: int = 128  # width of the penultimate layer = the audio FID features
    dropout: float = 0.2  # before the linear head (the features are taken before it)
    label_smoothing: float = 0.0
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
    batch_size: int = 128

    def validate(self) -> None:
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"max_examples: must be >= 1 or null, got {self.max_examples}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class ClassifierConfig:
    run_dir: str = "runs/classifier"
    data: DataConfig = field(default_factory=lambda: DataConfig(source="tones"))
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2000, batch_size=32, lr=1e-3, weight_decay=1e-4)
    )
    eval: ClassifierEvalConfig = field(default_factory=ClassifierEvalConfig)

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
    return load_config(ClassifierConfig, path, overrides)


# ---------------------------------------------------------------------------------------
# augmentation


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


# ---------------------------------------------------------------------------------------
# the model


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


# ---------------------------------------------------------------------------------------
# evaluation


def accuracy_report(
    predictions: torch.Tensor, labels: torch.Tensor, num_classes: int,
    class_names: Optional[Sequence[str]] = None,
) -> dict[str, Any]:
    """Accuracy, per-class accuracy (None for classes without examples) and the confusion
    matrix (rows: true class, columns: predicted)."""
    predictions = predictions.detach().cpu().long().flatten()
    labels = labels.detach().cpu().long().flatten()
    if predictions.numel() != labels.numel():
        raise ValueError(f"{predictions.numel()} predictions for {labels.numel()} labels")
    if labels.numel() == 0:
        raise ValueError("no labelled examples to score")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"label {int(labels[bad][0])} is out of range: the classifier has classes "
            f"0..{num_classes - 1}"
        )
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, predictions), torch.ones_like(labels), accumulate=True)
    support = confusion.sum(dim=1)
    per_class = [
        (float(confusion[k, k]) / float(support[k])) if support[k] else None
        for k in range(num_classes)
    ]
    out: dict[str, Any] = {
        "accuracy": float(confusion.diag().sum()) / float(labels.numel()),
        "num_examples": int(labels.numel()),
        "per_class_accuracy": per_class,
        "confusion": confusion.tolist(),
    }
    if class_names is not None:
        out["class_names"] = list(class_names)
    return out


def per_class_line(report: dict[str, Any]) -> str:
    """'name:accuracy' per class of an :func:`accuracy_report` (classes without examples left out)."""
    names = report.get("class_names") or [str(k) for k in range(len(report["per_class_accuracy"]))]
    return "  ".join(f"{n}:{a:.2f}" for n, a in zip(names, report["per_class_accuracy"]) if a is not None)


class _Labelled(Dataset):
    """{"x", "label"} items with the label checked against the classifier's classes (on
    the CPU, per item: a bad label fails naming its row, not as an opaque device error)."""

    def __init__(self, dataset: Dataset, num_classes: int, name: str):
        self.dataset, self.num_classes, self.name = dataset, num_classes, name

    def __len__(self) -> int:
        return len(self.dataset)

    def _item(self, item: dict[str, Any], index: int) -> dict[str, Any]:
        label = int(item["label"])
        if not 0 <= label < self.num_classes:
            hint = " (the data has no labels: set data.label_column)" if label == -1 else ""
            raise ValueError(
                f"{self.name} row {index}: label {label} is outside 0..{self.num_classes - 1}{hint}"
            )
        out = {"x": item["x"], "label": label}
        if "bad_examples" in item:  # data.skip_bad_examples: the trainer counts them
            out["bad_examples"] = item["bad_examples"]
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._item(self.dataset[index], index)

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        # keeps the wrapped dataset's batched row access (one Arrow read per batch)
        if hasattr(self.dataset, "__getitems__"):
            items = self.dataset.__getitems__(indices)
        else:
            items = [self.dataset[i] for i in indices]
        return [self._item(item, i) for item, i in zip(items, indices)]


@torch.no_grad()
def evaluate_classifier(
    model: Classifier, dataset: Dataset, max_examples: Optional[int] = None,
    batch_size: int = 128, num_workers: int = 0,
) -> dict[str, Any]:
    """Held-out accuracy (+ mean cross-entropy) of ``model`` on a {"x", "label"} dataset."""
    n = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    if n == 0:
        raise ValueError("evaluate_classifier: the dataset is empty")
    subset = torch.utils.data.Subset(_Labelled(dataset, model.num_classes, "eval data"),
                                     spread_indices(len(dataset), n))
    loader = DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    was_training = model.training
    model.eval()
    device = model.device
    preds, labels, loss_sum = [], [], 0.0
    for batch in loader:
        x, y = batch["x"].to(device), batch["label"].to(device)
        logits = model.logits(x).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        preds.append(logits.argmax(-1).cpu())
        labels.append(y.cpu())
    model.train(was_training)
    report = accuracy_report(torch.cat(preds), torch.cat(labels), model.num_classes,
                             model.class_names)
    report["loss"] = loss_sum / n
    return report


# ---------------------------------------------------------------------------------------
# training entry


def resolve_data(cfg: ClassifierConfig, train_set: Dataset) -> ClassifierConfig:
    """Fill ``model.num_classes`` in from the training data (and check a set one)."""
    found = getattr(train_set, "num_classes", None)
    want = cfg.model.num_classes
    if want is None:
        if found is None:
            raise ConfigError(
                f"model.num_classes: the {cfg.data.train_split!r} split of {cfg.data.source!r} "
                f"does not say how many classes it has (no ClassLabel column); set model.num_classes"
            )
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=int(found)))
        validate(cfg)
    elif found is not None and found != want:
        raise ConfigError(f"model.num_classes: {want}, but the data has {found} classes")
    return cfg


def train_classifier(cfg: ClassifierConfig) -> dict[str, Any]:
    """Train, save and evaluate; returns the eval metrics ({} on non-main processes). The
    modality is the data's (``data.modality`` when set), as for the tokenizer."""
    from engine.stage import check_start, claim_run_dir, training_splits
    from tokenizer.data import build_dataset, resolve_modality

    check_start(cfg, "classifier")
    cfg = resolve_modality(cfg)
    train_set, eval_set = training_splits(cfg.data, build_dataset)
    cfg = resolve_data(cfg, train_set)
    with claim_run_dir(cfg, RESUMABLE_CHANGES, "classifier"):
        return _train_classifier(cfg, train_set, eval_set)


def _train_classifier(cfg: ClassifierConfig, train_set, eval_set) -> dict[str, Any]:
    from engine.stage import finish_run, seeded, start_run, train_summary
    from engine.tracking import Tracking
    from engine.trainer import train

    run_dir = Path(cfg.run_dir)
    class_names = getattr(train_set, "class_names", None)
    model = seeded(cfg.train.seed, lambda: Classifier(cfg, class_names))
    state = start_run(cfg)

    def periodic_eval(m: Classifier, step: int) -> dict[str, float]:
        r = evaluate_classifier(m, eval_set, cfg.eval.max_examples, cfg.eval.batch_size)
        return {"accuracy": r["accuracy"], "loss": r["loss"]}

    tracking = Tracking(cfg.train.report_to, run_dir)
    result = train(
        model=model, dataset=_Labelled(train_set, model.num_classes, "training data"),
        cfg=cfg.train, run_dir=run_dir, config=to_dict(cfg), evaluate=periodic_eval,
        batch_key=None, desc="train classifier", final_eval=False, tracking=tracking,
    )
    if not state.is_main_process:
        return {}
    model.cpu().eval()
    model.save_pretrained(run_dir)
    metrics = evaluate_classifier(model, eval_set, cfg.eval.max_examples, cfg.eval.batch_size)
    metrics["split"] = cfg.data.eval_split
    metrics["identity"] = model.identity
    metrics["train"] = train_summary(result, model.num_parameters(),
                                     train_accuracy=result.last_metrics.get("accuracy"))
    finish_run(run_dir, result, metrics, tracking=tracking)  # the final line: accuracy and loss, the floats
    return metrics


def format_summary(metrics: dict[str, Any], run_dir: str | Path) -> str:
    t = metrics["train"]
    lines = [
        f"trained {t['steps']} steps in {t['seconds']:.0f}s ({t['examples_per_s']:.0f} examples/s, "
        f"{t['parameters']:,} parameters)",
        f"held-out accuracy {metrics['accuracy']:.4f} on {metrics['num_examples']} examples of "
        f"split {metrics['split']!r} (loss {metrics['loss']:.4f})",
    ]
    lines.append(f"per class: {per_class_line(metrics)}")
    lines.append(f"wrote {run_dir} (model.safetensors, eval.json; classifier {metrics['identity']})")
    return "\n".join(lines)
