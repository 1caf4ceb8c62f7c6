"""A trained stack of level priors: ``Prior.from_pretrained(run_dir or Hub id)``; saving,
loading and the model card are ``engine.pretrained``'s.

Run directory layout (written by ``hqvae train-prior``)::

    RUN_DIR/config.yaml                   resolved PriorConfig
    RUN_DIR/prior.json                    what the priors model: tokenizer identity, code
                                          shapes, codebook sizes, classes
    RUN_DIR/eval.json                     held-out bits/token per level vs log2 K
    RUN_DIR/level_<l>/model.safetensors   weights; config + prior.json in the metadata
    RUN_DIR/level_<l>/checkpoints/        resumable training state
    RUN_DIR/level_<l>/metrics.jsonl       training / eval metric lines
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from engine.files import write_text_atomic
from engine.pretrained import WEIGHTS, PretrainedMixin, save_pretrained_weights
from engine.subsets import spread_indices
from prior.codes import IdentityError, check_identity, read_manifest
from prior.config import PriorConfig
from prior.model import LevelPrior

INFO = "prior.json"
KIND = "hqvae-prior"
INFO_KEYS = ("tokenizer_identity", "code_shapes", "codebook_sizes", "num_classes",
             "class_names", "layer_kinds", "modality", "tokenizer_run")


def level_dir(run_dir: str | Path, level: int) -> Path:
    return Path(run_dir) / f"level_{level}"


def prior_info(manifest: dict, class_cond: bool) -> dict:
    """The part of a codes manifest a prior depends on."""
    info = {k: manifest.get(k) for k in INFO_KEYS}
    if not class_cond:
        info["num_classes"] = info["class_names"] = None
    return info


def build_level(config: PriorConfig, info: dict, level: int) -> LevelPrior:
    return LevelPrior(
        config.level_model(level), level, [tuple(s) for s in info["code_shapes"]],
        info["codebook_sizes"], info["num_classes"] if config.class_cond else None,
        config.label_dropout, config.label_every_position,
    )


def save_level(model: LevelPrior, config: PriorConfig, info: dict, run_dir: str | Path) -> Path:
    return save_pretrained_weights(level_dir(run_dir, model.level) / WEIGHTS, model.state_dict(),
                                   config, KIND, {"level": str(model.level), "info": json.dumps(info)})


@torch.no_grad()
def evaluate_level(model: LevelPrior, dataset: Dataset, max_examples: int = 2000,
                   batch_size: int = 256) -> dict[str, float]:
    """Held-out NLL of one level in bits per token, next to the uniform baseline log2 K."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    n = min(len(dataset), max_examples)
    loader = DataLoader(Subset(dataset, spread_indices(len(dataset), n)), batch_size=batch_size, shuffle=False)
    nats, tokens = 0.0, 0
    for batch in loader:
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(batch)
        count = batch[f"level_{model.level}"].numel()
        nats += float(out["loss"]) * count
        tokens += count
    model.train(was)
    bits = nats / max(tokens, 1) / math.log(2)
    return {"bits_per_token": bits, "uniform_bits": math.log2(model.codebook_size),
            "examples": float(n)}


