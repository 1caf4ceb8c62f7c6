"""`hqvae pipeline CONFIG`: tokenizer -> encode -> priors -> sample -> FID -> report, in one run.

One config holds an ``image`` and/or an ``audio`` track; each track is a full tokenizer
config, a prior config, sampling and scoring settings (and, for audio, the classifier
behind audio FID). Every stage writes into the run directory (layout: ``hqvae/layout.py``)
and is skipped when its finished output is there, so re-running the same command resumes
where a previous run stopped (and the training stages resume from their checkpoints).

The paths that tie the stages together (each stage's ``run_dir``, the prior's ``tokenizer``
and ``data.codes``) are set here; giving them in the config is an error.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from engine.config import ConfigError, load_config, merge, to_dict
from hqvae import layout
from prior.config import PriorConfig, merge_levels
from sampling.audio_classifier import ClassifierConfig
from tokenizer.config import TokenizerConfig, expand_preset


@dataclass
class SampleConfig:
    n: int = 256  # samples to generate (and to score)
    batch_size: int = 64
    temperature: float = 1.0
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    cfg_scale: float = 1.0  # classifier-free guidance (class-conditional priors); 1 = off
    # 'cycle' = balanced classes 0, 1, ..., K-1, 0, ...; a class id; or null = unconditional
    label: Union[int, str, None] = "cycle"
    seed: int = 0
    griffin_lim_iters: Optional[int] = None  # audio: None = the tokenizer's setting
    # torch.compile the sampler's one-token step (CUDA graphs on a GPU): pays off for large n
    compile: bool = False

    def validate(self) -> None:
        if self.n < 2:
            raise ConfigError(f"n: must be >= 2 (FID needs two samples), got {self.n}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.temperature < 0:
            raise ConfigError(f"temperature: must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise ConfigError(f"top_k: must be >= 0 (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p: must be in (0, 1] (1 = off), got {self.top_p}")
        if isinstance(self.label, str) and self.label != "cycle" or isinstance(self.label, int) and self.label < 0:
            raise ConfigError(f"label: expected 'cycle', a class id or null, got {self.label!r}")


@dataclass
class ScoreConfig:
    enabled: bool = True
    split: Optional[str] = None  # reference split; null = the tokenizer's train split
    max_reference: Optional[int] = 10000  # reference examples (null = the whole split)
    batch_size: int = 50
    # audio: an existing `hqvae train-classifier` run to score with, instead of training
    # the track's `classifier` section
    classifier_run: Optional[str] = None

    def validate(self) -> None:
        if self.max_reference is not None and self.max_reference < 2:
            raise ConfigError(f"max_reference: must be >= 2, got {self.max_reference}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class EncodeConfig:
    batch_size: int = 256
    max_examples: Optional[int] = None  # per split; null = all

    def validate(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"batch_size: must be >= 1, got {self.batch_size}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ConfigError(f"max_examples: must be >= 1 (null = all), got {self.max_examples}")


@dataclass
class TrackConfig:
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    prior: PriorConfig = field(default_factory=PriorConfig)
    # audio: the spectrogram classifier behind audio FID; its data defaults to the tokenizer's
    classifier: Optional[ClassifierConfig] = None
    sample: SampleConfig = field(default_factory=SampleConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)


@dataclass
class PipelineConfig:
    run_dir: str = "runs/pipeline"
    image: Optional[TrackConfig] = None
    audio: Optional[TrackConfig] = None
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
            if name == "image" and track.classifier is not None:
                raise ConfigError("image.classifier: only the audio track has a classifier")
            if name == "audio" and track.score.enabled and track.classifier is None \
                    and not track.score.classifier_run:
                raise ConfigError("audio.classifier: audio FID needs a classifier: add a "
                                  "`classifier` section or set score.classifier_run")
            if isinstance(track.sample.label, int) and not track.prior.class_cond:
                raise ConfigError(f"{name}.sample.label: the prior is not class-conditional "
                                  "(set prior.class_cond: true or label: null)")


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
    each track; default the classifier's data to the tokenizer's (same spectrograms);
    refuse the keys we own."""
    from engine.config import read_yaml

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
                    base.pop("data", None)  # the classifier hears what the tokenizer hears
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
            base.setdefault("modality", "audio")
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


