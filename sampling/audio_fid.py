"""Audio FID: the Fréchet distance between generated and reference spectrograms, measured on
the penultimate features of the project's own spectrogram classifier (README, "Audio FID").

It runs through torch-fidelity: :class:`AudioClassifierExtractor` is registered as the
feature extractor ``"hqvae-audio-classifier"`` with two feature layers, ``"embedding"``
(the classifier's penultimate layer, used for FID and KID) and ``"logits"``. Features,
the reference cache and the arithmetic are those of image FID (sampling/feature_metrics.py).

How spectrograms are fed. torch-fidelity hands each batch of an input ``Dataset`` to the
extractor as it comes; it only requires the items to be tensors. Its own extractors demand
uint8 RGB images, but ours does not: the inputs here are datasets of float32 spectrogram
images (1, F, T) in [-1, 1], exactly what the data pipeline, the tokenizer's decoder and
the classifier's training see, so nothing is quantised or resized on the way. (For
spectrograms that were saved as 8-bit PNGs and arrive as uint8, the extractor maps
0..255 back to [-1, 1] and keeps one channel; that inverts the PNG quantisation up to
its 1/127.5 step.) The feature tensors are returned in float64 so the covariance
arithmetic of FID is not limited by float32.

The number is this classifier's Fréchet distance, not Inception's: it is comparable between
runs scored with the same classifier (its ``identity``), not with other papers' figures
unless they used this very classifier.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.utils.data import Dataset

from engine.subsets import spread_indices
from sampling.class_accuracy import class_accuracy, sample_labels
from sampling.classifier import ClassifierLike, as_classifier, per_class_line
from sampling.feature_metrics import (
    cached_features,
    dataset_features,
    default_kid_subset_size,
    import_torch_fidelity,
    metrics_from_features,
    reference_cache_dir,
)
from sampling.outputs import media_folder
from tokenizer.config import AudioConfig, DataConfig
from tokenizer.media import dequantize_uint8

EXTRACTOR_NAME = "hqvae-audio-classifier"
FEATURE_LAYER = "embedding"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")

SpectrogramsLike = Union[torch.Tensor, Dataset]


# ---------------------------------------------------------------------------------------
# inputs


class SpectrogramSet(Dataset):
    """A torch-fidelity input: float32 spectrogram tensors (1, F, T), one per item.

    Wraps an (N, 1, F, T) tensor, or a dataset whose items are such tensors or
    ``{"x": tensor, ...}`` dicts (every dataset of ``tokenizer.data``), optionally cut to
    its first ``max_examples`` items.
    """

    def __init__(self, source: SpectrogramsLike, max_examples: Optional[int] = None, name: str = "input"):
        if torch.is_tensor(source):
            if source.dim() != 4:
                raise ValueError(f"{name}: expected spectrograms (N, 1, F, T), got shape {tuple(source.shape)}")
            source = source.detach().cpu()
        elif not isinstance(source, Dataset):
            raise ValueError(f"{name}: expected a tensor (N, 1, F, T) or a Dataset, got {type(source).__name__}")
        self.source = source
        self.name = name
        self.rows = spread_indices(len(source), max_examples)  # a capped set spans the split
        self.size = len(self.rows)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.size:
            raise IndexError(f"{self.name}: index {index} out of range for {self.size} items")
        item = self.source[self.rows[index]]
        if isinstance(item, dict):
            item = item["x"]
        if not torch.is_tensor(item):
            raise ValueError(f"{self.name} item {index}: expected a tensor, got {type(item).__name__}")
        # spectrograms have one channel, all the classifier takes
        return dequantize_uint8(item, 1) if item.dtype == torch.uint8 else item.float()


def _check_input(data: SpectrogramSet, shape: tuple[int, ...], name: str, min_items: int = 2) -> None:
    if len(data) < min_items:
        raise ValueError(f"{name}: {len(data)} spectrograms; need at least {min_items}")
    found = tuple(data[0].shape)
    if found != tuple(shape):
        raise ValueError(
            f"{name}: spectrograms of shape {found}, but the classifier takes {tuple(shape)} "
            f"(its data.audio settings); compute them with the classifier's AudioConfig"
        )


# ---------------------------------------------------------------------------------------
# the torch-fidelity feature extractor


_EXTRACTOR: Optional[type] = None


def extractor_class() -> type:
    """The registered torch-fidelity extractor class (defined and registered on first use,
    after the torchvision shim that torch-fidelity's import needs, engine/torchvision_compat.py)."""
    global _EXTRACTOR
    if _EXTRACTOR is not None:
        return _EXTRACTOR
    torch_fidelity = import_torch_fidelity()
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    class AudioClassifierExtractor(FeatureExtractorBase):
        """torch-fidelity feature extractor on an audio :class:`Classifier`.

        torch-fidelity builds it as ``cls(name, features_list, **calculate_metrics_kwargs)``;
        the classifier comes in as ``feature_extractor_weights_path``: a run directory, its
        ``model.safetensors``, or a ``Classifier`` instance (copied, so moving the
        extractor to a GPU or freezing it leaves the caller's model alone).
        """

        FEATURES = (FEATURE_LAYER, "logits")

        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            source = feature_extractor_weights_path
            if source is None:
                raise ValueError(
                    f"{name}: pass the classifier (run directory or Classifier) as "
                    f"feature_extractor_weights_path"
                )
            model = as_classifier(source, "audio")
            if model is source:
                model = copy.deepcopy(source).cpu()
            self.classifier = model.eval()
            self.input_shape = model.input_shape

        @staticmethod
        def get_provided_features_list():
            return AudioClassifierExtractor.FEATURES

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return "logits" if metric == "isc" else FEATURE_LAYER

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            raise NotImplementedError("the audio classifier extractor is not compiled")

        def forward(self, x):
            if x.dtype == torch.uint8:  # 8-bit spectrogram images: undo the quantisation
                x = dequantize_uint8(x, 1)
            features, logits = self.classifier.features_and_logits(x.float())
            out = {FEATURE_LAYER: features.double(), "logits": logits.double()}
            return tuple(out[name] for name in self.features_list)

    if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
        torch_fidelity.register_feature_extractor(EXTRACTOR_NAME, AudioClassifierExtractor)
    _EXTRACTOR = FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME]
    return _EXTRACTOR


