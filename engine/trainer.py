"""The one Accelerate training loop, shared by the tokenizer and every prior.

A stage hands over a model whose ``forward(batch, step)`` returns a dict of scalar
terms with the objective under ``"loss"`` (going through ``forward`` keeps DDP's gradient
hooks in play), a map-style dataset, and optional evaluation/statistics callbacks. A model
with a ``set_total_steps(n)`` method is told the run's length before its first step.
Everything else -- mixed precision, gradient accumulation, clipping, LR schedule, periodic
evaluation, checkpoints, resume, progress, JSON-lines metrics -- lives here, once.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin, gather_object, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from engine.checkpoint import (
    CKPT_RE,
    clean_stale,
    load_latest_checkpoint,
    quarantine,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from engine.distributed import use_cpu
from engine.signals import StopSignals, TrainingInterrupted
from engine.train_config import TrainConfig


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch: the data order is a function of (seed, epoch),
    so a resumed run sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0
        # how many of the epoch's rows to hand out: the loop cuts an epoch to the batches it
        # trains on, so no loader (nor accelerate's one-batch look-ahead) reads a row it
        # would not use; the order of those it does use stays the full epoch's
        self.limit = n

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g)[: self.limit].tolist())

    def __len__(self) -> int:
        return self.limit


def lr_lambda(cfg: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        span = max(1, total_steps - cfg.warmup_steps)
        progress = min(1.0, (step - cfg.warmup_steps) / span)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


@dataclass
class TrainResult:
    step: int
    resumed_from: int
    seconds: float
    examples_per_second: float
    last_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    # examples the dataset replaced because they could not be decoded (data.skip_bad_examples),
    # counted over the whole run (a resumed run continues the count of its checkpoint)
    bad_examples_skipped: int = 0
    nonfinite_steps_skipped: int = 0  # optimizer steps withheld under nan_policy='skip'
    resumed_checkpoint: Optional[str] = None  # the checkpoint the run resumed from
    corrupt_checkpoints: list[str] = field(default_factory=list)  # newer ones that failed to load
    processes: int = 1  # data-parallel processes that trained together


class NonFiniteLossError(ValueError):
    """Training stopped on a NaN / inf loss (train.nan_policy='stop'). A ValueError, so the
    CLI reports it as an error line (exit status 2), not a traceback."""


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model (written under another config)."""


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if torch.is_tensor(v) else v) for k, v in d.items()}


def _check_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse a checkpoint whose tensor names or shapes differ from the model's, naming the
    keys (instead of torch's size-mismatch traceback)."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k} {tuple(state[k].shape)} in the checkpoint vs {tuple(own[k].shape)} in the model"
              for k in sorted(set(own) & set(state)) if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:5]) + (" ..." if len(shapes) > 5 else ""))
        if missing:
            parts.append(f"missing keys: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected[:5])}" + (" ..." if len(unexpected) > 5 else ""))
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit the model being trained (written under another "
            f"config?): {'; '.join(parts)}; use another run_dir or delete {path.parent}"
        )


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (the checkpoint a run resumes from): a killed run may
    have logged steps it never checkpointed, and the resumed run logs those steps again. A
    half-written last line (a kill mid-write) goes too. Rewritten atomically."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict) or record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{line}\n" for line in kept))
    os.replace(tmp, path)


