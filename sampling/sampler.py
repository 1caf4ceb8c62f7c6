"""Ancestral sampling down the code hierarchy, then decoding through the tokenizer.

Level 0 is drawn from its prior; every next level is drawn given all levels above it
(and the label), one token per step with a key/value cache, so a step costs one token's
forward pass rather than a re-run of the prefix. Per level: temperature, top-k, top-p.
Class-conditional priors take a classifier-free guidance scale s: logits = u + s (c - u),
with u the null-label and c the labelled logits (Ho & Salimans, 2022); s = 1 is plain
conditional sampling, s = 0 unconditional.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import torch
from tqdm.auto import tqdm

from prior.model import LevelPrior
from prior.pretrained import Prior
from sampling.settings import (
    SamplingSettings,
    check_cache,
    check_cfg_scale,
    check_temperature,
    check_top_k,
    check_top_p,
)

PerLevel = Union[float, int, Sequence, None]


def batch_rows(n: int, batch_size: int) -> int:
    """Rows of every batch when ``n`` samples are drawn at most ``batch_size`` at a time:
    ceil(n / number of batches), so the batches are as equal as they can be."""
    return -(-n // -(-n // batch_size))


@dataclass
class CodeBatch:
    """One batch of :meth:`Sampler.code_batches`: samples ``start`` .. ``start + len - 1``."""

    index: int  # the batch number b (its generator is seeded seed * 1_000_003 + b)
    start: int  # the first sample's index in the set
    codes: list[torch.Tensor]  # one (rows, h_l, w_l) int64 grid per level, on the CPU
    labels: Optional[torch.Tensor]  # (rows,) labels drawn with (None: unconditional prior)

    def __len__(self) -> int:
        return self.codes[0].shape[0]


@dataclass
class LevelSettings:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # keep the k most likely codes; 0 = all
    top_p: float = 1.0  # keep the smallest set with probability >= top_p; 1 = all

    def validate(self, level: int) -> None:
        check_temperature(self.temperature, f"temperature for level {level}")
        check_top_k(self.top_k, f"top_k for level {level}")
        check_top_p(self.top_p, f"top_p for level {level}")


@dataclass
class SampleStats:
    tokens: int = 0
    seconds: float = 0.0
    per_level_seconds: dict[int, float] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / max(self.seconds, 1e-9)


def _per_level(name: str, value: PerLevel, num_levels: int, default) -> list:
    """A scalar (every level), a sequence (one per level) or a {level: value} mapping."""
    if value is None:
        return [default] * num_levels
    if isinstance(value, dict):
        out = [default] * num_levels
        for level, v in value.items():
            if not (isinstance(level, int) and 0 <= level < num_levels):
                raise ValueError(f"{name}: unknown level {level!r}; the prior has levels 0..{num_levels - 1}")
            out[level] = v
        return out
    if isinstance(value, (list, tuple)):
        if len(value) != num_levels:
            raise ValueError(f"{name}: {len(value)} values for a prior with {num_levels} levels")
        return list(value)
    return [value] * num_levels


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Set the logits outside the top-k / nucleus to -inf (always keeps the best code)."""
    if top_k and top_k < logits.shape[-1]:
        # exactly k codes, ties at the k-th value included only up to k: top_k=1 is greedy
        vals, idx = torch.topk(logits, top_k, dim=-1)
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, vals)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a code when the codes ranked above it already reach top_p
        drop = probs.cumsum(-1) - probs >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def draw(logits: torch.Tensor, settings: LevelSettings, generator: torch.Generator) -> torch.Tensor:
    """One code per row of ``logits`` (B, K)."""
    logits = logits.float()
    if settings.temperature == 0:
        return logits.argmax(-1)
    # shifted so the best code sits at 0: a tiny temperature then sends the rest to -inf
    # instead of overflowing every logit to inf (whose softmax is NaN)
    logits = logits - logits.amax(-1, keepdim=True)
    logits = filter_logits(logits / settings.temperature, settings.top_k, settings.top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator)[:, 0]


