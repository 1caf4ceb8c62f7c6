"""The stages of one pipeline track: each runs its standalone command's code on the paths
:func:`hqvae.pipeline.config.stage_configs` sets and returns the numbers summary.json keeps."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, Optional

from hqvae.pipeline.config import TrackConfig
from prior.config import PriorConfig
from sampling.classifier.config import ClassifierConfig
from sampling.sample_reader import is_unfinished, labels_path
from tokenizer.config import TokenizerConfig

Log = Callable[[str], None]


def run_tokenizer(tok_cfg: TokenizerConfig) -> dict:
    # imported on use, as every stage's: loading a pipeline config starts without torch
    from tokenizer.train import format_summary, train_tokenizer

    metrics = train_tokenizer(tok_cfg)
    print(format_summary(metrics, tok_cfg.run_dir))
    return {k: metrics.get(k) for k in ("rmse", "psnr", "ssim", "lsd_db")}


def run_encode(tok_cfg: TokenizerConfig, track: TrackConfig, codes_dir: Path, device: str) -> dict:
    # imported on use: they load torch, which loading a pipeline config does without
    from prior.codes import encode_splits
    from tokenizer.pretrained import Tokenizer

    tok = Tokenizer.from_pretrained(tok_cfg.run_dir, device=device)
    data = tok_cfg.data
    entries = encode_splits(tok, data, codes_dir, [data.train_split, data.eval_split],
                            batch_size=track.encode.batch_size, max_examples=track.encode.max_examples,
                            tokenizer_run=tok_cfg.run_dir)
    return {"examples": {split: entry.get("num_examples") for split, entry in entries.items()}}


def run_prior(prior_cfg: PriorConfig, levels: list[int]) -> dict:
    # imported on use: it loads torch, which loading a pipeline config does without
    from prior.train import format_summary, train_prior

    results = train_prior(prior_cfg, levels)
    print(format_summary(results, prior_cfg.run_dir))
    summary = json.loads((Path(prior_cfg.run_dir) / "eval.json").read_text())
    return {"bits_per_token": [summary["levels"][k].get("bits_per_token") for k in sorted(summary["levels"])]}


def run_classifier(clf_cfg: ClassifierConfig) -> dict:
    # imported on use: loading a pipeline config starts without the trainer
    from sampling.classifier.train import format_summary, train_classifier

    metrics = train_classifier(clf_cfg)
    print(format_summary(metrics, clf_cfg.run_dir))
    return {"accuracy": metrics["accuracy"]}


def run_samples(track: TrackConfig, root: Path, device: str, random_codes: bool = False) -> dict:
    """Sample from the priors (or, for the baseline, draw uniformly random codes) as
    `hqvae sample` does, into ``root/samples`` (``root/random``)."""
    # imported on use: loading a pipeline config starts without torch
    from sampling.sample_set import sample_into

    s = track.sample
    # into a folder of its own, renamed into place when the set is finished: no stale files
    # of an earlier, larger run, and no half-written folder that a re-run would score. A set
    # stopped part way (its progress recorded) is continued by sample_into, or replaced when
    # the settings changed; anything else there is a leftover of this stage's
    out = root / ("random" if random_codes else "samples")
    tmp = out.with_name(out.name + ".partial")
    if not is_unfinished(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    # 'cycle', the default, on an unconditional prior samples unconditionally (the config
    # refuses any other label there)
    settings = s.settings(label=s.label if track.prior.class_cond else None)
    sample_into(tmp, root / "prior", root / "tokenizer", settings, device=device, random_codes=random_codes,
                extra={"pipeline_sample": dataclasses.asdict(s)})  # what `pipeline` compares on a re-run
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"n": s.n, "seconds": time.perf_counter() - t0}


def classifier_run(track: TrackConfig, root: Path) -> Optional[str]:
    """The classifier that scores the track: ``score.classifier_run``, else the track's own
    (None: an image track without one reports no class accuracy)."""
    if track.score.classifier_run:
        return track.score.classifier_run
    return str(root / "classifier") if track.classifier is not None else None


def _scores(result: dict) -> dict:
    """The numbers summary.json keeps of a scorer's result (sampling/metrics/scorer.py)."""
    keys = {"fid": "fid", "kid": "kid_mean", "kid_std": "kid_std", "precision": "precision",
            "recall": "recall", "num": "num_samples"}
    return {k: result[src] for k, src in keys.items() if src in result}


def _image_fid(track: TrackConfig, tok_cfg: TokenizerConfig, root: Path, device: str, log: Log) -> dict:
    # `hqvae fid`'s and `hqvae classify`'s own scorers, imported here: `hqvae config` starts without torch-fidelity
    from sampling.classifier.model import as_classifier
    from sampling.metrics.class_accuracy import score_folder as classify_folder
    from sampling.metrics.image_fid import Reference, compute_fid, score_folder

    data, s = tok_cfg.data, track.score
    split = s.split or data.train_split
    out: dict[str, Any] = {"metric": "FID (Inception pool3)"}
    for name in ("samples", "random"):
        r = score_folder(root / name, f"{data.source}:{split}", path=data.path, max_reference=s.max_reference,
                         kid=True, prc=True, batch_size=s.batch_size, device=device, progress=True)
        out["reference"] = {"source": data.source, "path": data.path, "split": split, "num": r["num_reference"]}
        out[name] = _scores(r)
    real = real_examples(data, track.sample.n)
    out["real"] = _scores(compute_fid(real.x, Reference(data, split, s.max_reference), kid=True, prc=True,
                                      batch_size=s.batch_size, device=device, progress=True))
    clf = classifier_run(track, root)
    if clf is not None:
        # does a sample show its class? the classifier's accuracy on real held-out images
        # is the ceiling it is read against
        model = as_classifier(clf, "image").to(device)
        out["classifier"], out["classes"] = clf, model.num_classes
        if labels_path(root / "samples") is not None:  # class-conditional samples
            out["samples"]["accuracy"] = classify_folder(root / "samples", model,
                                                         batch_size=s.batch_size)["accuracy"]
        _add_real_accuracy(out["real"], model, real.x, real, s.batch_size, log)
    return out


