"""The tokenizer's training objective with the optional perceptual and adversarial terms.

:class:`TokenizerObjective` is what the trainer trains when ``loss.*`` turns either on; the
tokenizer itself (its ``model``) is what is exported. One backward pass serves both
players: the generator's adversarial term reads the discriminator through detached
parameters (its gradient reaches the tokenizer only) and the discriminator's loss reads
detached reconstructions (its gradient reaches the discriminator only), so one optimizer
with a parameter group per player, one gradient accumulation, one ``train.nan_policy``
and one checkpoint cover both, and a resumed run continues both exactly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel

from tokenizer.losses.adversarial import (
    PatchDiscriminator,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
)
from tokenizer.losses.config import LossConfig
from tokenizer.losses.perceptual import LPIPS
from tokenizer.quantizers.base import data_parallel as _data_parallel


def _constant(step: int) -> float:
    return 1.0


class TokenizerObjective(nn.Module):
    def __init__(self, model: nn.Module, cfg: LossConfig, in_channels: int, lpips: Optional[LPIPS] = None):
        super().__init__()
        if cfg.perceptual.weight > 0 and lpips is None:
            raise ValueError("loss.perceptual.weight > 0 needs the LPIPS network (tokenizer.losses.load_lpips)")
        self.model, self.cfg = model, cfg
        self.perceptual = lpips if cfg.perceptual.weight > 0 else None
        # the LPIPS weights are constant buffers, the same on every process: DDP would
        # otherwise broadcast all ~59 MB of them before every forward (broadcast_buffers).
        # The hook is private to torch: without it the run is the same, only slower
        ignore = getattr(DistributedDataParallel, "_set_params_and_buffers_to_ignore_for_model", None)
        if self.perceptual is not None and ignore is not None:
            ignore(self, [f"perceptual.{name}" for name, _ in self.perceptual.named_buffers()])
        adv = cfg.adversarial
        self.discriminator = (PatchDiscriminator(in_channels, adv.channels, adv.layers, adv.norm)
                              if adv.weight > 0 else None)
        self._game_on: Optional[bool] = None

    def forward(self, x: torch.Tensor, step: int | torch.Tensor = 0) -> dict[str, torch.Tensor]:
        out = self.model.run(x, step)
        extra = None
        if self.perceptual is not None:
            distance = self.perceptual(out.recon, x).mean()
            extra = self.cfg.perceptual.weight * distance
        terms = self.model.objective(x, out, extra)
        if self.perceptual is not None:
            terms["lpips"] = distance.detach()
        if self.discriminator is not None:
            # a compiled forward is handed the step as a device tensor: whether the game is on
            # comes from the trainer's host-side step (set_step), so no step is read back to
            # the host (and a compiled forward recompiles once, when the game starts)
            on = (self._game_on if torch.is_tensor(step) and self._game_on is not None
                  else int(step) >= self.cfg.adversarial.start_step)
            terms.update(self._adversarial(x, out.recon, terms, on))
        return terms

    def set_step(self, step: int) -> None:
        """The step about to run, from the trainer before each forward (engine/train_forward.py)."""
        self._game_on = step >= self.cfg.adversarial.start_step

    def _adversarial(self, x: torch.Tensor, recon: torch.Tensor, terms: dict, game_on: bool) -> dict[str, torch.Tensor]:
        adv = self.cfg.adversarial
        if not game_on and not _data_parallel():
            # before the game starts a single process skips both players' passes (their
            # terms are not logged either)
            return {}
        # data-parallel training computes both terms before start_step too, weighted 0:
        # every parameter must take part in every step there. idle_parameters keeps the
        # optimizer off the discriminator, and _discriminate its running statistics as
        # they are, so its first real step is a single process's
        on = 1.0 if game_on else 0.0
        # the generator's term reads the discriminator through detached parameters
        g_loss = generator_loss(self._discriminate(recon, on, frozen=True), adv.loss)
        weight = torch.ones((), device=x.device)
        # the SQ objective's reconstruction gradient is recon_scale = D_x / (2 MSE) times a
        # per-element mean's: the clamp is set on the per-element scale, and so is the log
        scale = terms.get("recon_scale", torch.ones((), device=x.device))
        if adv.adaptive_weight and on and torch.is_grad_enabled() and self.training:
            # the quantizer terms do not reach the decoder's last layer: the gradient of the
            # whole objective there is the reconstruction term's
            weight = adaptive_weight(terms["loss"], g_loss, self.model.decoder.last_weight(),
                                     adv.max_adaptive_weight * scale)
        d_loss = discriminator_loss(self._discriminate(x.detach(), on), self._discriminate(recon.detach(), on),
                                    adv.loss)
        terms["loss"] = terms["loss"] + on * adv.weight * weight * g_loss + on * d_loss
        return {"adv/generator": g_loss.detach(), "adv/discriminator": d_loss.detach(),
                "adv/weight": weight.detach() / scale * adv.weight * on}

    def _discriminate(self, x: torch.Tensor, on: float, frozen: bool = False) -> torch.Tensor:
        if on and not frozen:
            return self.discriminator(x)
        state = {name: p.detach() if frozen else p for name, p in self.discriminator.named_parameters()}
        if not on:
            # copies of the buffers: BatchNorm's running statistics do not move before the
            # game starts (the parameters stay the same ones, so DDP sees each one used)
            state.update({name: b.clone() for name, b in self.discriminator.named_buffers()})
        return functional_call(self.discriminator, state, (x,))

    def idle_parameters(self, step: int) -> list[nn.Parameter]:
        """The parameters optimizer step ``step`` leaves alone (engine/trainer.py): the
        discriminator's before ``loss.adversarial.start_step``. A single process gives them no
        gradient then; data-parallel training gives them zeros, which AdamW would count as a
        step (its bias correction would then scale the first real update by up to
        (1 - beta1) / sqrt(1 - beta2), 1.6x at the default betas)."""
        if self.discriminator is None or step >= self.cfg.adversarial.start_step:
            return []
        return list(self.discriminator.parameters())

    def param_groups(self, lr: float) -> list[dict]:
        """The optimizer's parameter groups (engine.optim.build_optimizer): the tokenizer's,
        then the discriminator's with its own learning rate, Adam betas, no weight decay and
        its own schedule (constant, or the run's with schedule 'same')."""
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if self.discriminator is not None:
            adv = self.cfg.adversarial
            groups.append({"params": list(self.discriminator.parameters()), "lr": adv.lr or lr,
                           "betas": (adv.beta1, adv.beta2), "weight_decay": 0.0,
                           "schedule": None if adv.schedule == "same" else _constant})
        return groups

    # what the trainer asks of the model it trains, passed on to the tokenizer
    def set_total_steps(self, total: int) -> None:
        self.model.set_total_steps(total)

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        self.model.set_gradient_checkpointing(on)

    def train_stats(self, step: int) -> dict[str, float]:
        return self.model.train_stats(step)