class Sampler:
    """Samples codes from a :class:`Prior` and decodes them with the matching tokenizer.

    ``temperature`` / ``top_k`` / ``top_p``: one value for every level, a list with one per
    level, or a {level: value} mapping. ``cfg_scale``: classifier-free guidance scale for
    class-conditional priors.

    ``cache``: ``"static"`` (default) preallocates every level's keys / values once per
    batch size and writes each step in place, so a step has fixed shapes and addresses;
    ``"dynamic"`` is transformers' growing cache; ``"none"`` re-runs the prefix at every step
    (for checking and benchmarking). All three draw the same codes from the same seed.
    ``compile=True`` (static cache only) runs each level's one-token step through
    ``torch.compile``; the first batch pays the compilation. ``compile_mode`` defaults to
    ``"reduce-overhead"`` (CUDA graphs: a one-token step is launch-bound) on a GPU and to
    ``"default"`` elsewhere.
    """

    def __init__(
        self,
        prior: Prior,
        tokenizer=None,
        *,
        temperature: PerLevel = 1.0,
        top_k: PerLevel = 0,
        top_p: PerLevel = 1.0,
        cfg_scale: float = 1.0,
        cache: Literal["static", "dynamic", "none"] = "static",
        compile: bool = False,
        compile_mode: Optional[str] = None,
        device: Union[str, torch.device, None] = None,
    ):
        self.prior = prior
        self.num_levels = len(prior.codebook_sizes)
        missing = [lv for lv in range(self.num_levels) if lv not in prior.levels]
        if missing:
            raise ValueError(f"the prior has no trained weights for level(s) {missing}")
        if tokenizer is not None:
            prior.check_tokenizer(tokenizer)
        self.tokenizer = tokenizer
        temps = _per_level("temperature", temperature, self.num_levels, 1.0)
        ks = _per_level("top_k", top_k, self.num_levels, 0)
        ps = _per_level("top_p", top_p, self.num_levels, 1.0)
        self.settings = [LevelSettings(float(t), int(k), float(p)) for t, k, p in zip(temps, ks, ps)]
        for level, s in enumerate(self.settings):
            s.validate(level)
        check_cfg_scale(cfg_scale)
        if cfg_scale != 1.0 and not prior.num_classes:
            raise ValueError("cfg_scale: classifier-free guidance needs a class-conditional prior")
        # the null label is only a model of unconditional codes if training dropped labels to it
        self._no_null = sorted(lv for lv, m in prior.levels.items() if m.num_classes and not m.label_dropout)
        if cfg_scale != 1.0 and self._no_null:
            raise ValueError(
                f"cfg_scale: guidance needs the unconditional (null-label) model, which levels "
                f"{self._no_null} never trained (label_dropout=0); use cfg_scale=1 or retrain with label_dropout > 0")
        self.cfg_scale = float(cfg_scale)
        check_cache(cache, compile)
        if compile_mode not in (None, "default", "reduce-overhead", "max-autotune"):
            raise ValueError(f"compile_mode: expected 'default', 'reduce-overhead' or 'max-autotune', got {compile_mode!r}")
        if compile_mode is not None and not compile:
            raise ValueError(f"compile_mode: {compile_mode!r} needs compile=True")
        self.cache = cache
        self.compile = compile
        self._static: dict[tuple[int, int], object] = {}  # (level, rows) -> StaticCache
        self._steps: dict[int, object] = {}  # level -> (compiled) one-token step
        self.device = torch.device(device) if device is not None else next(
            iter(prior.levels.values())).head.weight.device
        prior.to(self.device)
        self.compile_mode = compile_mode or ("reduce-overhead" if self.device.type == "cuda" else "default")
        if tokenizer is not None:
            tokenizer.model.to(self.device)
        self.stats = SampleStats()

    @classmethod
    def from_settings(cls, prior: Prior, tokenizer, settings: SamplingSettings,
                      device: Union[str, torch.device, None] = None) -> Sampler:
        """A sampler drawing as ``settings`` say (their temperature, top-k, top-p, guidance
        scale, cache and compilation; the counts are the caller's)."""
        return cls(prior, tokenizer, temperature=settings.temperature, top_k=settings.top_k,
                   top_p=settings.top_p, cfg_scale=settings.cfg_scale, cache=settings.cache,
                   compile=settings.compile, device=device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # -- labels ---------------------------------------------------------------------------
    def labels_for(self, n: int, labels: Union[int, Sequence[int], torch.Tensor, None]) -> Optional[torch.Tensor]:
        """(n,) label tensor (the null class when ``labels`` is None), or None for an
        unconditional prior."""
        classes = self.prior.num_classes
        if not classes:
            if labels is not None:
                raise ValueError("labels: this prior is not class-conditional")
            return None
        if labels is None:
            if self._no_null:
                raise ValueError(
                    f"labels: sampling without labels needs the unconditional (null-label) model, "
                    f"which levels {self._no_null} never trained (label_dropout=0); give labels "
                    "(on the command line: --label N or --label cycle)")
            return torch.full((n,), classes, dtype=torch.long)
        out = torch.as_tensor(labels, dtype=torch.long).flatten()
        if out.numel() == 1:
            out = out.expand(n).clone()
        if out.numel() != n:
            raise ValueError(f"labels: {out.numel()} labels for {n} samples")
        bad = (out < 0) | (out >= classes)
        if bool(bad.any()):
            raise ValueError(f"label {int(out[bad][0])} is out of range: the prior has classes 0..{classes - 1}")
        return out

    # -- one level ------------------------------------------------------------------------
    @torch.no_grad()
    def sample_level(self, level: int, upper: list[torch.Tensor], labels: Optional[torch.Tensor],
                     generator: torch.Generator, batch: int) -> torch.Tensor:
        """Codes (B, N) of ``level`` in raster-grid order, given the codes of the levels above
        (each (B, h_j, w_j) or (B, N_j)) and the labels (None for an unconditional prior)."""
        model: LevelPrior = self.prior.levels[level]
        settings = self.settings[level]
        guided = labels is not None and self.cfg_scale not in (0.0, 1.0)
        if labels is not None and self.cfg_scale == 0.0:
            labels = torch.full_like(labels, model.null_label)  # s = 0: exactly unconditional
        if guided:  # conditional and null-label rows in one batch
            upper = [torch.cat([u, u]) for u in upper]
            labels = torch.cat([labels, torch.full_like(labels, model.null_label)])
        start, cond = model.condition(upper, labels, 2 * batch if guided else batch)
        # an unconditional prior's start is an expanded view of its parameter: it keeps
        # requires_grad even under no_grad and has a 0 batch stride, so the compiled step's
        # first call would be traced for such an input and compiled again at the second
        start = start.detach().contiguous()

        def step_input(i: int, tokens: Optional[torch.Tensor]) -> torch.Tensor:
            x = start if i == 0 else model.tok_emb(tokens)[:, None]
            return x if cond is None else x + cond[:, i : i + 1]

        seq = torch.empty(batch, model.length, dtype=torch.long, device=self.device)
        rows = 2 * batch if guided else batch
        cache = None
        if self.cache == "dynamic":
            cache = _new_cache(model)
        elif self.cache == "static":
            cache = self._static_cache(level, rows)
            step = self._step(level)
        inputs: Optional[torch.Tensor] = None
        last: Optional[torch.Tensor] = None
        for i in range(model.length):
            token_in = None if i == 0 else (torch.cat([last, last]) if guided else last)
            x = step_input(i, token_in)
            if self.cache == "static":
                # the position as a tensor: an int would be a constant of the compiled step
                hidden = step(x, torch.full((1, 1), i, device=self.device), cache)
            elif self.cache == "dynamic":
                # the DynamicCache grows in place; the output's copy of it is not needed
                out = model.backbone(inputs_embeds=x, use_cache=True, **_cache_kwarg(model.backbone, cache))
                hidden = out.last_hidden_state[:, -1]
            else:  # the whole prefix again
                inputs = x if inputs is None else torch.cat([inputs, x], dim=1)
                hidden = model.backbone(inputs_embeds=inputs, use_cache=False).last_hidden_state[:, -1]
            logits = model.head(hidden).float()
            if guided:
                c, u = logits.chunk(2)
                logits = u + self.cfg_scale * (c - u)
            last = draw(logits, settings, generator)
            seq[:, i] = last
        return model.to_grid(seq)

    def _static_cache(self, level: int, rows: int):
        """This level's preallocated cache for ``rows`` sequences, emptied for a new batch
        (reused rather than reallocated: a compiled / CUDA-graphed step keeps its addresses)."""
        from transformers import StaticCache

        key = (level, rows)
        if key not in self._static:
            model = self.prior.levels[level]
            cache = StaticCache(config=model.backbone.config, max_cache_len=model.length)
            # allocated now rather than on the first write, so a compiled step sees one
            # cache state from its first call (no recompilation after step 0). The method is
            # not public API in every transformers release; without it the cache allocates
            # on its first write, which is still correct (a compiled step may recompile once).
            heads = model.cfg.n_head
            early = getattr(cache, "early_initialization", None)
            if callable(early):
                early(rows, heads, model.cfg.n_embd // heads, model.head.weight.dtype, self.device)
            self._static[key] = cache
        else:
            self._static[key].reset()
        return self._static[key]

    def _step(self, level: int):
        """hidden state (B, d) of the newest position, given its input embedding (B, 1, d),
        its position (1, 1) and the static cache holding the positions before it."""
        if level not in self._steps:
            backbone = self.prior.levels[level].backbone
            cache_name = next(iter(_cache_kwarg(backbone, None)))

            def step(x: torch.Tensor, position: torch.Tensor, cache) -> torch.Tensor:
                out = backbone(inputs_embeds=x, position_ids=position, use_cache=True, **{cache_name: cache})
                return out.last_hidden_state[:, -1]

            self._steps[level] = torch.compile(step, mode=self.compile_mode) if self.compile else step
        return self._steps[level]

    # -- whole hierarchy --------------------------------------------------------------------
    def code_batches(
        self, n: int, labels=None, seed: int = 0, batch_size: int = 64, progress: bool = False,
        first_batch: int = 0,
    ) -> Iterator[CodeBatch]:
        """``n`` samples as an iterator of batches (:class:`CodeBatch`, codes on the CPU), so
        that a caller can decode and write each batch before the next is drawn: nothing held
        grows with ``n``. :meth:`sample_codes` is these batches joined.

        The samples are drawn in equal batches of at most ``batch_size`` rows
        (:func:`batch_rows`), the last one padded with a few extra rows that are dropped
        (fewer than the number of batches): every batch then has one shape, so a level has one
        static cache and one compiled step. An uneven last batch would be a second shape per
        level, and a hierarchy of 4+ levels would exceed torch.compile's recompile limit (8 per
        function) and fall back to eager. Batch ``b`` draws from its own generator, seeded
        ``seed * 1_000_003 + b``, and the partition depends only on ``n`` and ``batch_size``:
        starting at ``first_batch`` (a resumed set) draws exactly the batches an uninterrupted
        run draws from there.

        ``labels``: None (the null label of a class-conditional prior), a class id for every
        sample, ``"cycle"`` (classes 0, 1, ..., K-1, 0, ...: computed per batch, so no (n,)
        tensor exists), or one label per sample. Labels and arguments are checked here, before
        the first batch is drawn."""
        if n < 1:
            raise ValueError(f"n: must be >= 1, got {n}")
        if batch_size < 1:
            raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
        rows = batch_rows(n, batch_size)
        batches = -(-n // rows)
        if not 0 <= first_batch <= batches:
            raise ValueError(f"first_batch: must be in [0, {batches}], got {first_batch}")
        label_rows = self._label_source(n, labels)
        for model in self.prior.levels.values():
            model.eval()
        return self._code_batches(n, label_rows, seed, rows, first_batch, progress)

    def _label_source(self, n: int, labels):
        """A function (lo, hi) -> the labels of samples lo..hi-1 (None for an unconditional
        prior), after checking ``labels`` once for all n samples."""
        if isinstance(labels, str):
            if labels != "cycle":
                raise ValueError(f"labels: expected a class id, 'cycle' or one label per sample, got {labels!r}")
            if not self.prior.num_classes:
                raise ValueError("labels: this prior is not class-conditional")
            classes = self.prior.num_classes
            return lambda lo, hi: torch.arange(lo, hi) % classes
        if labels is None or isinstance(labels, int) or (
                isinstance(labels, torch.Tensor) and labels.numel() == 1):
            one = self.labels_for(1, labels)  # checked (range, null label) as for n samples
            return lambda lo, hi: None if one is None else one.expand(hi - lo).clone()
        every = self.labels_for(n, labels)
        return lambda lo, hi: every[lo:hi]

    @torch.no_grad()
    def _code_batches(self, n: int, label_rows, seed: int, rows: int, first_batch: int,
                      progress: bool) -> Iterator[CodeBatch]:
        shapes = self.prior.code_shapes
        per_sample = sum(h * w for h, w in shapes)
        start = min(n, first_batch * rows)
        bar = tqdm(total=n * per_sample, initial=start * per_sample, desc="sample", unit="tok",
                   disable=not progress, dynamic_ncols=True)
        try:
            for b, lo in enumerate(range(start, n, rows), start=first_batch):
                t0 = time.perf_counter()
                take = min(n, lo + rows) - lo
                generator = torch.Generator(self.device).manual_seed(seed * 1_000_003 + b)
                batch_labels = label_rows(lo, lo + take)
                lab = None
                if batch_labels is not None:  # padding rows repeat the last label
                    lab = batch_labels.to(self.device)
                    lab = torch.cat([lab, lab[-1:].expand(rows - take)])
                codes: list[torch.Tensor] = []
                for level in range(self.num_levels):
                    self._sync()  # on a GPU, queued work would land in the wrong level's time
                    tl = time.perf_counter()
                    codes.append(self.sample_level(level, codes, lab, generator, rows))
                    self._sync()
                    self.stats.per_level_seconds[level] = (
                        self.stats.per_level_seconds.get(level, 0.0) + time.perf_counter() - tl)
                    bar.update(take * shapes[level][0] * shapes[level][1])
                out = [grid[:take].view(take, *shapes[level]).cpu() for level, grid in enumerate(codes)]
                # the time of drawing only: what the caller does between batches is not sampling
                self.stats.tokens += take * per_sample
                self.stats.seconds += time.perf_counter() - t0
                yield CodeBatch(b, lo, out, batch_labels)
        finally:
            bar.close()

    @torch.no_grad()
    def sample_codes(
        self, n: int, labels=None, seed: int = 0, batch_size: int = 64, progress: bool = False,
    ) -> list[torch.Tensor]:
        """``n`` samples: one (n, h_l, w_l) code grid per level, top first. The same seed,
        n and batch size give the same codes: the batches of :meth:`code_batches`, joined."""
        parts: list[list[torch.Tensor]] = [[] for _ in range(self.num_levels)]
        for batch in self.code_batches(n, labels, seed, batch_size, progress):
            for level, grid in enumerate(batch.codes):
                parts[level].append(grid)
        return [torch.cat(p) for p in parts]

    @torch.no_grad()
    def decode(self, codes: list[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
        """Code grids -> tokenizer outputs (images, or spectrogram images for audio) in [-1, 1]."""
        if self.tokenizer is None:
            raise ValueError("decode: this sampler was built without a tokenizer")
        parts = []
        for lo in range(0, codes[0].shape[0], batch_size):
            chunk = [c[lo : lo + batch_size].to(self.device) for c in codes]
            parts.append(self.tokenizer.decode_codes(chunk).clamp(-1, 1).cpu())
        return torch.cat(parts)


def _cache_kwarg(backbone: torch.nn.Module, cache) -> dict:
    """The backbone's keyword for a KV cache: transformers 5.25 renamed ``past_key_values``
    to ``cache`` (the old name warns, and goes in 5.40); older releases know only the old one."""
    import inspect

    params = inspect.signature(backbone.forward).parameters
    return {"cache" if "cache" in params else "past_key_values": cache}


def _new_cache(model: LevelPrior):
    from transformers import DynamicCache

    return DynamicCache(config=model.backbone.config)
