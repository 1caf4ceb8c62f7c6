"""The one Accelerate training loop, shared by the tokenizer, every prior and the audio
classifier.

A stage hands over a model whose ``forward(batch, step)`` returns a dict of scalar
terms with the objective under ``"loss"`` (going through ``forward`` keeps DDP's gradient
hooks in play), a map-style dataset or a stream (engine/streams.py), and optional
evaluation/statistics callbacks. A model
with a ``set_total_steps(n)`` method is told the run's length before its first step, one
with ``set_step(step)`` each step's number on the host before its forward, and one
with ``idle_parameters(step)`` names parameters that step must leave alone (their gradients
are dropped before the optimizer sees them, so it keeps no state and counts no step for them).
Everything else -- mixed precision, gradient accumulation, clipping, LR schedule, periodic
evaluation, checkpoints, resume (engine/resume.py), progress, JSON-lines metrics and the
live trackers of ``train.report_to`` (engine/tracking.py) -- lives here, once: the loop in
this module, its parts beside it (engine/epoch_order.py, engine/optim.py,
engine/train_forward.py, engine/nonfinite.py, engine/step_metrics.py, engine/cadence.py).
"""


import itertools
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
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from engine.cadence import due, run_evaluation, stop_requested
from engine.checkpoint import clean_stale, rng_state, save_checkpoint
from engine.config import ConfigError
from engine.distributed import use_cpu

# the loop's parts live in their own modules; the names callers import from here stay here
from engine.epoch_order import MAX_MATERIALISED_PERMUTATION as MAX_MATERIALISED_PERMUTATION
from engine.epoch_order import EpochSampler
from engine.nonfinite import NonFiniteGuard
from engine.nonfinite import NonFiniteLossError as NonFiniteLossError
from engine.optim import build_optimizer, clip_each_group
from engine.resume import CheckpointMismatchError as CheckpointMismatchError
from engine.resume import resume
from engine.signals import StopSignals, TrainingInterrupted
from engine.step_metrics import BadExampleCount, LossWindow
from engine.streams import StreamBatches, is_stream
from engine.tracking import MetricsLog, Tracking
from engine.train_config import TrainConfig
from engine.train_forward import TrainForward


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




class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (disk full, permissions); earlier ones are intact."""


def _accelerator(cfg: TrainConfig, tracking: Tracking) -> Accelerator:
    # Accelerate keeps its settings in a process-wide singleton; a second run in the same
    # process (tests, sweeps, a notebook) with another precision must start from a clean one.
    # The distributed setup (PartialState) is kept.
    AcceleratorState._reset_state()
    # sync_with_dataloader=False: an epoch is cut to whole optimizer steps, so a partial
    # accumulation never forces an extra step at an epoch's end
    accelerator = Accelerator(
        cpu=use_cpu(),  # CPU-only multi-process runs: gloo (engine/distributed.py)
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.grad_accum, sync_with_dataloader=False
        ),
        **tracking.accelerator_kwargs(),
    )
    if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
        # Accelerate has no fp16 autocast or loss scaler on CPU and would train in float32
        # without a word; bf16 is the CPU's autocast type
        warnings.warn("train.mixed_precision=fp16 needs a GPU: on this CPU the run trains in "
                      "float32 (train.mixed_precision=bf16 autocasts on CPU)", stacklevel=3)
    return accelerator


def _micro_batch(cfg: TrainConfig, world: int, n: Optional[int]) -> int:
    """Examples per process per forward; refuses batch settings the data cannot fill
    (``n``: the dataset's rows, None for a stream of unknown length)."""
    micro = cfg.batch_size // cfg.grad_accum
    if micro % world:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} / grad_accum={cfg.grad_accum} = {micro} "
            f"is not divisible by the {world} processes"
        )
    if n is None:
        return micro // world
    if n == 0:
        raise ValueError("the training dataset is empty")
    if n < cfg.batch_size:
        # an optimizer step would span more than an epoch: epochs, schedules and resume
        # positions are all counted in whole steps per epoch
        raise ValueError(
            f"dataset has {n} examples, fewer than one batch "
            f"(train.batch_size={cfg.batch_size}); lower train.batch_size"
        )
    return micro // world


