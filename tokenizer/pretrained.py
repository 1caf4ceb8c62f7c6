"""The stage-one interface stage two sees: ``Tokenizer``.

``encode(x) -> list[LongTensor]`` (one (B, h, w) grid per level, top first, deterministic),
``decode_codes(codes)``, ``code_shapes``, ``codebook_sizes``. Weights are stored as
safetensors with the resolved config in their metadata and as ``config.yaml`` beside them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch

from engine.checkpoint import load_matching_state, load_weights, save_weights
from engine.config import from_dict, save_yaml, to_dict
from tokenizer.config import TokenizerConfig
from tokenizer.model import HQVAE

WEIGHTS = "model.safetensors"


def non_default(obj):
    """A dataclass as a dict without the fields that hold their default (recursively)."""
    if dataclasses.is_dataclass(obj):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = f.default
            if dataclasses.is_dataclass(value):
                sub = non_default(value)
                if sub:
                    out[f.name] = sub
            elif value != default:
                out[f.name] = non_default(value)
        return out
    if isinstance(obj, (list, tuple)):
        return [non_default(v) for v in obj]
    return obj


def identity_config(cfg: TokenizerConfig) -> dict:
    """The part of a tokenizer config its identity hashes: the model and the input transform."""
    data = cfg.data
    transform = {"modality": data.resolved_modality, "shape": list(data.shape)}
    if data.resolved_modality == "audio":
        transform["audio"] = non_default(data.audio)
    return {"model": non_default(cfg.model), "input": transform}


class Tokenizer:
    def __init__(self, model: HQVAE, config: TokenizerConfig):
        self.model = model
        self.config = config
        self._spectrogram = None

    # -- construction / persistence ---------------------------------------------------------
    @classmethod
    def from_config(cls, config: TokenizerConfig) -> Tokenizer:
        return cls(HQVAE(config.model, config.data.shape), config)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, device: str | torch.device = "cpu") -> Tokenizer:
        path = Path(run_dir)
        path = path if path.suffix == ".safetensors" or path.is_file() else path / WEIGHTS
        state, meta = load_weights(path)
        if "config" not in meta:
            raise ValueError(f"{path}: no tokenizer config in the weights' metadata")
        config = from_dict(TokenizerConfig, json.loads(meta["config"]), source=str(path))
        tok = cls.from_config(config)
        load_matching_state(tok.model, state, path)
        tok.model.to(device).eval()
        return tok

    def save_pretrained(self, run_dir: str | Path) -> Path:
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / WEIGHTS
        save_weights(path, self.model.state_dict(), to_dict(self.config),
                     {"kind": "hqvae-tokenizer"})
        save_yaml(self.config, run_dir / "config.yaml")
        return path

    # -- interface ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def code_shapes(self) -> list[tuple[int, int]]:
        return self.model.code_shapes

    @property
    def codebook_sizes(self) -> list[int]:
        return self.model.codebook_sizes

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.model.in_shape

    @property
    def modality(self) -> str:
        return self.config.data.resolved_modality

    @property
    def identity(self) -> str:
        """A hash of what defines the tokenizer as a function (the model config, the input
        transform) and of the weights: codes are only meaningful for it. The input transform
        is the modality and input shape, plus for audio every ``data.audio`` key (crop and
        Griffin-Lim settings included: they are part of the clip-to-spectrogram contract).
        Training, eval and other data-loading settings are left out, and so is every key at
        its default, so a new option (off by default) does not orphan the codes and priors
        of existing runs."""
        h = hashlib.sha256(json.dumps(identity_config(self.config), sort_keys=True).encode())
        for name, t in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        if tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"expected inputs of shape (B, {self.input_shape}), got {tuple(x.shape)}")
        return self.model.encode(x.to(self.device))

    @torch.no_grad()
    def decode_codes(self, codes: list[torch.Tensor], depth: int | None = None) -> torch.Tensor:
        was = self.model.training
        self.model.eval()
        try:
            return self.model.decode_codes([c.to(self.device) for c in codes], depth=depth)
        finally:
            self.model.train(was)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode_codes(self.encode(x))

    # -- audio --------------------------------------------------------------------------------
    @property
    def spectrogram(self):
        if self.modality != "audio":
            raise ValueError("this tokenizer was trained on images, not audio")
        if self._spectrogram is None:
            from tokenizer.audio import Spectrogram

            self._spectrogram = Spectrogram(self.config.data.audio)
        return self._spectrogram

    @torch.no_grad()
    def to_waveform(self, spec: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        """Spectrogram images (B, 1, F, T) -> waveforms (B, samples) by Griffin-Lim."""
        return self.spectrogram.to(spec.device).to_waveform(spec, n_iter=n_iter)