def _device(cfg: PipelineConfig) -> str:
    from engine.devices import resolve_device

    return resolve_device(cfg.device, "device")


# ---------------------------------------------------------------------------------------
# stages of one track


def _codes_done(codes_dir: Path, splits: Sequence[str]) -> bool:
    manifest = codes_dir / "codes.json"
    if not manifest.is_file():
        return False
    have = json.loads(manifest.read_text()).get("splits", {})
    return all(s in have and (codes_dir / s).is_dir() for s in splits)


def _tokenizer_identity(tok_dir: Path) -> str:
    from tokenizer.pretrained import Tokenizer

    return Tokenizer.from_pretrained(tok_dir).identity


def _recorded_identity(manifest: Path) -> Optional[str]:
    """The tokenizer identity a codes.json / prior.json records (None: no such file)."""
    record = _read_json(manifest)
    return None if record is None else record.get("tokenizer_identity")


def _fresh(folder: Path, keep: bool, log: Callable[[str], None]) -> Path:
    """``folder``, emptied first unless ``keep``: its contents came from another tokenizer."""
    if not keep and folder.exists():
        log(f"   {folder}: made with an earlier tokenizer of this run; redoing it")
        shutil.rmtree(folder)
    return folder


def _prior_done(prior_dir: Path, num_levels: int) -> list[int]:
    """Levels of the prior still to train."""
    return [lv for lv in range(num_levels) if not (prior_dir / f"level_{lv}" / "eval.json").is_file()]


def run_tokenizer(tok_cfg: TokenizerConfig) -> dict:
    from tokenizer.train import format_summary, train_tokenizer

    metrics = train_tokenizer(tok_cfg)
    print(format_summary(metrics, tok_cfg.run_dir))
    return {"rmse": metrics.get("rmse"), "psnr": metrics.get("psnr"), "lsd_db": metrics.get("lsd_db")}


def run_encode(tok_cfg: TokenizerConfig, track: TrackConfig, codes_dir: Path, device: str) -> dict:
    from prior.codes import encode_split
    from tokenizer.data import build_dataset
    from tokenizer.pretrained import Tokenizer

    tok = Tokenizer.from_pretrained(tok_cfg.run_dir, device=device)
    data = tok_cfg.data
    out = {}
    for split in (data.train_split, data.eval_split):
        entry = encode_split(tok, build_dataset(data, split), codes_dir, split,
                             batch_size=track.encode.batch_size, max_examples=track.encode.max_examples,
                             source={"source": data.source, "path": data.path},
                             tokenizer_run=tok_cfg.run_dir)
        out[split] = entry.get("num_examples")
    return {"examples": out}


def run_prior(prior_cfg: PriorConfig, levels: list[int]) -> dict:
    from prior.train import format_summary, train_prior

    results = train_prior(prior_cfg, levels)
    print(format_summary(results, prior_cfg.run_dir))
    summary = json.loads((Path(prior_cfg.run_dir) / "eval.json").read_text())
    return {"bits_per_token": [summary["levels"][k].get("bits_per_token") for k in sorted(summary["levels"])]}


def run_classifier(clf_cfg: ClassifierConfig) -> dict:
    from sampling.audio_classifier import format_summary, train_classifier

    metrics = train_classifier(clf_cfg)
    print(format_summary(metrics, clf_cfg.run_dir))
    return {"accuracy": metrics["accuracy"]}


def _labels(track: TrackConfig, prior, n: int):
    import torch

    if not prior.num_classes or track.sample.label is None:
        return None
    if track.sample.label == "cycle":
        return torch.arange(n) % prior.num_classes
    return torch.full((n,), int(track.sample.label))