class _Checkpoints:
    """Writes the run's checkpoints (the main process) and remembers the last good one,
    which a stop names."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, config: dict, accelerator: Accelerator,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 steps_per_epoch: int, last_good: Optional[Path], nonfinite: NonFiniteGuard,
                 bad: BadExampleCount, stream: Optional[StreamBatches]):
        self.run_dir, self.cfg, self.config, self.accelerator = run_dir, cfg, config, accelerator
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.steps_per_epoch, self.last_good = steps_per_epoch, last_good
        self.nonfinite, self.bad, self.stream = nonfinite, bad, stream

    def save(self, step: int) -> None:
        acc = self.accelerator
        self.nonfinite.stop_if_bad(self.last_good)
        counters = {"bad_examples_skipped": self.bad.total(),
                    "nonfinite_steps_skipped": self.nonfinite.skipped}
        # every process's generators, so that each resumes with its own
        rng_states = gather_object([rng_state()]) if acc.num_processes > 1 else [rng_state()]
        extra = {"epoch": step // self.steps_per_epoch, "counters": counters}
        if self.stream is not None:
            extra["stream"] = self.stream.state()  # where each reader of each process stands
        if acc.scaler is not None:
            extra["grad_scaler"] = acc.scaler.state_dict()
        acc.wait_for_everyone()
        if acc.is_main_process:
            try:
                self.last_good = save_checkpoint(
                    self.run_dir, step, self.model.state_dict(), self.optimizer, self.scheduler,
                    self.config, extra=extra, keep_last=self.cfg.keep_last, rng_states=rng_states,
                )
            except OSError as err:  # disk full, folder made read-only, ...
                clean_stale(self.run_dir)  # the half-written temporary folder
                kept = (f"the previous checkpoint {self.last_good} is intact; once that is fixed, "
                        f"run the same command again to resume from it" if self.last_good
                        else "there is no earlier checkpoint")
                raise CheckpointWriteError(
                    f"train: the checkpoint of step {step} could not be written to "
                    f"{self.run_dir / 'checkpoints'} ({err.strerror or err}); {kept}") from None
        else:
            self.last_good = self.run_dir / "checkpoints" / f"step_{step:08d}"
        acc.wait_for_everyone()


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
    tracking: Tracking | None = None,
) -> TrainResult:
    """Train ``model`` in place; resume from the newest good checkpoint in ``run_dir`` if any.

    ``batch_key``: the batch field handed to ``model(...)`` (None passes the whole batch).
    ``final_eval``: run ``evaluate`` once more at the end (off when the caller runs a
    fuller evaluation of its own there).
    ``tracking``: the trackers of ``cfg.report_to`` for ``run_dir`` when the caller writes
    the run's last metrics line and ends them (:func:`engine.stage.finish_run`); without
    it the loop opens and ends its own.

    Resuming: see engine/resume.py. A batch dict with a ``bad_examples`` field (datasets
    with ``skip_bad_examples``) adds to the run's ``bad_examples_skipped``.

    A stream (a torch ``IterableDataset``, engine/streams.py) is read by each process on its
    own and never ends: ``train.steps`` is the run's length, or ``train.epochs`` passes over
    its known row count (``dataset.num_rows``).
    """
    run_dir = Path(run_dir)
    own_tracking = tracking is None
    tracking = tracking or Tracking(cfg.report_to, run_dir)
    accelerator = _accelerator(cfg, tracking)
    # per process (seed + rank): otherwise every process draws the same dropout, label
    # dropout and Gumbel noise for its part of the batch; one process is seeded as before
    set_seed(cfg.seed, device_specific=True)
    world, main = accelerator.num_processes, accelerator.is_main_process
    stream = StreamBatches(dataset, cfg, accelerator, collate_fn) if is_stream(dataset) else None
    micro = _micro_batch(cfg, world, stream.num_rows if stream else len(dataset))
    if stream is None:
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
    else:
        steps_per_epoch = stream.steps_per_epoch()
    total = cfg.epochs * steps_per_epoch if cfg.epochs else cfg.steps
    if callable(getattr(model, "set_total_steps", None)):
        model.set_total_steps(total)  # schedules inside the model that span the run (SQ temperature)
    if cfg.gradient_checkpointing:
        if not callable(getattr(model, "set_gradient_checkpointing", None)):
            raise ConfigError(f"train.gradient_checkpointing: {type(model).__name__} has no "
                              f"set_gradient_checkpointing(on); turn the option off for it")
        model.set_gradient_checkpointing(True)
    if cfg.channels_last:
        # before the optimizer exists, so its state is created in the same format; the
        # conversion keeps parameter identity (and only touches 4-D tensors)
        model.to(memory_format=torch.channels_last)
    optimizer, scheduler, rates = build_optimizer(model, cfg, total)
    resumed = resume(run_dir, accelerator, model, optimizer, scheduler, rates, cfg)
    if stream is None:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    else:  # each process reads its own share of the stream: no loader for Accelerate to shard
        model, optimizer = accelerator.prepare(model, optimizer)
        stream.restore(resumed.stream, resumed.step, resumed.checkpoint)
    unwrapped = accelerator.unwrap_model(model)
    forward = TrainForward(model, cfg, accelerator, batch_key)
    idle = getattr(unwrapped, "idle_parameters", None)

    start = step = resumed.step
    epoch, skip = divmod(step, steps_per_epoch)
    skip *= cfg.grad_accum
    last: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    window = LossWindow(accelerator, t0)
    bar = tqdm(total=total, initial=start, desc=desc, disable=not (main and cfg.progress),
               dynamic_ncols=True, unit="step")
    tracking.start(accelerator, start, config)
    log = MetricsLog(run_dir / "metrics.jsonl", main, tracking)
    nonfinite = NonFiniteGuard(cfg.nan_policy, accelerator, resumed.counters["nonfinite_steps_skipped"], bar)
    bad = BadExampleCount(accelerator, resumed.counters["bad_examples_skipped"])
    ckpts = _Checkpoints(run_dir, cfg, config, accelerator, unwrapped, optimizer.optimizer, scheduler,
                         steps_per_epoch, resumed.checkpoint, nonfinite, bad, stream)
    model.train()
    # Ctrl-C / SIGTERM (a scheduler's pre-emption) saves a checkpoint of the last finished
    # step and stops with one line saying how to resume, instead of losing those steps
    with StopSignals() as signals:
        while step < total:
            if stream is not None:  # one pass to the end of the run
                batches, remaining = stream.batches(micro), (total - step) * cfg.grad_accum
            else:
                sampler.set_epoch(epoch)
                loader_rng.manual_seed(cfg.seed * 1_000_003 + epoch)
                batches = accelerator.skip_first_batches(loader, skip) if skip else loader
                if hasattr(batches, "set_epoch"):
                    # the skipping loader a resumed run starts with counts its epochs from 0:
                    # it would replay epoch 0's order in the middle of a later epoch
                    batches.set_epoch(epoch)
                remaining = min(steps_per_epoch * cfg.grad_accum - skip, (total - step) * cfg.grad_accum)
                # only the rows of the micro-batches trained on: a row beyond them (prefetched
                # by a worker or accelerate's look-ahead) could be a bad one the run never needed
                sampler.limit = (skip + remaining) * micro * world
                skip = 0
            for batch in itertools.islice(batches, remaining):
                bad.add(batch)
                nonfinite.start_micro_batch(unwrapped)
                with accelerator.accumulate(model):
                    try:
                        terms = forward(batch, step)
                    except Exception:
                        # a NaN that got into the weights can make a later forward fail
                        # (e.g. sampling from NaN probabilities): report the NaN, not that
                        nonfinite.stop_if_bad(ckpts.last_good)
                        raise
                    finite = nonfinite.check(terms["loss"], step)
                    if finite:
                        accelerator.backward(terms["loss"])
                    if accelerator.sync_gradients and not nonfinite.window_ok:
                        nonfinite.withhold(optimizer, unwrapped)
                    else:
                        if accelerator.sync_gradients and idle is not None:
                            for p in idle(step):
                                p.grad = None
                        if accelerator.sync_gradients and cfg.clip_grad > 0:
                            clip_each_group(accelerator, optimizer, model, cfg.clip_grad)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if finite:
                    window.add(terms)
                window.seen += micro * world
                if not accelerator.sync_gradients:
                    continue
                nonfinite.end_step(step)
                lr_used = optimizer.param_groups[0]["lr"]  # this step's, before the schedule moves on
                scheduler.step()
                step += 1
                bar.update(1)
                if step % cfg.log_every == 0 or step == total:
                    nonfinite.stop_if_bad(ckpts.last_good)
                    record, rate = window.close()
                    record.update(stats(unwrapped, step) if stats else {})
                    if nonfinite.skipped:
                        record["nonfinite_steps_skipped"] = nonfinite.skipped
                    if bad.reported:
                        record["bad_examples_skipped"] = bad.total()
                    last = record
                    log.write({"step": step, "epoch": (step - 1) // steps_per_epoch, "split": "train", "lr": lr_used,
                               "examples_per_s": rate, **record})
                    if "loss" in record:
                        bar.set_postfix(loss=f"{record['loss']:.4g}", ex_s=f"{rate:.0f}")
                if evaluate is not None and due(cfg.eval_every, step, total):
                    nonfinite.stop_if_bad(ckpts.last_good)
                    eval_metrics = run_evaluation(evaluate, step, model, unwrapped, accelerator, log)
                if due(cfg.ckpt_every, step, total):
                    ckpts.save(step)
                if stop_requested(signals, step, cfg, accelerator) and step < total:
                    bar.close()
                    ckpts.save(step)
                    raise TrainingInterrupted(step, ckpts.last_good, signals.received or "a stop signal")
                if step >= total:
                    break
            epoch += 1
    nonfinite.stop_if_bad(ckpts.last_good)
    bar.close()
    seconds = time.perf_counter() - t0
    if cfg.channels_last:  # hand the caller back a model in the default layout
        unwrapped.to(memory_format=torch.contiguous_format)
    # ... and without the autocast wrapper Accelerate put on its forward: the final
    # evaluation and every later use run float32, as the model will be loaded from disk
    accelerator.unwrap_model(model, keep_fp32_wrapper=False)
    trained = step - start
    if trained > 0 or resumed.checkpoint is None:
        ckpts.save(step)
    if final_eval and evaluate is not None:
        nonfinite.stop_if_bad(ckpts.last_good)
        eval_metrics = run_evaluation(evaluate, step, model, unwrapped, accelerator, log) or eval_metrics
    n_bad = bad.total()
    if n_bad and main:
        warnings.warn(f"train: {n_bad} bad examples were skipped (data.skip_bad_examples; a bad "
                      f"row counts once per epoch it is met in); the warnings above name the "
                      f"first rows", stacklevel=2)
    if own_tracking:
        tracking.end()
    return TrainResult(
        step=step, resumed_from=start, seconds=seconds,
        examples_per_second=trained * cfg.batch_size / max(seconds, 1e-9),
        last_metrics=last, eval_metrics=eval_metrics,
        bad_examples_skipped=n_bad, nonfinite_steps_skipped=nonfinite.skipped,
        resumed_checkpoint=str(resumed.checkpoint) if resumed.checkpoint else None,
        corrupt_checkpoints=[str(p) for p in resumed.corrupt],
        processes=world,
    )
