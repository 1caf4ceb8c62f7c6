"""One level's prior: a causal transformer from ``transformers`` over that level's codes,
conditioned on every level above it and, optionally, on the class label.

Sequence layout for a level with N = h * w codes (``order`` permutes the grid)::

    input position   0        1        ...   N-1
    input embedding  start    e(x_0)   ...   e(x_{N-2})     (+ cond_0 .. cond_{N-1})
    predicts         x_0      x_1      ...   x_{N-1}

``start`` is the class embedding (class-conditional; the extra last row is the null class
used for classifier-free guidance) or a learned vector; ``label_every_position`` also adds
the class embedding to every position's input. ``cond_i`` comes from the
non-causal conditioning network that sees all upper levels, brought to this level's grid,
and is aligned with the code it helps predict (docs/guides/priors.md).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from prior.backbones import get_backbone, transformers_class
from prior.codes import level_column
from prior.config import LevelModelConfig


def sequence_order(shape: tuple[int, int], order: str) -> torch.Tensor:
    """Sequence position -> index into the raster-flattened (h, w) grid."""
    h, w = shape
    grid = torch.arange(h * w).view(h, w)
    if order == "raster":
        return grid.flatten()
    if order == "column":
        return grid.t().flatten()
    raise ValueError(f"order: unknown token order {order!r}")


class _ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(F.gelu(x))))


class ConditionNet(nn.Module):
    """Embeds each upper level's codes, brings them to this level's grid (nearest
    upsampling for injected layers, identity for residual depths), sums them and mixes
    them with non-causal convolutions. Output: (B, out_dim, h, w)."""

    def __init__(self, upper_sizes: list[int], upper_shapes: list[tuple[int, int]],
                 shape: tuple[int, int], channels: int, blocks: int, out_dim: int):
        super().__init__()
        self.upper_shapes = [tuple(s) for s in upper_shapes]
        self.shape = tuple(shape)
        self.embeds = nn.ModuleList(nn.Embedding(k, channels) for k in upper_sizes)
        self.blocks = nn.Sequential(*[_ResBlock(channels) for _ in range(blocks)])
        self.out = nn.Conv2d(channels, out_dim, 1)

    def forward(self, upper: list[torch.Tensor]) -> torch.Tensor:
        x = None
        for codes, embed, (h, w) in zip(upper, self.embeds, self.upper_shapes):
            e = embed(codes.reshape(codes.shape[0], h, w)).permute(0, 3, 1, 2)
            if (h, w) != self.shape:
                e = F.interpolate(e, size=self.shape, mode="nearest")
            x = e if x is None else x + e
        return self.out(F.gelu(self.blocks(x)))


def build_backbone(cfg: LevelModelConfig, positions: int) -> nn.Module:
    """A ``transformers`` decoder of kind ``cfg.arch`` (prior/backbones.py), used through
    ``inputs_embeds`` (its token table is unused)."""
    backbone = get_backbone(cfg.arch)
    common = dict(vocab_size=1, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    inner = max(1, round(cfg.mlp_ratio * cfg.n_embd))
    config = backbone.make_config(cfg, positions, inner, **common)
    config._attn_implementation = "sdpa"
    model = transformers_class(backbone.model)(config)
    # frozen, so neither the optimizer nor DDP's unused-parameter check sees it
    getattr(model, backbone.token_table).weight.requires_grad_(False)
    return model


class LevelPrior(nn.Module):
    def __init__(
        self,
        cfg: LevelModelConfig,
        level: int,
        code_shapes: list[tuple[int, int]],
        codebook_sizes: list[int],
        num_classes: Optional[int] = None,
        label_dropout: float = 0.0,
        label_every_position: bool = False,
    ):
        super().__init__()
        if not 0 <= level < len(codebook_sizes):
            raise ValueError(f"level {level}: the codes have levels 0..{len(codebook_sizes) - 1}")
        self.cfg = cfg
        self.level = level
        self.shape = tuple(code_shapes[level])
        self.codebook_size = int(codebook_sizes[level])
        self.length = self.shape[0] * self.shape[1]
        self.num_classes = num_classes
        self.label_dropout = label_dropout
        if label_every_position and not num_classes:
            raise ValueError("label_every_position: needs a class-conditional prior (num_classes)")
        self.label_every_position = label_every_position
        d = cfg.n_embd
        self.tok_emb = nn.Embedding(self.codebook_size, d)
        if num_classes:
            self.class_emb = nn.Embedding(num_classes + 1, d)  # row num_classes: null class
        else:
            self.start = nn.Parameter(torch.zeros(1, 1, d))
        self.cond = None
        if level > 0:
            self.cond = ConditionNet(
                list(codebook_sizes[:level]), [tuple(s) for s in code_shapes[:level]], self.shape,
                cfg.cond_channels, cfg.cond_blocks, d,
            )
        # dropout on the inputs, unless the backbone applies its own there
        self.in_drop = nn.Dropout(0.0 if get_backbone(cfg.arch).embeds_dropout else cfg.dropout)
        self.backbone = build_backbone(cfg, self.length)
        self.head = nn.Linear(d, self.codebook_size, bias=False)
        self.register_buffer("order", sequence_order(self.shape, cfg.order), persistent=False)
        self._init_own()

    def _init_own(self) -> None:
        for module in (self.tok_emb, getattr(self, "class_emb", None)):
            if module is not None:
                nn.init.normal_(module.weight, std=0.02)
        if hasattr(self, "start"):
            nn.init.normal_(self.start, std=0.02)
        nn.init.normal_(self.head.weight, std=0.02)

    # -- pieces a sampler drives step by step ----------------------------------------------
    @property
    def class_conditional(self) -> bool:
        return bool(self.num_classes)

    @property
    def null_label(self) -> int:
        if not self.num_classes:
            raise ValueError("this prior is not class-conditional")
        return self.num_classes

    def check_labels(self, labels: torch.Tensor) -> None:
        bad = (labels < 0) | (labels > self.num_classes)
        if bool(bad.any()):
            raise ValueError(
                f"label {int(labels[bad][0])} is out of range: this prior knows classes "
                f"0..{self.num_classes - 1} (and {self.num_classes} = unconditional)"
            )

    def condition(
        self, upper: list[torch.Tensor], labels: Optional[torch.Tensor], batch: int,
        check_labels: bool = True,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(start embedding (B, 1, d), conditioning (B, N, d) in sequence order or None).

        ``upper``: the codes of levels 0..level-1, each (B, h_j * w_j) raster-flattened
        or (B, h_j, w_j).
        ``labels``: (B,) class ids (``null_label`` = unconditional); required when the
        prior is class-conditional, ignored otherwise. ``check_labels=False`` skips their
        range check (a host sync), for labels already checked (training data).
        """
        if len(upper) != self.level:
            raise ValueError(f"level {self.level} needs the codes of {self.level} upper levels, got {len(upper)}")
        if self.num_classes:
            if labels is None:
                raise ValueError("this prior is class-conditional: pass labels (null_label for none)")
            if check_labels:
                self.check_labels(labels)
            start = self.class_emb(labels)[:, None]
        else:
            start = self.start.expand(batch, -1, -1)
        cond = None
        if self.cond is not None:
            c = self.cond(upper)  # (B, d, h, w)
            cond = c.flatten(2).transpose(1, 2)[:, self.order]
        if self.label_every_position:  # start is the class embedding (B, 1, d)
            cond = start.expand(-1, self.length, -1) if cond is None else cond + start
        return start, cond

    def to_sequence(self, grid_flat: torch.Tensor) -> torch.Tensor:
        """Raster-flattened codes (B, N) -> sequence order."""
        return grid_flat[:, self.order]

    def to_grid(self, seq: torch.Tensor) -> torch.Tensor:
        """Sequence-order codes (B, N) -> raster-flattened grid order."""
        out = torch.empty_like(seq)
        out[:, self.order] = seq
        return out

    # -- teacher-forced pass --------------------------------------------------------------
    def logits(
        self, codes: torch.Tensor, upper: list[torch.Tensor], labels: Optional[torch.Tensor] = None,
        check_labels: bool = True,
    ) -> torch.Tensor:
        """Next-token logits (B, N, K) in sequence order for this level's ``codes``, given
        raster-flattened (B, N) or as grids (B, h, w) like ``Tokenizer.encode`` returns."""
        codes = codes.flatten(1)
        if codes.shape[1] != self.length:
            raise ValueError(f"level {self.level}: expected {self.length} codes per example, got {codes.shape[1]}")
        start, cond = self.condition(upper, labels, codes.shape[0], check_labels)
        seq = self.to_sequence(codes)
        inputs = torch.cat([start, self.tok_emb(seq[:, :-1])], dim=1)
        if cond is not None:
            inputs = inputs + cond
        hidden = self.backbone(inputs_embeds=self.in_drop(inputs), use_cache=False).last_hidden_state
        return self.head(hidden)

    def forward(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        codes = batch[level_column(self.level)]
        upper = [batch[level_column(j)] for j in range(self.level)]
        labels = None
        if self.num_classes:
            labels = batch.get("label")  # None: condition() explains what is missing
            if labels is not None and self.training and self.label_dropout > 0:
                drop = torch.rand(labels.shape, device=labels.device) < self.label_dropout
                labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        # the training data's labels were range-checked once when training began
        logits = self.logits(codes, upper, labels, check_labels=False)
        target = self.to_sequence(codes)
        # float32 softmax: bf16 logits lose the small probabilities the NLL is made of
        loss = F.cross_entropy(logits.float().reshape(-1, self.codebook_size), target.reshape(-1))
        return {"loss": loss, "bits_per_token": loss.detach() / math.log(2)}

    def set_gradient_checkpointing(self, on: bool = True) -> None:
        """Recompute the transformer's layers in the backward pass instead of storing their
        activations (train.gradient_checkpointing): at 1024 tokens a level those dominate
        training memory. The gradients are the same."""
        if on:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.backbone.gradient_checkpointing_disable()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)