def run_samples(track: TrackConfig, root: Path, device: str, random_codes: bool = False) -> dict:
    """Sample from the priors (or, for the baseline, draw uniformly random codes) and write
    them with the layout of `hqvae sample`."""
    import torch

    from prior.pretrained import Prior
    from sampling.outputs import write_samples
    from sampling.sampler import Sampler
    from tokenizer.pretrained import Tokenizer

    s = track.sample
    prior = Prior.from_pretrained(root / "prior", device=device)
    tok = Tokenizer.from_pretrained(root / "tokenizer", device=device)
    sampler = Sampler(prior, tok, device=device, temperature=s.temperature, top_k=s.top_k,
                      top_p=s.top_p, cfg_scale=s.cfg_scale if prior.num_classes else 1.0,
                      compile=s.compile)
    labels = None
    t0 = time.perf_counter()
    if random_codes:
        g = torch.Generator().manual_seed(s.seed)
        codes = [torch.randint(0, k, (s.n, h, w), generator=g)
                 for k, (h, w) in zip(prior.codebook_sizes, prior.code_shapes)]
        settings = {"baseline": "uniformly random codes at every level", "seed": s.seed}
    else:
        labels = _labels(track, prior, s.n)
        codes = sampler.sample_codes(s.n, labels=labels, seed=s.seed, batch_size=s.batch_size, progress=True)
        settings = {"prior_run": str(root / "prior"), "tokenizer_run": str(root / "tokenizer"),
                    "seed": s.seed, "batch_size": s.batch_size, "cfg_scale": s.cfg_scale,
                    "label": s.label, "levels": [vars(x) for x in sampler.settings],
                    "tokens_per_s": sampler.stats.tokens_per_second}
    decoded = sampler.decode(codes, batch_size=s.batch_size)
    settings["seconds"] = time.perf_counter() - t0
    settings["pipeline_sample"] = dataclasses.asdict(s)  # what `pipeline` compares on a re-run
    # into a fresh folder, renamed into place: no stale files of an earlier, larger run, and
    # no half-written folder that a re-run would score
    out = root / ("random" if random_codes else "samples")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    labels = labels if s.cfg_scale != 0 else None  # guidance 0 is unconditional: no labels
    write_samples(tmp, decoded, codes, labels, tok, class_names=prior.class_names, settings=settings,
                  griffin_lim_iters=s.griffin_lim_iters, batch_size=s.batch_size)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"n": s.n, "seconds": time.perf_counter() - t0}


def _image_fid(track: TrackConfig, tok_cfg: TokenizerConfig, root: Path, device: str) -> dict:
    from sampling.fid import Reference, extract_features, metrics_from_features, reference_features

    data = tok_cfg.data
    split = track.score.split or data.train_split
    ref, _ = reference_features(Reference(data, split, track.score.max_reference),
                                batch_size=track.score.batch_size, device=device, progress=True)
    out: dict[str, Any] = {"metric": "FID (Inception pool3)", "reference": {
        "source": data.source, "path": data.path, "split": split, "num": len(ref)}}
    for name in ("samples", "random", "real"):
        images = root / name / "images" if name != "real" else _real_examples(data, track.sample.n)
        feats = extract_features(images, batch_size=track.score.batch_size, device=device, progress=True)
        m = metrics_from_features(feats, ref, kid=True)
        out[name] = {"fid": m["fid"], "kid": m["kid_mean"], "kid_std": m["kid_std"], "num": len(feats)}
    return out


def _audio_fid(track: TrackConfig, tok_cfg: TokenizerConfig, root: Path, device: str) -> dict:
    from sampling.audio_fid import score_folder

    data = tok_cfg.data
    split = track.score.split or data.train_split
    clf = track.score.classifier_run or str(root / "classifier")
    out: dict[str, Any] = {"metric": "audio FID (classifier penultimate features)", "classifier": clf}
    for name in ("samples", "random"):
        r = score_folder(root / name, clf, reference=f"{data.source}:{split}", path=data.path,
                         max_reference=track.score.max_reference, batch_size=track.score.batch_size,
                         device=device)
        out["reference"] = {"source": data.source, "path": data.path, "split": split,
                            "num": r["num_reference"]}
        out[name] = {"fid": r["fid"], "kid": r.get("kid"), "kid_std": r.get("kid_std"),
                     "num": r["num_generated"]}
        if name == "samples" and "accuracy" in r:
            out[name]["accuracy"] = r["accuracy"]["accuracy"]
    # the floor: real held-out clips through the same Griffin-Lim round trip as the samples
    from sampling.audio_fid import audio_fid
    from tokenizer.audio import Spectrogram
    from tokenizer.data import build_dataset

    spec = Spectrogram(data.audio)
    real = _real_examples(data, track.sample.n)
    waves = spec.to_waveform(real, n_iter=track.sample.griffin_lim_iters)
    r = audio_fid(clf, spec(waves), build_dataset(data, split), batch_size=track.score.batch_size,
                  max_reference=track.score.max_reference, device=device)
    out["real"] = {"fid": r["fid"], "kid": r.get("kid"), "kid_std": r.get("kid_std"), "num": len(real),
                   "split": data.eval_split}
    return out