# ---------------------------------------------------------------------------------------
# metrics


def audio_fid(
    classifier: ClassifierLike,
    generated: SpectrogramsLike,
    reference: SpectrogramsLike,
    *,
    kid: bool = True,
    batch_size: int = 64,
    device: Optional[Union[str, torch.device]] = None,
    max_generated: Optional[int] = None,
    max_reference: Optional[int] = None,
    reference_cache_name: Optional[str] = None,
    cache_root: Optional[str] = None,
    num_workers: int = 0,
    verbose: bool = False,
) -> dict[str, Any]:
    """Audio FID (and KID) of ``generated`` against ``reference`` spectrograms.

    ``generated`` / ``reference``: (N, 1, F, T) float tensors in [-1, 1] or datasets of
    them (``{"x": ...}`` items work: any ``tokenizer.data`` dataset, or :class:`WavFolder`).
    ``classifier``: an audio :class:`Classifier` or its run directory.
    ``reference_cache_name``: cache the reference features under this name (plus their
    count and the classifier's identity) in the checksummed reference cache of image FID
    (``cache_root``, default ``$HQVAE_CACHE/fid_ref``), e.g. "fsdd-test".

    Returns {"fid", "kid", "kid_std" (when ``kid``), "num_generated", "num_reference",
    "classifier" (its identity), "features", "feature_dim"}.
    """
    model = as_classifier(classifier, "audio")
    gen = SpectrogramSet(generated, max_generated, "generated")
    ref = SpectrogramSet(reference, max_reference, "reference")
    _check_input(gen, model.input_shape, "generated")
    _check_input(ref, model.input_shape, "reference")
    device = torch.device(device) if device is not None else model.device
    identity = model.identity
    extractor_class()
    from torch_fidelity.utils import create_feature_extractor

    extractor = create_feature_extractor(EXTRACTOR_NAME, [FEATURE_LAYER], cuda=False,
                                         feature_extractor_weights_path=model, verbose=False)
    if device.type == "cuda":  # torch-fidelity runs extractors on CUDA or the CPU
        extractor.to(device)
    else:
        device = torch.device("cpu")

    def features(data: SpectrogramSet) -> torch.Tensor:
        return dataset_features(data, extractor, batch_size=batch_size, device=device,
                                num_workers=num_workers, progress=verbose)[FEATURE_LAYER]

    path = None
    if reference_cache_name:
        # "spread": rows spread over the split (caches of the first-N rule are not reused)
        root = Path(cache_root) if cache_root else reference_cache_dir()
        path = root / f"{reference_cache_name}-spread-n{len(ref)}-{identity}.safetensors"
    meta = {"classifier": identity, "layer": FEATURE_LAYER, "n": str(len(ref))}
    f_gen = features(gen)
    f_ref = cached_features(path, lambda: features(ref), (len(ref), model.embedding_dim), meta)
    m = metrics_from_features(f_gen, f_ref, kid=kid,
                              kid_subset_size=default_kid_subset_size(len(gen), len(ref)))
    out: dict[str, Any] = {"fid": m["fid"]}
    if kid:
        out["kid"], out["kid_std"] = m["kid_mean"], m["kid_std"]
    out.update({
        "num_generated": len(gen), "num_reference": len(ref), "classifier": identity,
        "features": f"{EXTRACTOR_NAME}/{FEATURE_LAYER}", "feature_dim": model.embedding_dim,
    })
    return out


