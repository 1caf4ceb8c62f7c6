"""hqvae: two-stage generative modelling with hierarchical discrete codes.

The toolkit's Python API in one place::

    from hqvae import Tokenizer, Prior, Sampler, compute_fid

Names are imported on first use (PEP 562), so ``import hqvae`` and ``hqvae --help`` do not
pay for torch, transformers or torch-fidelity until something needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it
_EXPORTS = {
    # stage one: tokenizers
    "Tokenizer": "tokenizer.pretrained",
    "HQVAE": "tokenizer.model",
    "TokenizerConfig": "tokenizer.config",
    "load_tokenizer_config": "tokenizer.config",
    "train_tokenizer": "tokenizer.train",
    "evaluate_tokenizer": "tokenizer.evaluate",
    "VectorQuantizer": "tokenizer.quantizers",
    "StochasticQuantizer": "tokenizer.quantizers",
    "ResidualQuantizer": "tokenizer.quantizers",
    "QuantizerConfig": "tokenizer.config",
    "build_dataset": "tokenizer.data",
    # stage two: codes and priors
    "encode_split": "prior.codes",
    "CodesDataset": "prior.codes",
    "Prior": "prior.pretrained",
    "PriorConfig": "prior.config",
    "load_prior_config": "prior.config",
    "train_prior": "prior.train",
    # sampling and evaluation
    "Sampler": "sampling.sampler",
    "SamplingSettings": "sampling.settings",
    "sample_into": "sampling.sample_set",
    "write_samples": "sampling.outputs",
    "compute_fid": "sampling.metrics.image_fid",
    "score_folder": "sampling.metrics.image_fid",
    "audio_fid": "sampling.metrics.audio_fid",
    "Classifier": "sampling.classifier.model",
    "AudioClassifier": "sampling.classifier.model",
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("hqvae")
        except PackageNotFoundError:
            return "0+unknown"
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hqvae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__

