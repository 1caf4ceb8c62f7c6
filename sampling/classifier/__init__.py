"""A small CNN classifier of the tokenizer's inputs, for both modalities (README, "Class
accuracy" and "Audio FID").

Audio: Inception-v3 has never seen a spectrogram, so audio FID uses the penultimate features
of a classifier the project trains on the reference data itself (as spoken-digit generation
work does with its own digit classifier). Both modalities: its accuracy on class-conditional
samples says whether a sample shows the class it was drawn for. The input is exactly what
the data pipeline and the tokenizer produce, (C, H, W) in [-1, 1]: a spectrogram image
(1, F, T) of ``data.audio`` settings, or an image (3 or 1, S, S) of ``data.image_size``.

- ``config``: the run's config sections (``data``, ``model``, ``augment``, ``train``, ``eval``)
- ``augment``: class-keeping augmentation of spectrograms and images
- ``model``: the network, its weights and identity (``Classifier``, ``AudioClassifier``)
- ``evaluate``: accuracy on labelled inputs (one prediction loop)
- ``train``: training through the shared loop, the run directory

The names below stay importable from ``sampling.classifier`` itself: model cards written by
earlier versions say ``from sampling.classifier import Classifier``. They load on first use
(PEP 562), so importing the config alone does not build the network or the trainer.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module of this package that defines it
_EXPORTS = {
    "RESUMABLE_CHANGES": "config",
    "AugmentConfig": "config",
    "ClassifierConfig": "config",
    "ClassifierEvalConfig": "config",
    "ClassifierModelConfig": "config",
    "load_classifier_config": "config",
    "augment_images": "augment",
    "augment_spectrograms": "augment",
    "KINDS": "model",
    "Classifier": "model",
    "AudioClassifier": "model",
    "ClassifierLike": "model",
    "as_classifier": "model",
    "accuracy_report": "evaluate",
    "class_accuracy": "evaluate",
    "evaluate_classifier": "evaluate",
    "per_class_line": "evaluate",
    "format_summary": "train",
    "resolve_data": "train",
    "train_classifier": "train",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sampling.classifier' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
