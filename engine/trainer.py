"""The one Accelerate training loop, shared by the tokenizer and every prior.

A stage hands over a model whose ``forward(batch, step)`` returns a dict of scalar
terms with the objective under ``"loss"`` (going through ``forward`` keeps DDP's gradient
hooks in play), a map-style dataset, and optional evaluation/statistics callbacks.
Everything else -- mixed precision, gradient accumulation, clipping, LR schedule, periodic
evaluation, checkpoints, resume, progress, JSON-lines metrics -- lives here, once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin, set_seed
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from engine.checkpoint import list_checkpoints, load_checkpoint, restore_rng, save_checkpoint
from engine.train_config import TrainConfig


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch: the data order is a function of (seed, epoch),
    so a resumed run sees exactly the batches the uninterrupted run would have seen."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


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


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if torch.is_tensor(v) else v) for k, v in d.items()}


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
    """Train ``model`` in place; resume from the newest checkpoint in ``run_dir`` if any.

    ``batch_key``: the batch field handed to ``model(...)`` (None passes the whole batch).
    ``final_eval``: run ``evaluate`` once more at the end (off when the caller runs a
    fuller evaluation of its own there).
    """
    run_dir = Path(run_dir)
    # Accelerate keeps its settings in a process-wide singleton; a second run in the same
    # process (tests, sweeps, a notebook) with another precision must start from a clean one.
    # The distributed setup (PartialState) is kept.
    AcceleratorState._reset_state()
    # sync_with_dataloader=False: an epoch is cut to whole optimizer steps below, so a
    # partial accumulation never forces an extra step at an epoch's end
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(
            num_steps=cfg.grad_accum, sync_with_dataloader=False
        ),
    )
    set_seed(cfg.seed)
    world = accelerator.num_processes
    micro = cfg.batch_size // cfg.grad_accum
    if micro % world:
        raise ValueError(
            f"train.batch_size={cfg.batch_size} / grad_accum={cfg.grad_accum} = {micro} "
            f"is not divisible by the {world} processes"
        )
    micro //= world
    if len(dataset) < micro * world:
        raise ValueError(f"dataset has {len(dataset)} examples, fewer than one batch ({micro * world})")
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

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
        betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
    )
    # stepped by hand once per optimizer step (a prepared scheduler would step per process)
    schedule = lr_lambda(cfg, total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    start = 0
    ckpts = list_checkpoints(run_dir)
    if ckpts:
        ckpt = load_checkpoint(ckpts[-1])
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start = int(ckpt["step"])
        restore_rng(ckpt)
        # a resumed run may ask for more steps or another lr, which reshapes the schedule;
        # the restored optimizer still holds the old schedule's LR for this step
        scheduler.base_lrs = [cfg.lr] * len(optimizer.param_groups)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lr * schedule(start)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    unwrapped = accelerator.unwrap_model(model)

    metrics_path = run_dir / "metrics.jsonl"
    main = accelerator.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)

    def log(record: dict) -> None:
        if main:
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(_jsonable(record)) + "\n")

    def checkpoint(step: int) -> None:
        accelerator.wait_for_everyone()
        if main:
            save_checkpoint(
                run_dir, step, unwrapped.state_dict(), optimizer.optimizer, scheduler, config,
                extra={"epoch": step // steps_per_epoch}, keep_last=cfg.keep_last,
            )
        accelerator.wait_for_everyone()

    def run_eval(step: int) -> dict[str, float]:
        if evaluate is None:
            return {}
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
    t0 = time.perf_counter()
    t_log = t0
    bar = tqdm(total=total, initial=start, desc=desc, disable=not (main and cfg.progress),
               dynamic_ncols=True, unit="step")
    model.train()
    while step < total:
        sampler.set_epoch(epoch)
        loader_rng.manual_seed(cfg.seed * 1_000_003 + epoch)
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        remaining = steps_per_epoch * cfg.grad_accum - skip
        skip = 0
        for batch in batches:
            if remaining <= 0:
                break
            remaining -= 1
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    inputs = batch[batch_key] if batch_key else batch
                    terms = model(inputs, step=step)
                accelerator.backward(terms["loss"])
                if accelerator.sync_gradients and cfg.clip_grad > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.clip_grad)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            for k, v in terms.items():
                # accumulated on device: no host sync until the next log line
                sums[k] = sums.get(k, 0) + v.detach().float()
            n_sum += 1
            seen += micro * world
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update(1)
            if step % cfg.log_every == 0 or step == total:
                now = time.perf_counter()
                record = {k: float(v) / n_sum for k, v in sums.items()}
                record.update(stats(unwrapped, step) if stats else {})
                rate = seen / max(now - t_log, 1e-9)
                last = record
                log({"step": step, "epoch": epoch, "split": "train", "lr": scheduler.get_last_lr()[0],
                     "examples_per_s": rate, **record})
                bar.set_postfix(loss=f"{record['loss']:.4g}", ex_s=f"{rate:.0f}")
                sums, n_sum, seen, t_log = {}, 0, 0, now
            if cfg.eval_every and step % cfg.eval_every == 0 and step != total:
                eval_metrics = run_eval(step)
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step != total:
                checkpoint(step)
            if step >= total:
                break
        epoch += 1
    bar.close()
    seconds = time.perf_counter() - t0
    trained = step - start
    if trained > 0 or not ckpts:
        checkpoint(step)
    if final_eval:
        eval_metrics = run_eval(step) or eval_metrics
    return TrainResult(
        step=step, resumed_from=start, seconds=seconds,
        examples_per_second=trained * cfg.batch_size / max(seconds, 1e-9),
        last_metrics=last, eval_metrics=eval_metrics,
    )
