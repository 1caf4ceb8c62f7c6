"""Run directories: a folder a user names is written only if it is new, empty or provably
this tool's (:func:`check_folder`, :func:`hold_folder`); a resumed run must be the same run,
not another one in the same place; an output folder must be writable before any work
starts; and one process at a time writes a folder (:func:`run_lock`).

The ownership rule, one for every command that writes a folder (the training stages,
``pipeline``, ``encode``, ``sample``, ``eval-tokenizer``, ``report``): a folder is used when it
does not exist, is empty, or carries the marker :data:`MARKER` of the same kind of output,
which the command writes first, before anything else, so a run killed at any moment leaves
a folder that is recognisably its own. Folders written before the marker existed are
recognised by what only this tool writes there (weights with an hqvae kind tag, checksummed
checkpoints, a codes manifest, a sample record). Anything else is refused before any write,
naming the folder and what is in it. The home folder and filesystem roots are never used,
and ``~`` means the home folder wherever a folder is named (:func:`user_folder`)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from engine.config import ConfigError, yaml_load
from engine.files import write_text_atomic


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
    # the parent of an output file may be the home folder; an empty name and the root may not
    path = user_folder(path, key, home_ok=True)
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
    if _rank() != 0:
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


# -- whose folder is it ---------------------------------------------------------------------
# written into every folder a command writes, before anything else: JSON naming the kind of
# output and the command that created it
MARKER = ".hqvae-run.json"
# kind of output -> the command that writes it
COMMANDS = {"tokenizer": "hqvae train-tokenizer", "prior": "hqvae train-prior",
            "classifier": "hqvae train-classifier", "pipeline": "hqvae pipeline",
            "codes": "hqvae encode", "samples": "hqvae sample", "tokenizer-eval": "hqvae eval-tokenizer"}
KINDS = tuple(COMMANDS)
# files of this tool's that may sit in a folder without making it anyone else's
OWN_FILES = (LOCK_FILE, MARKER)


def user_folder(path: str | Path, key: str = "run_dir", home_ok: bool = False) -> Path:
    """The folder a user named, by one rule for every command: ``~`` (also when quoted, so
    the shell did not expand it) is the home folder; an empty name, a filesystem root and
    (unless ``home_ok``) the home folder itself are refused, naming ``key``."""
    text = str(path) if path is not None else ""
    if not text.strip():
        raise ConfigError(f"{key}: empty; give a folder to write to")
    folder = Path(text).expanduser()
    resolved = folder.resolve()
    if resolved == Path(resolved.anchor):
        raise ConfigError(f"{key}: {text!r} is the filesystem root; give a folder of its own")
    if not home_ok and resolved == Path.home().resolve():
        raise ConfigError(f"{key}: {text!r} is the home folder; give a folder of its own "
                          f"(e.g. {str(Path(text) / 'runs')!r})")
    return folder


def read_marker(folder: str | Path) -> dict | None:
    """The marker of ``folder`` (kind, command, created), or None when it has none. A marker
    that does not read as one is reported by its path: it decides whose the folder is."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict) or record.get("kind") not in KINDS:
        raise ConfigError(f"{path}: damaged (not an hqvae folder marker); restore it or move the folder away")
    return record


def _hqvae_weights(path: Path) -> bool:
    """Whether ``path`` is a safetensors file carrying an hqvae kind tag in its metadata."""
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            return str((fh.metadata() or {}).get("kind", "")).startswith("hqvae-")
    except Exception:  # not safetensors, truncated: not provably ours
        return False


def _json_record(path: Path, *keys: str) -> bool:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(k in record for k in keys)


def _checkpoints(folder: Path) -> bool:
    return next(folder.glob("checkpoints/step_*/checksums.json"), None) is not None


def legacy_training_run(folder: Path) -> bool:
    """A tokenizer or classifier run written before the marker: its config.yaml beside
    hqvae-tagged weights or checksummed checkpoints."""
    return (folder / "config.yaml").is_file() and (
        _hqvae_weights(folder / "model.safetensors") or _checkpoints(folder))


def legacy_prior_run(folder: Path) -> bool:
    """A prior run written before the marker: its prior.json record beside hqvae-tagged
    level weights or checksummed level checkpoints."""
    return _json_record(folder / "prior.json", "tokenizer_identity", "codebook_sizes") and any(
        _hqvae_weights(level / "model.safetensors") or _checkpoints(level) for level in folder.glob("level_*"))


def legacy_codes(folder: Path) -> bool:
    """A codes directory written before the marker: its manifest names the tokenizer."""
    return _json_record(folder / "codes.json", "tokenizer_identity", "splits")


