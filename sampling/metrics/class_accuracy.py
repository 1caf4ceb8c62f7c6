"""Does a sample show its class? A classifier's accuracy on labelled inputs (README, "Class
accuracy"): class-conditional samples against the labels they were drawn for, or real
held-out examples as the reference.

``hqvae classify DIR --classifier RUN`` scores a folder in the layout `hqvae sample` writes
(sampling/outputs.py): images (PNG, JPEG) in ``DIR/images/`` or audio files in
``DIR/audio/`` (or directly in DIR), labelled by ``DIR/labels.json`` ({file name: class
index or class name}). The classifier is one of ``sampling.classifier`` for the folder's
modality; the accuracy is its one prediction loop (``sampling.classifier.evaluate``), the
report the one every scorer prints (sampling/metrics/scorer.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.utils.data import Dataset

from sampling.classifier.evaluate import class_accuracy
from sampling.classifier.model import ClassifierLike, as_classifier
from sampling.metrics.inputs import AUDIO_EXTENSIONS, ImageFolderSamples, WavFolder
from sampling.metrics.labels import read_labels, sample_labels
from sampling.sample_reader import media_folder

__all__ = ["class_accuracy", "read_labels", "sample_labels", "score_folder"]


def score_folder(
    folder: Union[str, os.PathLike],
    classifier: ClassifierLike,
    labels: Optional[Union[str, os.PathLike]] = None,
    batch_size: int = 64,
    device: Optional[Union[str, torch.device]] = None,
    recursive: bool = False,
) -> dict[str, Any]:
    """What ``hqvae classify`` reports: the classifier's accuracy on the labelled images or
    audio files of ``folder`` (a `hqvae sample` folder, or any folder with ``labels``).
    Every input error (no labels, a label that is not the classifier's, inputs of another
    shape) is raised before the network runs."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of samples")
    model = as_classifier(classifier)
    if device is not None:
        model.to(device)
    if model.modality == "audio":
        media = folder if recursive else media_folder(folder, "audio", AUDIO_EXTENSIONS)
        inputs: Dataset = WavFolder(media, model.config.data.audio, recursive)
        names = inputs.names
    else:
        if recursive:
            raise ValueError("--recursive: audio folders only (images are read from one folder)")
        inputs = ImageFolderSamples(
            folder, channels=model.input_shape[0],
            needs=f"the classifier takes {model.input_shape[2]}x{model.input_shape[1]} images (its data.image_size)")
        media = inputs.root  # the folder read: images/ of a sample set
        if (inputs.height, inputs.width) != model.input_shape[1:]:
            raise ValueError(
                f"{media}: {inputs.width}x{inputs.height} images, but the classifier takes "
                f"{model.input_shape[2]}x{model.input_shape[1]} (its data.image_size)")
        names = [p.name for p in inputs.files]
    found = sample_labels(folder, labels, names, model)
    if found is None:
        raise FileNotFoundError(
            f"{folder}: no labels.json (the {{file name: class}} file `hqvae sample --label` "
            f"writes); pass --labels FILE")
    path, ys = found
    report = class_accuracy(model, inputs, ys, batch_size=batch_size)
    return {**report, "folder": str(media), "labels": str(path), "modality": model.modality,
            "classifier": model.identity}
