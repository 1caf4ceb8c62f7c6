"""Residual stacks of quantizers (RQ-VAE / RSQ-VAE) and the builder the models use."""

from __future__ import annotations

import torch
from torch import nn

from engine.config import ConfigError
from tokenizer.quantizer_config import DEPTH_RANGE, QuantizerConfig, check_codebook, check_int
from tokenizer.quantizers.base import FiniteInputCheck, QuantizerOutput, _from_map, _to_map
from tokenizer.quantizers.sq import StochasticQuantizer
from tokenizer.quantizers.vq import VectorQuantizer


def build_quantizer(codebook_size: int, dim: int, cfg: QuantizerConfig) -> nn.Module:
    """One layer's quantizer in the toolkit's models. It checks for NaN / inf on the host in
    evaluation only (check_finite='eval'), where encoding and metrics read every batch on the
    host anyway: in training, train.nan_policy decides what a non-finite step does, without
    a host sync per step (docs/reliability.md, section 6)."""
    q = (VectorQuantizer if cfg.kind == "vq" else StochasticQuantizer)(dim, codebook_size, cfg)
    q.check_finite = "eval"
    return q


def run_log_variance(log_vars: list[torch.Tensor]) -> torch.Tensor:
    """log sum_l sigma_l^2: the variance of a residual run's continuous term. The
    dequantisation noise of the depths adds up (HQ-VAE, Takida et al. 2024), so the run
    has one term, ||target - sum_l z_l||^2 / (2 sum_l sigma_l^2), at its last depth."""
    return torch.logsumexp(torch.stack(log_vars), 0)


class ResidualQuantizer(FiniteInputCheck):
    """A residual stack (RQ-VAE / RSQ-VAE): depth l quantizes what depths < l left over,
    r_l = z - sum_{j<l} z_j, and the output is sum_l z_l.

    * ``kind='vq'``: every depth commits the input to its running sum (RQ-VAE's cumulative
      commitment, beta ||z - sg(sum_{j<=l} z_j)||^2), one straight-through for the sum.
    * ``kind='sq'``: every depth's posterior uses its own sigma_l^2 on its residual and has
      its discrete term; one continuous term for the stack (:func:`run_log_variance`).

    Codes come back with a last axis of depths: (B, H, W, depth) or (B, N, depth).
    Options as for :class:`VectorQuantizer` / :class:`StochasticQuantizer`, shared by all
    depths (each has its own codebook)."""

    def __init__(self, dim: int, codebook_size: int, depth: int, kind: str = "sq",
                 cfg: QuantizerConfig | None = None, **options):
        super().__init__()
        depth = check_int("depth", depth, DEPTH_RANGE)
        if kind not in ("vq", "sq"):
            raise ConfigError(f"kind: 'vq' or 'sq', got {kind!r}")
        codebook_size, dim = check_codebook(codebook_size, dim, dim_key="dim")
        cls = VectorQuantizer if kind == "vq" else StochasticQuantizer
        self.kind, self.D = kind, dim
        self.depths = nn.ModuleList(cls(dim, codebook_size, cfg, **options) for _ in range(depth))
        for q in self.depths:
            # the stack checks its input once (check_finite of the stack); a depth's input is
            # that input minus finite codewords, and a host read per depth would cost depth syncs
            q.check_finite = "never"

    def set_total_steps(self, total: int) -> None:
        if self.kind == "sq":
            for q in self.depths:
                q.set_total_steps(total)

    def forward(self, z: torch.Tensor, step: int | torch.Tensor = 0) -> QuantizerOutput:
        self._check_type(z)
        z, sequence = _to_map(z, self.D)
        self._refuse_nonfinite(z)
        z = z.float()
        state = torch.zeros_like(z)
        outs: list[QuantizerOutput] = []
        last = len(self.depths) - 1
        for i, q in enumerate(self.depths):
            if self.kind == "vq":
                # depths after the first see z - sg(state) and add sg(z_i): the first depth's
                # straight-through carries the gradient of the sum once
                out = q(z - (state.detach() if i else state), step)
                state = state + (out.z_q.detach() if i else out.z_q)
            else:
                if i == last and last:
                    q.seed_from(z - state)  # the summed variance below reads its sigma^2
                    term = run_log_variance([d.log_variance() for d in self.depths])
                else:
                    term = None
                out = q(z - state, step, continuous=i == last, continuous_log_var=term)
                state = state + out.z_q
            outs.append(out)
        losses = {f"d{i}/{name}": v for i, o in enumerate(outs) for name, v in o.losses.items()}
        codes = torch.stack([o.codes for o in outs], dim=-1)
        result = QuantizerOutput(state, codes, losses, torch.stack([o.counts for o in outs]))
        return _from_map(result) if sequence else result

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, H, W, depth) -> sum of codewords (B, D, H, W)."""
        return sum(q.lookup(codes[..., i]) for i, q in enumerate(self.depths))
