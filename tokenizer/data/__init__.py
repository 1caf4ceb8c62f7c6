"""Datasets for the tokenizer: built-in procedural data and anything HF ``datasets`` reads.

Every dataset yields ``{"x": FloatTensor (C, H, W) in [-1, 1], "label": int}`` (label -1
when the data has none); audio becomes its spectrogram image (1, F, frames). Nothing is
held in memory: the procedural sets compute item ``i`` on demand from a seed, and HF
datasets keep their Arrow files memory-mapped while each row is decoded in
``__getitem__`` (so DataLoader workers share the work). Every dataset exposes
``modality`` ('image' | 'audio'), ``num_classes`` (None when unknown) and ``shape``.
"""

from tokenizer.data.build import build_dataset, data_shape, detect_modality, resolve_modality
from tokenizer.data.hf_dataset import (
    MAX_CONSECUTIVE_BAD,
    WARN_BAD_EXAMPLES,
    BadExampleError,
    HFDataset,
)
from tokenizer.data.procedural import ShapesDataset, TonesDataset

__all__ = [
    "MAX_CONSECUTIVE_BAD",
    "WARN_BAD_EXAMPLES",
    "BadExampleError",
    "HFDataset",
    "ShapesDataset",
    "TonesDataset",
    "build_dataset",
    "data_shape",
    "detect_modality",
    "resolve_modality",
]