@torch.no_grad()
def classifier_accuracy(
    classifier: ClassifierLike,
    spectrograms: SpectrogramsLike,
    labels: Union[Sequence[int], torch.Tensor],
    batch_size: int = 128,
    device: Optional[Union[str, torch.device]] = None,
) -> dict[str, Any]:
    """Does a generated 7 sound like a 7? The classifier's accuracy on class-conditional
    samples against the labels they were generated for: {"accuracy", "num_examples",
    "per_class_accuracy", "confusion", "class_names"?}."""
    model = as_classifier(classifier, "audio")
    data = SpectrogramSet(spectrograms, name="spectrograms")
    _check_input(data, model.input_shape, "spectrograms", min_items=1)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if labels.numel() != len(data):
        raise ValueError(f"labels: {labels.numel()} labels for {len(data)} spectrograms")
    return class_accuracy(model, data, labels, batch_size=batch_size, device=device)


# ---------------------------------------------------------------------------------------
# WAV folders


def audio_files(folder: Union[str, os.PathLike], recursive: bool = False) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of audio files")
    found = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(
            f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)})"
            + ("" if recursive else " directly inside it")
        )
    return files


class WavFolder(Dataset):
    """A folder of audio files as spectrogram tensors (1, F, T) of one ``AudioConfig``.

    Each file is read (``tokenizer.audio.read_audio``: mono, float), resampled when its rate
    differs from ``audio.sample_rate`` (an error if ``audio.resample`` is false), cut or
    zero-padded to ``audio.num_samples`` like the evaluation data (``crop`` 'start' or
    'center'; 'random' reads from the start) and turned into the spectrogram image. Files
    are decoded per item, nothing is held in memory. ``names``: paths relative to the folder.
    """

    def __init__(self, folder: Union[str, os.PathLike], audio: AudioConfig, recursive: bool = False):
        audio.validate()
        self.root = Path(folder)
        self.files = audio_files(folder, recursive)
        self.names = [p.relative_to(self.root).as_posix() for p in self.files]
        self.audio = audio
        self.shape = (1, audio.num_bins, audio.num_frames)
        self._spectrogram = None

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_spectrogram": None}  # rebuilt in a worker, not pickled

    def waveform(self, index: int) -> torch.Tensor:
        from tokenizer.audio import fit_length, read_audio, resample

        path = self.files[index]
        wave, rate = read_audio(path)
        x = torch.from_numpy(wave)
        if rate != self.audio.sample_rate:
            if not self.audio.resample:
                raise ValueError(
                    f"{path}: sample rate {rate} Hz differs from the classifier's "
                    f"{self.audio.sample_rate} Hz and its data.audio.resample is false"
                )
            try:
                x = resample(x, rate, self.audio.sample_rate)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
        mode = self.audio.crop if self.audio.crop != "random" else "start"
        return fit_length(x, self.audio.num_samples, mode)

    def __getitem__(self, index: int) -> torch.Tensor:
        from tokenizer.audio import Spectrogram

        if self._spectrogram is None:
            self._spectrogram = Spectrogram(self.audio)
        with torch.no_grad():
            return self._spectrogram(self.waveform(index))