def _audio_fid(track: TrackConfig, tok_cfg: TokenizerConfig, root: Path, device: str, log: Log) -> dict:
    # `hqvae audio-fid`'s own scorers, imported here: `hqvae config` starts without torch-fidelity
    from sampling.classifier.model import as_classifier
    from sampling.metrics.audio_fid import audio_fid, score_folder
    from tokenizer.audio import Spectrogram
    from tokenizer.data import build_dataset

    data, s = tok_cfg.data, track.score
    split = s.split or data.train_split
    clf = classifier_run(track, root)
    model = as_classifier(clf, "audio").to(device)  # loaded once for every score below
    out: dict[str, Any] = {"metric": "audio FID (classifier penultimate features)", "classifier": clf,
                           "classes": model.num_classes}
    for name in ("samples", "random"):
        r = score_folder(root / name, model, reference=f"{data.source}:{split}", path=data.path,
                         max_reference=s.max_reference, batch_size=s.batch_size, device=device)
        out["reference"] = {"source": data.source, "path": data.path, "split": split, "num": r["num_reference"]}
        out[name] = _scores(r)
        if name == "samples" and "accuracy" in r:
            out[name]["accuracy"] = r["accuracy"]["accuracy"]
    # the floor: real held-out clips through the same Griffin-Lim round trip as the samples
    spec = Spectrogram(data.audio)
    real = real_examples(data, track.sample.n)
    heard = spec(spec.to_waveform(real.x, n_iter=track.sample.griffin_lim_iters))
    r = audio_fid(model, heard, build_dataset(data, split), batch_size=s.batch_size,
                  max_reference=s.max_reference, device=device)
    out["real"] = {**_scores(r), "split": data.eval_split}
    _add_real_accuracy(out["real"], model, heard, real, s.batch_size, log)
    return out


class RealExamples(NamedTuple):
    """Examples spread over the eval split: the 'real data' row of the scores."""

    x: Any  # torch.Tensor (N, C, H, W)
    labels: list[int]  # -1: the data has no labels
    class_names: Optional[list[str]]  # the dataset's (None: not stored)


def real_examples(data, n: int) -> RealExamples:
    """``n`` examples spread over the eval split as one tensor, their labels and the
    dataset's class names."""
    # imported on use: loading a pipeline config starts without torch
    import torch

    from engine.subsets import spread_indices
    from tokenizer.data import build_dataset

    ds = build_dataset(data, data.eval_split)
    items = [ds[i] for i in spread_indices(len(ds), n)]
    names = getattr(ds, "class_names", None)
    return RealExamples(torch.stack([it["x"] for it in items]), [int(it["label"]) for it in items],
                        list(names) if names is not None else None)


def real_data_mismatch(model, real: RealExamples) -> Optional[str]:
    """Why the classifier's accuracy on ``real`` would be meaningless (None: it is not): the
    data has no labels, or its classes are not the classifier's (another data set, another
    order, e.g. a ``score.classifier_run`` trained elsewhere)."""
    if any(y < 0 for y in real.labels):
        return "the held-out data has no labels"
    if real.class_names is not None and real.class_names != (model.class_names or []):
        return (f"the data's classes {real.class_names} are not the classifier's "
                f"{model.class_names} (same names in the same order)")
    if any(y >= model.num_classes for y in real.labels):
        return f"the data has labels beyond the classifier's {model.num_classes} classes"
    return None


def _add_real_accuracy(row: dict, model, x, real: RealExamples, batch_size: int, log: Log) -> None:
    """``row["accuracy"]``: the classifier's accuracy on the real examples ``x`` (``real.x``,
    or as heard after the round trip), unless their labels are not its classes (one line
    logged saying why)."""
    # imported on use: loading a pipeline config starts without the network
    from sampling.classifier.evaluate import class_accuracy

    why = real_data_mismatch(model, real)
    if why is not None:
        log(f"   no class accuracy on real held-out data: {why}")
        return
    row["accuracy"] = class_accuracy(model, x, real.labels, batch_size=batch_size)["accuracy"]


def run_score(track: TrackConfig, tok_cfg: TokenizerConfig, root: Path, name: str, device: str,
              log: Log = print) -> dict:
    out = (_image_fid if name == "image" else _audio_fid)(track, tok_cfg, root, device, log)
    out["ratio_random_to_samples"] = out["random"]["fid"] / max(out["samples"]["fid"], 1e-12)
    out["real"]["split"] = tok_cfg.data.eval_split
    return out
