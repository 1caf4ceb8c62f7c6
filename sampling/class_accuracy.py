"""Does a sample show its class? A classifier's accuracy on labelled inputs (README, "Class
accuracy"): class-conditional samples against the labels they were drawn for, or real
held-out examples as the reference.

``hqvae classify DIR --classifier RUN`` scores a folder in the layout `hqvae sample` writes
(sampling/outputs.py): images (PNG, JPEG) in ``DIR/images/`` or audio files in
``DIR/audio/`` (or directly in DIR), labelled by ``DIR/labels.json`` ({file name: class
index or class name}). The classifier is one of ``sampling.classifier`` for the folder's
modality; its accuracy report is the one its own evaluation writes (``accuracy_report``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset

from sampling.classifier import (
    Classifier,
    ClassifierLike,
    accuracy_report,
    as_classifier,
    per_class_line,
)
from tokenizer.media import dequantize_uint8

InputsLike = Union[torch.Tensor, Dataset]


def _stack_inputs(items: list) -> torch.Tensor:
    # only the inputs: a dataset's other keys (labels, names) need not batch
    return torch.stack([it["x"] if isinstance(it, dict) else it for it in items])


@torch.no_grad()
def class_accuracy(
    classifier: ClassifierLike,
    inputs: InputsLike,
    labels: Union[Sequence[int], torch.Tensor],
    batch_size: int = 128,
    device: Optional[Union[str, torch.device]] = None,
) -> dict[str, Any]:
    """The classifier's accuracy on ``inputs`` against ``labels``: {"accuracy",
    "num_examples", "per_class_accuracy", "confusion", "class_names"?}. ``inputs``: a
    tensor (N, C, H, W) or a dataset of such tensors or of {"x": tensor, ...} items (any
    ``tokenizer.data`` dataset), float in [-1, 1] or uint8 (0..255), of the classifier's
    input shape. The model is left where and as it was."""
    model = as_classifier(classifier)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.numel() != len(inputs):
        raise ValueError(f"labels: {labels.numel()} labels for {len(inputs)} inputs")
    device = torch.device(device) if device is not None else model.device
    channels = model.input_shape[0]
    was_training, old_device = model.training, model.device
    model.eval().to(device)
    preds = []
    try:
        for batch in DataLoader(inputs, batch_size=batch_size, shuffle=False, collate_fn=_stack_inputs):
            x = dequantize_uint8(batch, channels) if batch.dtype == torch.uint8 else batch.float()
            preds.append(model.logits(x.to(device)).argmax(-1).cpu())
    finally:
        model.train(was_training).to(old_device)
    return accuracy_report(torch.cat(preds), labels, model.num_classes, model.class_names)


# ---------------------------------------------------------------------------------------
# labels of a sample folder


def read_labels(
    path: Union[str, os.PathLike], names: Sequence[str], class_names: Optional[Sequence[str]] = None,
    num_classes: Optional[int] = None,
) -> list[int]:
    """Labels for ``names`` from a JSON file {filename: label}.

    A key may be the file's path relative to the folder or its bare file name; a label is a
    class index or a class name of the classifier. Every file needs a label; with
    ``num_classes`` an index outside 0..num_classes-1 is an error naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labels file")
    try:
        table = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(table, dict):
        raise ValueError(f"{path}: expected a JSON object {{filename: label}}")
    index = {str(n): i for i, n in enumerate(class_names or [])}
    out, missing = [], []
    for name in names:
        key = name if name in table else Path(name).name
        if key not in table:
            missing.append(name)
            continue
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ValueError(f"{path}: label of {key!r} must be a class index or name, got {value!r}")
        if isinstance(value, str):
            if value in index:
                value = index[value]
            elif value.lstrip("-").isdigit():
                value = int(value)
            else:
                raise ValueError(
                    f"{path}: label {value!r} of {key!r} is not a class of the classifier "
                    f"({', '.join(index) or 'no class names stored'})"
                )
        if num_classes is not None and not 0 <= int(value) < num_classes:
            raise ValueError(f"{path}: label {value} of {key!r} is not a class of the classifier "
                             f"(classes 0..{num_classes - 1}{': ' + ', '.join(index) if index else ''})")
        out.append(int(value))
    if missing:
        raise ValueError(
            f"{path}: no label for {len(missing)} of {len(names)} files (e.g. {missing[0]!r})"
        )
    return out


def sample_labels(
    folder: Path, labels: Optional[Union[str, os.PathLike]], names: Sequence[str], model: Classifier,
) -> Optional[tuple[Path, list[int]]]:
    """(labels file, one label per name) for the files ``names`` of ``folder``: from
    ``labels``, else from ``folder/labels.json`` when there (None when neither is). Labels
    `hqvae sample` wrote are class ids of the prior's data: they are refused unless the
    samples.json beside them names the classifier's classes in the same order."""
    sample_classes = None
    if labels is None:
        if not (folder / "labels.json").is_file():
            return None
        labels = folder / "labels.json"  # `hqvae sample` writes it beside images/ or audio/
        record = folder / "samples.json"  # ... with the prior's class names beside it
        sample_classes = json.loads(record.read_text()).get("class_names") if record.is_file() else None
    if sample_classes and model.class_names and list(sample_classes) != list(model.class_names):
        # class ids only mean the same class when both models number the classes alike
        raise ValueError(
            f"{labels}: the samples' classes {sample_classes} are not the classifier's "
            f"{model.class_names} (same names in the same order); score accuracy with a "
            f"classifier of the prior's data, or pass --labels mapped to its classes")
    return Path(labels), read_labels(labels, names, model.class_names, model.num_classes)


# ---------------------------------------------------------------------------------------
# command-line entry


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
    from sampling.audio_fid import AUDIO_EXTENSIONS, WavFolder
    from sampling.fid import ImageFolderSamples
    from sampling.outputs import media_folder

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


def format_report(result: dict[str, Any]) -> str:
    kind = "audio files" if result["modality"] == "audio" else "images"
    return "\n".join([
        f"class accuracy {result['accuracy']:.4f} on {result['num_examples']} labelled {kind} in "
        f"{result['folder']} (labels: {result['labels']})",
        f"  per class: {per_class_line(result)}",
        f"  classifier {result['classifier']} (accuracies compare under the same classifier only)",
    ])
