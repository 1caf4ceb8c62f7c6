"""What every quantizer shares: the output record, input checks, the first-batch state,
distances and the collectives that keep codebook state identical across processes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError
from tokenizer.quantizer_config import ConfigTypeError, QuantizerConfig


@dataclass
class QuantizerOutput:
    z_q: torch.Tensor  # (B, D, H, W) or (B, N, D) as the input: what the decoder sees
    codes: torch.Tensor  # (B, H, W) or (B, N) long (residual stacks: a last axis of depths)
    losses: dict[str, torch.Tensor]  # scalar loss terms (already weighted)
    counts: torch.Tensor  # (K,) code histogram of this batch (float, no grad)

    @property
    def loss(self) -> torch.Tensor:
        """The sum of every loss term: what to add to a training objective."""
        return sum(self.losses.values(), torch.zeros((), device=self.z_q.device))

    def __iter__(self):
        # quantized, indices, loss = quantizer(x)
        return iter((self.z_q, self.codes, self.loss))


def resolve_config(kind: str, cfg: QuantizerConfig | None, options: dict) -> QuantizerConfig:
    """A quantizer's config: ``cfg`` as given, or built from keyword ``options`` (the fields
    of QuantizerConfig); either way validated, so incompatible options fail here."""
    if cfg is not None and not isinstance(cfg, QuantizerConfig):
        raise ConfigTypeError(f"cfg: expected a QuantizerConfig, got {type(cfg).__name__}")
    if cfg is not None and options:
        raise ConfigError(f"give a QuantizerConfig or keyword options, not both (got {sorted(options)})")
    if cfg is None:
        known = set(QuantizerConfig.__dataclass_fields__) - {"kind"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown quantizer option(s) {unknown}; known: {sorted(known)}")
        cfg = QuantizerConfig(kind=kind, **options)
    elif cfg.kind != kind:
        raise ConfigError(f"kind: this quantizer is {kind!r}, the config says {cfg.kind!r}")
    cfg.validate()
    return cfg


class NonFiniteInputError(ValueError):
    """A quantizer was handed NaN or inf values; nothing was quantized and no state changed."""


class FiniteInputCheck(nn.Module):
    """The input checks every public quantizer shares.

    ``check_finite`` says which calls read on the host whether their input is finite (one
    device sync per call, before any work) and refuse NaN / inf with
    :class:`NonFiniteInputError`:

    * ``'always'`` (the default of a quantizer you construct): every call, training or not.
      Unchecked, a NaN is silent: every such vector gets code 0, and one EMA update spreads
      it to every codeword for good. In a run of several processes the process that saw
      it stops, and the launcher ends the others.
    * ``'eval'``: evaluation calls only. What the toolkit's own models use (see
      :func:`build_quantizer`): their trainer handles a NaN loss by ``train.nan_policy``
      (stop naming the step, or withhold the step) and adds no per-step host sync for it,
      so a training call leaves the NaN to reach the loss. Set it on a quantizer of your own
      that trains under that trainer, for the same behaviour.
    * ``'never'``: no host read at all; NaN goes through to the output and the losses.

    Without the host read (training under 'eval', 'never', and while torch.compile traces,
    where a host read would break the graph) a non-finite training batch still updates no
    codebook state: the updates are masked on the device, with every process agreeing.
    """

    _check_finite = "always"
    CHECK_FINITE = ("always", "eval", "never")

    @property
    def check_finite(self) -> str:
        return self._check_finite

    @check_finite.setter
    def check_finite(self, value: str) -> None:
        if value not in self.CHECK_FINITE:
            raise ValueError(f"check_finite: one of {', '.join(map(repr, self.CHECK_FINITE))}, got {value!r}")
        self._check_finite = value

    def _check_type(self, z) -> None:
        if not torch.is_tensor(z):
            kind = type(z)
            name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
            hint = " (torch.from_numpy(x).float() converts it)" if kind.__module__ == "numpy" else ""
            raise TypeError(f"{type(self).__name__}: expected a floating-point torch.Tensor, got {name}{hint}")
        if not z.is_floating_point():
            # an integer or bool tensor is not a vector of features: casting it would quantize
            # something other than what was meant, without a word
            raise TypeError(f"{type(self).__name__}: expected a floating-point torch.Tensor, got a "
                            f"{z.dtype} tensor (convert it with .float() if it really holds features)")

    def _refuse_nonfinite(self, z: torch.Tensor) -> None:
        mode = self._check_finite
        if mode == "never" or (mode == "eval" and self.training) or torch.compiler.is_compiling():
            return
        if bool(torch.isfinite(z).all()):  # the one host sync of the check
            return
        nan, inf = int(torch.isnan(z).sum()), int(torch.isinf(z).sum())
        raise NonFiniteInputError(
            f"{type(self).__name__}: the input holds {nan + inf} non-finite values ({nan} NaN, "
            f"{inf} inf) of {z.numel()}; nothing was quantized and no codebook state changed")


def _nonfinite_count(flat: torch.Tensor) -> torch.Tensor:
    """How many values of ``flat`` are NaN or inf, as a (1,) float tensor on the device."""
    return (~torch.isfinite(flat)).sum().float().reshape(1)


def _to_map(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, bool]:
    """(B, D, H, W) as it is, or (B, N, D) as the map (B, D, N, 1); True for a sequence."""
    if z.dim() == 4 and z.shape[1] == dim:
        return z, False
    if z.dim() == 3 and z.shape[2] == dim:
        return z.transpose(1, 2).unsqueeze(-1), True
    raise ValueError(f"quantizer input: expected (B, {dim}, H, W) or (B, N, {dim}), got {tuple(z.shape)}")


def _from_map(out: QuantizerOutput) -> QuantizerOutput:
    # codes (B, N, 1) -> (B, N); a residual stack's (B, N, 1, depth) -> (B, N, depth)
    return QuantizerOutput(out.z_q.squeeze(-1).transpose(1, 2), out.codes.squeeze(2), out.losses, out.counts)


def squared_distances(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """||z||^2 - 2 z B^T + ||b||^2 as one matmul: (N, D) x (K, D) -> (N, K).

    Never materialises an N x K x D tensor.
    """
    return (
        z.pow(2).sum(1, keepdim=True)
        - 2.0 * z @ codebook.t()
        + codebook.pow(2).sum(1).unsqueeze(0)
    ).clamp_min_(0.0)


def code_scores(z: torch.Tensor, codebook: torch.Tensor, scale: float | torch.Tensor = 1.0) -> torch.Tensor:
    """scale * (z . b_k - ||b_k||^2 / 2) for every (n, k): one addmm, (N, D) x (K, D) -> (N, K).

    This is -scale * ||z - b_k||^2 / 2 plus the per-row constant scale * ||z||^2 / 2, which
    argmax and softmax over k ignore: the nearest code and the SQ posterior come out the
    same as from the full distances, with four fewer N x K passes forward and backward.
    """
    bias = codebook.pow(2).sum(1).mul(-0.5 * scale)
    return torch.addmm(bias, z * scale, codebook.t())


def _flatten(z: torch.Tensor) -> torch.Tensor:
    b, d, h, w = z.shape
    return z.permute(0, 2, 3, 1).reshape(b * h * w, d)


def _unflatten(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    b, d, h, w = shape
    return flat.reshape(b, h, w, d).permute(0, 3, 1, 2)


def data_parallel() -> bool:
    """Several processes train together (an initialised process group of more than one)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    # DDP syncs gradients, not buffers: codebook statistics must be summed over processes
    # so every process applies the identical EMA update.
    if data_parallel():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if data_parallel():
        dist.broadcast(t, src=0)
    return t


