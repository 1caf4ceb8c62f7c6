"""Saving, loading and sharing weights: one implementation for tokenizers, priors and
classifiers, built on the Hugging Face Hub's ``ModelHubMixin`` (docs/guides/hub.md).

Weights are safetensors only, with the resolved config as JSON and a ``kind`` tag in their
metadata; ``config.yaml`` beside them is for people. ``from_pretrained`` takes a run
folder, a weights file or a Hub id ("org/name", resolved through the Hub's cache, so it
works offline once downloaded); ``save_pretrained(dir)`` writes the weights, ``config.yaml``,
the run's evaluation record and a model card (``README.md``); ``push_to_hub`` is the
mixin's: it saves into a temporary folder and uploads that folder.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, Optional, TypeVar

import torch
from huggingface_hub import ModelCard, ModelHubMixin, snapshot_download
from huggingface_hub.utils import HFValidationError, validate_repo_id

from engine.checkpoint import load_matching_state, load_weights, save_weights
from engine.config import from_dict, save_yaml, to_dict, yaml_dump
from engine.files import write_bytes_atomic, write_text_atomic

WEIGHTS = "model.safetensors"
CARD = "README.md"
C = TypeVar("C")
M = TypeVar("M", bound=torch.nn.Module)
P = TypeVar("P", bound="PretrainedMixin")


def weights_identity(spec: dict, state: dict[str, torch.Tensor]) -> str:
    """A short hash of what makes a model the function it is: ``spec`` (the config keys that
    matter, see each kind's ``identity``) and every tensor of its state, by name."""
    h = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    for name, t in sorted(state.items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def is_hub_id(name: Any) -> bool:
    """Whether ``name`` reads as a Hub model id, "org/name". A bare name is taken for a
    local folder: a typo'd run folder should not become a network request."""
    if not isinstance(name, str) or name.count("/") != 1:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def resolve_pretrained(name_or_path: str | Path, *, revision: Optional[str] = None,
                       cache_dir: str | Path | None = None, force_download: bool = False,
                       token: str | bool | None = None, local_files_only: bool = False) -> Path:
    """A local path as it is (whether it exists or not: the loader names what is missing);
    a Hub id that is not a local path as the folder of its snapshot in the Hub cache
    (downloaded first unless offline, ``HF_HUB_OFFLINE=1`` or ``local_files_only``)."""
    path = Path(name_or_path).expanduser()
    if path.exists() or not is_hub_id(name_or_path):
        return path
    try:
        return Path(snapshot_download(
            str(name_or_path), revision=revision, cache_dir=cache_dir, force_download=force_download,
            token=token, local_files_only=local_files_only))
    except OSError as err:  # every Hub lookup error (not found, offline, incomplete) is one
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(
            f"{name_or_path}: no such run folder or file, and no Hub model of that id ({reason})"
        ) from None


def weights_file(path: Path) -> Path:
    """``path`` itself when it names a file, else the weights file of the folder."""
    return path if path.suffix == ".safetensors" or path.is_file() else path / WEIGHTS


def save_pretrained_weights(path: Path, state: dict[str, torch.Tensor], config: Any, kind: str,
                            extra: Optional[dict[str, str]] = None) -> Path:
    """Atomically write weights with their config and ``kind`` tag in the metadata."""
    save_weights(path, state, to_dict(config), {"kind": kind, **(extra or {})})
    return path


def _eval_rows(record: dict, prefix: str = "") -> list[tuple[str, str]]:
    """The numbers of an evaluation record as (dotted key, value) rows; lists of numbers
    (per-class accuracy, a confusion matrix) are left to the record itself."""
    rows: list[tuple[str, str]] = []
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)):
            rows.append((name, f"{value:.4g}" if isinstance(value, float) else str(value)))
        elif isinstance(value, dict):
            rows += _eval_rows(value, f"{name}.")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                rows += _eval_rows(item, f"{name}.{i}.")
    return rows


