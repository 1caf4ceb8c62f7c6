"""The quantizer section of a tokenizer config (``model.quantizer``) and the value checks it
shares with the quantizer constructors (tokenizer/quantizers), so that both refuse the same
values with the same words."""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from dataclasses import dataclass
from typing import Literal, get_args, get_origin, get_type_hints

from engine.config import ConfigError

# ---------------------------------------------------------------------------------------
# shared checks: the config loader (model.layers.*, model.depth, model.quantizer.*) and the
# quantizer constructors (tokenizer/quantizers) refuse the same values with the same words

# K = 1 gives every vector the same code; past 2^20 codes the N x K distances of a batch
# outgrow an accelerator's memory (and 1e10 codes of width 8 are a 320 GB codebook)
CODEBOOK_SIZE_RANGE = (2, 2**20)
CODEBOOK_DIM_RANGE = (1, 4096)
# residual depths of one quantizer stack (model.depth of the rqvae / rsqvae presets); past a
# few dozen the later depths quantize rounding noise, and the bound keeps a typo'd depth
# from building millions of layers
DEPTH_RANGE = (1, 64)


class ConfigTypeError(ConfigError, TypeError):
    """A setting of the wrong type: a ConfigError for the CLI's one-line report, and a
    TypeError for Python callers who passed, say, '8' or 8.5 for a count."""


def check_int(key: str, value, bounds: tuple[int, int]) -> int:
    """``value`` as an int in the closed range ``bounds``, else an error naming ``key``.

    bool is refused (True is no size); numpy integers are accepted."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigTypeError(f"{key}: expected an integer, got {value!r}")
    lo, hi = bounds
    if not lo <= value <= hi:
        raise ConfigError(f"{key}: must be in [{lo}, {hi}], got {value}")
    return int(value)


def check_number(key: str, value) -> float:
    """``value`` as a finite float, else an error naming ``key``: a NaN would pass every
    ``x < 0`` check after it, and an inf reaches the codebook as inf or NaN."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigTypeError(f"{key}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}: expected a finite number, got {value!r}")
    return float(value)


def check_codebook(codebook_size, dim, dim_key: str = "codebook_dim") -> tuple[int, int]:
    """K and D of one codebook, checked against the bounds above; the constructors name
    the codebook width ``dim``, configs ``codebook_dim``."""
    return (check_int("codebook_size", codebook_size, CODEBOOK_SIZE_RANGE),
            check_int(dim_key, dim, CODEBOOK_DIM_RANGE))


@functools.cache
def _hints(cls: type) -> dict:
    return get_type_hints(cls)


