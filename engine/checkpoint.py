"""Checkpoint I/O: safetensors for every tensor, JSON for everything else, atomic writes.

A checkpoint is a folder ``checkpoints/step_XXXXXXXX`` holding

* ``model.safetensors``      weights (the resolved config in the header metadata)
* ``optimizer.safetensors``  optimizer tensors + RNG state tensors
* ``state.json``             step, epoch, optimizer param groups, scheduler, python/numpy RNG
* ``checksums.json``         SHA-256 and size of each file above; written last

It is written under a temporary name (``.tmp-step_*``) and renamed into place, so a crash
mid-write never leaves a half-written checkpoint where resume would look for one (leftover
temporary folders are removed by :func:`clean_stale`). On load every file is checked
against ``checksums.json``: a truncated or corrupted checkpoint raises
:class:`CorruptCheckpointError`, and :func:`latest_valid_checkpoint` falls back to the
previous good one. Old checkpoints are renamed away before they are deleted, so a crash
during retention never leaves a half-deleted ``step_*`` folder either. Nothing is
unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.files import write_atomic

CKPT_RE = re.compile(r"^step_(\d{8})$")
CHECKSUMS = "checksums.json"
FILES = ("model.safetensors", "optimizer.safetensors", "state.json")


class CorruptCheckpointError(ValueError):
    """A checkpoint folder whose files are missing, truncated or altered."""


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


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
    write_atomic(path, lambda tmp: save_file(_contiguous(state), str(tmp), metadata=meta))


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


def load_matching_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load ``state`` into a model built from the config stored beside it, or a one-line error
    naming ``path`` when they do not fit (missing, extra or differently shaped tensors)."""
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # "size mismatch for ...": the tensors are not this config's
        first = next((ln.strip() for ln in str(err).splitlines() if "size mismatch" in ln), str(err)[:200])
        raise ValueError(f"{path}: weights do not match the stored config ({first})") from None
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not match the stored config "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )


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


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's random generators (torch, CUDA, Python, NumPy) as tensors + JSON."""
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
    # by device number: as strings, rng.cuda.10 would sort before rng.cuda.2
    cuda_keys = sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k.rsplit(".", 1)[1]))
    cuda = [tensors[k] for k in cuda_keys]
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
    rng_states: list[tuple[dict[str, torch.Tensor], dict]] | None = None,
) -> Path:
    """Write a checkpoint atomically (temporary folder, checksums, rename) and keep the
    newest ``keep_last``. ``rng_states``: every process's :func:`rng_state`, rank order
    (default: this process's only); rank 0's under ``rng.*``, rank r's under ``rng.rank{r}.*``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step_{step:08d}"
    tmp = ckpt_root / f".tmp-step_{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_weights(tmp / "model.safetensors", model_state, config, {"step": str(step)})
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    rng_tensors, rng_info = {}, {}
    for rank, (tensors, info) in enumerate(rng_states or [rng_state()]):
        if rank == 0:
            rng_tensors.update(tensors)
            rng_info.update(info)
        else:
            rng_tensors.update({k.replace("rng.", f"rng.rank{rank}.", 1): v for k, v in tensors.items()})
            rng_info.setdefault("ranks", {})[str(rank)] = info
    save_file(_contiguous({**opt_tensors, **rng_tensors}), str(tmp / "optimizer.safetensors"))
    sched = scheduler.state_dict() if scheduler else {}
    if "lr_lambdas" in sched:  # plain functions are rebuilt from the config, not stored
        sched["lr_lambdas"] = [None] * len(sched["lr_lambdas"])
    state = {"step": step, "optimizer": opt_meta, "scheduler": sched, "rng": rng_info, **(extra or {})}
    (tmp / "state.json").write_text(json.dumps(state))
    sums = {name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size}
            for name in FILES}
    (tmp / CHECKSUMS).write_text(json.dumps({"step": step, "files": sums}, indent=1))
    _fsync_dir_files(tmp)
    if final.exists():
        _remove(final)
    os.replace(tmp, final)
    for old in list_checkpoints(run_dir)[:-keep_last]:
        _remove(old)
    return final


def _fsync_dir_files(folder: Path) -> None:
    """Flush the files to disk before the rename publishes them (a power cut after the
    rename must not leave a published checkpoint with empty files)."""
    for p in folder.iterdir():
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _remove(folder: Path) -> None:
    """Rename out of the ``step_*`` namespace first, then delete: a crash in between leaves
    a ``.del-*`` folder that resume ignores (and :func:`clean_stale` removes)."""
    trash = folder.with_name(f".del-{folder.name}-{os.getpid()}")
    try:
        os.replace(folder, trash)
    except OSError:
        trash = folder
    shutil.rmtree(trash, ignore_errors=True)


def clean_stale(run_dir: str | Path) -> list[Path]:
    """Remove what a killed writer left behind: ``.tmp-*`` (a checkpoint being written) and
    ``.del-*`` (one being deleted) folders. Returns what was removed."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    stale = [p for p in root.iterdir() if p.name.startswith((".tmp-", ".del-"))]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CKPT_RE.match(p.name)]
    return sorted(found, key=lambda p: int(CKPT_RE.match(p.name).group(1)))