class PretrainedMixin(ModelHubMixin, library_name="hqvae", license="mit", tags=["hqvae"]):
    """``from_pretrained`` / ``save_pretrained`` / ``push_to_hub`` for one kind of weights.

    A kind sets ``kind`` (the metadata tag; ``kinds``, the tags it reads, when a model's tag
    follows its config, as a classifier's follows its modality), ``what`` (how errors name it), ``eval_file``
    (its run's evaluation record, relative to the run folder) and ``config``; it writes its
    files in ``_save_pretrained(folder)``, builds itself from a local path in
    ``_load_pretrained(path, device, **kwargs)`` and describes itself in ``_card_title``,
    ``_card_about`` and ``_card_facts``."""

    kind: str
    kinds: ClassVar[tuple[str, ...]] = ()  # the tags it reads; () = just ``kind``
    what: ClassVar[str]
    eval_file: ClassVar[str] = "eval.json"
    source: Optional[Path] = None  # the folder it was loaded from (its run's records live there)

    @classmethod
    def from_pretrained(cls: type[P], name_or_path: str | Path, device: str | torch.device = "cpu",
                        *, revision: Optional[str] = None, cache_dir: str | Path | None = None,
                        force_download: bool = False, token: str | bool | None = None,
                        local_files_only: bool = False, **kwargs: Any) -> P:
        """Load from a run folder, a weights file or a Hub id ("org/name"); in eval mode."""
        path = resolve_pretrained(name_or_path, revision=revision, cache_dir=cache_dir,
                                  force_download=force_download, token=token,
                                  local_files_only=local_files_only)
        obj = cls._load_pretrained(path, device, **kwargs)
        obj.source = path.parent if path.is_file() else path
        return obj

    @classmethod
    def _load_pretrained(cls: type[P], path: Path, device: str | torch.device, **kwargs: Any) -> P:
        raise NotImplementedError

    @classmethod
    def _read_weights(cls, path: Path, config_cls: type[C], untagged: bool = True
                      ) -> tuple[Path, dict[str, torch.Tensor], dict[str, str], C]:
        """(file, tensors, metadata, config) of the weights at ``path`` (a folder: its
        ``model.safetensors``). Refused, in one line naming the file: another kind's weights,
        weights without a stored config, and with ``untagged`` false weights without a kind
        tag (a checkpoint's ``model.safetensors`` has none)."""
        path = weights_file(path)
        state, meta = load_weights(path)
        tag = meta.get("kind")
        if tag not in (cls.kinds or (cls.kind,)) and (tag is not None or not untagged):
            raise ValueError(f"{path}: not {cls.what} (weights of kind {tag!r})" if tag is not None
                             else f"{path}: not {cls.what} (weights without a kind tag)")
        if "config" not in meta:
            raise ValueError(f"{path}: not {cls.what} (no config in the weights' metadata)")
        return path, state, meta, from_dict(config_cls, json.loads(meta["config"]), source=str(path))

    @staticmethod
    def _load_state(module: M, state: dict[str, torch.Tensor], path: Path,
                    device: str | torch.device) -> M:
        """``state`` into ``module`` (or the one-line mismatch error naming ``path``), on
        ``device``, in eval mode."""
        load_matching_state(module, state, path)
        return module.to(device).eval()

    def _write_weights(self, path: Path, state: dict[str, torch.Tensor],
                       extra: Optional[dict[str, str]] = None) -> Path:
        return save_pretrained_weights(path, state, self.config, self.kind, extra)

    def _save_pretrained(self, save_directory: Path) -> None:
        raise NotImplementedError

    def save_pretrained(self, save_directory: str | Path, *, config: Any = None,
                        model_card_kwargs: Optional[dict[str, Any]] = None) -> Path:
        """Write the weights, ``config.yaml``, the evaluation record of the run it was loaded
        from (if any) and a model card into ``save_directory``; returns that folder.
        ``config`` is the mixin's ``config.json`` argument: the config here is the model's
        own, stored in the weights' metadata, so another one is refused."""
        if config is not None:
            raise ValueError("config: the config is stored in the weights' metadata; "
                             "save a model built from the config you want instead")
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self._save_pretrained(folder)
        save_yaml(self.config, folder / "config.yaml")
        if self._eval_record() is not None:
            theirs, mine = self.source / self.eval_file, folder / self.eval_file
            if theirs.resolve() != mine.resolve():
                write_bytes_atomic(mine, theirs.read_bytes())
        write_text_atomic(folder / CARD, str(self.generate_model_card(
            **{"load_from": str(save_directory), **(model_card_kwargs or {})})))
        return folder

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: Optional[dict[str, Any]] = None,
                    **kwargs: Any) -> str:
        """The mixin's upload of a ``save_pretrained`` folder; the card says to load ``repo_id``."""
        card = {"load_from": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card, **kwargs)

    def _eval_record(self) -> Optional[dict]:
        """The evaluation record of the run folder it was loaded from, if there is one."""
        path = None if self.source is None else self.source / self.eval_file
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict):
                raise ValueError("not a mapping")
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: damaged ({type(err).__name__}: {err}); restore it or "
                             f"move it away to save without it") from None
        return record

    # -- the model card -----------------------------------------------------------------------
    def _card_title(self) -> str:
        raise NotImplementedError

    def _card_about(self) -> str:
        raise NotImplementedError

    def _card_facts(self) -> dict[str, Any]:
        raise NotImplementedError

    def generate_model_card(self, load_from: str = "PATH_OR_HUB_ID",
                            eval_record: Optional[dict] = None) -> ModelCard:
        """What the model is, how to load it, its facts (identity, shapes, classes), its
        evaluation numbers (``eval_record``, default its run's record) and its
        config. The YAML header is the mixin's card data (library, license, tags)."""
        if eval_record is None:
            eval_record = self._eval_record()
        cls = type(self)
        facts = "\n".join(f"| {k} | {v} |" for k, v in self._card_facts().items())
        lines = [
            f"# {self._card_title()}", "", self._card_about(), "",
            "## Load it", "", "```python",
            f"from {cls.__module__} import {cls.__name__}",
            f"model = {cls.__name__}.from_pretrained({load_from!r})",
            "```", "",
            "A Hub id resolves through the Hugging Face cache (offline with `HF_HUB_OFFLINE=1` "
            "once downloaded); weights are safetensors with the config in their metadata.", "",
            "## What it is", "", "| | |", "|---|---|", facts, "",
            "## Evaluation", "",
        ]
        rows = _eval_rows(eval_record or {})
        if rows:
            lines += [f"From `{self.eval_file}` of the run.", "", "| metric | value |",
                      "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]
        else:
            lines.append("No evaluation record was saved with this model when this card was written.")
        lines += ["", "## Config", "", "```yaml", yaml_dump(to_dict(self.config)).rstrip(), "```", ""]
        data = self._hub_mixin_info.model_card_data
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
