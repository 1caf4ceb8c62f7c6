"""Training a classifier through the shared loop (``engine.trainer.train``). Run directory::

    RUN_DIR/config.yaml          resolved config (``model.num_classes``, ``data.modality`` from the data)
    RUN_DIR/metrics.jsonl        training / eval metric lines
    RUN_DIR/checkpoints/step_*/  resumable checkpoints
    RUN_DIR/model.safetensors    weights, config + class names in the metadata
    RUN_DIR/README.md            model card (``engine.pretrained``)
    RUN_DIR/eval.json            held-out accuracy, per-class accuracy, confusion matrix
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from engine.config import ConfigError, to_dict, validate
from engine.stage import (
    check_start,
    claim_run_dir,
    finish_run,
    seeded,
    start_run,
    train_summary,
    training_splits,
)
from engine.tracking import Tracking
from engine.trainer import train
from sampling.classifier.config import RESUMABLE_CHANGES, ClassifierConfig
from sampling.classifier.evaluate import LabelledSet, evaluate_classifier, per_class_line
from sampling.classifier.model import Classifier
from tokenizer.data import build_dataset, resolve_modality


def resolve_data(cfg: ClassifierConfig, train_set: Dataset) -> ClassifierConfig:
    """Fill ``model.num_classes`` in from the training data (and check a set one)."""
    found = getattr(train_set, "num_classes", None)
    want = cfg.model.num_classes
    if want is None:
        if found is None:
            raise ConfigError(
                f"model.num_classes: the {cfg.data.train_split!r} split of {cfg.data.source!r} "
                f"does not say how many classes it has (no ClassLabel column); set model.num_classes"
            )
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, num_classes=int(found)))
        validate(cfg)
    elif found is not None and found != want:
        raise ConfigError(f"model.num_classes: {want}, but the data has {found} classes")
    return cfg


def train_classifier(cfg: ClassifierConfig) -> dict[str, Any]:
    """Train, save and evaluate; returns the eval metrics ({} on non-main processes). The
    modality is the data's (``data.modality`` when set), as for the tokenizer."""
    check_start(cfg, "classifier")
    cfg = resolve_modality(cfg)
    train_set, eval_set = training_splits(cfg.data, build_dataset)
    cfg = resolve_data(cfg, train_set)
    with claim_run_dir(cfg, RESUMABLE_CHANGES, "classifier"):
        return _train_classifier(cfg, train_set, eval_set)


def _train_classifier(cfg: ClassifierConfig, train_set, eval_set) -> dict[str, Any]:
    run_dir = Path(cfg.run_dir)
    class_names = getattr(train_set, "class_names", None)
    model = seeded(cfg.train.seed, lambda: Classifier(cfg, class_names))
    state = start_run(cfg)

    def periodic_eval(m: Classifier, step: int) -> dict[str, float]:
        r = evaluate_classifier(m, eval_set, cfg.eval.max_examples, cfg.eval.batch_size)
        return {"accuracy": r["accuracy"], "loss": r["loss"]}

    tracking = Tracking(cfg.train.report_to, run_dir)
    result = train(
        model=model, dataset=LabelledSet(train_set, model.num_classes, "training data"),
        cfg=cfg.train, run_dir=run_dir, config=to_dict(cfg), evaluate=periodic_eval,
        batch_key=None, desc="train classifier", final_eval=False, tracking=tracking,
    )
    if not state.is_main_process:
        return {}
    model.cpu().eval()
    model.save_pretrained(run_dir)
    metrics = evaluate_classifier(model, eval_set, cfg.eval.max_examples, cfg.eval.batch_size)
    metrics["split"] = cfg.data.eval_split
    metrics["identity"] = model.identity
    metrics["train"] = train_summary(result, model.num_parameters(),
                                     train_accuracy=result.last_metrics.get("accuracy"))
    finish_run(run_dir, result, metrics, tracking=tracking)  # the final line: accuracy and loss, the floats
    return metrics


def format_summary(metrics: dict[str, Any], run_dir: str | Path) -> str:
    """The lines `hqvae train-classifier` prints about a finished run."""
    t = metrics["train"]
    lines = [
        f"trained {t['steps']} steps in {t['seconds']:.0f}s ({t['examples_per_s']:.0f} examples/s, "
        f"{t['parameters']:,} parameters)",
        f"held-out accuracy {metrics['accuracy']:.4f} on {metrics['num_examples']} examples of "
        f"split {metrics['split']!r} (loss {metrics['loss']:.4f})",
    ]
    lines.append(f"per class: {per_class_line(metrics)}")
    lines.append(f"wrote {run_dir} (model.safetensors, eval.json; classifier {metrics['identity']})")
    return "\n".join(lines)
