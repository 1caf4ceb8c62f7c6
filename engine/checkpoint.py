"""Checkpoint I/O: safetensors for every tensor, JSON for everything else, atomic writes.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX`` holding

* ``model.safetensors``      weights (the resolved config in the header metadata)
* ``optimizer.safetensors``  optimizer tensors + RNG state tensors
* ``state.json``             step, epoch, optimizer param groups, scheduler, python/numpy RNG

It is written under a temporary name and renamed into place, so a crash mid-write never
leaves a half-written checkpoint where resume would look for one. Nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

CKPT_RE = re.compile(r"^step_(\d{8})$")


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses views that share storage; a contiguous CPU clone is always safe
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def save_weights(path: str | Path, state: dict[str, torch.Tensor], config: dict | None = None,
                 extra: dict[str, str] | None = None) -> None:
    """Atomically write weights (+ the resolved config as JSON in the metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt"}
    if config is not None:
        meta["config"] = json.dumps(config)
    meta.update(extra or {})
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(_contiguous(state), str(tmp), metadata=meta)
    os.replace(tmp, path)


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read weights and their metadata; never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        return load_file(str(path)), meta
    except Exception as err:  # safetensors raises its own error types on bad headers
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from None


def _flatten_optimizer(opt_state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in opt_state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"opt.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": opt_state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if not key.startswith("opt."):
            continue
        _, pid, name = key.split(".", 2)
        state.setdefault(int(pid), {})[name] = value
    for pid, values in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    info = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, info


def _set_rng_state(tensors: dict[str, torch.Tensor], info: dict) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    if "python" in info:
        v, s, g = info["python"]
        random.setstate((v, tuple(s), g))
    if "numpy" in info:
        n = info["numpy"]
        np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    config: dict,
    extra: dict | None = None,
    keep_last: int = 2,
) -> Path:
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp / "model.safetensors", model_state, config, {"step": str(step)})
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_info = _rng_state()
    save_file(_contiguous({**opt_tensors, **rng_tensors}), str(tmp / "optimizer.safetensors"))
    sched = scheduler.state_dict() if scheduler else {}
    if "lr_lambdas" in sched:  # plain functions are rebuilt from the config, not stored
        sched["lr_lambdas"] = [None] * len(sched["lr_lambdas"])
    state = {"step": step, "optimizer": opt_meta, "scheduler": sched, "rng": rng_info, **(extra or {})}
    (tmp / "state.json").write_text(json.dumps(state))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint folder: {'step', 'model', 'optimizer', 'scheduler', 'rng', ...}."""
    path = Path(path)
    try:
        state = json.loads((path / "state.json").read_text())
        model_state, _ = load_weights(path / "model.safetensors")
        tensors = load_file(str(path / "optimizer.safetensors"))
    except (OSError, ValueError) as err:
        raise ValueError(f"checkpoint {path} is unreadable: {err}") from None
    state["model"] = model_state
    state["optimizer"] = _unflatten_optimizer(tensors, state["optimizer"])
    state["rng_tensors"] = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return state


def restore_rng(ckpt: dict) -> None:
    _set_rng_state(ckpt["rng_tensors"], ckpt.get("rng", {}))
