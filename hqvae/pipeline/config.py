"""The pipeline's config: one ``image`` and/or ``audio`` track, each a full tokenizer
config, a prior config, sampling and scoring settings and a classifier (audio: the features
of audio FID; both: the class accuracy of the samples), with every check that can run
before the first stage.

The paths that tie the stages together (each stage's ``run_dir``, the prior's ``tokenizer``
and ``data.codes``) are set here (:func:`stage_configs`); giving them in the config is an
error.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from engine.config import ConfigError, load_config, merge, read_yaml
from hqvae import layout
from prior.config import PriorConfig, merge_levels
from sampling.classifier.config import ClassifierConfig
from sampling.settings import settings_section
from tokenizer.config import TokenizerConfig, expand_preset

# the options of `hqvae sample` a pipeline track sets (its YAML keys under ``sample:``); the
# others keep their defaults. 256 samples of balanced classes: enough for a first FID, and
# 'cycle' on an unconditional prior samples unconditionally (the config refuses any other
# label there)
_SampleSection = settings_section(
    "SampleConfig", ("n", "batch_size", "temperature", "top_k", "top_p", "cfg_scale", "label", "seed",
                     "griffin_lim_iters", "compile"), n=256, label="cycle")


@dataclass
class SampleConfig(_SampleSection):
    """A track's ``sample`` section: these options of :class:`SamplingSettings`, with their
    bounds, and at least two samples."""

    min_n = 2  # FID needs two samples

    def validate(self) -> None:
        if isinstance(self.n, int) and self.n < self.min_n:
            raise ConfigError(f"n: must be >= {self.min_n} (FID needs two samples), got {self.n}")
        super().validate()


@dataclass
class ScoreConfig:
    enabled: bool = True  # score the samples (FID / audio FID, class accuracy)
    split: Optional[str] = None  # reference split; null = the tokenizer's train split
    max_reference: Optional[int] = 10000  # reference examples (null = the whole split)
    batch_size: int = 50  # images or clips per feature-extraction batch
    # an existing `hqvae train-classifier` run to score with (audio FID; class accuracy),
    # instead of training the track's `classifier` section
    classifier_run: Optional[str] = None

    def validate(self) -> None:
        if self.max_reference is not None and self.max_reference < 2:
            raise ConfigError(f"max_reference: must be >= 2, got {self.max_reference}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class EncodeConfig:
    batch_size: int = 256  # examples encoded at a time
    max_examples: Optional[int] = None  # per split; null = all

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"max_examples: must be >= 1 (null = all), got {self.max_examples}")


@dataclass
class TrackConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)  # stage one: a tokenizer config
    encode: EncodeConfig = field(default_factory=EncodeConfig)  # encoding both splits into codes
    prior: PriorConfig = field(default_factory=PriorConfig)  # stage two: a prior config
    # the classifier of the data's classes: audio FID's features (required for audio) and
    # the class accuracy of the samples (optional for images); its data is the tokenizer's
    classifier: Optional[ClassifierConfig] = None
    sample: SampleConfig = field(default_factory=SampleConfig)  # the options of `hqvae sample` a track sets
    score: ScoreConfig = field(default_factory=ScoreConfig)  # scoring the samples and the random-code baseline


@dataclass
class PipelineConfig:
    run_dir: str = "runs/pipeline"  # folder of every stage's output, summary.json and report.html
    image: Optional[TrackConfig] = None  # the image track; null = none
    audio: Optional[TrackConfig] = None  # the audio track; null = none
    device: Optional[str] = None  # sampling / scoring device; null = cuda when available
    report: bool = True  # write RUN/report.html at the end

    def validate(self) -> None:
        if self.image is None and self.audio is None:
            raise ConfigError("image / audio: the pipeline needs at least one track")
        for name in layout.TRACKS:
            track = getattr(self, name)
            if track is None:
                continue
            modality = track.tokenizer.data.resolved_modality
            if modality != name:
                raise ConfigError(
                    f"{name}.tokenizer.data: the {name} track has {modality} data "
                    f"(source {track.tokenizer.data.source!r}); set data.modality or move it")
            if name == "audio" and track.score.enabled and track.classifier is None \
                    and not track.score.classifier_run:
                raise ConfigError("audio.classifier: audio FID needs a classifier: add a "
                                  "`classifier` section or set score.classifier_run")
            if track.sample.label not in (None, "cycle") and not track.prior.class_cond:
                raise ConfigError(f"{name}.sample.label: the prior is not class-conditional "
                                  "(set prior.class_cond: true or label: null)")
            if track.sample.cfg_scale != 1 and not track.prior.class_cond:
                # the sampler refuses it too, but only after tokenizer and priors have trained
                raise ConfigError(f"{name}.sample.cfg_scale: classifier-free guidance needs a "
                                  "class-conditional prior (set prior.class_cond: true or cfg_scale: 1)")
            if track.tokenizer.data.streaming and track.score.enabled:
                # reference features and the real-data row need rows spread over a split
                raise ConfigError(f"{name}.tokenizer.data.streaming: the score stage reads the data "
                                  f"with random access, not as a stream; set {name}.score.enabled=false "
                                  "or data.streaming=false")
            if track.sample.cfg_scale != 1 and track.prior.class_cond and track.prior.label_dropout == 0:
                # guidance mixes in the null-label model, which only label dropout trains
                raise ConfigError(f"{name}.sample.cfg_scale: guidance needs the unconditional model, "
                                  "which prior.label_dropout=0 never trains (set label_dropout > 0 "
                                  "or cfg_scale: 1)")


# keys the pipeline sets itself: (section, key)
_OWNED = [("tokenizer", ("run_dir",)), ("prior", ("run_dir",)), ("prior", ("tokenizer",)),
          ("prior", ("data", "codes")), ("classifier", ("run_dir",))]


def _drop(node: dict, keys: tuple) -> None:
    for k in keys[:-1]:
        node = node.get(k) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(keys[-1], None)


def _prepare(data: dict) -> dict:
    """Read ``base:`` stage config files; expand presets and per-level prior settings inside
    each track; default the classifier's data to the tokenizer's (same inputs);
    refuse the keys we own."""
    data = copy.deepcopy(data)
    for name in layout.TRACKS:
        track = data.get(name)
        if not isinstance(track, dict):
            continue
        for section in ("tokenizer", "prior", "classifier"):
            node = track.get(section)
            if isinstance(node, dict) and "base" in node:
                # a stage config file (e.g. configs/tokenizer/cifar10_sqvae2.yaml) as the
                # starting point; its own paths are the standalone run's, not this one's
                base_path = node.pop("base")
                if not isinstance(base_path, str):
                    raise ConfigError(f"{name}.{section}.base: expected a config file path, got {base_path!r}")
                try:
                    base = read_yaml(base_path)
                except ConfigError as err:
                    raise ConfigError(f"{name}.{section}.base: {err}") from None
                for sec, keys in _OWNED:
                    if sec == section:
                        _drop(base, keys)
                if section == "classifier":
                    base.pop("data", None)  # the classifier sees what the tokenizer sees
                track[section] = merge(base, node)
        for section, keys in _OWNED:
            node = track.get(section)
            for k in keys[:-1]:
                node = node.get(k) if isinstance(node, dict) else None
            if isinstance(node, dict) and keys[-1] in node:
                raise ConfigError(f"{name}.{section}.{'.'.join(keys)}: set by the pipeline "
                                  f"(everything goes under run_dir); remove it")
        tok = track.get("tokenizer")
        # their errors name keys relative to the section: say which section
        if isinstance(tok, dict):
            try:
                track["tokenizer"] = tok = expand_preset(tok)
            except ConfigError as err:
                raise ConfigError(f"{name}.tokenizer.{err}") from None
        if isinstance(track.get("prior"), dict):
            try:
                track["prior"] = merge_levels(track["prior"])
            except ConfigError as err:
                raise ConfigError(f"{name}.prior.{err}") from None
        clf = track.get("classifier")
        if isinstance(clf, dict) and isinstance(tok, dict):
            base = copy.deepcopy(tok.get("data") or {})
            base.setdefault("modality", name)  # the track's, which validate() checks
            clf["data"] = merge(base, clf.get("data") or {})
    return data


def load_pipeline_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PipelineConfig:
    return load_config(PipelineConfig, path, overrides, prepare=_prepare)


# ---------------------------------------------------------------------------------------
# the stage configs, wired to the run directory


def stage_configs(cfg: PipelineConfig, name: str) -> dict[str, Any]:
    """The tokenizer / prior / classifier configs of track ``name`` with their paths set."""
    track: TrackConfig = getattr(cfg, name)
    root = layout.track_dir(cfg.run_dir, name)
    tok = dataclasses.replace(track.tokenizer, run_dir=str(root / "tokenizer"))
    data = tok.data
    prior_data = dataclasses.replace(track.prior.data, codes=str(root / "codes"))
    if track.prior.data.train_split == "train" and data.train_split != "train":
        prior_data.train_split = data.train_split  # follow a tokenizer with other split names
    if track.prior.data.eval_split == "test" and data.eval_split != "test":
        prior_data.eval_split = data.eval_split
    prior = dataclasses.replace(track.prior, run_dir=str(root / "prior"), tokenizer=tok.run_dir,
                                data=prior_data)
    clf = None
    if track.classifier is not None:
        clf = dataclasses.replace(track.classifier, run_dir=str(root / "classifier"))
    return {"tokenizer": tok, "prior": prior, "classifier": clf, "root": root}


def check_trackers(cfg: PipelineConfig) -> None:
    """Every training stage's ``train.report_to`` is installed here: a stage checks its own
    only when it starts, after the stages before it have trained."""
    # imported on use: it loads torch, which `hqvae config` starts without
    from engine.tracking import check_installed

    for name in layout.TRACKS:
        track = getattr(cfg, name)
        for stage in ("tokenizer", "prior", "classifier"):
            section = getattr(track, stage, None)
            if section is not None:
                check_installed(section.train.report_to, f"{name}.{stage}.train.report_to")


def check_sample_labels(cfg: PipelineConfig) -> None:
    """A class id beyond the data's classes, or a name that is not one of them, would fail
    only at sampling, after the tokenizer and the priors have trained: look at the data's
    classes first (the table is memory-mapped and the tokenizer stage reads it anyway)."""
    # imported on use: they load torch, which `hqvae config` starts without
    from sampling.sample_set import class_index
    from tokenizer.data import build_dataset

    for name in layout.TRACKS:
        track = getattr(cfg, name)
        if track is None or track.sample.label in (None, "cycle"):
            continue
        data = track.tokenizer.data
        dataset = build_dataset(data, data.train_split)
        classes = getattr(dataset, "num_classes", None)
        if classes is None:  # unknown until encoding: the sampler checks it
            continue
        try:
            index = class_index(track.sample.label, getattr(dataset, "class_names", None), f"{name}.sample.label")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if index >= classes:
            raise ConfigError(f"{name}.sample.label: {track.sample.label} is out of range: the "
                              f"{name} data has classes 0..{classes - 1}")


def check_classifier_runs(cfg: PipelineConfig) -> None:
    """A ``score.classifier_run`` is read only when scoring, after every model has trained:
    load it first, so a wrong path, a classifier of the other modality, of another input
    shape or (class-conditional priors) of other classes fails now, naming the key."""
    # imported on use: loading a pipeline config starts without the network
    from sampling.classifier.model import as_classifier

    for name in layout.TRACKS:
        track = getattr(cfg, name)
        if track is None or not track.score.enabled or not track.score.classifier_run:
            continue
        try:
            clf = as_classifier(track.score.classifier_run, name)
        except (FileNotFoundError, ValueError) as err:  # ConfigError is a ValueError
            raise ConfigError(f"{name}.score.classifier_run: {err}") from None
        shape = tuple(track.tokenizer.data.shape)
        if tuple(clf.input_shape) != shape:
            raise ConfigError(f"{name}.score.classifier_run: it classifies inputs of shape "
                              f"{list(clf.input_shape)}, the {name} track's data has {list(shape)}")
        if track.prior.class_cond and clf.class_names:
            # the samples' labels are class ids of the track's data: they only mean the
            # classifier's classes when both name the same classes in the same order
            from tokenizer.data import build_dataset

            data = track.tokenizer.data
            names = getattr(build_dataset(data, data.train_split), "class_names", None)
            if names is not None and list(names) != list(clf.class_names):
                raise ConfigError(f"{name}.score.classifier_run: it classifies {list(clf.class_names)}, "
                                  f"the {name} track's data has classes {list(names)} (same names in "
                                  f"the same order needed)")
