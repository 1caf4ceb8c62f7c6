"""The HQ-VAE hierarchy (Takida et al., TMLR 2024): one implementation for every preset.

Bottom-up: the encoder yields features Ĥ_f at each code-grid factor f.
Top-down, from H_0 = 0 at the coarsest grid, layer by layer (top = coarsest first):

* injected layer  (VQ-VAE-2 / SQ-VAE-2):  U = up(H_{l-1});  ẑ_l = g_l([Ĥ_f, U]);
  z_l = Q_l(ẑ_l);  H_l = h_l([U, z_l])  (model.injection='concat'), or H_l = U + z_l with
  the state in codebook space ('add', as the public port of the HQ-VAE authors' code)
* residual layer  (RQ-VAE / RSQ-VAE):     ẑ_l = p(Ĥ_f) - H_{l-1};  z_l = Q_l(ẑ_l);
  H_l = H_{l-1} + z_l. With SQ, depth l's posterior uses its own sigma_l^2 on its residual
  and every depth has its discrete term, but the dequantisation noise of the depths adds
  up (p(Ĥ_f) ≈ sum_l z_l + noise of variance sum_l sigma_l^2), so a run of consecutive
  residual layers has one continuous term, ||p(Ĥ_f) - H_L||^2 / (2 sum_l sigma_l^2), at its
  last depth (HQ-VAE, Takida et al. 2024, the residual top-down path). One term
  per depth instead pulls every partial sum toward p(Ĥ_f) and each sigma_l^2 up, which
  left the early depths broad and barely used (docs/benchmarks.md, "HQ-VAE objective").
  With VQ, every depth commits the encoder to its running sum, beta ||p(Ĥ_f) - sg(H_l)||^2,
  as RQ-VAE does (Lee et al., 2022). With VQ, H_{l-1} of a residual layer below another at the same grid already holds p's
  straight-through (H = p + sg(...)), so p - H_{l-1} would carry no gradient and the
  layer's commitment would pull on nothing: those layers see ẑ_l = p - sg(H_{l-1}) and add
  sg(z_l), making the commitment beta ||p - sg(H_l)||^2 and the straight-through happen
  once.

The decoder maps H_L to the reconstruction. A single residual layer is plain VQ-VAE /
SQ-VAE (H_0 = 0 makes ẑ = p(Ĥ)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.config import ModelConfig
from tokenizer.nets import net_entry, net_options, res_stack, upsampler
from tokenizer.nets.checkpointing import Checkpointed
from tokenizer.quantizers import QuantizerOutput, build_quantizer, run_log_variance


@dataclass
class ForwardOutput:
    recon: torch.Tensor
    quant: list[QuantizerOutput]


def code_projection(c_in: int, c_out: int, norm: str) -> nn.Module:
    """The 1x1 conv that makes a quantizer's input, batch-normalised when asked.

    The normalisation's epsilon is far below BatchNorm's default 1e-5: at initialisation the
    coarsest features vary by ~1e-5 across positions (the stacked default-initialised convs
    shrink them), and an epsilon of that size would leave them far below unit scale."""
    conv = nn.Conv2d(c_in, c_out, 1)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out, eps=1e-8)) if norm == "batch" else conv


class TopDownLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int, prev_factor: int | None):
        super().__init__()
        layer = cfg.layers[index]
        self.kind, self.factor = layer.kind, layer.factor
        self.is_last = index == len(cfg.layers) - 1
        prev_layer = cfg.layers[index - 1] if index > 0 else None
        # VQ residual layer refining the residual layer above it (module docstring)
        self.detach_state = (layer.kind == "residual" and cfg.quantizer.kind == "vq" and prev_layer is not None
                             and prev_layer.kind == "residual" and prev_layer.factor == layer.factor)
        cs = cfg.resolved_state_channels
        # up(H_{l-1}): transposed convs when the previous state is on a coarser grid
        ratio = (prev_factor or layer.factor) // layer.factor
        self.up = upsampler(cs, cs, ratio) if ratio > 1 else nn.Identity()
        self.additive = layer.kind == "injected" and cfg.injection == "add"
        if self.additive:
            self.g = nn.Sequential(nn.Conv2d(cfg.channels + cs, cfg.channels, 3, padding=1), nn.ReLU(),
                                   code_projection(cfg.channels, layer.codebook_dim, cfg.code_norm))
        elif layer.kind == "injected":
            self.g = code_projection(cfg.channels + cs, layer.codebook_dim, cfg.code_norm)
            h = [nn.Conv2d(cs + layer.codebook_dim, cs, 3, padding=1)]
            if not self.is_last:  # the decoder has its own residual blocks after the last
                h.append(res_stack(cs, cfg.res_channels, cfg.res_blocks, cfg.norm))
            self.h = nn.Sequential(*h)
        self.quantizer = build_quantizer(layer.codebook_size, layer.codebook_dim, cfg.quantizer)

    def encoder_input(self, feat: torch.Tensor, u: torch.Tensor, proj: nn.Module | None) -> torch.Tensor:
        if self.kind == "injected":
            return self.g(torch.cat([feat, u], dim=1))
        return proj(feat) - (u.detach() if self.detach_state else u)

    def combine(self, u: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.additive:
            return u + z
        if self.kind == "injected":
            return self.h(torch.cat([u, z], dim=1))
        return u + (z.detach() if self.detach_state else z)


class HQVAE(nn.Module):
    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, int, int]):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.in_shape = tuple(in_shape)
        c, h, w = in_shape
        factors = [la.factor for la in cfg.layers]
        self.state_channels = cs = cfg.resolved_state_channels
        self.encoder, self.decoder = net_entry(cfg.net).build(
            cfg, net_options(cfg.net, cfg.net_options, factors), c, factors, cs)
        layers, prev = [], None
        for i, la in enumerate(cfg.layers):
            layers.append(TopDownLayer(cfg, i, prev))
            prev = la.factor
        self.layers = nn.ModuleList(layers)
        # one 1x1 projection of Ĥ_f into state space per factor that has residual layers
        # (consecutive residual layers share it: they all refine the same target)
        self.proj = nn.ModuleDict(
            {
                str(f): code_projection(cfg.channels, cs, cfg.code_norm)
                for f in sorted({la.factor for la in cfg.layers if la.kind == "residual"})
            }
        )
        # residual runs: maximal sequences of layers that add codewords to one state on one
        # grid: consecutive residual layers (one grid each, as validated), headed under
        # injection='add' by the injected layer they refine (its state is up(H) + z, so its
        # noise adds up with theirs; the public port of HQ-VAE's code groups them the same
        # way, a term at the last layer before each change of grid). With SQ, a run's
        # continuous term sits at its last layer, with the variance summed over the run;
        # every other layer keeps its own term.
        self.residual_runs: list[list[int]] = []
        for i, la in enumerate(cfg.layers):
            if la.kind != "residual":
                if cfg.injection == "add":
                    self.residual_runs.append([i])  # a run of one unless residual layers follow
                continue
            if self.residual_runs and self.residual_runs[-1][-1] == i - 1:
                self.residual_runs[-1].append(i)
            else:
                self.residual_runs.append([i])
        self.monotone = cfg.quantizer.kind == "sq" and cfg.quantizer.variance == "monotone"
        if self.monotone:
            # deeper layers store a_l with sigma_l^2 = sigma_{l-1}^2 * sigmoid(a_l); a_l = 0 halves it
            for layer in list(self.layers)[1:]:
                layer.quantizer.log_var.data.fill_(0.0)

    # -- shapes ---------------------------------------------------------------------------
    @property
    def code_shapes(self) -> list[tuple[int, int]]:
        _, h, w = self.in_shape
        return [(h // la.factor, w // la.factor) for la in self.cfg.layers]

    @property
    def codebook_sizes(self) -> list[int]:
        return [la.codebook_size for la in self.cfg.layers]

    @property
    def is_stochastic(self) -> bool:
        return self.cfg.quantizer.kind == "sq"

    def _h0(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        """H_0 = 0 on the coarsest grid, on ``like``'s device and dtype."""
        hh, ww = self.code_shapes[0]
        return like.new_zeros(batch, self.state_channels, hh, ww)

    def log_variances(self) -> list[torch.Tensor]:
        """log sigma_l^2 per SQ layer (applying the monotone parameterisation)."""
        out: list[torch.Tensor] = []
        for i in range(len(self.layers)):
            out.append(self._log_variance(i, out))
        return out

    def _log_variance(self, i: int, above: list[torch.Tensor]) -> torch.Tensor:
        """log sigma_i^2 given those of the layers above it (monotone: relative to i - 1)."""
        p = self.layers[i].quantizer.log_variance()
        return above[-1] + F.logsigmoid(p) if self.monotone and i > 0 else p

    def continuous_term(self, i: int, log_vars: list[torch.Tensor]) -> tuple[bool, torch.Tensor | None]:
        """Whether SQ layer ``i`` carries a continuous term, and that term's log variance
        (None: the layer's own); ``log_vars`` holds those of layers 0..i at least. The last
        depth of a residual run takes log sum_l sigma_l^2 over the run; its other depths
        take none."""
        run = next((r for r in self.residual_runs if i in r), [i])
        if i != run[-1]:
            return False, None
        return True, run_log_variance([log_vars[j] for j in run]) if len(run) > 1 else None

    # -- passes ---------------------------------------------------------------------------
    def run(self, x: torch.Tensor, step: int | torch.Tensor = 0) -> ForwardOutput:
        """Encode, quantize every layer top-down, decode."""
        state, quant = self.quantize(x, step)
        return ForwardOutput(self.decoder(state), quant)

    def quantize(self, x: torch.Tensor, step: int | torch.Tensor = 0) -> tuple[torch.Tensor, list[QuantizerOutput]]:
        """Encoder and the top-down layers: the final state H_L and every layer's output."""
        feats = self.encoder(x)
        state = self._h0(x.shape[0], x)
        quant, log_vars = [], []
        for i, layer in enumerate(self.layers):
            u = layer.up(state)
            z_hat = layer.encoder_input(feats[layer.factor], u, self.proj[str(layer.factor)] if layer.kind == "residual" else None)
            if self.is_stochastic:
                # a layer whose sigma^2 starts from data takes it from the first batch before
                # its variance is read (a no-op after that batch)
                layer.quantizer.seed_from(z_hat)
                log_vars.append(self._log_variance(i, log_vars))
                continuous, term_log_var = self.continuous_term(i, log_vars)
                q = layer.quantizer(z_hat, step, log_vars[i], continuous, term_log_var)
            else:
                q = layer.quantizer(z_hat, step)
            quant.append(q)
            state = layer.combine(u, q.z_q.to(u.dtype))
        return state, quant

    def forward(self, x: torch.Tensor, step: int | torch.Tensor = 0) -> dict[str, torch.Tensor]:
        """Training objective and its parts (all scalars; 'loss' is what is minimised).

        It is ``forward`` so that data-parallel wrappers see the call."""
        return self.objective(x, self.run(x, step))

    def objective(self, x: torch.Tensor, out: ForwardOutput,
                  extra_distortion: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The objective of the pass ``out`` on ``x``. ``extra_distortion`` (a scalar on the
        per-element scale of the MSE, e.g. a weighted perceptual distance) joins the MSE in
        the distortion the decoder's likelihood measures: the SQ objective then takes the log
        of their sum, so the extra term is balanced against the pixels by the same learned
        (ML) decoder variance instead of a hand-set ratio."""
        recon = out.recon.float()
        b = x.shape[0]
        sq_err = (recon - x.float()).pow(2)
        mse = sq_err.mean()
        terms: dict[str, torch.Tensor] = {"mse": mse.detach()}
        if self.is_stochastic:
            # Gaussian decoder with its variance at the ML value (SQ-VAE's ARELBO form):
            # (D_x / 2) * log(sum_batch ||x - x_hat||^2 / B)
            d_x = x[0].numel()
            distortion = sq_err.sum() / b
            if extra_distortion is not None:
                distortion = distortion + d_x * extra_distortion
            rec = 0.5 * d_x * torch.log(distortion)
            # d rec / d (per-element distortion) = D_x^2 / (2 distortion): how much larger this
            # term's gradient is than a per-element mean's (what a scale-free clamp divides by)
            terms["recon_scale"] = (0.5 * d_x * d_x / distortion).detach()
        else:
            rec = mse if extra_distortion is None else mse + extra_distortion
        total = rec
        for i, q in enumerate(out.quant):
            for name, value in q.losses.items():
                terms[f"l{i}/{name}"] = value.detach()
                total = total + value
        terms["recon"] = rec.detach()
        terms["loss"] = total
        return terms

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute the encoder's and decoder's blocks in the backward pass instead of
        storing their activations (train.gradient_checkpointing): less memory, ~30 % more
        compute per step; the gradients are the same."""
        for part in (self.encoder, self.decoder):
            if not isinstance(part, Checkpointed):
                raise TypeError(f"model.net {self.cfg.net!r}: its {type(part).__name__} does not "
                                f"support gradient checkpointing (not a tokenizer.nets Checkpointed)")
            part.gradient_checkpointing = bool(on)

    def set_total_steps(self, total: int) -> None:
        """The run's length in optimizer steps (the trainer calls this before the first step):
        what the SQ temperature schedule 'run' spans."""
        if self.is_stochastic:
            for layer in self.layers:
                layer.quantizer.set_total_steps(total)

    def train_stats(self, step: int) -> dict[str, float]:
        """Cheap per-layer scalars for logging (temperature, sigma^2)."""
        stats: dict[str, float] = {}
        if self.is_stochastic:
            for i, lv in enumerate(self.log_variances()):
                stats[f"l{i}/var"] = float(lv.detach().exp())
            stats["tau"] = self.layers[0].quantizer.temperature(step)
        return stats

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Deterministic codes per layer, top first: list of (B, h_l, w_l) long tensors."""
        was = self.training
        self.eval()
        try:
            # no decoder pass: code extraction only needs the top-down layers
            return [q.codes for q in self.quantize(x)[1]]
        finally:
            self.train(was)

    def decode_codes(self, codes: list[torch.Tensor], depth: int | None = None) -> torch.Tensor:
        """Codes (top first) -> reconstruction. ``depth`` keeps only the first layers;
        the dropped ones must be residual (they then add nothing to the state)."""
        if len(codes) != len(self.layers):
            raise ValueError(f"expected codes for {len(self.layers)} layers, got {len(codes)}")
        depth = len(self.layers) if depth is None else depth
        if not 1 <= depth <= len(self.layers):
            raise ValueError(f"depth must be in [1, {len(self.layers)}], got {depth}")
        for i, (c, shape, k) in enumerate(zip(codes, self.code_shapes, self.codebook_sizes)):
            if tuple(c.shape[1:]) != shape:
                raise ValueError(f"layer {i}: codes of shape {tuple(c.shape[1:])}, expected {shape}")
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= k):
                raise ValueError(f"layer {i}: code values must be in [0, {k})")
        dropped = [i for i in range(depth, len(self.layers)) if self.layers[i].kind != "residual"]
        if dropped:
            raise ValueError(f"cannot drop injected layers {dropped}: only residual depths can be truncated")
        ref = next(self.parameters())
        state = self._h0(codes[0].shape[0], ref)
        for layer, c in zip(list(self.layers)[:depth], codes):
            u = layer.up(state)
            state = layer.combine(u, layer.quantizer.lookup(c.to(ref.device)).to(u.dtype))
        return self.decoder(state)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

