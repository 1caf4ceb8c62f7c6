"""Deterministic vector quantization."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.quantizer_config import QuantizerConfig, check_codebook
from tokenizer.quantizers.base import (
    FirstBatchInit,
    QuantizerOutput,
    _all_reduce_sum,
    _broadcast,
    _from_map,
    _nonfinite_count,
    _unflatten,
    code_scores,
    resolve_config,
    seed_vectors,
)


class VectorQuantizer(FirstBatchInit):
    """Deterministic VQ with straight-through gradients (van den Oord et al., 2017).

    Options (each off unless configured):
      * ``ema``: codebook = EMA of assigned encoder vectors (Razavi et al., 2019);
        the codebook gets no gradient and the codebook loss term is dropped.
        ``ema_count_init`` sets the initial cluster sizes (0, VQ-VAE-2's reference, or 1).
      * ``restart_threshold``: codes whose EMA usage falls below it are re-seeded from
        random encoder vectors of the batch (dead-code restart, as in Dhariwal et al. 2020 /
        Zeghidour et al. 2021).
      * ``data_init``: the first training batch seeds the codebook with encoder vectors.

    A batch with a NaN or inf is refused (see :class:`FiniteInputCheck`).
    """

    def __init__(self, dim: int, codebook_size: int, cfg: QuantizerConfig | None = None, **options):
        super().__init__()
        codebook_size, dim = check_codebook(codebook_size, dim, dim_key="dim")
        cfg = resolve_config("vq", cfg, options)
        self.K, self.D, self.cfg = codebook_size, dim, cfg
        if cfg.ema:
            # VQ-VAE-2's EMA codebook starts from a unit Gaussian, with zero counts unless
            # ema_count_init says otherwise (ema_sum = count * codeword keeps the codebook)
            init = torch.randn(codebook_size, dim)
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.full((codebook_size,), float(cfg.ema_count_init)))
            self.register_buffer("ema_sum", init * (cfg.ema_count_init or 1.0))
        else:
            # VQ-VAE's codebook loss version starts uniform in +-1/K
            init = torch.empty(codebook_size, dim).uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
            self.codebook = nn.Parameter(init)
        if cfg.restart_threshold > 0:
            self.register_buffer("usage", torch.ones(codebook_size))
        self.from_data = cfg.data_init
        if cfg.data_init:
            self._register_first_batch()

    def _seed_state(self, flat: torch.Tensor, finite: torch.Tensor) -> None:
        new = _broadcast(seed_vectors(flat, self.K))
        self.codebook.data.copy_(torch.where(finite, new, self.codebook.data))
        if self.cfg.ema:
            self.ema_sum.copy_(torch.where(finite, new, self.ema_sum))
            self.ema_count.copy_(torch.where(finite, torch.ones_like(self.ema_count), self.ema_count))

    @torch.no_grad()
    def _ema_update(self, flat: torch.Tensor, onehot: torch.Tensor, counts: torch.Tensor,
                    finite: torch.Tensor) -> None:
        """``counts``: the batch's code counts over every process; ``finite``: whether its
        values were, on every process (else nothing changes: one NaN row turns every code's
        sum into NaN, as 0 * NaN is NaN in the matmul)."""
        cfg = self.cfg
        sums = _all_reduce_sum(onehot.t() @ flat)
        # written as copy_(a * d + b * (1 - d)), not mul_(d).add_(b, alpha=1 - d): torch 2.13's
        # inductor (CPU) miscompiles the latter when b is a matmul result used nowhere else
        # (ema_sum came out ~20x too large; eager and aot_eager were right), which made
        # train.compile=true diverge on every EMA preset
        self.ema_count.copy_(torch.where(
            finite, self.ema_count * cfg.ema_decay + counts * (1 - cfg.ema_decay), self.ema_count))
        self.ema_sum.copy_(torch.where(
            finite, self.ema_sum * cfg.ema_decay + sums * (1 - cfg.ema_decay), self.ema_sum))
        n = self.ema_count.sum()
        # Laplace smoothing keeps never-used codes from dividing by zero
        smoothed = (self.ema_count + cfg.ema_eps) / (n + self.K * cfg.ema_eps) * n
        # the codebook too: before the first update it is not ema_sum / smoothed
        self.codebook.copy_(torch.where(finite, self.ema_sum / smoothed.unsqueeze(1), self.codebook))

    @torch.no_grad()
    def _restart_dead(self, flat: torch.Tensor, counts: torch.Tensor, finite: torch.Tensor) -> None:
        cfg = self.cfg
        self.usage.copy_(torch.where(  # see _ema_update
            finite, self.usage * cfg.usage_decay + counts * (1 - cfg.usage_decay), self.usage))
        # a non-finite batch restarts nothing: its candidates could be NaN
        dead = (self.usage < cfg.restart_threshold) & finite
        dead = _broadcast(dead.to(torch.uint8)).bool()
        # every code draws a candidate and only dead ones take it: selecting exactly the
        # dead rows would need their count on the host, a device sync every training step
        idx = torch.randint(0, flat.shape[0], (self.K,), device=flat.device)
        new = _broadcast(flat[idx].clone())
        mask = dead.unsqueeze(1)
        self.codebook.data.copy_(torch.where(mask, new, self.codebook.data))
        if cfg.ema:
            self.ema_sum.copy_(torch.where(mask, new, self.ema_sum))
            self.ema_count.masked_fill_(dead, 1.0)
        self.usage.masked_fill_(dead, 1.0)

    def forward(self, z: torch.Tensor, step: int | torch.Tensor = 0) -> QuantizerOutput:
        z, sequence = self._checked_map(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z, flat = self._float_rows(z)
            codebook = self.codebook.float()
            codes = code_scores(flat.detach(), codebook.detach()).argmax(1)
            onehot = F.one_hot(codes, self.K).type_as(flat)
            counts = onehot.sum(0).detach()
            z_q = _unflatten(F.embedding(codes, codebook), z.shape)
            losses = {"commitment": self.cfg.beta * F.mse_loss(z, z_q.detach())}
            if not self.cfg.ema:
                losses["codebook"] = F.mse_loss(z_q, z.detach())
            if self.training and (self.cfg.ema or self.cfg.restart_threshold > 0):
                # the batch's code counts and its number of non-finite values, summed over
                # the processes in one collective: every process takes the same decision
                stats = _all_reduce_sum(torch.cat([counts, _nonfinite_count(flat.detach())]))
                total, finite = stats[:-1], stats[-1] == 0
                if self.cfg.ema:
                    self._ema_update(flat.detach(), onehot, total, finite)
                if self.cfg.restart_threshold > 0:
                    self._restart_dead(flat.detach(), total, finite)
            # straight-through: forward value z_q, gradient to the encoder as identity
            out = z + (z_q - z).detach()
        result = QuantizerOutput(out, codes.view(z.shape[0], *z.shape[2:]), losses, counts)
        return _from_map(result) if sequence else result
