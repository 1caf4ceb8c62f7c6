"""One sample set into one folder: the priors and their tokenizer loaded, codes drawn (or,
for the pipeline's baseline, picked uniformly at random), decoded and written with
:func:`sampling.outputs.write_samples`.

`hqvae sample` and the pipeline's ``samples`` / ``random`` stages both go through
:func:`sample_into`, so they read labels the same way, refuse the same settings and record
the same keys in samples.json. Guarding the folder (whose it is, who else writes it) is
the caller's: the CLI locks its ``--out``, the pipeline writes a fresh folder it renames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Optional, Union

import torch

from prior.pretrained import Prior
from sampling.outputs import write_samples
from sampling.sampler import PerLevel, Sampler
from tokenizer.pretrained import Tokenizer

Label = Union[int, str, None]


def class_index(label: Union[int, str], class_names: Optional[Sequence[str]], key: str = "label") -> int:
    """The class id ``label`` names: a class name of the data (e.g. a folder name) or an id."""
    names = list(class_names or [])
    if isinstance(label, str) and label in names:
        return names.index(label)
    try:
        return int(label)
    except ValueError:
        known = f", or a class name: {', '.join(names)}" if names else ""
        raise ValueError(f"{key}: expected a class id, 'cycle'{known}; got {label!r}") from None


def sample_labels(label: Label, n: int, num_classes: Optional[int], class_names: Optional[Sequence[str]] = None,
                  key: str = "label") -> Optional[torch.Tensor]:
    """(n,) labels: None samples with the null label (unconditional); 'cycle' gives balanced
    classes 0, 1, ..., K-1, 0, ...; a class id or class name gives that class to every sample."""
    if label is None:
        return None
    if not num_classes:
        raise ValueError(f"{key}: the prior is not class-conditional")
    if label == "cycle":
        return torch.arange(n) % num_classes
    return torch.full((n,), class_index(label, class_names, key))


def sample_into(
    out: str | Path,
    prior_run: str | Path,
    tokenizer_run: str | Path | None = None,
    *,
    n: int,
    label: Label = None,
    seed: int = 0,
    batch_size: int = 64,
    temperature: PerLevel = 1.0,
    top_k: PerLevel = 0,
    top_p: PerLevel = 1.0,
    cfg_scale: float = 1.0,
    cache: Literal["static", "dynamic", "none"] = "static",
    compile: bool = False,
    grid: int = 64,
    npz: bool = False,
    griffin_lim_iters: Optional[int] = None,
    device: Optional[str] = None,
    random_codes: bool = False,
    label_key: str = "label",
    extra: Optional[dict] = None,
) -> dict:
    """Sample ``n`` examples from the priors in ``prior_run`` into ``out``; returns the
    samples.json record (``extra`` is added to it).

    ``tokenizer_run`` defaults to the one recorded with the priors. ``random_codes`` draws
    every level uniformly instead (the baseline a prior has to beat). ``label_key`` names
    the setting in label errors (``--label`` on the command line)."""
    prior = Prior.from_pretrained(prior_run, device=device)
    tok_run = tokenizer_run or prior.info.get("tokenizer_run")
    if not tok_run:
        raise ValueError(f"{prior_run}: no tokenizer run recorded with the priors; pass --tokenizer RUN")
    if not tokenizer_run and not Path(tok_run).is_dir():
        # the path is the machine's where the priors were trained: gone after a move, a copy
        # or a download (save_pretrained / push_to_hub keep it as a hint, nothing more)
        raise ValueError(
            f"{prior_run}: the tokenizer recorded with the priors ({tok_run}) is not on this machine "
            f"(moved, or the priors were copied or downloaded); pass --tokenizer RUN: the tokenizer "
            f"of identity {prior.tokenizer_identity}")
    tokenizer = Tokenizer.from_pretrained(tok_run, device=device)
    # refuses guidance on a prior that is not class-conditional, naming cfg_scale
    sampler = Sampler(prior, tokenizer, device=device, temperature=temperature, top_k=top_k, top_p=top_p,
                      cfg_scale=cfg_scale, cache=cache, compile=compile)
    labels = None
    if random_codes:
        g = torch.Generator().manual_seed(seed)
        codes = [torch.randint(0, k, (n, h, w), generator=g)
                 for k, (h, w) in zip(prior.codebook_sizes, prior.code_shapes)]
        settings = {"baseline": "uniformly random codes at every level", "seed": seed}
    else:
        labels = sample_labels(label, n, prior.num_classes, prior.class_names, label_key)
        codes = sampler.sample_codes(n, labels=labels, seed=seed, batch_size=batch_size, progress=True)
        settings = {
            "prior_run": str(prior_run), "tokenizer_run": str(tok_run), "seed": seed,
            "batch_size": batch_size, "cfg_scale": cfg_scale, "cache": cache, "compile": compile,
            "label": label, "levels": [vars(s) for s in sampler.settings],
            "sampling_seconds": sampler.stats.seconds, "tokens_per_s": sampler.stats.tokens_per_second,
        }
    decoded = sampler.decode(codes, batch_size=batch_size)
    # guidance 0 samples with the null label whatever the label says: no labels to score against
    return write_samples(out, decoded, codes, labels if cfg_scale != 0 else None, tokenizer, grid=grid,
                         class_names=prior.class_names, settings={**settings, **(extra or {})},
                         griffin_lim_iters=griffin_lim_iters, batch_size=batch_size, npz=npz)
