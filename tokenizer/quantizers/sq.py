"""Gaussian stochastic quantization (SQ-VAE)."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError
from tokenizer.quantizer_config import QuantizerConfig, check_codebook, check_int, check_number
from tokenizer.quantizers.base import (
    FirstBatchInit,
    QuantizerOutput,
    _broadcast,
    _flatten,
    _from_map,
    _to_map,
    _unflatten,
    code_scores,
    resolve_config,
    seed_vectors,
)


class StochasticQuantizer(FirstBatchInit):
    """Gaussian stochastic quantization (SQ-VAE, Takida et al., 2022).

    Posterior over codes P_k ∝ exp(-||z - b_k||^2 / (2 sigma^2)) with learned sigma^2.
    Training decodes the Gumbel-softmax mixture of codewords (no straight-through);
    evaluation and encoding take the argmax code. Loss terms are summed over positions
    (and codes / channels) and averaged over the batch only: averaging over positions
    too makes them ~H*W times too weak, the usual cause of collapse in re-implementations.

    Options (each off unless configured):
      * ``data_init``: the first training batch seeds the codebook with its vectors (see
        :func:`seed_vectors`), as VQ's data_init.
      * ``var_init_from_data``: sigma^2 starts at this multiple of the first training
        batch's variance (per channel, averaged over channels) instead of ``var_init``.
      * ``variance='bounded'``: sigma^2 = 2 sigmoid(p) sigma_0^2 with sigma_0^2 its start,
        so it can never exceed twice its start (unbounded, log sigma^2 learns freely).
    The three are the recipe of a public SQ-VAE by one of the HQ-VAE authors
    (yukara-ikemiya/minimal-sqvae: start 5x the data's variance, bounded, codebook from data).
    """

    def __init__(self, dim: int, codebook_size: int, cfg: QuantizerConfig | None = None,
                 tau: float | None = None, **options):
        """``tau`` is a constant Gumbel temperature (shorthand for tau_init=tau, tau_decay=0)."""
        super().__init__()
        codebook_size, dim = check_codebook(codebook_size, dim, dim_key="dim")
        if tau is not None:
            if check_number("tau", tau) <= 0:
                raise ConfigError(f"tau: must be > 0, got {tau}")
            clash = sorted(k for k in options if k.startswith("tau_"))
            if clash or cfg is not None:
                raise ConfigError(f"tau: a constant temperature; do not also give {clash or 'a config'}")
            options.update(tau_init=tau, tau_decay=0.0)
        cfg = resolve_config("sq", cfg, options)
        self.K, self.D, self.cfg = codebook_size, dim, cfg
        # SQ-VAE initialises its codebook with a unit Gaussian
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))
        self.bounded = cfg.variance == "bounded"
        if self.bounded:
            # sigma_0^2, the start of a bounded variance (var_init, or from the first batch);
            # the stored parameter is p / var_lr_scale, and p = 0 is sigma_0^2
            self.register_buffer("var_start", torch.tensor(float(cfg.var_init)))
            self.log_var = nn.Parameter(torch.zeros(()))
        else:
            # the stored parameter is log sigma^2 / var_lr_scale (see log_variance)
            self.log_var = nn.Parameter(torch.tensor(math.log(cfg.var_init) / cfg.var_lr_scale))
        self.from_data = cfg.data_init or cfg.var_init_from_data > 0
        if self.from_data:
            self._register_first_batch()
        self.total_steps: int | None = None  # set_total_steps; what tau_schedule='run' spans
        self._warned_no_length = False

    def log_variance(self) -> torch.Tensor:
        """This layer's own log sigma^2."""
        p = self.log_var * self.cfg.var_lr_scale
        if self.bounded:
            return F.logsigmoid(p) + torch.log(2.0 * self.var_start)
        return p

    def seed_from(self, z: torch.Tensor) -> None:
        """On the first training batch, take the data-dependent state (``data_init``,
        ``var_init_from_data``) from ``z``, the input the next forward call quantizes; a
        no-op otherwise. Forward does this itself: a caller that reads sigma^2 before the
        forward (a residual stack's summed variance, the hierarchy's variances) calls it
        first, so that the first step already uses the seeded sigma^2."""
        if self._needs_seed():
            z, _ = _to_map(z, self.D)
            self._seed(_flatten(z.detach().float()))
            self._seeded_now = True

    def _seed_state(self, flat: torch.Tensor, finite: torch.Tensor) -> None:
        cfg = self.cfg
        if cfg.data_init:
            new = _broadcast(seed_vectors(flat, self.K))
            self.codebook.data.copy_(torch.where(finite, new, self.codebook.data))
        if cfg.var_init_from_data > 0:
            start = _broadcast(flat.var(0, unbiased=False).mean().clamp_min(1e-12) * cfg.var_init_from_data)
            if self.bounded:
                self.var_start.copy_(torch.where(finite, start, self.var_start))
            else:
                self.log_var.data.copy_(torch.where(finite, start.log() / cfg.var_lr_scale, self.log_var.data))

    def set_total_steps(self, total: int) -> None:
        """The run's length in optimizer steps, which tau_schedule='run' spans."""
        self.total_steps = check_int("total", total, (1, 2**62))

    def temperature(self, step: int | torch.Tensor) -> float | torch.Tensor:
        """'exp': tau_init * exp(-tau_decay * step), floored at tau_min; 'run': tau_init *
        (tau_end / tau_init) ** (step / (total_steps - 1)), tau_end from the last step on.

        ``step`` may be a 0-d tensor (the trainer passes one under train.compile): a Python
        number here would be baked into the compiled graph and recompile it every step.
        """
        cfg = self.cfg
        if cfg.tau_schedule == "run":
            if self.total_steps is None:
                # a training loop of the user's own that never said how long it runs
                if not self._warned_no_length:
                    warnings.warn("tau_schedule='run' without the run's length: the temperature "
                                  "stays at tau_init until set_total_steps(n) is called (the "
                                  "toolkit's trainer calls it)", stacklevel=3)
                    self._warned_no_length = True
                return cfg.tau_init if not torch.is_tensor(step) else torch.tensor(cfg.tau_init)
            # log tau falls linearly from log tau_init (step 0) to log tau_end (the last step)
            rate = math.log(cfg.tau_end / cfg.tau_init) / max(self.total_steps - 1, 1)
            if torch.is_tensor(step):
                return (cfg.tau_init * torch.exp(rate * step.double())).clamp_min(cfg.tau_end).float()
            return max(cfg.tau_init * math.exp(rate * step), cfg.tau_end)
        if torch.is_tensor(step):
            return (cfg.tau_init * torch.exp(-cfg.tau_decay * step.double())).clamp_min(cfg.tau_min).float()
        return max(cfg.tau_init * math.exp(-cfg.tau_decay * step), cfg.tau_min)

    def forward(
        self, z: torch.Tensor, step: int | torch.Tensor = 0, log_var: torch.Tensor | None = None,
        continuous: bool = True, continuous_log_var: torch.Tensor | None = None,
    ) -> QuantizerOutput:
        """``log_var`` replaces this layer's own log sigma^2 (monotone parameterisation).

        ``continuous=False`` leaves out the Gaussian dequantisation term: a residual depth
        that is not the last of its run on one grid has none of its own (HQ-VAE's residual
        path has one term per run, see tokenizer/model.py). ``continuous_log_var`` is the
        log variance of that term where it differs from the posterior's: log sum_l sigma_l^2
        at the last depth of a residual run.
        """
        z, sequence = self._checked_map(z)
        b = z.shape[0]
        with torch.autocast(device_type=z.device.type, enabled=False):
            z, flat = self._float_rows(z)
            codebook = self.codebook.float()
            log_var = (self.log_variance() if log_var is None else log_var).float()
            precision = torch.exp(-log_var)
            # -||z - b_k||^2 / (2 sigma^2) up to a per-position constant (see code_scores)
            logits = code_scores(flat, codebook, precision)
            log_probs = F.log_softmax(logits, dim=1)
            probs = log_probs.exp()
            codes = logits.argmax(1)
            if self.training:
                # Gumbel noise as -log(-log U): on CPU ~4x faster than the exponential
                # sampler F.gumbel_softmax uses, and identical in distribution
                u = torch.rand_like(logits).clamp_min_(1e-10)
                gumbel = u.log_().neg_().log_().neg_()
                weights = torch.softmax((logits + gumbel) / self.temperature(step), dim=1)
                z_q_flat = weights @ codebook
            else:
                z_q_flat = F.embedding(codes, codebook)
            z_q = _unflatten(z_q_flat, z.shape)
            losses = {
                # sum_n sum_k P log P: KL to the uniform prior up to the constant log K
                "kl_discrete": (probs * log_probs).sum() / b,
            }
            if continuous:
                # Gaussian dequantisation term sum_n ||z - z_tilde||^2 / (2 sigma^2)
                term_precision = precision if continuous_log_var is None else torch.exp(-continuous_log_var.float())
                losses["kl_continuous"] = 0.5 * term_precision * (z - z_q).pow(2).sum() / b
            # not bincount: its output size depends on the data, which breaks a compiled graph
            counts = torch.zeros(self.K, device=codes.device).index_add_(
                0, codes, torch.ones_like(codes, dtype=torch.float32))
        result = QuantizerOutput(z_q, codes.view(b, *z.shape[2:]), losses, counts)
        return _from_map(result) if sequence else result

    def variance(self) -> torch.Tensor:
        return self.log_variance().detach().exp()
