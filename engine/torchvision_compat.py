"""torchvision's pure-Python parts on a CPU-only torch.

torch-fidelity needs torchvision, and the PyPI torchvision that pins our torch (0.28.0 for
torch 2.13.0) is a CUDA build: on a CPU torch its compiled ops fail to load, and its import
then dies registering fake kernels for ``torchvision::nms`` / ``qnms`` ("operator ... does
not exist"). Because ``transformers`` imports torchvision whenever it is installed, that
would break stage two too. Defining the two operator schemas lets the import succeed;
nothing here needs the compiled ops.

The shim acts only where torchvision's own import fails with exactly that error: it first
imports torchvision as it is. A build whose ops load (whatever its library files are
called: 0.29 ships ``_C_stable.so``) is left alone, since defining the schemas before it
registers its own aborts the interpreter.

Call :func:`ensure_torchvision` before importing torch-fidelity or transformers.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

_library = None  # keeps the schema definitions alive for the life of the process
_status: str | None = None

SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
# the message torchvision's import dies with when its compiled ops did not load
_MISSING_OP = "operator torchvision::"


def _forget_partial_import() -> None:
    """Drop what a failed ``import torchvision`` left in sys.modules, so it runs again."""
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]


def ensure_torchvision() -> str:
    """Make ``import torchvision`` work; returns what was done: 'absent' (not installed),
    'native' (it imports as it is) or 'shimmed' (it imports once the schemas are defined).

    Any other import error of torchvision's is raised as it is: it is not this module's
    to hide."""
    global _library, _status
    if _status is not None:
        return _status
    if sys.modules.get("torchvision") is None:  # not imported yet (or marked unimportable)
        spec = importlib.util.find_spec("torchvision")
        if spec is None or spec.origin is None:
            _status = "absent"
            return _status
    try:
        importlib.import_module("torchvision")
        _status = "native"
        return _status
    except RuntimeError as err:
        if _MISSING_OP not in str(err) or "does not exist" not in str(err):
            raise
    import torch

    _forget_partial_import()
    _library = torch.library.Library("torchvision", "DEF")
    for schema in SCHEMAS:
        _library.define(schema)
    importlib.import_module("torchvision")
    _status = "shimmed"
    return _status
