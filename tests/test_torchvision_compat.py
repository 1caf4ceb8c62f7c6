"""engine.torchvision_compat in fresh interpreters (it acts once per process).

Here torchvision is the PyPI CUDA build on a CPU torch, so its own ops cannot load: the
shim must be what makes torchvision, torch-fidelity and transformers importable.
"""

import os
import subprocess
import sys
import textwrap
from importlib.metadata import version
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.smoke  # the import path every prior, sampler and FID command takes


def run(code: str, pythonpath: Path | None = None) -> str:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(ROOT)])
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def torchvision_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


@pytest.mark.skipif(not torchvision_installed(), reason="torchvision not installed")
def test_shim_makes_torchvision_fidelity_and_transformers_import():
    out = run("""
        from engine.torchvision_compat import ensure_torchvision
        how = ensure_torchvision()
        import torchvision, torch_fidelity
        from transformers import GPT2Model
        assert ensure_torchvision() == how  # idempotent
        print(how)
    """)
    import torch

    if torch.version.cuda is None and "+cpu" not in version("torchvision"):
        assert out == "shimmed"  # the PyPI (CUDA) torchvision wheel on a CPU torch, as here
    else:  # a matching build loads its own ops
        assert out in ("shimmed", "native")


# run ensure_torchvision(), then print what it did and whether torchvision::nms exists
ENSURE_AND_REPORT = """
from engine.torchvision_compat import ensure_torchvision
import torch
how = ensure_torchvision()
try:
    torch.ops.torchvision.nms
    defined = True
except (AttributeError, RuntimeError):
    defined = False
print(how, defined)
"""


def test_absent_when_torchvision_cannot_be_imported():
    out = run(textwrap.dedent("""
        import sys
        sys.modules["torchvision"] = None  # Python's own 'not importable' marker
    """) + ENSURE_AND_REPORT)
    assert out == "absent False"  # nothing defined


@pytest.mark.skipif(not torchvision_installed(), reason="torchvision not installed")
def test_native_when_torchvision_is_already_imported():
    # imported by someone else already: nothing is defined (too late to shim anyway)
    out = run(textwrap.dedent("""
        import importlib.machinery, importlib.util, sys, types
        stub = types.ModuleType("torchvision")
        stub.__spec__ = importlib.machinery.ModuleSpec(
            "torchvision", None, origin=importlib.util.find_spec("torchvision").origin)
        sys.modules["torchvision"] = stub
    """) + ENSURE_AND_REPORT)
    assert out == "native False"


def test_a_torchvision_whose_own_ops_load_is_left_alone(tmp_path):
    # a build that registers its own operators on import, from a library file of any name
    # (torchvision 0.29 ships _C_stable.so, not _C.so): defining the schemas before it
    # aborted the interpreter with "Tried to register an operator ... multiple times"
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "_C_stable.so").write_bytes(b"")
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        import torch
        _lib = torch.library.Library("torchvision", "DEF")
        _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        OWN = True
    """))
    out = run("""
        from engine.torchvision_compat import ensure_torchvision
        how = ensure_torchvision()
        import torchvision
        print(how, torchvision.OWN)
    """, pythonpath=tmp_path)
    assert out == "native True"


def test_other_torchvision_import_errors_are_not_hidden(tmp_path):
    pkg = tmp_path / "torchvision"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise RuntimeError('some other breakage')\n")
    out = run("""
        from engine.torchvision_compat import ensure_torchvision
        import torch
        try:
            ensure_torchvision()
        except RuntimeError as err:
            print("raised", err)
    """, pythonpath=tmp_path)
    assert out == "raised some other breakage"