def _real_examples(data, n: int):
    """``n`` examples spread over the eval split as one tensor: the 'real data' row of the scores."""
    import torch

    from engine.subsets import spread_indices
    from tokenizer.data import build_dataset

    ds = build_dataset(data, data.eval_split)
    return torch.stack([ds[i]["x"] for i in spread_indices(len(ds), n)])


def run_score(track: TrackConfig, tok_cfg: TokenizerConfig, root: Path, name: str, device: str) -> dict:
    out = (_image_fid if name == "image" else _audio_fid)(track, tok_cfg, root, device)
    out["ratio_random_to_samples"] = out["random"]["fid"] / max(out["samples"]["fid"], 1e-12)
    out["real"]["split"] = tok_cfg.data.eval_split
    return out


def _write_json(path: Path, obj: Any) -> None:
    """Write-then-rename: a crash never leaves a half-written marker that reads as done."""
    from engine.files import write_text_atomic

    write_text_atomic(path, json.dumps(obj, indent=2))


# ---------------------------------------------------------------------------------------
# the whole run


def _check_run_dir(cfg: PipelineConfig) -> None:
    """A run directory holds one pipeline: refuse another one's (the stages would resume
    from foreign weights); changes to sampling / scoring settings are allowed."""
    run = Path(cfg.run_dir)
    saved = run / layout.CONFIG
    if run.exists() and not run.is_dir():
        raise ConfigError(f"run_dir: {run} exists and is not a directory")
    if not saved.is_file():
        if run.is_dir() and any(run.iterdir()):
            raise ConfigError(f"run_dir: {run} is not empty and holds no {layout.CONFIG}; "
                              "choose another run_dir")
        return
    from engine.run_dir import config_diff, read_saved_config

    old = read_saved_config(saved)
    new = to_dict(cfg)
    # sampling / scoring settings may change (those stages re-run); more training steps or
    # other evaluation sizes too (the stage resumes, or counts as finished); the encoding
    # batch size changes no code (eval mode, per-example), so finished codes stay
    allowed = ("run_dir", "device", "report") + tuple(
        f"{t}.{s}" for t in layout.TRACKS
        for s in ("sample", "score", "tokenizer.train", "tokenizer.eval", "prior.train", "prior.eval",
                  "classifier.train", "classifier.eval", "encode.batch_size"))
    # a track run alone or added later (`audio=null`) is the same run; its stages skip or run
    changed = [k for k in config_diff(old, new) if not k.startswith(allowed)
               and not (k in layout.TRACKS and (old.get(k) is None or new.get(k) is None))
               and _stage_holds_work(run, k)]
    if changed:
        raise ConfigError(f"run_dir: {run} holds a pipeline run with a different config "
                          f"({', '.join(changed[:5])}); choose another run_dir or delete it")


def _stage_holds_work(run: Path, key: str) -> bool:
    """Whether the stage a changed key ``track.section...`` configures has produced anything.
    A stage that failed before its first checkpoint (a typo'd column, a bad path) protects
    nothing, so its corrected settings are the same run."""
    from engine.run_dir import holds_work

    parts = key.split(".")
    folder = {"tokenizer": "tokenizer", "encode": "codes", "prior": "prior",
              "classifier": "classifier"}.get(parts[1] if len(parts) > 1 else "")
    if parts[0] not in layout.TRACKS or folder is None:
        return True
    return holds_work(run / parts[0] / folder)


def _check_sample_labels(cfg: PipelineConfig) -> None:
    """A class id beyond the data's classes would fail only at sampling, after the tokenizer
    and the priors have trained: look at the data's class count first (the table is
    memory-mapped and the tokenizer stage reads it anyway)."""
    from tokenizer.data import build_dataset

    for name in layout.TRACKS:
        track = getattr(cfg, name)
        if track is None or not isinstance(track.sample.label, int):
            continue
        data = track.tokenizer.data
        classes = getattr(build_dataset(data, data.train_split), "num_classes", None)
        if classes is not None and track.sample.label >= classes:
            raise ConfigError(f"{name}.sample.label: {track.sample.label} is out of range: the "
                              f"{name} data has classes 0..{classes - 1}")


