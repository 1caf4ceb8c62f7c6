"""A classifier's accuracy on labelled inputs: the one prediction loop behind its held-out
evaluation (``eval.json``), ``hqvae classify`` and the accuracy lines of audio FID and the
pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from engine.subsets import spread_indices
from sampling.classifier.model import Classifier, ClassifierLike, as_classifier
from tokenizer.media import dequantize_uint8

InputsLike = Union[torch.Tensor, Dataset]


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
    _check_labels(labels, num_classes)
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


def _check_labels(labels: torch.Tensor, num_classes: int) -> None:
    if labels.numel() == 0:
        raise ValueError("no labelled examples to score")
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(
            f"label {int(labels[bad][0])} is out of range: the classifier has classes "
            f"0..{num_classes - 1}"
        )


def per_class_line(report: dict[str, Any]) -> str:
    """'name:accuracy' per class of an :func:`accuracy_report` (classes without examples left out)."""
    names = report.get("class_names") or [str(k) for k in range(len(report["per_class_accuracy"]))]
    return "  ".join(f"{n}:{a:.2f}" for n, a in zip(names, report["per_class_accuracy"]) if a is not None)


class LabelledSet(Dataset):
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



def _batch(items: list) -> dict[str, Any]:
    """Inputs stacked, and labels when the items carry them; a dataset's other keys (names,
    bad-row flags) need not batch."""
    x = torch.stack([it["x"] if isinstance(it, dict) else it for it in items])
    labelled = all(isinstance(it, dict) and "label" in it for it in items)
    return {"x": x, "label": torch.tensor([int(it["label"]) for it in items]) if labelled else None}


@torch.no_grad()
def class_accuracy(
    classifier: ClassifierLike,
    inputs: InputsLike,
    labels: Optional[Union[Sequence[int], torch.Tensor]] = None,
    batch_size: int = 128,
    device: Optional[Union[str, torch.device]] = None,
    num_workers: int = 0,
    modality: Optional[str] = None,
) -> dict[str, Any]:
    """The classifier's accuracy on ``inputs`` against ``labels``: {"accuracy",
    "num_examples", "per_class_accuracy", "confusion", "loss", "class_names"?}. ``inputs``: a
    tensor (N, C, H, W) or a dataset of such tensors or of {"x": tensor, ...} items (any
    ``tokenizer.data`` dataset), float in [-1, 1] or uint8 (0..255), of the classifier's
    input shape. ``labels`` None: each item's own "label" (checked per row). ``modality``:
    refuse a classifier of the other kind. The model is left where and as it was."""
    model = as_classifier(classifier, modality)
    if labels is None:
        return _predict(model, LabelledSet(inputs, model.num_classes, "data"), None, batch_size,
                        device, num_workers)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.numel() != len(inputs):
        raise ValueError(f"labels: {labels.numel()} labels for {len(inputs)} inputs")
    return _predict(model, inputs, labels, batch_size, device, num_workers)


def _predict(model: Classifier, inputs: InputsLike, labels: Optional[torch.Tensor], batch_size: int,
             device: Optional[Union[str, torch.device]], num_workers: int) -> dict[str, Any]:
    """The one prediction loop: accuracy report and mean cross-entropy of ``model`` on
    ``inputs``, against ``labels`` or (None) the items' own labels."""
    if len(inputs) == 0:
        raise ValueError("no labelled examples to score")
    if labels is not None:
        _check_labels(labels, model.num_classes)
    device = torch.device(device) if device is not None else model.device
    channels = model.input_shape[0]
    was_training, old_device = model.training, model.device
    model.eval().to(device)
    preds, found, loss_sum, done = [], [], 0.0, 0
    try:
        for batch in DataLoader(inputs, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                collate_fn=_batch):
            x = batch["x"]
            x = dequantize_uint8(x, channels) if x.dtype == torch.uint8 else x.float()
            y = batch["label"] if labels is None else labels[done:done + len(x)]
            done += len(x)
            found.append(y)
            logits = model.logits(x.to(device)).float()
            loss_sum += float(F.cross_entropy(logits, y.to(device), reduction="sum"))
            preds.append(logits.argmax(-1).cpu())
    finally:
        model.train(was_training).to(old_device)
    report = accuracy_report(torch.cat(preds), torch.cat(found), model.num_classes, model.class_names)
    report["loss"] = loss_sum / report["num_examples"]
    return report


@torch.no_grad()
def evaluate_classifier(
    model: Classifier, dataset: Dataset, max_examples: Optional[int] = None,
    batch_size: int = 128, num_workers: int = 0,
) -> dict[str, Any]:
    """Held-out accuracy (+ mean cross-entropy) of ``model`` on ``max_examples`` items of a
    {"x", "label"} dataset, spread evenly over it."""
    n = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    if n == 0:
        raise ValueError("evaluate_classifier: the dataset is empty")
    rows = Subset(LabelledSet(dataset, model.num_classes, "eval data"), spread_indices(len(dataset), n))
    return _predict(model, rows, None, batch_size, None, num_workers)
