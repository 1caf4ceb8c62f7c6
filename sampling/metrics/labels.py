"""Labels of a folder of samples: ``labels.json`` ({file name: class index or class name}),
which `hqvae sample --label` writes beside ``images/`` or ``audio/``, read against a
classifier's classes (README, "Class accuracy")."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from sampling.classifier.model import Classifier
from sampling.sample_reader import class_names as sample_class_names
from sampling.sample_reader import labels_path


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
        labels = labels_path(folder)  # `hqvae sample` writes it beside images/ or audio/
        if labels is None:
            return None
        sample_classes = sample_class_names(folder)  # ... with the prior's class names in samples.json
    if sample_classes and model.class_names and list(sample_classes) != list(model.class_names):
        # class ids only mean the same class when both models number the classes alike
        raise ValueError(
            f"{labels}: the samples' classes {sample_classes} are not the classifier's "
            f"{model.class_names} (same names in the same order); score accuracy with a "
            f"classifier of the prior's data, or pass --labels mapped to its classes")
    return Path(labels), read_labels(labels, names, model.class_names, model.num_classes)