def _save_config(cfg: PipelineConfig, path: Path) -> None:
    """The config that produced the run directory: a track this invocation leaves out
    (`audio=null`) keeps its earlier section, so bringing it back with other settings is
    refused like any other change to a finished track."""
    from engine.config import yaml_dump, yaml_load

    new = to_dict(cfg)
    if path.is_file():
        old = yaml_load(path.read_text()) or {}
        for track in layout.TRACKS:
            if new.get(track) is None and old.get(track) is not None:
                new[track] = old[track]
    path.write_text(yaml_dump(new))


def run_pipeline(cfg: PipelineConfig, log: Callable[[str], None] = print) -> dict:
    """Run every stage that is not finished yet; returns (and writes) the run summary."""
    _check_run_dir(cfg)
    _check_sample_labels(cfg)
    from engine.run_dir import run_lock

    with run_lock(cfg.run_dir):  # a second pipeline on this run_dir is refused
        return _run_stages(cfg, log)


def _run_stages(cfg: PipelineConfig, log: Callable[[str], None]) -> dict:
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    _save_config(cfg, run / layout.CONFIG)
    device = _device(cfg)
    summary: dict[str, Any] = {"run_dir": str(run), "tracks": {}}
    t_start = time.perf_counter()
    for name in layout.TRACKS:
        if getattr(cfg, name) is not None:
            summary["tracks"][name] = run_track(cfg, name, device, log)
    summary["seconds"] = round(time.perf_counter() - t_start, 2)
    _write_json(run / layout.SUMMARY, summary)
    if cfg.report:
        from hqvae.report import write_report

        summary["report"] = str(write_report(run))
    return summary


def run_track(cfg: PipelineConfig, name: str, device: str, log: Callable[[str], None] = print) -> dict:
    """The stages of one track, top to bottom; returns {stage: {"status", "seconds", ...}}."""
    track: TrackConfig = getattr(cfg, name)
    sc = stage_configs(cfg, name)
    root: Path = sc["root"]
    data = sc["tokenizer"].data
    stages: dict[str, Any] = {}

    def stage(key: str, done: bool, fn: Callable[[], dict]) -> None:
        if done:
            log(f"== {name}: {key} (finished earlier, skipped)")
            stages[key] = {"status": "skipped"}
            return
        log(f"== {name}: {key}")
        t0 = time.perf_counter()
        result = fn() or {}
        stages[key] = {"status": "ran", "seconds": round(time.perf_counter() - t0, 2), **result}

    stage("tokenizer", layout.is_done(cfg.run_dir, name, "tokenizer"), lambda: run_tokenizer(sc["tokenizer"]))
    # codes and priors belong to one tokenizer (its identity: config + weights); those of an
    # earlier tokenizer in this run directory (re-trained after its folder was removed) are
    # redone rather than reused, or sampling would refuse them halfway through the run
    tok_id = _tokenizer_identity(root / "tokenizer")
    codes_ok = _recorded_identity(root / "codes" / "codes.json") in (None, tok_id)
    stage("encode", codes_ok and _codes_done(root / "codes", (data.train_split, data.eval_split)),
          lambda: run_encode(sc["tokenizer"], track, _fresh(root / "codes", codes_ok, log), device))
    num_levels = len(json.loads((root / "codes" / "codes.json").read_text())["codebook_sizes"])
    prior_ok = _recorded_identity(root / "prior" / "prior.json") in (None, tok_id)
    if not prior_ok:
        _fresh(root / "prior", False, log)
    todo = _prior_done(root / "prior", num_levels)
    stage("prior", not todo and layout.is_done(cfg.run_dir, name, "prior"), lambda: run_prior(sc["prior"], todo))
    if name == "audio" and track.score.enabled and not track.score.classifier_run:
        stage("classifier", layout.is_done(cfg.run_dir, name, "classifier"),
              lambda: run_classifier(sc["classifier"]))
    # samples and scores follow the sampling / scoring settings: redo them when those change
    wanted = to_dict(track.sample)
    upstream = {k for k in ("tokenizer", "encode", "prior") if stages[k]["status"] == "ran"}
    for key, rand in (("samples", False), ("random", True)):
        prev = _read_json(root / key / "samples.json") or {}
        # random codes depend on the tokenizer and on n / seed / batch size, not on the prior
        # or the sampling knobs: changing the temperature must not decode them again
        keys = RANDOM_SAMPLE_KEYS if rand else tuple(wanted)
        same = {k: (prev.get("pipeline_sample") or {}).get(k) for k in keys} == {k: wanted[k] for k in keys}
        stale = upstream - ({"prior"} if rand else set())
        stage(key, same and bool(prev) and not stale,
              lambda rand=rand: run_samples(track, root, device, random_codes=rand))
    resampled = any(stages[k]["status"] == "ran" for k in ("samples", "random"))
    if resampled and not track.score.enabled:
        (root / "fid.json").unlink(missing_ok=True)  # it scored samples that are gone
    if track.score.enabled:
        prev = _read_json(root / "fid.json") or {}
        scored = {"sample": wanted, "score": to_dict(track.score)}

        def score() -> dict:
            out = run_score(track, sc["tokenizer"], root, name, device)
            out["settings"] = scored
            _write_json(root / "fid.json", out)
            return {"samples": out["samples"], "random": out["random"]}

        # a re-trained classifier scores the same samples differently
        fresh = not any(stages.get(k, {}).get("status") == "ran" for k in ("samples", "random", "classifier"))
        stage("score", fresh and prev.get("settings") == scored, score)
    stages["headline"] = headline(root)
    return stages


