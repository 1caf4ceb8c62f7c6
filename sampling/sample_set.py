"""One sample set into one folder: the priors and their tokenizer loaded, codes drawn (or,
for the pipeline's baseline, picked uniformly at random), decoded and written batch by batch
with :class:`sampling.outputs.SampleSetWriter`, so memory stays flat in the number of
samples and an interrupted set is continued by the same call.

`hqvae sample` and the pipeline's ``samples`` / ``random`` stages both go through
:func:`sample_into`, so they read labels the same way, refuse the same settings and record
the same keys in samples.json. Guarding the folder (whose it is, who else writes it) is
the caller's: the CLI locks its ``--out``, the pipeline writes a folder of its own that it
renames into place when the set is finished.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Optional, Union

import torch

from engine.pretrained import weights_identity
from engine.signals import SamplingInterrupted, StopSignals
from prior.pretrained import Prior
from sampling.outputs import SampleSetWriter, format_bytes
from sampling.sampler import CodeBatch, Sampler, batch_rows
from sampling.settings import SamplingSettings
from tokenizer.pretrained import Tokenizer

Label = Union[int, str, None]


def class_index(label: Union[int, str], class_names: Optional[Sequence[str]], key: str = "label") -> int:
    """The class id ``label`` names: a class name of the data (e.g. a folder name) or an id."""
    names = list(class_names or [])
    if isinstance(label, str) and label in names:
        return names.index(label)
    try:
        return int(label)
    except ValueError:
        known = f", or a class name: {', '.join(names)}" if names else ""
        raise ValueError(f"{key}: expected a class id, 'cycle'{known}; got {label!r}") from None


def sample_labels(label: Label, n: int, num_classes: Optional[int], class_names: Optional[Sequence[str]] = None,
                  key: str = "label") -> Optional[torch.Tensor]:
    """(n,) labels: None samples with the null label (unconditional); 'cycle' gives balanced
    classes 0, 1, ..., K-1, 0, ...; a class id or class name gives that class to every sample."""
    if label is None:
        return None
    if not num_classes:
        raise ValueError(f"{key}: the prior is not class-conditional")
    if label == "cycle":
        return torch.arange(n) % num_classes
    return torch.full((n,), class_index(label, class_names, key))


class SampleRecord(dict):
    """samples.json's record, and what the call found in the folder: ``resumed`` samples
    were already written by an interrupted run of the same settings; ``replaced`` says
    whether a "finished" or "unfinished" earlier set was replaced (None: neither)."""

    resumed: int = 0
    replaced: Optional[str] = None


def _available_memory(device: torch.device) -> tuple[int, str]:
    """Bytes free for one batch on ``device`` (a GPU's free memory; the machine's available
    memory for the CPU) and the device's name in messages."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"GPU {device}"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "the CPU"
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "the CPU"


@torch.no_grad()
def _decoder_bytes_per_sample(tokenizer) -> int:
    """The decoder's largest activation for one sample, in bytes, from a decode of one
    sample of zero codes (forward hooks): a batch holds about three of those at a time
    (a layer's input, its output and a temporary)."""
    largest = [0]

    def hook(module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel() * output.element_size())

    handles = [m.register_forward_hook(hook) for m in tokenizer.model.modules()]
    try:
        tokenizer.decode_codes([torch.zeros(1, h, w, dtype=torch.long) for h, w in tokenizer.code_shapes])
    finally:
        for h in handles:
            h.remove()
    return largest[0]


def batch_memory(sampler: Sampler, tokenizer, rows: int, cfg_scale: float) -> dict[str, int]:
    """Bytes one batch of ``rows`` samples needs at its peak, by part (an estimate): every
    level's key/value cache (static caches of every level are kept for the next batch) and
    conditioning, its logits, the decoded samples (float32) and the decoder's activations
    (audio: and Griffin-Lim's complex spectrograms)."""
    guided = 2 if cfg_scale not in (0.0, 1.0) else 1
    kv = 0
    for model in sampler.prior.levels.values():
        item = model.head.weight.element_size()
        kv += guided * rows * model.length * model.cfg.n_embd * item * (2 * model.cfg.n_layer + 1)
        kv += guided * rows * model.codebook_size * 4 * 3 + rows * model.length * 8
    out = rows * math.prod(tokenizer.input_shape) * 4
    decoder = rows * 3 * _decoder_bytes_per_sample(tokenizer)
    if tokenizer.modality == "audio":  # Griffin-Lim: a few complex spectrograms per clip
        decoder += rows * math.prod(tokenizer.input_shape) * 8 * 4
    return {"key/value caches": kv, "decoded samples": out, "decoder": decoder}


