"""``metrics.jsonl`` and the live experiment trackers of ``train.report_to``.

Every line ``metrics.jsonl`` gets (training losses, lr, sigma^2, tau, periodic and final
evaluations) also goes, as it is written, to the trackers Accelerate runs for the list in
``train.report_to`` (TensorBoard, trackio, Weights & Biases), and the resolved config is
the tracker run's hyperparameters. ``metrics.jsonl`` stays the record; the trackers show it
live. Only the main process logs (Accelerate starts trackers there alone); files go under
``RUN_DIR/trackers/``. A resumed run goes on in the tracker run it started (docs/guides/tracking.md).
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from engine.config import ConfigError
from engine.files import write_text_atomic

if TYPE_CHECKING:
    from accelerate import Accelerator

# the Accelerate trackers a resumed run can continue in (see Tracking.start); Accelerate's
# others would open a new tracker run on every resumption
TRACKERS = ("tensorboard", "trackio", "wandb")
PROJECT = "hqvae"  # the tracker project (TensorBoard: the folder under RUN_DIR/trackers/)


def check_names(report_to: Sequence[str]) -> None:
    """``train.report_to`` names supported trackers, each once (checked at config load)."""
    for i, name in enumerate(report_to):
        if name not in TRACKERS:
            raise ConfigError(f"report_to: {name!r} is not a supported tracker; choose from "
                              f"{', '.join(TRACKERS)} (a list; [] = none)")
        if name in report_to[:i]:
            raise ConfigError(f"report_to: {name!r} is listed twice")


def check_installed(report_to: Sequence[str], key: str = "train.report_to") -> None:
    """Refuse a tracker whose package is missing, before the first expensive step:
    Accelerate itself drops such a tracker without a word."""
    if not report_to:
        return
    import accelerate.utils

    for name in report_to:
        if not getattr(accelerate.utils, f"is_{name}_available")():
            raise ConfigError(f"{key}: {name!r} needs the {name} package, which is not installed "
                              f"(pip install {name}), or take it out of {key}")


def hyperparameters(config: Any, prefix: str = "") -> dict[str, Any]:
    """``config`` flattened to the scalars trackers take: ``{"train.lr": 0.001,
    "model.layers.0.codebook_size": 512, ...}``; an empty list or mapping becomes None."""
    if isinstance(config, dict):
        items = list(config.items())
    elif isinstance(config, (list, tuple)):
        items = list(enumerate(config))
    else:
        return {prefix: config}
    if not items:
        return {prefix: None} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(hyperparameters(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


class Tracking:
    """The trackers of one run directory (``report_to`` empty: none, and nothing to do).
    The training loop starts them with its Accelerator; whoever writes the run's last
    metrics line ends them (:func:`engine.stage.finish_run`, else the loop)."""

    def __init__(self, report_to: Sequence[str], run_dir: str | Path):
        self.names = list(report_to)
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "trackers"
        self.accelerator: Optional[Accelerator] = None  # set on the main process once started

    def accelerator_kwargs(self) -> dict[str, Any]:
        return {"log_with": self.names, "project_dir": str(self.dir)} if self.names else {}

    def start(self, accelerator: Accelerator, step: int, config: dict) -> None:
        """Open the trackers of a run that (re)starts after ``step``, with ``config``'s
        scalars as hyperparameters."""
        if not self.names or not accelerator.is_main_process:
            return
        self.accelerator = accelerator
        run_id = self._run_id()
        name = str(self.run_dir)
        init_kwargs: dict[str, dict] = {
            # the same tracker run again on resumption, not a new one under the same name
            "wandb": {"id": run_id, "name": name, "resume": "allow", "dir": str(self.dir)},
            "trackio": {"name": f"{name} [{run_id}]", "resume": "allow"},
        }
        # TensorBoard names an event file by the second it was opened and the host: a run
        # resumed within the same second (a quick retry, a test) would reopen the first
        # file and erase it, so every start gets a suffix of its own
        init_kwargs["tensorboard"] = {"filename_suffix": f".{secrets.token_hex(6)}"}
        if step:
            # a resumed run logs again the steps after its checkpoint: TensorBoard hides the
            # interrupted run's events from there on (they were never checkpointed)
            init_kwargs["tensorboard"]["purge_step"] = step + 1
        accelerator.init_trackers(PROJECT, config=hyperparameters(config), init_kwargs=init_kwargs)

    def _run_id(self) -> str:
        """The tracker run's id, made once per run directory: a fresh run directory at a
        reused path starts a new tracker run."""
        path = self.dir / "run_id"
        if path.is_file():
            return path.read_text().strip()
        run_id = secrets.token_hex(4)
        write_text_atomic(path, run_id + "\n")
        return run_id

    def log(self, record: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` line: its numbers as ``<split>/<key>`` at its step."""
        if self.accelerator is None:
            return
        split = record.get("split", "train")
        values = {f"{split}/{k}": v for k, v in record.items()
                  if k not in ("step", "split") and isinstance(v, (int, float))
                  and not isinstance(v, bool)}
        self.accelerator.log(values, step=record["step"])

    def end(self) -> None:
        if self.accelerator is None:
            return
        # each tracker's finish(), not accelerator.end_training(): that also destroys the
        # process group, which the next prior level and the stage's barriers still use
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()
        self.accelerator = None


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if torch.is_tensor(v) else v) for k, v in d.items()}


class MetricsLog:
    """``metrics.jsonl``, appended by the main process, each line also to ``tracking``."""

    def __init__(self, path: Path, main: bool, tracking: Optional[Tracking] = None):
        self.path, self.main, self.tracking = path, main, tracking

    def write(self, record: dict) -> None:
        if not self.main:
            return
        record = _jsonable(record)
        with self.path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tracking is not None:
            self.tracking.log(record)