def perplexity(counts: torch.Tensor) -> float:
    """exp(entropy) of a code histogram."""
    p = counts.double() / counts.sum().clamp_min(1)
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))


@torch.no_grad()
def seed_vectors(flat: torch.Tensor, k: int) -> torch.Tensor:
    """``k`` codebook seeds drawn from the vectors ``flat`` (N, D).

    Distinct rows when N >= k: a duplicate seed is a code that never wins. A smaller batch
    is tiled to k rows with Gaussian noise of 0.1 of each channel's spread added, so the
    copies of one vector are still k distinct codes."""
    n = flat.shape[0]
    if n >= k:
        return flat[torch.randperm(n, device=flat.device)[:k]].clone()
    reps = -(-k // n)
    tiled = flat.repeat(reps, 1)[torch.randperm(n * reps, device=flat.device)[:k]]
    spread = flat.std(0, unbiased=False) if n > 1 else flat.abs().reshape(-1)
    return tiled + torch.randn_like(tiled) * 0.1 * spread.clamp_min(1e-6)


class FirstBatchInit(FiniteInputCheck):
    """The state a quantizer takes from its first training batch (``data_init``, and for SQ
    ``var_init_from_data``), remembered in the ``initialised`` buffer so that a resumed or
    loaded model does not seed again.

    Reading that buffer is a host sync: it is read only until it is seen True, then the
    host remembers. The seeding batch itself does not set the host flag: a trainer that
    withholds that step (train.nan_policy=skip) puts the buffer back to False, and the next
    batch must seed again."""

    from_data = False

    def _register_first_batch(self) -> None:
        self.register_buffer("initialised", torch.tensor(False))
        self._initialised_seen = False
        self._seeded_now = False  # seed_from() ran on the batch the next forward quantizes

    def _known_initialised(self) -> bool:
        if not self._initialised_seen:
            self._initialised_seen = bool(self.initialised)
        return self._initialised_seen

    def _load_from_state_dict(self, *args, **kwargs):
        self._initialised_seen = False  # the loaded buffer decides again
        super()._load_from_state_dict(*args, **kwargs)

    def _needs_seed(self) -> bool:
        if not (self.from_data and self.training):
            return False
        if self._seeded_now:  # this batch was seeded by seed_from(); the forward goes on
            self._seeded_now = False
            return False
        return not self._known_initialised()

    @torch.no_grad()
    def _seed(self, flat: torch.Tensor) -> None:
        """Take this layer's data-dependent state from ``flat`` (N, D), the same on every
        process (rank 0's draw); a batch with a NaN or inf on any process seeds nothing
        (decided on the device) and the next batch seeds instead."""
        finite = (_all_reduce_sum(_nonfinite_count(flat)) == 0).reshape(())
        self._seed_state(flat, finite)
        self.initialised.copy_(finite)

    def _seed_state(self, flat: torch.Tensor, finite: torch.Tensor) -> None:
        raise NotImplementedError

    def _checked_map(self, z) -> tuple[torch.Tensor, bool]:
        """The input as a (B, D, H, W) map after the checks every call starts with, and
        whether it came as a (B, N, D) sequence."""
        self._check_type(z)
        z, sequence = _to_map(z, self.D)
        self._refuse_nonfinite(z)
        return z, sequence

    def _float_rows(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The map in float32 and its rows (N, D); the first training batch seeds here."""
        z = z.float()
        flat = _flatten(z)
        if self._needs_seed():
            self._seed(flat.detach())
        return z, flat

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, H, W) -> codewords (B, D, H, W)."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)