def check_batch_memory(sampler: Sampler, tokenizer, rows: int, cfg_scale: float, flag: str) -> None:
    """Refuse a batch size whose batch could not fit in memory, before it is allocated."""
    parts = batch_memory(sampler, tokenizer, rows, cfg_scale)
    need = sum(parts.values())
    free, where = _available_memory(sampler.device)
    if need > free:
        detail = ", ".join(f"{k} {format_bytes(v)}" for k, v in parts.items())
        raise ValueError(f"{flag} {rows}: one batch of {rows:,} samples would need about {format_bytes(need)} "
                         f"of memory ({detail}) and {where} has {format_bytes(free)} available; lower {flag}")


def random_code_batches(prior: Prior, n: int, seed: int, rows: int, first_batch: int = 0) -> Iterator[CodeBatch]:
    """Uniformly random codes at every level, batch by batch: the codes of
    ``torch.randint`` drawing level 0 for all n samples, then level 1, ... from one CPU
    generator seeded ``seed`` (a CPU generator draws element by element, so a level's rows
    can be drawn in pieces). Each level has a generator of its own, moved past the draws of
    the levels above (and of the batches before ``first_batch``) by drawing and dropping."""
    shapes, sizes = prior.code_shapes, prior.codebook_sizes
    gens = []
    before = 0
    for level, (h, w) in enumerate(shapes):
        g = torch.Generator().manual_seed(seed)
        skip = before + min(n, first_batch * rows) * h * w
        while skip:
            chunk = min(skip, 1 << 22)
            torch.randint(0, sizes[level], (chunk,), generator=g)
            skip -= chunk
        gens.append(g)
        before += n * h * w
    for b, lo in enumerate(range(min(n, first_batch * rows), n, rows), start=first_batch):
        take = min(n, lo + rows) - lo
        codes = [torch.randint(0, k, (take, h, w), generator=g) for k, (h, w), g in zip(sizes, shapes, gens)]
        yield CodeBatch(b, lo, codes, None)


def label_source(label: Label, num_classes: Optional[int], class_names: Optional[Sequence[str]] = None,
                 key: str = "label") -> Union[int, str, None]:
    """What :meth:`Sampler.code_batches` takes for ``label``: None (unconditional),
    ``"cycle"`` or a class id (a class name of the data turned into its id)."""
    if label is None:
        return None
    if not num_classes:
        raise ValueError(f"{key}: the prior is not class-conditional")
    return "cycle" if label == "cycle" else class_index(label, class_names, key)


