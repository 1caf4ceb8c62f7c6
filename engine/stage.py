"""A stage's run around the shared loop (``engine.trainer.train``): what the tokenizer, each
prior level and the audio classifier do alike before and after training.

A stage first checks that its ``run_dir`` is new, empty or a run of its kind
(``engine/run_dir.py``'s ownership rule), can be written, and that its trackers are
installed (:func:`check_start`, before any work), then its own inputs; :func:`claim_run_dir`
refuses a folder holding another run, holds it for this process and marks it; :func:`seeded` builds the
model; :func:`start_run` saves the resolved config. After training, :func:`train_summary`
is ``eval.json``'s record of the run and :func:`finish_run` writes ``eval.json`` and the
final line of ``metrics.jsonl`` (also to the run's trackers, which it ends). What each
stage evaluates, saves and reports stays its own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional, TypeVar

import torch
from accelerate import PartialState
from torch.utils.data import Dataset

from engine.config import save_yaml, to_dict
from engine.distributed import process_state
from engine.files import write_text_atomic
from engine.resume import COUNTERS
from engine.run_dir import check_folder, check_run_dir, check_writable, hold_folder
from engine.tracking import MetricsLog, Tracking, check_installed
from engine.trainer import TrainResult

M = TypeVar("M")


def check_start(cfg: Any, kind: str) -> None:
    """Before any work: ``cfg.run_dir`` is new, empty or holds a run of ``kind`` (a
    ``engine.run_dir.KINDS`` entry), can be written, and every tracker of
    ``cfg.train.report_to`` is installed."""
    check_folder(cfg.run_dir, kind, "run_dir")
    check_writable(cfg.run_dir, "run_dir")
    check_installed(cfg.train.report_to)


def training_splits(data: Any, build: Callable[..., Dataset]) -> tuple[Dataset, Dataset]:
    """The training and evaluation splits of ``data`` (a data config with ``train_split``,
    ``eval_split`` and ``source``) through ``build(data, split, train=...)``; an empty
    training split is an error before any work."""
    train_set = build(data, data.train_split, train=True)
    eval_set = build(data, data.eval_split, train=False)
    if len(train_set) == 0:
        raise ValueError(f"data: the {data.train_split!r} split of {data.source!r} is empty")
    return train_set, eval_set


@contextlib.contextmanager
def claim_run_dir(cfg: Any, resumable: Sequence[str], kind: str) -> Iterator[Path]:
    """Refuse a ``cfg.run_dir`` that is not new, empty or a run of ``kind``, or whose saved
    config differs outside the sections in ``resumable`` (those may change between a run
    and its resumption), then hold it for this process (a second process on it is refused)
    and mark it as a ``kind`` run."""
    check_folder(cfg.run_dir, kind, "run_dir")
    check_run_dir(cfg.run_dir, to_dict(cfg), resumable)
    with hold_folder(cfg.run_dir, kind, "run_dir"):
        yield Path(cfg.run_dir)


def seeded(seed: int, build: Callable[[], M]) -> M:
    """``build()`` under ``seed``: the initial weights are part of the run's identity."""
    torch.manual_seed(seed)
    return build()


def start_run(cfg: Any, files: Optional[dict[str, Any]] = None) -> PartialState:
    """Under ``accelerate launch`` every process runs the stage and the main one writes: it
    creates ``cfg.run_dir`` and saves ``config.yaml`` (and ``files``: name -> JSON record).
    Returns the process state."""
    state = process_state()
    if state.is_main_process:
        run_dir = Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, run_dir / "config.yaml")
        for name, record in (files or {}).items():
            write_text_atomic(run_dir / name, json.dumps(record, indent=2))
    return state


def train_summary(result: TrainResult, parameters: int, **own: Any) -> dict[str, Any]:
    """``eval.json``'s record of the training run; ``own``: what a stage adds."""
    return {
        "steps": result.step, "resumed_from": result.resumed_from,
        "seconds": result.seconds, "examples_per_s": result.examples_per_second,
        "parameters": parameters, **own,
        "bad_examples_skipped": result.bad_examples_skipped,
        "nonfinite_steps_skipped": result.nonfinite_steps_skipped,
        "processes": result.processes,
    }


def finish_run(run_dir: str | Path, result: TrainResult, metrics: dict[str, Any],
               eval_dir: Optional[str | Path] = None, counters: Sequence[str] = COUNTERS,
               tracking: Optional[Tracking] = None) -> None:
    """Write ``metrics`` to ``eval.json`` (in ``eval_dir``, default ``run_dir``) and end
    ``run_dir/metrics.jsonl`` with the final line: the float metrics and the run's
    ``counters`` (of :class:`TrainResult`); ``tracking`` (the one given to ``train``) gets
    that line too and is ended."""
    run_dir = Path(run_dir)
    write_text_atomic(Path(eval_dir or run_dir) / "eval.json", json.dumps(metrics, indent=2))
    final = {"step": result.step, "split": "eval", "final": True,
             **{k: v for k, v in metrics.items() if isinstance(v, float)},
             **{k: getattr(result, k) for k in counters}}
    MetricsLog(run_dir / "metrics.jsonl", True, tracking).write(final)
    if tracking is not None:
        tracking.end()
