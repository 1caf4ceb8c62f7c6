"""The stage-one interface stage two sees: ``Tokenizer``.

``encode(x) -> list[LongTensor]`` (one (B, h, w) grid per level, top first, deterministic),
``decode_codes(codes)``, ``code_shapes``, ``codebook_sizes``. Weights are stored as
safetensors with the resolved config in their metadata and as ``config.yaml`` beside them;
saving, loading (run folder, weights file or Hub id) and the model card are
``engine.pretrained``'s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.config import non_default
from engine.pretrained import WEIGHTS, PretrainedMixin, weights_identity
from tokenizer.audio import Spectrogram
from tokenizer.config import TokenizerConfig
from tokenizer.model import HQVAE


def identity_config(cfg: TokenizerConfig) -> dict:
    """The part of a tokenizer config its identity hashes: the model and the input transform."""
    data = cfg.data
    transform = {"modality": data.resolved_modality, "shape": list(data.shape)}
    if data.resolved_modality == "audio":
        transform["audio"] = non_default(data.audio)
    return {"model": non_default(cfg.model), "input": transform}


class Tokenizer(PretrainedMixin, tags=["tokenizer"]):
    kind = "hqvae-tokenizer"
    what = "a tokenizer"
    eval_file = "eval/eval.json"

    def __init__(self, model: HQVAE, config: TokenizerConfig):
        self.model = model
        self.config = config
        self._spectrogram = None

    # -- construction / persistence (engine.pretrained) ---------------------------------------
    @classmethod
    def from_config(cls, config: TokenizerConfig) -> Tokenizer:
        return cls(HQVAE(config.model, config.data.shape), config)

    @classmethod
    def _load_pretrained(cls, path: Path, device: str | torch.device = "cpu") -> Tokenizer:
        path, state, _, config = cls._read_weights(path, TokenizerConfig)
        tok = cls.from_config(config)
        cls._load_state(tok.model, state, path, device)
        return tok

    def _save_pretrained(self, save_directory: Path) -> None:
        self._write_weights(save_directory / WEIGHTS, self.model.state_dict())

    def _card_title(self) -> str:
        return f"HQ-VAE tokenizer ({self.config.model.preset or 'custom hierarchy'}, {self.modality})"

    def _card_about(self) -> str:
        return ("Stage one of a two-stage generative model: an HQ-VAE hierarchy (Takida et al., "
                "TMLR 2024) that turns each input into one grid of discrete codes per level, top "
                "first, and decodes codes back. `encode(x)` gives the codes, `decode_codes(codes)` "
                "the reconstruction" + (", `to_waveform` the audio (Griffin-Lim)."
                                        if self.modality == "audio" else "."))

    def _card_facts(self) -> dict:
        return {"kind": self.kind, "identity": f"`{self.identity}`", "modality": self.modality,
                "input shape": list(self.input_shape),
                "code shapes": [list(s) for s in self.code_shapes],
                "codebook sizes": self.codebook_sizes}

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
        return weights_identity(identity_config(self.config), self.model.state_dict())

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
            self._spectrogram = Spectrogram(self.config.data.audio)
        return self._spectrogram

    @torch.no_grad()
    def to_waveform(self, spec: torch.Tensor, n_iter: int | None = None) -> torch.Tensor:
        """Spectrogram images (B, 1, F, T) -> waveforms (B, samples) by Griffin-Lim."""
        return self.spectrogram.to(spec.device).to_waveform(spec, n_iter=n_iter)
