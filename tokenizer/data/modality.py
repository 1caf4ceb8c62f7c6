"""Which modality ('image' | 'audio') a column holds, and the check that the data matches
the modality the config derives the model's input shape from."""

from __future__ import annotations

from typing import Optional

from tokenizer.config import DataConfig


def check_modality(cfg: DataConfig, found: str, where: str) -> None:
    """The model's input shape comes from ``cfg.shape``, which follows
    ``cfg.resolved_modality``; data of the other modality would only fail later as an
    obscure shape mismatch, so stop here and say which key to set."""
    expected = cfg.resolved_modality
    if found != expected:
        how = (
            f"data.modality is {cfg.modality!r}"
            if cfg.modality is not None
            else f"data.modality is unset and resolves to {expected!r} for source {cfg.source!r}"
        )
        raise ValueError(
            f"{where} holds {found} data but {how}; set data.modality={found} "
            f"(the model input shape {cfg.shape} is derived from it)"
        )


def feature_modality(feature) -> Optional[str]:
    """'image' / 'audio' for an HF Image / Audio feature, None for any other column."""
    import datasets

    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.Audio):
        return "audio"
    return None
