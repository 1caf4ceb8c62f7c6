"""A trained tokenizer's evaluation (``tokenizer.evaluate.run_evaluation``) with its rFID
when asked for (``hqvae eval-tokenizer --rfid``, README "FID"). FID lives in this layer, so
rFID is composed here: the tokenizer layer imports nothing above it (README, "Layout")."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from tokenizer.config import TokenizerConfig
from tokenizer.evaluate import run_evaluation
from tokenizer.pretrained import Tokenizer


def rfid_metrics(tok: Tokenizer, cfg: TokenizerConfig, dataset: Dataset, progress: bool = True) -> dict[str, Any]:
    """``{"rfid", "rfid_examples"}``: the FID of ``tok``'s reconstructions of the eval split
    against the originals, over ``cfg.eval.max_examples`` images."""
    # only when asked for: `hqvae eval-tokenizer` without --rfid starts without torch-fidelity
    from sampling.metrics.image_fid import reconstruction_fid

    r = reconstruction_fid(tok, cfg.data, cfg.data.eval_split, max_examples=cfg.eval.max_examples,
                           batch_size=cfg.eval.batch_size, dataset=dataset, progress=progress)
    return {"rfid": r["rfid"], "rfid_examples": r["examples"]}


def run_tokenizer_evaluation(tok: Tokenizer, cfg: TokenizerConfig, dataset: Dataset, out_dir: Path,
                             progress: bool = True, rfid: bool = False) -> dict[str, Any]:
    """``run_evaluation``; ``rfid`` adds the FID of the reconstructions against the
    originals (images only) to the metrics and ``eval.json``."""
    if rfid and cfg.data.resolved_modality != "image":
        raise ValueError("rfid: reconstruction FID needs an image tokenizer (this one is audio)")
    extra = (lambda: rfid_metrics(tok, cfg, dataset, progress)) if rfid else None
    return run_evaluation(tok, cfg, dataset, out_dir, progress=progress, extra=extra)