class Prior(PretrainedMixin, tags=["prior"]):
    """Level priors 0..L-1 of one run, and what they were trained on."""

    kind = KIND
    what = "a prior level"

    def __init__(self, config: PriorConfig, info: dict, levels: dict[int, LevelPrior]):
        self.config = config
        self.info = info
        self.levels = levels

    @classmethod
    def _load_pretrained(cls, run_dir: Path, device: str | torch.device = "cpu",
                         levels: Optional[list[int]] = None) -> Prior:
        info_path = run_dir / INFO
        if not info_path.is_file():
            raise FileNotFoundError(f"{run_dir}: no {INFO}; not a prior run directory")
        try:
            info = json.loads(info_path.read_text())
            if not isinstance(info, dict):
                raise ValueError("not a mapping")
            num_levels = len(info["codebook_sizes"])
            info["tokenizer_identity"]  # noqa: B018  (checked here, used below)
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{info_path}: damaged ({type(err).__name__}: {err}); restore it or "
                             f"retrain the prior in another run_dir") from None
        wanted = range(num_levels) if levels is None else levels
        config: Optional[PriorConfig] = None
        models: dict[int, LevelPrior] = {}
        for level in wanted:
            path = level_dir(run_dir, level) / WEIGHTS
            if not path.is_file():
                raise FileNotFoundError(
                    f"{run_dir}: level {level} has not been trained (no {path.name} in "
                    f"{path.parent}); run `hqvae train-prior ... --level {level}`"
                )
            path, state, meta, config = cls._read_weights(path, PriorConfig, untagged=False)
            level_info = json.loads(meta.get("info", "{}"))
            check_identity(info["tokenizer_identity"], level_info.get("tokenizer_identity", "?"),
                           f"{path}", "it was trained in another run")
            for key in ("num_classes", "code_shapes", "codebook_sizes"):
                # a level retrained on other codes of the same tokenizer (say, another class
                # count) would read the sampler's null label as a real class
                mine, run = level_info.get(key), info.get(key)
                if json.dumps(mine) != json.dumps(run):
                    raise ValueError(
                        f"{path}: {key} {mine} differs from {run} in {info_path}; the level was "
                        f"trained on other codes: retrain it with `hqvae train-prior ... --level {level}`")
            models[level] = cls._load_state(build_level(config, level_info, level), state, path, device)
        if config is None:
            raise ValueError("levels: choose at least one level")
        return cls(config, info, models)

    def _save_pretrained(self, save_directory: Path) -> None:
        """The run-folder layout ``train-prior`` writes (``prior.json``, ``level_<l>/``), so
        that a saved or downloaded prior loads like a run folder."""
        missing = sorted(set(range(len(self.codebook_sizes))) - set(self.levels))
        if missing:
            raise ValueError(f"levels {missing} were not loaded; load every level to save the prior")
        write_text_atomic(save_directory / INFO, json.dumps(self.info, indent=2))
        for model in self.levels.values():
            save_level(model, self.config, self.info, save_directory)

    def _card_title(self) -> str:
        return f"HQ-VAE prior ({len(self.levels)} levels)"

    def _card_about(self) -> str:
        return ("Stage two of a two-stage generative model: one autoregressive transformer per "
                "code level of an HQ-VAE tokenizer, each conditioned on the levels above it"
                + (" and on the class label" if self.config.class_cond else "") + ". It models "
                "the codes of one tokenizer only: sample with the tokenizer of identity "
                f"`{self.tokenizer_identity}` (`Sampler(prior, tokenizer)` refuses any other).")

    def _card_facts(self) -> dict:
        return {"kind": self.kind, "tokenizer identity": f"`{self.tokenizer_identity}`",
                "code shapes": [list(s) for s in self.code_shapes],
                "codebook sizes": self.codebook_sizes,
                "classes": self.class_names or self.num_classes}

    # -- what it models ------------------------------------------------------------------
    @property
    def tokenizer_identity(self) -> str:
        return self.info["tokenizer_identity"]

    @property
    def code_shapes(self) -> list[tuple[int, int]]:
        return [tuple(s) for s in self.info["code_shapes"]]

    @property
    def codebook_sizes(self) -> list[int]:
        return list(self.info["codebook_sizes"])

    @property
    def num_classes(self) -> Optional[int]:
        return self.info.get("num_classes")

    @property
    def class_names(self) -> Optional[list[str]]:
        return self.info.get("class_names")

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer other than the one whose codes these priors model."""
        if tokenizer.identity != self.tokenizer_identity:
            raise IdentityError(
                f"the tokenizer given is {tokenizer.identity}, but these priors were trained on "
                f"codes of tokenizer {self.tokenizer_identity}; its codes are not the ones they model")

    def check_codes(self, codes_dir: str | Path) -> None:
        manifest = read_manifest(codes_dir)
        check_identity(self.tokenizer_identity, manifest["tokenizer_identity"],
                       f"codes directory {codes_dir}",
                       "these priors were trained on codes of another tokenizer")

    def to(self, device: str | torch.device) -> Prior:
        for model in self.levels.values():
            model.to(device)
        return self
