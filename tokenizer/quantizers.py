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

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError
from tokenizer.config import (
    DEPTH_RANGE,
    ConfigTypeError,
    QuantizerConfig,
    check_codebook,
    check_int,
    check_number,
)


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


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    # DDP syncs gradients, not buffers: codebook statistics must be summed over processes
    # so every process applies the identical EMA update.
    if _distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def _broadcast(t: torch.Tensor) -> torch.Tensor:
    if _distributed():
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

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, H, W) -> codewords (B, D, H, W)."""
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

    def forward(self, z: torch.Tensor, step: int | torch.Tensor = 0) -> QuantizerOutput:
        self._check_type(z)
        z, sequence = _to_map(z, self.D)
        self._refuse_nonfinite(z)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = _flatten(z)
            if self._needs_seed():
                self._seed(flat.detach())
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

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        return F.embedding(codes, self.codebook).permute(0, 3, 1, 2)

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
        self._check_type(z)
        z, sequence = _to_map(z, self.D)
        self._refuse_nonfinite(z)
        b = z.shape[0]
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            flat = _flatten(z)
            if self._needs_seed():
                self._seed(flat.detach())
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
