"""Quantizers: deterministic VQ, stochastic SQ, and residual stacks of either.

Usable on their own, on any tensor of vectors::

    vq = VectorQuantizer(dim=64, codebook_size=512, ema=True)
    sq = StochasticQuantizer(dim=64, codebook_size=512, var_init=1.0, tau=0.5)
    quantized, indices, loss = sq(x)        # x: (B, D, H, W) maps or (B, N, D) sequences
    out = sq(x); out.losses                 # the loss terms by name

Every option is a keyword of :class:`tokenizer.config.QuantizerConfig` (off by default;
incompatible ones are refused at construction). The tokenizer builds the same classes from
its config. A :class:`QuantizerOutput` holds the vector the decoder sees (in the layout of
the input), the code indices ((B, H, W) or (B, N)), a dict of loss terms, their sum and the
code histogram of the batch. All of their math runs in float32, even under autocast: bf16
distances and EMA statistics are a known source of NaNs and drifting codebooks.

Input they cannot quantize is refused, not guessed at: anything but a floating-point tensor
is a TypeError, and a NaN or inf is a :class:`NonFiniteInputError` (a ValueError) raised
before any state (EMA statistics, usage counts, a data-initialised codebook) is touched.
That check reads the device once per call; ``check_finite`` (see :class:`FiniteInputCheck`)
says where it runs. Whatever it says, a training batch with a NaN or inf updates no codebook
state: such a batch reaches the loss as NaN, where the training loop sees it.
"""

from tokenizer.quantizers.base import (
    FiniteInputCheck,
    FirstBatchInit,
    NonFiniteInputError,
    QuantizerOutput,
    code_scores,
    perplexity,
    resolve_config,
    seed_vectors,
    squared_distances,
)
from tokenizer.quantizers.residual import ResidualQuantizer, build_quantizer, run_log_variance
from tokenizer.quantizers.sq import StochasticQuantizer
from tokenizer.quantizers.vq import VectorQuantizer

__all__ = [
    "FiniteInputCheck", "FirstBatchInit", "NonFiniteInputError", "QuantizerOutput", "ResidualQuantizer",
    "StochasticQuantizer", "VectorQuantizer", "build_quantizer", "code_scores", "perplexity",
    "resolve_config", "run_log_variance", "seed_vectors", "squared_distances",
]
