"""torchvision's pure-Python parts on a CPU-only torch (DESIGN.md §7).

torch-fidelity needs torchvision, and the PyPI torchvision that pins our torch is a CUDA
build: on a CPU torch its compiled ops fail to load, and its import then dies registering
fake kernels for ``torchvision::nms`` / ``qnms`` ("operator ... does not exist"). Because
``transformers`` imports torchvision whenever it is installed, that would break stage two
too. Defining the two operator schemas first lets the import succeed; nothing here needs
the compiled ops. Where torchvision's ops load (a matching build), this does nothing.

Call :func:`ensure_torchvision` before importing torchvision, torch-fidelity or
transformers.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_library = None  # keeps the schema definitions alive for the life of the process
_checked = False

SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def _ops_registered() -> bool:
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018  (raises when the op is unknown)
        return True
    except (AttributeError, RuntimeError):
        return False


def ensure_torchvision() -> str:
    """Make ``import torchvision`` work; returns what was done: 'absent', 'native'
    (its own ops load) or 'shimmed' (schemas defined here)."""
    global _library, _checked
    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        return "absent"
    if _library is not None:
        return "shimmed"
    if _checked or "torchvision" in sys.modules or _ops_registered():
        _checked = True
        return "native"
    import torch

    _checked = True
    try:  # the way torchvision itself loads its ops; succeeds on a matching build
        torch.ops.load_library(str(Path(spec.origin).parent / "_C.so"))
        return "native"
    except (OSError, ImportError, RuntimeError):
        pass
    _library = torch.library.Library("torchvision", "DEF")
    for schema in SCHEMAS:
        _library.define(schema)
    return "shimmed"