def legacy_samples(folder: Path) -> bool:
    """A sample set written before the marker: the samples' own earlier marker file, its
    samples.json or the progress record of an unfinished set."""
    return ((folder / ".hqvae-samples").is_file() or (folder / ".hqvae-partial" / "state.json").is_file()
            or _json_record(folder / "samples.json", "num_samples", "tokenizer_identity"))


def legacy_pipeline(folder: Path) -> bool:
    """A pipeline run written before the marker: its pipeline.yaml beside a track folder
    holding a stage of this tool's (a file named pipeline.yaml alone proves nothing)."""
    if not (folder / "pipeline.yaml").is_file():
        return False
    for track in ("image", "audio"):
        stages = folder / track
        if (is_ours(stages / "tokenizer", "tokenizer") or is_ours(stages / "codes", "codes")
                or is_ours(stages / "prior", "prior")):
            return True
    return False


def legacy_tokenizer_eval(folder: Path) -> bool:
    """An evaluation folder of a tokenizer run: ``RUN/eval`` (where training evaluates)."""
    return folder.name == "eval" and is_ours(folder.parent, "tokenizer")


LEGACY: dict[str, Callable[[Path], bool]] = {
    "tokenizer": legacy_training_run, "classifier": legacy_training_run, "prior": legacy_prior_run,
    "codes": legacy_codes, "samples": legacy_samples, "pipeline": legacy_pipeline,
    "tokenizer-eval": legacy_tokenizer_eval,
}


def is_ours(folder: str | Path, kind: str) -> bool:
    """Whether ``folder`` holds output of ``kind`` written by this tool (marker or, for
    folders from before the marker, what only this tool writes)."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    try:
        marker = read_marker(folder)
    except ConfigError:
        return False
    if marker is not None:
        return marker["kind"] == kind
    return LEGACY[kind](folder)


def _listing(folder: Path, limit: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir() if p.name not in OWN_FILES)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_folder(path: str | Path, kind: str, key: str = "run_dir") -> bool:
    """Whether the command writing ``kind`` output (:data:`COMMANDS`) may write ``path``:
    returns True when it holds earlier output of that kind (to resume
    or replace), False when it is new or empty. Anything else (a file, another kind's
    folder, a folder of someone else's files) is a ConfigError naming the folder and what
    is in it. Reads only: a refusal leaves the file system as it was."""
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {KINDS}, got {kind!r}")
    folder = user_folder(path, key)
    if _rank() != 0:
        # the first process decides and writes (lock, marker, config); the others would see
        # its files half-way (a marker still under its temporary name) and refuse their own run
        return (folder / MARKER).is_file()
    if not folder.exists():
        return False
    if not folder.is_dir():
        raise ConfigError(f"{key}: {str(folder)!r} exists and is not a folder; nothing was written")
    marker = read_marker(folder)
    if marker is not None:
        if marker["kind"] != kind:
            raise ConfigError(
                f"{key}: {str(folder)!r} holds {marker['kind']} output (written by "
                f"{marker.get('command', 'hqvae')}), not {kind} output for {COMMANDS[kind]}; "
                f"nothing was written. "
                f"Choose another folder")
        return True
    if not any(p.name not in OWN_FILES for p in folder.iterdir()):
        return False
    if LEGACY[kind](folder):
        return True
    raise ConfigError(
        f"{key}: {str(folder)!r} is not empty ({_listing(folder)}) and holds no {kind} output "
        f"written by hqvae; nothing was written. Choose a new or empty folder")


def write_marker(folder: str | Path, kind: str) -> None:
    """Mark ``folder`` as ``kind`` output (kept when already marked: the marker records who
    created the folder)."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return
    record = {"kind": kind, "command": COMMANDS[kind], "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_text_atomic(folder / MARKER, json.dumps(record, indent=1) + "\n")


@contextlib.contextmanager
def hold_folder(path: str | Path, kind: str, key: str = "run_dir") -> Iterator[bool]:
    """Check ``path`` with :func:`check_folder` before creating anything, then hold it
    (:func:`run_lock`), check again under the lock (another process may have written it
    meanwhile) and mark it as ``kind`` output. Yields whether it held earlier output of
    that kind. Only the first process of a data-parallel run locks and marks."""
    check_folder(path, kind, key)
    with run_lock(user_folder(path, key), key):
        held = check_folder(path, kind, key)
        if _rank() == 0:
            write_marker(user_folder(path, key), kind)
        yield held


def _rank() -> int:
    """This process's rank in a data-parallel launch (0 outside one)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))
