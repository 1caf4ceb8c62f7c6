"""Run directories: a resumed run must be the same run, not another one in the same place;
an output folder must be writable before any work starts; and one process at a time
writes a folder (:func:`run_lock`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.config import ConfigError, yaml_load


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between a saved config ``a`` and a new one ``b``.

    A key that ``a`` lacks altogether is a setting added to the code after that run began
    (e.g. ``data.skip_bad_examples``): not a difference, or every run would stop resuming
    with each new option."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a:
                continue
            out += config_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        # per-layer / per-level entries (model.layers, levels): a new option inside one
        # is no difference either
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += config_diff(x, y, f"{prefix}.{i}" if prefix else str(i))
        return out
    return [] if a == b else [prefix]


def read_saved_config(path: str | Path) -> dict:
    """The config a run saved, or a one-line error naming the file when it is damaged."""
    import yaml

    try:
        data = yaml_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{path}: damaged ({type(err).__name__}); restore it or move the run "
                          f"folder away") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: damaged (not a mapping of keys); restore it or move the run folder away")
    return data or {}


def holds_work(folder: str | Path) -> bool:
    """Whether a run folder holds anything a run produced: a checkpoint or final weights
    (its own, or one level down: a prior's ``level_L/``), or encoded codes."""
    folder = Path(folder)
    patterns = ("model.safetensors", "*/model.safetensors", "checkpoints/step_*",
                "*/checkpoints/step_*", "codes.json")
    return folder.is_dir() and any(next(folder.glob(pat), None) is not None for pat in patterns)


# keys a stage fills in from its data when the config leaves them unset
# (tokenizer.data.resolve_modality, for the tokenizer and the classifier); a run saved before
# they were filled in has null there, which stands for the value detected now (from the
# same data: the data keys themselves are compared)
DETECTED = ("data.modality",)


def _value(config: dict, key: str) -> Any:
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def check_run_dir(run_dir: str | Path, config: dict, resumable: Sequence[str]) -> None:
    """Refuse a run directory whose ``config.yaml`` differs from ``config`` outside the
    top-level sections in ``resumable`` (those may change between a run and its resumption:
    more steps, other evaluation sizes). A run that stopped before its first checkpoint (a
    config or data error) left nothing to protect: the corrected config may take its place."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return
    old = read_saved_config(path)
    changed = [k for k in config_diff(old, config) if k.split(".")[0] not in resumable
               and not (k in DETECTED and _value(old, k) is None)]
    if changed and holds_work(run_dir):
        raise ConfigError(
            f"run_dir {str(run_dir)!r} already holds a run with a different config "
            f"({', '.join(changed[:6])}); choose another run_dir or delete it"
        )


def check_output_file(path: str | Path, key: str = "--out") -> None:
    """Fail before any work when the file ``path`` could not be written: it names a folder,
    or its folder cannot be created or written."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{key}: {str(path)!r} is a folder; give a file name")
    check_writable(path.parent, key)


def check_writable(path: str | Path, key: str = "run_dir") -> None:
    """Fail before any work when ``path`` (a directory, created later by the run) cannot be
    created or written, naming ``key`` and the path. Probes by creating the missing folders
    and a file in the deepest one, then removes everything it created: no side effects."""
    if not str(path).strip():
        raise ConfigError(f"{key}: empty; give a folder to write to")
    path = Path(path).expanduser()
    if path.resolve() == Path(path.resolve().anchor):
        raise ConfigError(f"{key}: {str(path)!r} is the filesystem root; give a folder of its own")
    if int(os.environ.get("LOCAL_RANK", "0")) != 0:
        # one probe per machine: processes creating and removing the same probe folders at
        # once would fail each other's probes
        return
    created: list[Path] = []
    try:
        missing = []
        probe_dir = path
        while not probe_dir.exists():
            missing.append(probe_dir)
            if probe_dir.parent == probe_dir:
                break
            probe_dir = probe_dir.parent
        if probe_dir.exists() and not probe_dir.is_dir():
            raise NotADirectoryError(f"{probe_dir} is a file, not a folder")
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        fd, probe = tempfile.mkstemp(prefix=".hqvae-write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, NotADirectoryError) and not err.strerror:
            reason = str(err)
        raise ConfigError(
            f"{key}: cannot write to {str(path)!r} ({reason}); choose a writable location"
        ) from None
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass


# in every folder a command writes: held (flock) by the process writing it. The kernel
# drops the lock when that process dies, however it dies, so a stale file locks nothing.
LOCK_FILE = ".hqvae.lock"
_held: dict[str, list] = {}  # resolved folder -> [fd, depth]: re-entrant within a process


@contextlib.contextmanager
def run_lock(folder: str | Path, key: str = "run_dir") -> Iterator[None]:
    """Hold ``folder`` for this process: another process (a second command on the same
    run_dir) is refused at once, naming the folder and the holder. Only the first process
    of a data-parallel run takes it (the others write nothing of their own)."""
    if int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
        yield
        return
    path = Path(folder).expanduser().resolve()
    held = _held.get(str(path))
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    path.mkdir(parents=True, exist_ok=True)
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"{key}: {folder} is in use by {holder}; wait for it to finish or use another "
            f"folder (two runs writing one folder would corrupt each other)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"hqvae process {os.getpid()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
    _held[str(path)] = [fd, 1]
    try:
        yield
    finally:
        del _held[str(path)]
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
