"""Audio FID: the Fréchet distance between generated and reference spectrograms, measured on
the penultimate features of the project's own spectrogram classifier (README, "Audio FID").

It runs through torch-fidelity: :class:`AudioClassifierExtractor` is registered as the
feature extractor ``"hqvae-audio-classifier"`` with two feature layers, ``"embedding"``
(the classifier's penultimate layer, used for FID and KID) and ``"logits"``. Features,
the reference cache, the arithmetic
and the scorer are those of image FID (sampling/metrics/features.py, scorer.py).

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
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from sampling.classifier.evaluate import class_accuracy
from sampling.classifier.model import Classifier, ClassifierLike, as_classifier
from sampling.metrics.distances import default_kid_subset_size
from sampling.metrics.features import FeatureSpace, ReferenceSet, SpreadRows
from sampling.metrics.inputs import AUDIO_EXTENSIONS, WavFolder
from sampling.metrics.labels import sample_labels
from sampling.metrics.reference import build_reference_dataset, data_settings, parse_reference
from sampling.metrics.scorer import score_against_reference
from sampling.sample_reader import media_folder
from tokenizer.config import DataConfig
from tokenizer.media import dequantize_uint8

EXTRACTOR_NAME = "hqvae-audio-classifier"
FEATURE_LAYER = "embedding"

SpectrogramsLike = Union[torch.Tensor, Dataset]


# ---------------------------------------------------------------------------------------
# inputs


class SpectrogramSet(SpreadRows):
    """A torch-fidelity input: float32 spectrogram tensors (1, F, T), one per item.

    Wraps an (N, 1, F, T) tensor, or a dataset whose items are such tensors or
    ``{"x": tensor, ...}`` dicts (every dataset of ``tokenizer.data``), optionally cut to
    ``max_examples`` items spread over it.
    """

    def __init__(self, source: SpectrogramsLike, max_examples: Optional[int] = None, name: str = "input"):
        if torch.is_tensor(source) and source.dim() != 4:
            raise ValueError(f"{name}: expected spectrograms (N, 1, F, T), got shape {tuple(source.shape)}")
        super().__init__(source, max_examples, name)

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        # spectrograms have one channel, all the classifier takes
        return dequantize_uint8(x, 1) if x.dtype == torch.uint8 else x.float()


def _check_input(data: SpectrogramSet, shape: tuple[int, ...], name: str) -> None:
    if len(data) < 2:
        raise ValueError(f"{name}: {len(data)} spectrograms; need at least 2")
    found = tuple(data[0].shape)
    if found != tuple(shape):
        raise ValueError(
            f"{name}: spectrograms of shape {found}, but the classifier takes {tuple(shape)} "
            f"(its data.audio settings); compute them with the classifier's AudioConfig"
        )


# ---------------------------------------------------------------------------------------
# the torch-fidelity feature extractor


class AudioClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor on an audio :class:`Classifier`.

    torch-fidelity builds it as ``cls(name, features_list, **calculate_metrics_kwargs)``;
    the classifier comes in as ``feature_extractor_weights_path``: a run directory, its
    ``model.safetensors``, or a ``Classifier`` instance (copied, so moving the extractor to
    a GPU or freezing it leaves the caller's model alone).
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


def extractor_class() -> type:
    """The extractor class registered with torch-fidelity as ``hqvae-audio-classifier``."""
    return FEATURE_EXTRACTORS_REGISTRY[EXTRACTOR_NAME]


def audio_space(model: Classifier, device: Optional[Union[str, torch.device]] = None, batch_size: int = 64,
                num_workers: int = 0, progress: bool = False) -> FeatureSpace:
    """The penultimate features of an audio classifier (float64), on ``device`` (default:
    the model's; torch-fidelity runs extractors on CUDA or the CPU)."""
    device = torch.device(device) if device is not None else model.device
    extractor = create_feature_extractor(EXTRACTOR_NAME, [FEATURE_LAYER], cuda=False,
                                         feature_extractor_weights_path=model, verbose=False)
    if device.type == "cuda":
        extractor.to(device)
    else:
        device = torch.device("cpu")
    return FeatureSpace("audio", extractor, EXTRACTOR_NAME, FEATURE_LAYER, model.embedding_dim,
                        model.identity, SpectrogramSet, device, batch_size, num_workers, progress)


# ---------------------------------------------------------------------------------------
# metrics


def _audio_fid(model: Classifier, generated: SpectrogramSet, reference: ReferenceSet, kid: bool,
               cache: bool, cache_root: Optional[Path], **space_args: Any) -> dict[str, Any]:
    """The shared scorer on an audio classifier's features, inputs checked first."""
    ref_rows = SpectrogramSet(reference.source, reference.max_examples, "reference")
    _check_input(generated, model.input_shape, "generated")
    _check_input(ref_rows, model.input_shape, "reference")
    space = audio_space(model, **space_args)
    out = score_against_reference(space, generated, reference, kid=kid, cache=cache, cache_root=cache_root,
                                  kid_subset_size=default_kid_subset_size(len(generated), len(ref_rows)))
    out["classifier"] = model.identity
    return out


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
    ``reference_cache_name``: cache the reference features in the checksummed reference
    cache of image FID (``cache_root``, default ``$HQVAE_CACHE/fid_ref``), under the one key
    rule: this name, the count, the classifier's identity and a fingerprint of the
    reference data (its contents or files), so a changed reference is recomputed.

    Returns {"fid", "kid_mean", "kid_std" (when ``kid``), "num_samples", "num_reference",
    "classifier" (its identity), "features", "feature_dim", ...} as every scorer does.
    """
    model = as_classifier(classifier, "audio")
    gen = SpectrogramSet(generated, max_generated, "generated")
    ref = ReferenceSet(reference, {"name": reference_cache_name}, reference_cache_name or "audio", max_reference)
    return _audio_fid(model, gen, ref, kid, reference_cache_name is not None,
                      Path(cache_root) if cache_root else None, device=device, batch_size=batch_size,
                      num_workers=num_workers, progress=verbose)


def classifier_accuracy(
    classifier: ClassifierLike,
    spectrograms: SpectrogramsLike,
    labels: Union[Sequence[int], torch.Tensor],
    batch_size: int = 128,
    device: Optional[Union[str, torch.device]] = None,
) -> dict[str, Any]:
    """Does a generated 7 sound like a 7? An audio classifier's accuracy on class-conditional
    samples against the labels they were generated for (:func:`class_accuracy` with an
    audio classifier): {"accuracy", "num_examples", "per_class_accuracy", "confusion", ...}."""
    data = SpectrogramSet(spectrograms, name="spectrograms")
    return class_accuracy(classifier, data, labels, batch_size=batch_size, device=device, modality="audio")


# ---------------------------------------------------------------------------------------
# `hqvae audio-fid`: a folder of audio files against a dataset split


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
    cache: bool = True,
) -> dict[str, Any]:
    """What ``hqvae audio-fid`` reports: audio FID / KID of the audio files in ``folder``
    against a reference split (default: the classifier's own data and eval split) and,
    given ``labels``, the classifier's accuracy on them. ``max_examples`` caps both sides of
    the FID (as in image FID), ``max_reference`` the reference side only; the reference's
    features are cached as image FID's are (``cache``).

    ``folder`` may be a ``hqvae sample`` output folder: its ``audio/`` files are scored and
    its ``labels.json`` is used unless ``labels`` names another file."""
    given = Path(folder)
    if not given.is_dir():
        raise FileNotFoundError(f"{given}: no such folder of audio files")
    folder = given if recursive else media_folder(given, "audio", AUDIO_EXTENSIONS)
    model = as_classifier(classifier, "audio")
    if device is not None:
        model.to(device)
    data: DataConfig = model.config.data
    generated = WavFolder(folder, data.audio, recursive)
    labelled = sample_labels(given, labels, generated.names, model)  # refused before any scoring
    split = data.eval_split
    if reference is not None:
        source, ref_split = parse_reference(reference, default_split=None)
        data = dataclasses.replace(data, source=source, path=path)
        split = ref_split or split
    elif path is not None:
        data = dataclasses.replace(data, path=path)
    caps = [c for c in (max_examples, max_reference) if c is not None]
    ref_set = ReferenceSet(build_reference_dataset(data, split, "audio"), data_settings(data, split),
                           f"{Path(data.source).name or data.source}-{split}-audio",
                           min(caps) if caps else None, data, split)
    result = _audio_fid(model, SpectrogramSet(generated, max_examples, "generated"), ref_set, True, cache, None,
                        batch_size=batch_size)
    result["reference"] = {"source": data.source, "path": data.path, "split": split}
    result["folder"] = str(folder)
    if labelled is not None:
        result["labels"] = str(labelled[0])
        result["accuracy"] = classifier_accuracy(model, generated, labelled[1], batch_size=batch_size)
    return result