def sample_into(
    out: str | Path,
    prior_run: str | Path,
    tokenizer_run: str | Path | None = None,
    settings: Optional[SamplingSettings] = None,
    *,
    device: Optional[str] = None,
    random_codes: bool = False,
    extra: Optional[dict] = None,
    flags: Optional[Mapping[str, str]] = None,
    log: Callable[[str], None] = print,
) -> SampleRecord:
    """Sample ``settings.n`` examples from the priors in ``prior_run`` into ``out`` as
    ``settings`` say (default: :class:`SamplingSettings`' defaults); returns the
    samples.json record (``extra`` is added to it).

    The set is drawn, decoded and written one batch at a time. An unfinished set in ``out``
    drawn with the same settings (a run stopped by Ctrl-C, a kill, a crash) is continued
    where its files stop, and ends as the uninterrupted run would have; a set with other
    settings, or a finished one, is replaced (deleting exactly its files). SIGINT / SIGTERM
    stop after the batch being written, raising :class:`engine.signals.SamplingInterrupted`.

    ``tokenizer_run`` defaults to the one recorded with the priors. ``random_codes`` draws
    every level uniformly instead (the baseline a prior has to beat). ``flags`` names the
    settings in errors (``{"n": "--n", ...}`` on the command line, and ``"out"``). The
    settings, the memory of one batch and the disk space of the set are checked before any
    sampling."""
    s = settings or SamplingSettings()
    flags = {"out": "out", **(flags or {})}
    s.validate(flags)
    key = flags.get
    prior = Prior.from_pretrained(prior_run, device=device)
    tok_run = tokenizer_run or prior.info.get("tokenizer_run")
    if not tok_run:
        raise ValueError(f"{prior_run}: no tokenizer run recorded with the priors; pass --tokenizer RUN")
    if not tokenizer_run and not Path(tok_run).is_dir():
        # the path is the machine's where the priors were trained: gone after a move, a copy
        # or a download (save_pretrained / push_to_hub keep it as a hint, nothing more)
        raise ValueError(
            f"{prior_run}: the tokenizer recorded with the priors ({tok_run}) is not on this machine "
            f"(moved, or the priors were copied or downloaded); pass --tokenizer RUN: the tokenizer "
            f"of identity {prior.tokenizer_identity}")
    tokenizer = Tokenizer.from_pretrained(tok_run, device=device)
    # refuses guidance on a prior that is not class-conditional, naming cfg_scale
    sampler = Sampler.from_settings(prior, tokenizer, s, device=device)
    n, batch_size = s.n, s.batch_size
    rows = batch_rows(n, batch_size)
    labels = None
    if random_codes:
        record = {"baseline": "uniformly random codes at every level", "seed": s.seed}
    else:
        labels = label_source(s.label, prior.num_classes, prior.class_names, key("label", "label"))
        sampler.code_batches(n, labels, s.seed, batch_size)  # checks the labels; draws nothing
        record = {
            "prior_run": str(prior_run), "tokenizer_run": str(tok_run), "seed": s.seed,
            "batch_size": batch_size, "cfg_scale": s.cfg_scale, "cache": s.cache, "compile": s.compile,
            "label": s.label, "levels": [vars(level) for level in sampler.settings],
        }
    check_batch_memory(sampler, tokenizer, rows, s.cfg_scale if not random_codes else 1.0,
                       key("batch_size", "batch_size"))
    # guidance 0 samples with the null label whatever the label says: no labels to score against
    labelled = labels is not None and s.labelled()
    # what decides the files: a rerun continues an unfinished set only when all of it is equal
    identity = {**record, "n": n, "batch_size": batch_size, "grid": s.grid, "npz": s.npz,
                "griffin_lim_iters": s.griffin_lim_iters, "random_codes": random_codes,
                "device": sampler.device.type, "tokenizer_identity": tokenizer.identity,
                "prior_weights": None if random_codes else _prior_weights(prior), "extra": extra}
    writer = SampleSetWriter(out, tokenizer, n, rows, settings=identity, code_shapes=prior.code_shapes,
                             labelled=labelled, grid=s.grid, npz=s.npz, griffin_lim_iters=s.griffin_lim_iters,
                             flags=flags, log=log)
    try:
        with StopSignals() as signals:
            try:
                done = writer.open()  # a stop while it clears an earlier set: the rest is recorded
                first = -(-done // rows)  # done is where a batch starts, or n
                if random_codes:
                    batches = random_code_batches(prior, n, s.seed, rows, first)
                else:
                    batches = sampler.code_batches(n, labels, s.seed, batch_size, progress=True, first_batch=first)
                seconds, tokens = sampler.stats.seconds, sampler.stats.tokens
                for batch in batches:  # the sampler's stats have counted this batch's drawing
                    decoded = sampler.decode(batch.codes, batch_size=rows)
                    writer.write_batch(batch.start, decoded, batch.codes, batch.labels if labelled else None,
                                       seconds=sampler.stats.seconds - seconds,
                                       tokens=sampler.stats.tokens - tokens)
                    seconds, tokens = sampler.stats.seconds, sampler.stats.tokens
                    del decoded  # before the next batch is drawn: one batch in memory at a time
                    if signals.received and writer.done < n:
                        raise SamplingInterrupted(writer.done, n, Path(out), signals.received)
                if not random_codes:
                    record["sampling_seconds"] = writer.seconds
                    record["tokens_per_s"] = writer.tokens / max(writer.seconds, 1e-9)
                # every sample is written: a first signal from here on lets the set finish
                result = SampleRecord(writer.finish({**record, **(extra or {})},
                                                    prior.class_names if labelled else None))
            except KeyboardInterrupt:  # a second Ctrl-C: the batch under way is dropped
                raise SamplingInterrupted(writer.done, n, Path(out), "SIGINT") from None
    finally:
        writer.close()
    result.resumed, result.replaced = writer.resumed, writer.replaced
    return result


def _prior_weights(prior: Prior) -> str:
    """A hash of the priors' weights: a set is continued only with the priors it began with
    (a prior run retrained in place would otherwise finish another model's set)."""
    state = {f"{lv}.{k}": v for lv, m in sorted(prior.levels.items()) for k, v in m.state_dict().items()}
    return weights_identity({"tokenizer_identity": prior.tokenizer_identity}, state)