def load_wav_folder(
    folder: Union[str, os.PathLike], audio: AudioConfig, recursive: bool = False
) -> tuple[torch.Tensor, list[str]]:
    """All audio files of ``folder`` as one (N, 1, F, T) tensor, plus their names (paths
    relative to the folder, sorted). For large folders pass a :class:`WavFolder` instead."""
    data = WavFolder(folder, audio, recursive)
    return torch.stack([data[i] for i in range(len(data))]), data.names


# ---------------------------------------------------------------------------------------
# command-line entry


def parse_reference(text: str) -> tuple[str, Optional[str]]:
    """'DATASET[:split]' -> (source, split or None: the classifier's eval split)."""
    from sampling.fid import parse_reference as parse

    return parse(text, default_split=None)


def score_folder(
    folder: Union[str, os.PathLike],
    classifier: ClassifierLike,
    reference: Optional[str] = None,
    path: Optional[str] = None,
    labels: Optional[Union[str, os.PathLike]] = None,
    max_reference: Optional[int] = None,
    batch_size: int = 64,
    device: Optional[str] = None,
    recursive: bool = False,
    max_examples: Optional[int] = None,
) -> dict[str, Any]:
    """What ``hqvae audio-fid`` reports: audio FID / KID of the audio files in ``folder``
    against a reference split (default: the classifier's own data and eval split) and,
    given ``labels``, the classifier's accuracy on them. ``max_examples`` caps both sides of
    the FID (as in image FID), ``max_reference`` the reference side only.

    ``folder`` may be a ``hqvae sample`` output folder: its ``audio/`` files are scored and
    its ``labels.json`` is used unless ``labels`` names another file."""
    import dataclasses

    from tokenizer.data import build_dataset

    given = Path(folder)
    if not given.is_dir():
        raise FileNotFoundError(f"{given}: no such folder of audio files")
    folder = given if recursive else media_folder(given, "audio", AUDIO_EXTENSIONS)
    model = as_classifier(classifier, "audio")
    if device is not None:
        model.to(device)
    data_cfg: DataConfig = model.config.data
    generated = WavFolder(folder, data_cfg.audio, recursive)
    labelled = sample_labels(given, labels, generated.names, model)  # refused before any scoring
    split = data_cfg.eval_split
    if reference is not None:
        source, ref_split = parse_reference(reference)
        data_cfg = dataclasses.replace(data_cfg, source=source, path=path)
        split = ref_split or split
    elif path is not None:
        data_cfg = dataclasses.replace(data_cfg, path=path)
    ref_set = build_dataset(data_cfg, split, train=False)
    if max_examples is not None:
        max_reference = max_examples if max_reference is None else min(max_reference, max_examples)
    result = audio_fid(model, generated, ref_set, batch_size=batch_size, max_reference=max_reference,
                       max_generated=max_examples)
    result["reference"] = {"source": data_cfg.source, "path": data_cfg.path, "split": split}
    result["folder"] = str(folder)
    if labelled is not None:
        result["labels"] = str(labelled[0])
        result["accuracy"] = classifier_accuracy(model, generated, labelled[1], batch_size=batch_size)
    return result


def format_report(result: dict[str, Any]) -> str:
    ref = result["reference"]
    where = ref["source"] + (f" {ref['path']}" if ref["path"] else "")
    # "+ 0.0" and the clamp at -5e-5: a rounding-level negative distance (a set against
    # itself) prints as 0.0000, not -0.0000; larger negative values are shown as they are
    fid = result["fid"] if result["fid"] <= -5e-5 else max(result["fid"], 0.0) + 0.0
    line = f"audio FID {fid:.4f}"
    if "kid" in result:
        line += f"  KID {result['kid']:.5f} ± {result['kid_std']:.5f}"
    lines = [
        line,
        f"  {result['num_generated']} files in {result['folder']} vs {result['num_reference']} "
        f"of split {ref['split']!r} of {where}; features: {result['feature_dim']}-d penultimate "
        f"layer of classifier {result['classifier']} (not Inception: comparable only under "
        f"the same classifier)",
    ]
    acc = result.get("accuracy")
    if acc is not None:
        lines.append(f"classifier accuracy {acc['accuracy']:.4f} on {acc['num_examples']} labelled files "
                     f"(labels: {result['labels']})")
        lines.append(f"  per class: {per_class_line(acc)}")
    return "\n".join(lines)
