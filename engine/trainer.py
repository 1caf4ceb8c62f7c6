"""The one Accelerate training loop, shared by the tokenizer, every prior and the audio
classifier.

A stage hands over a model whose ``forward(batch, step)`` returns a dict of scalar
terms with the objective under ``"loss"`` (going through ``forward`` keeps DDP's gradient
hooks in play), a map-style dataset or a stream (engine/streams.py), and optional
evaluation/statistics callbacks. A model
with a ``set_total_steps(n)`` method is told the run's length before its first step.
Everything else -- mixed precision, gradient accumulation, clipping, LR schedule, periodic
evaluation, checkpoints, resume (engine/resume.py), progress, JSON-lines metrics and the
live trackers of ``train.report_to`` (engine/tracking.py) -- lives here, once.
"""

from __future__ import annotations

import itertools
import math
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

from engine.checkpoint import CKPT_RE, clean_stale, rng_state, save_checkpoint
from engine.distributed import use_cpu
from engine.resume import CheckpointMismatchError as CheckpointMismatchError  # also importable here
from engine.resume import resume
from engine.signals import StopSignals, TrainingInterrupted
from engine.streams import StreamBatches, is_stream
from engine.tracking import MetricsLog, Tracking
from engine.train_config import TrainConfig

# Above this many rows an epoch's order is computed index by index instead of as one
# randperm: a dataset's declared size (the generated `shapes` / `tones` take any
# data.num_train) must not cost 8 bytes a row before the first step. Sets up to this size
# keep randperm's order.
MAX_MATERIALISED_PERMUTATION = 2**24
_M64 = 2**64 - 1


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a well-spread 64-bit hash of ``x``."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _lazy_permutation(n: int, g: torch.Generator, limit: int):
    """The first ``limit`` entries of a pseudo-random permutation of range(n), seeded by
    ``g``, in constant memory: a 4-round Feistel network is a bijection of the 2^(2h)
    integers of 2h bits, and cycle-walking (applying it again until the value falls below
    n) restricts it to a bijection of range(n)."""
    half = max(1, ((n - 1).bit_length() + 1) // 2)
    mask = (1 << half) - 1
    keys = torch.randint(0, 2**62, (4,), generator=g).tolist()
    for i in range(limit):
        x = i
        while True:
            left, right = x >> half, x & mask
            for key in keys:
                left, right = right, left ^ (_mix64(right ^ key) & mask)
            x = (left << half) | right
            if x < n:
                break
        yield x


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
        if self.n > MAX_MATERIALISED_PERMUTATION:
            return _lazy_permutation(self.n, g, self.limit)
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


class _Forward:
    """The training forward of one micro-batch, under autocast.

    train.compile: only this forward goes through the compiled wrapper; the prepared model
    (accumulate, clipping, train/eval) and the unwrapped one (checkpoints, evaluation, the
    caller's save) stay the plain modules, so saved keys carry no ``_orig_mod.`` prefix."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, accelerator: Accelerator,
                 batch_key: str | None):
        self.cfg, self.accelerator, self.batch_key = cfg, accelerator, batch_key
        if cfg.compile:
            # the compiled entries of earlier runs in this process (prior levels share
            # LevelPrior.forward) count against dynamo's recompile limit (8 per function);
            # past it training silently runs eager
            torch.compiler.reset()
        self.module = torch.compile(model, mode=cfg.compile_mode) if cfg.compile else model
        # under compile the step is a device tensor refilled each step: a Python int would
        # be a graph constant (the SQ temperature depends on it), a new tensor a host-to-
        # device copy, and a CPU tensor would keep CUDA graphs from being used
        self.step = torch.zeros((), dtype=torch.long, device=accelerator.device) if cfg.compile else None

    def __call__(self, batch: Any, step: int) -> dict[str, torch.Tensor]:
        with self.accelerator.autocast():
            inputs = batch[self.batch_key] if self.batch_key else batch
            if self.cfg.channels_last and torch.is_tensor(inputs) and inputs.dim() == 4:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            if self.step is None:
                return self.module(inputs, step=step)
            self.step.fill_(step)
            return self.module(inputs, step=self.step)


class _NonFinite:
    """train.nan_policy (docs/reliability.md, "Numerical faults").

    'stop' adds no per-step host sync: the first bad step is recorded on the device and
    read where the loop syncs anyway (log lines, evaluations, checkpoints, the end); steps
    after it may run, but nothing of theirs is checkpointed, evaluated or logged. 'skip'
    must withhold the very update, so it reads each loss on the host (one sync per
    micro-batch, only under that policy) and puts the buffers back."""

    def __init__(self, policy: str, accelerator: Accelerator, skipped: int, bar: tqdm):
        self.policy, self.accelerator, self.bar = policy, accelerator, bar
        self.bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)
        self.skipped = skipped  # optimizer steps withheld so far, over the whole run
        self.window_ok = True  # 'skip': every micro-batch of this optimizer step was finite
        self.saved_buffers: list[torch.Tensor] | None = None

    def start_micro_batch(self, model: torch.nn.Module) -> None:
        if self.policy == "skip" and self.saved_buffers is None:
            # the forward pass updates buffers (EMA codebooks, BatchNorm statistics): a
            # withheld step must leave them as they were too
            self.saved_buffers = [b.detach().clone() for b in model.buffers()]

    def check(self, loss: torch.Tensor, step: int) -> bool:
        """Whether to backpropagate ``loss`` (False: 'skip' and a non-finite loss)."""
        if self.policy != "skip":
            self.bad_step = torch.where(
                (self.bad_step < 0) & ~torch.isfinite(loss.detach()).all(),
                torch.full_like(self.bad_step, step + 1), self.bad_step,
            )
            return True
        flag = torch.isfinite(loss.detach()).all().float().reshape(1)
        world = self.accelerator.num_processes
        if world > 1:  # every process must agree, or DDP's collectives deadlock
            flag = self.accelerator.reduce(flag, "sum") / world
        finite = bool(flag.item() == 1.0)  # the one host sync of 'skip'
        self.window_ok = self.window_ok and finite
        return finite

    def withhold(self, optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> None:
        """Drop the gradients and put the buffers back."""
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buf, old in zip(model.buffers(), self.saved_buffers):
                buf.copy_(old)

    def end_step(self, step: int) -> None:
        if not self.window_ok:
            self.skipped += 1
            warnings.warn(f"train: non-finite loss at step {step + 1}; step skipped "
                          f"(train.nan_policy=skip; {self.skipped} so far)", stacklevel=3)
        self.window_ok, self.saved_buffers = True, None

    def stop_if_bad(self, last_good: Optional[Path]) -> None:
        """'stop': raise :class:`NonFiniteLossError` if any process saw a bad loss."""
        if self.policy != "stop":
            return
        found = self.bad_step.reshape(1)
        if self.accelerator.num_processes > 1:
            found = self.accelerator.gather(found)
        found = found[found >= 0]
        if not found.numel():
            return
        self.bar.close()
        kept = f"the last good checkpoint, {last_good}, is intact" if last_good else \
            "no checkpoint had been written yet"
        last_good_step = int(CKPT_RE.match(last_good.name).group(1)) if last_good else 0
        raise NonFiniteLossError(
            f"train: non-finite loss (NaN or inf) at step {int(found.min())}; training stopped and "
            f"nothing after step {last_good_step} was saved; {kept}. Lower train.lr, set "
            f"train.clip_grad, or set train.nan_policy=skip to skip such steps"
        )


class _BadExamples:
    """Examples the dataset replaced (data.skip_bad_examples: a batch field
    ``bad_examples``), counted on the device: no host sync per batch."""

    def __init__(self, accelerator: Accelerator, resumed: int):
        self.accelerator, self.resumed = accelerator, resumed
        self.count = torch.zeros((), dtype=torch.long, device=accelerator.device)
        self.reported = False  # the data reports them: train lines carry the count

    def add(self, batch: Any) -> None:
        if isinstance(batch, dict) and "bad_examples" in batch:
            self.reported = True
            self.count += batch["bad_examples"].sum()

    def total(self) -> int:
        """The run's count, all processes and resumptions together."""
        n = self.count
        if self.accelerator.num_processes > 1:
            n = self.accelerator.reduce(self.count.reshape(1).clone(), "sum")
        return self.resumed + int(n)


class _Window:
    """The loss terms since the last train line, summed on the device (no host sync until
    that line), and the examples seen since."""

    def __init__(self, accelerator: Accelerator, t0: float):
        self.accelerator = accelerator
        self.sums: dict[str, torch.Tensor] = {}
        self.n, self.seen, self.t = 0, 0, t0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        for k, v in terms.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float()
        self.n += 1

    def close(self) -> tuple[dict[str, float], float]:
        """(the mean of each term, examples per second) over the window; starts the next."""
        now = time.perf_counter()
        sums = self.sums
        if self.accelerator.num_processes > 1 and sums:
            # the mean over all processes (each saw an equal share of the batch)
            keys = sorted(sums)
            sums = dict(zip(keys, self.accelerator.reduce(torch.stack([sums[k] for k in keys]), "mean").unbind()))
        record = {k: float(v) / self.n for k, v in sums.items()} if self.n else {}
        rate = self.seen / max(now - self.t, 1e-9)
        self.sums, self.n, self.seen, self.t = {}, 0, 0, now
        return record, rate


class _Checkpoints:
    """Writes the run's checkpoints (the main process) and remembers the last good one,
    which a stop names."""

    def __init__(self, run_dir: Path, cfg: TrainConfig, config: dict, accelerator: Accelerator,
                 model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                 steps_per_epoch: int, last_good: Optional[Path], nonfinite: _NonFinite,
                 bad: _BadExamples, stream: Optional[StreamBatches]):
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


def _due(every: int, step: int, total: int) -> bool:
    """A periodic evaluation / checkpoint at ``step`` (the end of the run has its own)."""
    return bool(every) and step % every == 0 and step != total


def _stop_requested(signals: StopSignals, step: int, cfg: TrainConfig, accelerator: Accelerator) -> bool:
    if accelerator.num_processes == 1:
        return signals.received is not None
    if step % cfg.log_every:
        return False
    # processes agree at log steps (where they sync anyway), or the checkpoint's
    # collectives would wait on a process that went on training
    flag = torch.tensor([1.0 if signals.received else 0.0], device=accelerator.device)
    return float(accelerator.reduce(flag, "sum")) > 0


def _evaluate(evaluate: Callable, step: int, model: torch.nn.Module, unwrapped: torch.nn.Module,
              accelerator: Accelerator, log: MetricsLog) -> dict[str, float]:
    result: dict[str, float] = {}
    if accelerator.is_main_process:
        model.eval()
        result = evaluate(unwrapped, step)
        model.train()
        log.write({"step": step, "split": "eval", **result})
    accelerator.wait_for_everyone()
    return result


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
    resumed = resume(run_dir, accelerator, model, optimizer, scheduler, schedule, cfg)
    if stream is None:
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    else:  # each process reads its own share of the stream: no loader for Accelerate to shard
        model, optimizer = accelerator.prepare(model, optimizer)
        stream.restore(resumed.stream, resumed.step, resumed.checkpoint)
    unwrapped = accelerator.unwrap_model(model)
    forward = _Forward(model, cfg, accelerator, batch_key)

    start = step = resumed.step
    epoch, skip = divmod(step, steps_per_epoch)
    skip *= cfg.grad_accum
    last: dict[str, float] = {}
    eval_metrics: dict[str, float] = {}
    t0 = time.perf_counter()
    window = _Window(accelerator, t0)
    bar = tqdm(total=total, initial=start, desc=desc, disable=not (main and cfg.progress),
               dynamic_ncols=True, unit="step")
    tracking.start(accelerator, start, config)
    log = MetricsLog(run_dir / "metrics.jsonl", main, tracking)
    nonfinite = _NonFinite(cfg.nan_policy, accelerator, resumed.counters["nonfinite_steps_skipped"], bar)
    bad = _BadExamples(accelerator, resumed.counters["bad_examples_skipped"])
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
                        if accelerator.sync_gradients and cfg.clip_grad > 0:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
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
                if evaluate is not None and _due(cfg.eval_every, step, total):
                    nonfinite.stop_if_bad(ckpts.last_good)
                    eval_metrics = _evaluate(evaluate, step, model, unwrapped, accelerator, log)
                if _due(cfg.ckpt_every, step, total):
                    ckpts.save(step)
                if _stop_requested(signals, step, cfg, accelerator) and step < total:
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
        eval_metrics = _evaluate(evaluate, step, model, unwrapped, accelerator, log) or eval_metrics
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