def verify_checkpoint(path: str | Path) -> None:
    """Check every file of a checkpoint against its ``checksums.json``; raise
    :class:`CorruptCheckpointError` naming the checkpoint and the bad file. Checkpoints
    written before checksums existed (no ``checksums.json``) pass when their files exist."""
    path = Path(path)
    manifest = path / CHECKSUMS
    if not manifest.is_file():
        missing = [n for n in FILES if not (path / n).is_file()]
        if missing:
            raise CorruptCheckpointError(f"checkpoint {path}: missing {', '.join(missing)}")
        return
    try:
        files = json.loads(manifest.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CorruptCheckpointError(f"checkpoint {path}: unreadable {CHECKSUMS} ({err})") from None
    if not isinstance(files, dict) or not all(isinstance(w, dict) for w in files.values()):
        raise CorruptCheckpointError(f"checkpoint {path}: {CHECKSUMS} is not a mapping of file records")
    for name, want in files.items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpointError(f"checkpoint {path}: {name} is missing")
        size = f.stat().st_size
        if size != want.get("bytes", size):
            raise CorruptCheckpointError(
                f"checkpoint {path}: {name} is truncated or altered "
                f"({size} bytes, {want['bytes']} written)"
            )
        if sha256_file(f) != want.get("sha256"):
            raise CorruptCheckpointError(f"checkpoint {path}: {name} fails its SHA-256 checksum")


class NoUsableCheckpointError(CorruptCheckpointError):
    """Every checkpoint of a run is damaged: resuming would silently start over."""


def load_latest_checkpoint(run_dir: str | Path) -> tuple[dict | None, Path | None, list[Path]]:
    """(state, path) of the newest checkpoint that verifies and loads, and the newer ones
    that did not (each reported with a warning naming it and why). (None, None, []) when the
    run has no checkpoint. When it has some and none loads, :class:`NoUsableCheckpointError`:
    starting again from step 0 would overwrite the run's metrics and weights."""
    bad: list[Path] = []
    errors: list[str] = []
    paths = list(reversed(list_checkpoints(run_dir)))
    for i, path in enumerate(paths):
        try:
            return load_checkpoint(path), path, bad
        except CorruptCheckpointError as err:
            if i + 1 < len(paths):
                warnings.warn(f"{err}; falling back to the previous checkpoint", stacklevel=2)
            bad.append(path)
            errors.append(str(err))
    if bad:
        raise NoUsableCheckpointError(
            f"{run_dir}: no checkpoint can be resumed ({'; '.join(errors)}); nothing was changed. "
            f"Starting over would replace this run's metrics and weights: move "
            f"{Path(run_dir) / 'checkpoints'} away (or use another run_dir) to start from step 0")
    return None, None, bad


def quarantine(path: str | Path) -> Path:
    """Move a corrupt checkpoint out of the ``step_*`` namespace (kept for inspection as
    ``step_XXXXXXXX.corrupt``), so retention and later resumes never pick it again."""
    path = Path(path)
    target = path.with_name(path.name + ".corrupt")
    if target.exists():
        shutil.rmtree(target, ignore_errors=True)
    os.replace(path, target)
    return target


def load_checkpoint(path: str | Path, verify: bool = True) -> dict:
    """Read a checkpoint folder: {'step', 'model', 'optimizer', 'scheduler', 'rng', ...}.

    ``verify``: check the files against ``checksums.json`` first (raises
    :class:`CorruptCheckpointError`)."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    try:
        state = json.loads((path / "state.json").read_text())
        if not isinstance(state, dict):
            raise ValueError("state.json is not a mapping")
        step = state.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise ValueError(f"state.json: 'step' is {step!r}, not a step number")
        for key in ("optimizer", "scheduler"):
            if not isinstance(state.get(key), dict):
                raise ValueError(f"state.json: {key!r} is missing or not a mapping")
        model_state, _ = load_weights(path / "model.safetensors")
        tensors = load_weights(path / "optimizer.safetensors")[0]
        state["model"] = model_state
        state["optimizer"] = _unflatten_optimizer(tensors, state["optimizer"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        # any damage that got past the checksums (or a checkpoint written without them)
        raise CorruptCheckpointError(f"checkpoint {path} is unreadable: {err}") from None
    state["rng_tensors"] = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return state


def restore_rng(ckpt: dict, rank: int = 0) -> bool:
    """Restore process ``rank``'s generators from ``ckpt``; False (nothing changed) when
    the checkpoint holds no state for that rank (it was written by fewer processes)."""
    tensors, info = ckpt["rng_tensors"], ckpt.get("rng", {})
    if rank == 0:
        _set_rng_state({k: v for k, v in tensors.items() if not k.startswith("rng.rank")}, info)
        return True
    prefix = f"rng.rank{rank}."
    mine = {k.replace(prefix, "rng.", 1): v for k, v in tensors.items() if k.startswith(prefix)}
    if "rng.torch" not in mine:
        return False
    _set_rng_state(mine, info.get("ranks", {}).get(str(rank), {}))
    return True