# the sample settings the random-codes baseline depends on
RANDOM_SAMPLE_KEYS = ("n", "batch_size", "seed", "griffin_lim_iters")


def _read_json(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def headline(root: Path) -> dict:
    """The numbers a user looks at first, from the files of a track."""
    out: dict[str, Any] = {}
    ev = _read_json(root / "tokenizer" / "eval" / "eval.json")
    if ev:
        out.update({k: ev[k] for k in ("rmse", "psnr", "lsd_db", "rfid") if k in ev})
    pr = _read_json(root / "prior" / "eval.json")
    if pr:
        out["bits_per_token"] = [pr["levels"][k].get("bits_per_token") for k in sorted(pr["levels"])]
    fid = _read_json(root / "fid.json")
    if fid:
        out["fid"] = fid["samples"]["fid"]
        out["fid_random_codes"] = fid["random"]["fid"]
        if "real" in fid:
            out["fid_real_data"] = fid["real"]["fid"]
        if "accuracy" in fid["samples"]:
            out["accuracy"] = fid["samples"]["accuracy"]
    return out


def format_summary(summary: dict) -> str:
    lines = []
    for name, stages in summary["tracks"].items():
        ran = [k for k, v in stages.items() if isinstance(v, dict) and v.get("status") == "ran"]
        skipped = [k for k, v in stages.items() if isinstance(v, dict) and v.get("status") == "skipped"]
        h = stages.get("headline", {})
        parts = []
        if "psnr" in h:
            parts.append(f"PSNR {h['psnr']:.2f}")
        if "bits_per_token" in h:
            parts.append("bits/token " + " · ".join(f"{b:.2f}" for b in h["bits_per_token"] if b is not None))
        if "fid" in h:
            kind = "audio FID" if name == "audio" else "FID"
            # 3 significant digits: audio FIDs of real data are ~1e-3, image FIDs ~10-300
            real = f", real {h['fid_real_data']:.3g}" if "fid_real_data" in h else ""
            parts.append(f"{kind} {h['fid']:.3g} (random codes {h['fid_random_codes']:.3g}{real})")
        if "accuracy" in h:
            parts.append(f"digit/class accuracy {h['accuracy']:.2f}")
        lines.append(f"{name}: {'; '.join(parts) or 'no metrics'}")
        lines.append(f"  ran: {', '.join(ran) or '-'}; skipped (finished earlier): {', '.join(skipped) or '-'}")
    lines.append(f"wrote {summary['run_dir']} ({layout.SUMMARY}"
                 + (", report.html" if summary.get("report") else "") + f") in {summary['seconds']:.0f}s")
    return "\n".join(lines)


