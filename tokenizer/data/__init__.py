"""Datasets for the tokenizer: built-in procedural data and anything HF ``datasets`` reads.

Every dataset yields ``{"x": FloatTensor (C, H, W) in [-1, 1], "label": int}`` (label -1
when the data has none); audio becomes its spectrogram image (1, F, frames). Nothing is
held in memory: the procedural sets compute item ``i`` on demand from a seed, and HF
datasets keep their Arrow files memory-mapped while each row is decoded in
``__getitem__`` (so DataLoader workers share the work); with ``data.streaming`` a split
is a stream instead (``StreamingDataset``, decoded by the same code). Every dataset exposes
``modality`` ('image' | 'audio'), ``num_classes`` (None when unknown) and ``shape``.
"""

from tokenizer.data.build import (
    build_dataset,
    build_stream,
    data_shape,
    detect_modality,
    eval_dataset,
    resolve_modality,
)
from tokenizer.data.hf_dataset import (
    MAX_CONSECUTIVE_BAD,
    WARN_BAD_EXAMPLES,
    BadExampleError,
    HFDataset,
)
from tokenizer.data.procedural import ShapesDataset, TonesDataset
from tokenizer.data.streaming import StreamingDataset

__all__ = [
    "MAX_CONSECUTIVE_BAD",
    "WARN_BAD_EXAMPLES",
    "BadExampleError",
    "HFDataset",
    "ShapesDataset",
    "StreamingDataset",
    "TonesDataset",
    "build_dataset",
    "build_stream",
    "data_shape",
    "detect_modality",
    "eval_dataset",
    "resolve_modality",
]