def check_field_types(obj) -> None:
    """The types of a config dataclass's int / float / bool / Literal fields.

    The loader has checked them already; a dataclass built in Python (QuantizerConfig(beta='0.3'),
    or the keyword options of a quantizer constructor) has not, and its range checks
    would otherwise fail with a raw comparison error or, for a NaN, pass."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value = hints[f.name], getattr(obj, f.name)
        if tp is float:
            check_number(f.name, value)
        elif tp is int:
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigTypeError(f"{f.name}: expected an integer, got {value!r}")
        elif tp is bool:
            if not isinstance(value, bool):
                raise ConfigTypeError(f"{f.name}: expected true/false, got {value!r}")
        elif get_origin(tp) is Literal:
            options = get_args(tp)
            if not any(value == o and type(value) is type(o) for o in options):
                raise ConfigError(f"{f.name}: {value!r} is not one of {' | '.join(map(repr, options))}")


@dataclass
class QuantizerConfig:
    kind: Literal["vq", "sq"] = "sq"  # vq: deterministic nearest code; sq: stochastic (Gumbel-softmax) quantization
    # --- deterministic VQ (VQ-VAE / VQ-VAE-2 / RQ-VAE) ---
    beta: float = 0.25  # commitment weight
    ema: bool = False  # EMA codebook instead of a codebook loss
    ema_decay: float = 0.99  # decay of the EMA codebook statistics
    ema_eps: float = 1e-5  # Laplace smoothing of EMA cluster sizes
    # initial EMA cluster size of every code. 0 is VQ-VAE-2's reference (rosinality): the
    # first update divides each unused code by ~ema_eps, so it jumps ~1e5x away and is never
    # picked again. 1 (as vector-quantize-pytorch) keeps unused codes in place, then lets
    # them decay toward the origin, where they can be picked again (docs/benchmarks.md)
    ema_count_init: float = 0.0
    restart_threshold: float = 0.0  # re-seed codes whose EMA usage falls below this; 0 = off
    usage_decay: float = 0.99  # EMA decay of the per-code usage that restarts look at
    data_init: bool = False  # initialise the codebook from the first training batch (vq and sq)
    # --- stochastic SQ (SQ-VAE / HQ-VAE family) ---
    # initial sigma^2. SQ-VAE uses ~20 for D=64 with its batch-normalised encoder, whose
    # outputs are unit-scale; ours start ~0.07 per element against a unit-Gaussian codebook,
    # and on CIFAR-10 sigma^2 = 1 learns fast where 20 (and 0.1) collapse (docs/benchmarks.md)
    var_init: float = 1.0
    # > 0: sigma^2 starts at this multiple of the variance of the first training batch's
    # quantizer input (per channel, averaged), per SQ layer and residual depth; var_init is
    # then unused. The public minimal-sqvae (yukara-ikemiya) starts at 5 times it
    var_init_from_data: float = 0.0
    # independent: each layer learns log sigma^2 freely. monotone: s_l^2 = s_{l-1}^2 *
    # sigmoid(a_l). bounded: sigma^2 = 2 sigmoid(p) sigma_0^2 with sigma_0^2 its start, so it
    # can never exceed twice its start (as minimal-sqvae)
    variance: Literal["independent", "monotone", "bounded"] = "independent"
    # log sigma^2 = var_lr_scale * s with s the stored parameter: under Adam, whose steps are
    # ~lr whatever the gradient's size, log sigma^2 then moves var_lr_scale times faster
    # than the other weights (10 measured worse on CIFAR-10: docs/benchmarks.md, "HQ-VAE objective")
    var_lr_scale: float = 1.0
    # Gumbel temperature. 'exp' is SQ-VAE's per-step decay, tau = max(tau_init *
    # exp(-tau_decay * step), tau_min), tuned there for ~150k steps (at a few thousand it
    # never anneals). 'run' spans the run whatever its length: tau goes geometrically from
    # tau_init at step 0 to tau_end at the last step (train.steps / epochs), so the soft
    # codes the decoder trains on end close to the hard codes it is scored on
    tau_schedule: Literal["exp", "run"] = "exp"
    tau_init: float = 1.0  # temperature at step 0
    tau_decay: float = 1e-5  # 'exp' only
    tau_min: float = 0.0  # 'exp' only
    tau_end: float = 0.1  # 'run' only

    def validate(self) -> None:
        check_field_types(self)
        if self.kind == "sq":
            vq_only = {
                "ema": self.ema,
                "restart_threshold": self.restart_threshold > 0,
                "ema_count_init": self.ema_count_init != 0,
            }
            for key, on in vq_only.items():
                if on:
                    raise ConfigError(f"{key}: applies to kind 'vq' only, not 'sq'")
            if self.var_init_from_data and self.variance == "monotone":
                raise ConfigError("var_init_from_data: a 'monotone' variance sets every layer's sigma^2 "
                                  "relative to the first; use variance 'independent' or 'bounded'")
        else:
            if self.variance != "independent":
                raise ConfigError(f"variance: {self.variance!r} applies to kind 'sq' only")
            if self.var_lr_scale != 1.0:
                raise ConfigError("var_lr_scale: applies to kind 'sq' only")
            if self.var_init_from_data:
                raise ConfigError("var_init_from_data: applies to kind 'sq' only")
        if self.ema_count_init < 0:
            raise ConfigError(f"ema_count_init: must be >= 0, got {self.ema_count_init}")
        if self.ema_count_init and not self.ema:
            raise ConfigError("ema_count_init: applies to the EMA codebook only (set ema=true)")
        if self.beta < 0:
            raise ConfigError(f"beta: must be >= 0, got {self.beta}")
        if self.ema_eps <= 0:
            # the Laplace smoothing is what keeps a never-used code from dividing by zero
            raise ConfigError(f"ema_eps: must be > 0, got {self.ema_eps}")
        if not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay: must be in (0, 1), got {self.ema_decay}")
        if not 0.0 < self.usage_decay < 1.0:
            raise ConfigError(f"usage_decay: must be in (0, 1), got {self.usage_decay}")
        if self.restart_threshold < 0:
            raise ConfigError(f"restart_threshold: must be >= 0, got {self.restart_threshold}")
        if self.var_init <= 0:
            raise ConfigError(f"var_init: must be > 0, got {self.var_init}")
        if not 0 <= self.var_init_from_data <= 1e6:
            raise ConfigError(f"var_init_from_data: must be in [0, 1e6] (0 = off), got {self.var_init_from_data}")
        if not 0 < self.var_lr_scale <= 1000:
            raise ConfigError(f"var_lr_scale: must be in (0, 1000], got {self.var_lr_scale}")
        if self.tau_init <= 0:
            raise ConfigError(f"tau_init: must be > 0, got {self.tau_init}")
        if self.tau_decay < 0:
            raise ConfigError(f"tau_decay: must be >= 0, got {self.tau_decay}")
        if self.tau_min < 0:
            raise ConfigError(f"tau_min: must be >= 0, got {self.tau_min}")
        if not 0 < self.tau_end <= self.tau_init:
            raise ConfigError(f"tau_end: must be in (0, tau_init={self.tau_init}], got {self.tau_end}")