def train(
    *,
    model: torch.nn.Module,
    dataset: Dataset,
    cfg: TrainConfig,
    run_dir: str | Path,
    config: dict,
    evaluate: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    stats: Callable[[torch.nn.Module, int], dict[str, float]] | None = None,
    collate_fn: Callable | None = None,
    batch_key: str | None = "x",
    desc: str = "train",
    final_eval: bool = True,
) -> TrainResult:
    """Train ``model`` in place; resume from the newest good checkpoint in ``run_dir`` if any.

    ``batch_key``: the batch field handed to ``model(...)`` (None passes the whole batch).
    ``final_eval``: run ``evaluate`` once more at the end (off when the caller runs a
    fuller evaluation of its own there).

    Resuming: a checkpoint that fails its checksums is skipped with a warning (and renamed
    ``*.corrupt``) in favour of the previous one; ``metrics.jsonl`` is cut back to the
    resumed step, so every step appears once. A batch dict with a ``bad_examples`` field
    (datasets with ``skip_bad_examples``) adds to the run's ``bad_examples_skipped``.
    """
    run_dir = Path(run_dir)
    # Accelerate keeps its settings in a process-wide singleton; a second run in the same
    # process (tests, sweeps, a notebook) with another precision must start from a clean one.
    # The distributed setup (PartialState) is kept.
    AcceleratorState._reset_state()
    # sync_with_dataloader=False: an epoch is cut to whole optimizer steps below, so a
    # partial accumulation never forces an extra step at an epoch's end
    accelerator = Accelerator(
        cpu=use_cpu(),  # CPU-only multi-process runs: gloo (engine/distributed.py)
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.grad_accum, sync_with_dataloader=False
        ),
    )
    if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # Accelerate has no fp16 autocast or loss scaler on CPU and would train in float32
        # without a word; bf16 is the CPU's autocast type
        warnings.warn("train.mixed_precision=fp16 needs a GPU: on this CPU the run trains in "
                      "float32 (train.mixed_precision=bf16 autocasts on CPU)", stacklevel=2)
    # per process (seed + rank): otherwise every process draws the same dropout, label
    # dropout and Gumbel noise for its part of the batch; one process is seeded as before
    set_seed(cfg.seed, device_specific=True)
    world = accelerator.num_processes
    main = accelerator.is_main_process
    micro = cfg.batch_size // cfg.grad_accum
    if micro % world:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} / grad_accum={cfg.grad_accum} = {micro} "
            f"is not divisible by the {world} processes"
        )
    micro //= world
    if len(dataset) == 0:
        raise ValueError("the training dataset is empty")
    if len(dataset) < cfg.batch_size:
        # an optimizer step would span more than an epoch: epochs, schedules and resume
        # positions are all counted in whole steps per epoch
        raise ValueError(
            f"dataset has {len(dataset)} examples, fewer than one batch "
            f"(train.batch_size={cfg.batch_size}); lower train.batch_size"
        )
    sampler = EpochSampler(len(dataset), cfg.seed)
    # The loader's own generator (re-seeded per epoch) supplies the seed a DataLoader
    # iterator draws when it starts; without it that draw comes from the global RNG, and a
    # resumed run (which starts an iterator mid-epoch) would shift every later dropout mask.
    loader_rng = torch.Generator()
    loader = DataLoader(
        dataset, batch_size=micro, sampler=sampler, drop_last=True, generator=loader_rng,
        num_workers=cfg.num_workers, collate_fn=collate_fn,
        persistent_workers=cfg.num_workers > 0,
    )
    steps_per_epoch = max(1, len(loader) // world // cfg.grad_accum)
    total = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.steps
    if callable(getattr(model, "set_total_steps", None)):
        model.set_total_steps(total)  # schedules inside the model that span the run (SQ temperature)

    if cfg.channels_last:
        # before the optimizer exists, so its state is created in the same format; the
        # conversion keeps parameter identity (and only touches 4-D tensors)
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
    )
    # stepped by hand once per optimizer step (a prepared scheduler would step per process)
    schedule = lr_lambda(cfg, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    if main:
        clean_stale(run_dir)  # what a writer killed mid-checkpoint left behind
    accelerator.wait_for_everyone()
    start = 0
    counters = {"bad_examples_skipped": 0, "nonfinite_steps_skipped": 0}
    ckpt, resumed_path, corrupt = load_latest_checkpoint(run_dir)
    if ckpt is not None:
        _check_model_state(model, ckpt["model"], resumed_path)
        model.load_state_dict(ckpt["model"])
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, IndexError) as err:
            raise CheckpointMismatchError(
                f"checkpoint {resumed_path}: its optimizer state does not fit this model ({err}); "
                f"use another run_dir or delete {resumed_path.parent}"
            ) from None
        scheduler.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["step"])
        if not restore_rng(ckpt, accelerator.process_index):
            # written by fewer processes: no state of this one's to continue, so a fresh
            # seed of its own (deterministic, and unlike every other process's)
            set_seed(cfg.seed + 1_000_003 * start, device_specific=True)
        if accelerator.scaler is not None and "grad_scaler" in ckpt:
            accelerator.scaler.load_state_dict(ckpt["grad_scaler"])  # fp16 loss scale
        for key in counters:
            counters[key] = int(ckpt.get("counters", {}).get(key, 0))
        # a resumed run may ask for more steps or another lr, which reshapes the schedule;
        # the restored optimizer still holds the old schedule's LR for this step
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * schedule(start)
    accelerator.wait_for_everyone()
    metrics_path = run_dir / "metrics.jsonl"
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        for path in corrupt:
            quarantine(path)
        _truncate_metrics(metrics_path, start)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    unwrapped = accelerator.unwrap_model(model)
    # train.compile: only the training forward goes through the compiled wrapper; `model`
    # (accumulate, clipping, train/eval) and `unwrapped` (checkpoints, evaluation, the
    # caller's save) stay the plain modules, so saved keys carry no `_orig_mod.` prefix
    if cfg.compile:
        # one model per run: the compiled entries of earlier runs in this process (the prior
        # levels trained in turn share LevelPrior.forward) are dead, yet count against
        # dynamo's recompile limit (8 per function); past it training silently runs eager
        torch.compiler.reset()
    forward = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
    # under compile the step travels as a tensor (a Python int would be a constant of the
    # graph, and the SQ temperature depends on it), kept on the device and refilled each
    # step: building a new CUDA tensor from a Python int would be a host-to-device copy,
    # and a CPU tensor input would keep CUDA graphs from being used
    step_tensor = torch.zeros((), dtype=torch.long, device=accelerator.device) if cfg.compile else None
    last_good = resumed_path

    def log(record: dict) -> None:
        if main:
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(_jsonable(record)) + "\n")

    # --- non-finite losses -------------------------------------------------------------
    # 'stop' keeps the loop free of per-step host syncs: the first bad step is recorded on
    # the device (torch.where, no sync) and read where the loop syncs anyway -- log lines,
    # evaluations, checkpoints, the end. Steps after the bad one may run (their state is
    # poisoned), but none of it is ever checkpointed, evaluated or logged, and the error
    # names the exact step. 'skip' must withhold the very update, so it reads each loss on
    # the host (one sync per micro-batch, only under that policy).
    bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)
    bad_examples = torch.zeros((), dtype=torch.long, device=accelerator.device)
    has_bad_field = False

    def first_bad_step() -> int:
        found = accelerator.gather(bad_step.reshape(1)) if world > 1 else bad_step.reshape(1)
        found = found[found >= 0]
        return int(found.min()) if found.numel() else -1

    def stop_if_nonfinite() -> None:
        if cfg.nan_policy != "stop":
            return
        first = first_bad_step()
        if first >= 0:
            bar.close()
            kept = f"the last good checkpoint, {last_good}, is intact" if last_good else \
                "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"train: non-finite loss (NaN or inf) at step {first}; training stopped and "
                f"nothing after step {last_good_step()} was saved; {kept}. Lower train.lr, set "
                f"train.clip_grad, or set train.nan_policy=skip to skip such steps"
            )

    def last_good_step() -> int:
        return int(CKPT_RE.match(last_good.name).group(1)) if last_good else 0

    def bad_examples_total() -> int:
        total_bad = accelerator.reduce(bad_examples.reshape(1).clone(), "sum") if world > 1 else bad_examples
        return counters["bad_examples_skipped"] + int(total_bad)

    def checkpoint(step: int) -> None:
        nonlocal last_good
        stop_if_nonfinite()
        run_counters = {"bad_examples_skipped": bad_examples_total(),
                        "nonfinite_steps_skipped": skipped_steps}
        # every process's generators, so that each resumes with its own
        rng_states = gather_object([rng_state()]) if world > 1 else [rng_state()]
        extra = {"epoch": step // steps_per_epoch, "counters": run_counters}
        if accelerator.scaler is not None:
            extra["grad_scaler"] = accelerator.scaler.state_dict()
        accelerator.wait_for_everyone()
        if main:
            try:
                last_good = save_checkpoint(
                    run_dir, step, unwrapped.state_dict(), optimizer.optimizer, scheduler, config,
                    extra=extra, keep_last=cfg.keep_last, rng_states=rng_states,
                )
            except OSError as err:  # disk full, folder made read-only, ...
                clean_stale(run_dir)  # the half-written temporary folder
                kept = (f"the previous checkpoint {last_good} is intact; once that is fixed, run the "
                        f"same command again to resume from it" if last_good
                        else "there is no earlier checkpoint")
                raise CheckpointWriteError(
                    f"train: the checkpoint of step {step} could not be written to "
                    f"{run_dir / 'checkpoints'} ({err.strerror or err}); {kept}") from None
        else:
            last_good = run_dir / "checkpoints" / f"step_{step:08d}"
        accelerator.wait_for_everyone()

    def run_eval(step: int) -> dict[str, float]:
        if evaluate is None:
            return {}
        stop_if_nonfinite()
        result: dict[str, float] = {}
        if main:
            model.eval()
            result = evaluate(unwrapped, step)
            model.train()
            log({"step": step, "split": "eval", **result})
        accelerator.wait_for_everyone()
        return result

    step = start
    epoch, skip = divmod(step, steps_per_epoch)
    skip *= cfg.grad_accum
    sums: dict[str, torch.Tensor] = {}
    n_sum = 0
    last: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    seen = 0
    skipped_steps = counters["nonfinite_steps_skipped"]
    window_ok = True  # 'skip': every micro-batch of this optimizer step had a finite loss
    saved_buffers: list[torch.Tensor] | None = None
    t0 = time.perf_counter()
    t_log = t0
    bar = tqdm(total=total, initial=start, desc=desc, disable=not (main and cfg.progress),
               dynamic_ncols=True, unit="step")
    model.train()
    # Ctrl-C / SIGTERM (a scheduler's pre-emption) saves a checkpoint of the last finished
    # step and stops with one line saying how to resume, instead of losing those steps
    with StopSignals() as signals:
        while step < total:
            sampler.set_epoch(epoch)
            loader_rng.manual_seed(cfg.seed * 1_000_003 + epoch)
            batches = accelerator.skip_first_batches(loader, skip) if skip else loader
            if hasattr(batches, "set_epoch"):
                # accelerate's loaders set the sampler's epoch from their own count of passes
                # when iterated; the skipping loader a resumed run starts with counts from 0,
                # which would replay epoch 0's order in the middle of a later epoch
                batches.set_epoch(epoch)
            remaining = min(steps_per_epoch * cfg.grad_accum - skip, (total - step) * cfg.grad_accum)
            # the sampler hands out only the rows of the micro-batches trained on: a row
            # beyond them (prefetched by a worker or by accelerate's look-ahead) could be a
            # bad one that the run never needed
            sampler.limit = (skip + remaining) * micro * world
            skip = 0
            batch_iter = iter(batches)
            while remaining > 0:
                batch = next(batch_iter, None)
                if batch is None:
                    break
                remaining -= 1
                if isinstance(batch, dict) and "bad_examples" in batch:
                    has_bad_field = True
                    bad_examples += batch["bad_examples"].sum()  # on device: no host sync
                if cfg.nan_policy == "skip" and saved_buffers is None:
                    # the forward pass updates buffers (EMA codebooks, BatchNorm statistics): a
                    # withheld step must leave them as they were too
                    saved_buffers = [b.detach().clone() for b in unwrapped.buffers()]
                with accelerator.accumulate(model):
                    with accelerator.autocast():
                        inputs = batch[batch_key] if batch_key else batch
                        if cfg.channels_last and torch.is_tensor(inputs) and inputs.dim() == 4:
                            inputs = inputs.contiguous(memory_format=torch.channels_last)
                        try:
                            if step_tensor is not None:
                                step_tensor.fill_(step)
                            terms = forward(inputs, step=step if step_tensor is None else step_tensor)
                        except Exception:
                            # a NaN that got into the weights can make a later forward fail
                            # (e.g. sampling from NaN probabilities): report the NaN, not that
                            stop_if_nonfinite()
                            raise
                    loss = terms["loss"]
                    finite = True
                    if cfg.nan_policy == "skip":
                        flag = torch.isfinite(loss.detach()).all().float().reshape(1)
                        if world > 1:  # every process must agree, or DDP's collectives deadlock
                            flag = accelerator.reduce(flag, "sum") / world
                        finite = bool(flag.item() == 1.0)  # the one host sync of 'skip'
                        window_ok = window_ok and finite
                    else:
                        bad_step = torch.where(
                            (bad_step < 0) & ~torch.isfinite(loss.detach()).all(),
                            torch.full_like(bad_step, step + 1), bad_step,
                        )
                    if finite:
                        accelerator.backward(loss)
                    if accelerator.sync_gradients and not window_ok:
                        # withhold the update: drop the gradients, put the buffers back
                        optimizer.zero_grad(set_to_none=True)
                        with torch.no_grad():
                            for buf, old in zip(unwrapped.buffers(), saved_buffers):
                                buf.copy_(old)
                    else:
                        if accelerator.sync_gradients and cfg.clip_grad > 0:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if finite:
                    for k, v in terms.items():
                        # accumulated on device: no host sync until the next log line
                        sums[k] = sums.get(k, 0) + v.detach().float()
                    n_sum += 1
                seen += micro * world
                if not accelerator.sync_gradients:
                    continue
                if not window_ok:
                    skipped_steps += 1
                    warnings.warn(f"train: non-finite loss at step {step + 1}; step skipped "
                                  f"(train.nan_policy=skip; {skipped_steps} so far)", stacklevel=2)
                window_ok, saved_buffers = True, None
                lr_used = optimizer.param_groups[0]["lr"]  # this step's, before the schedule moves on
                scheduler.step()
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    stop_if_nonfinite()
                    now = time.perf_counter()
                    if world > 1 and sums:
                        # the mean over all processes (each saw an equal share of the batch)
                        keys = sorted(sums)
                        mean = accelerator.reduce(torch.stack([sums[k] for k in keys]), "mean")
                        sums = dict(zip(keys, mean.unbind()))
                    record = {k: float(v) / n_sum for k, v in sums.items()} if n_sum else {}
                    record.update(stats(unwrapped, step) if stats else {})
                    if skipped_steps:
                        record["nonfinite_steps_skipped"] = skipped_steps
                    if has_bad_field:
                        record["bad_examples_skipped"] = bad_examples_total()
                    rate = seen / max(now - t_log, 1e-9)
                    last = record
                    log({"step": step, "epoch": epoch, "split": "train", "lr": lr_used,
                         "examples_per_s": rate, **record})
                    if "loss" in record:
                        bar.set_postfix(loss=f"{record['loss']:.4g}", ex_s=f"{rate:.0f}")
                    sums, n_sum, seen, t_log = {}, 0, 0, now
                if cfg.eval_every and step % cfg.eval_every == 0 and step != total:
                    eval_metrics = run_eval(step)
                if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != total:
                    checkpoint(step)
                if world == 1:
                    stop = signals.received is not None
                elif step % cfg.log_every == 0:
                    # processes agree at log steps (where they sync anyway), or the checkpoint's
                    # collectives would wait on a process that went on training
                    flag = torch.tensor([1.0 if signals.received else 0.0], device=accelerator.device)
                    stop = float(accelerator.reduce(flag, "sum")) > 0
                else:
                    stop = False
                if stop and step < total:
                    bar.close()
                    checkpoint(step)
                    raise TrainingInterrupted(step, last_good, signals.received or "a stop signal")
                if step >= total:
                    break
            epoch += 1
    stop_if_nonfinite()
    bar.close()
    seconds = time.perf_counter() - t0
    if cfg.channels_last:  # hand the caller back a model in the default layout
        unwrapped.to(memory_format=torch.contiguous_format)
    # ... and without the autocast wrapper Accelerate put on its forward: the final
    # evaluation and every later use run float32, as the model will be loaded from disk
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    trained = step - start
    if trained > 0 or ckpt is None:
        checkpoint(step)
    if final_eval:
        eval_metrics = run_eval(step) or eval_metrics
    n_bad = bad_examples_total()
    if n_bad and main:
        warnings.warn(f"train: {n_bad} bad examples were skipped (data.skip_bad_examples; a bad "
                      f"row counts once per epoch it is met in); the warnings above name the "
                      f"first rows", stacklevel=2)
    return TrainResult(
        step=step, resumed_from=start, seconds=seconds,
        examples_per_second=trained * cfg.batch_size / max(seconds, 1e-9),
        last_metrics=last, eval_metrics=eval_metrics,
        bad_examples_skipped=n_bad, nonfinite_steps_skipped=skipped_steps,
        resumed_checkpoint=str(resumed_path) if resumed_path else None,
        corrupt_checkpoints=[str(p) for p in corrupt],
        processes=world,
    )
