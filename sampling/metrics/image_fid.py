"""FID, KID and precision / recall between image sets, with torch-fidelity, offline (README, "FID").

Images go through the shared feature path, reference cache and scorer
(sampling/metrics/features.py, scorer.py) with the offline FID Inception of
sampling/metrics/inception.py as the extractor. Inputs: a folder of PNGs, an image tensor, a
dataset, or a :class:`Reference` split whose Inception features are cached (checksummed,
under the key rule of sampling/metrics/reference.py) under ``$HQVAE_CACHE/fid_ref``.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from engine.devices import resolve_device
from engine.subsets import spread_indices
from sampling.metrics.distances import KID_SUBSETS, metrics_from_features
from sampling.metrics.features import (
    FeatureSpace,
    ReferenceSet,
    SpreadRows,
    cache_entry,
    reference_set_features,
)
from sampling.metrics.inception import (
    EXTRACTOR_NAME,
    FEATURE_DIM,
    fid_feature_extractor,
    weights_identity,
)
from sampling.metrics.inputs import ImageFolderSamples
from sampling.metrics.reference import (
    build_reference_dataset,
    data_settings,
    location,
    parse_reference,
)
from sampling.metrics.scorer import fid_scores, score_against_reference
from sampling.sample_reader import RECORD, read_record
from tokenizer.config import DataConfig, load_tokenizer_config
from tokenizer.media import quantize_uint8

# smaller images hold next to nothing for Inception (which scales every input to 299x299),
# and the generated `shapes` reference is drawn at 4x4 and up
MIN_IMAGE_SIZE = 4


def inception_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) -> uint8 (B, 3, H, W) for Inception: floats are taken to be in
    [-1, 1] (our datasets and decoders) and rounded; one channel is repeated to three."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images: expected (B, 1 or 3, H, W), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        if not x.is_floating_point():
            raise ValueError(f"images: expected uint8 or float in [-1, 1], got {x.dtype}")
        x = quantize_uint8(x)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class ImageRows(SpreadRows):
    """Any of our image datasets ({"x": [-1, 1] float, ...}) or a tensor, as uint8 items."""

    def convert(self, x: torch.Tensor) -> torch.Tensor:
        return inception_uint8(x.unsqueeze(0))[0]


def image_space(device: Union[str, torch.device] = "cpu", batch_size: int = 32, num_workers: int = 0,
                progress: bool = False) -> FeatureSpace:
    """The FID Inception's 2048-d pool3 features, in float32."""
    return FeatureSpace("image", fid_feature_extractor(device), EXTRACTOR_NAME, "2048", FEATURE_DIM,
                        weights_identity(), ImageRows, device, batch_size, num_workers, progress,
                        dtype=torch.float32)


@torch.no_grad()
def extract_features(
    images: Union[torch.Tensor, Dataset, str, Path],
    max_examples: Optional[int] = None,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> torch.Tensor:
    """(N, 2048) float32 Inception pool3 features of ``max_examples`` images (spread evenly) of a
    folder, a (N, C, H, W) tensor (uint8, or float in [-1, 1]) or a dataset of either."""
    if isinstance(images, (str, Path)):
        images = ImageFolderSamples(images)
    space = image_space(device, batch_size, num_workers, progress)
    data = space.wrap(images, max_examples, "images")
    if len(data) == 0:
        raise ValueError("extract_features: no images")
    return space.features(data)


# ---------------------------------------------------------------------------------------
# reference features of a dataset split, cached


@dataclass
class Reference:
    """A dataset split as FID reference: ``data`` is a tokenizer ``DataConfig`` (anything
    ``data.source`` accepts; its ``image_size`` / ``resize`` decide the reference images)."""

    data: DataConfig
    split: str = "test"
    max_examples: Optional[int] = None

    def describe(self) -> str:
        """``source (path):split at Npx``, for messages."""
        where = self.data.source + (f" ({self.data.path})" if self.data.path else "")
        return f"{where}:{self.split} at {self.data.image_size}px"

    def reference_set(self, dataset: Optional[Dataset] = None) -> ReferenceSet:
        """This split as the shared scorer's reference (``dataset``: the split, when built)."""
        data = dataclasses.replace(self.data, modality="image")
        dataset = dataset if dataset is not None else build_reference_dataset(data, self.split)
        label = f"{Path(data.source).name or data.source}-{self.split}-{data.image_size}px"
        return ReferenceSet(dataset, data_settings(data, self.split), label, self.max_examples, data, self.split)


def reference_features(
    ref: Reference,
    dataset: Optional[Dataset] = None,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    cache: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, Optional[Path]]:
    """Inception features of ``ref.max_examples`` images spread over a split, from the
    checksummed cache when it holds them (-> (features, cache file or None)). Rows that
    stood in for undecodable ones (``data.skip_bad_examples``) are left out
    (``reference_set_features`` of sampling/metrics/features.py also counts them)."""
    space = image_space(device, batch_size, 0, progress)  # in this process: stand-ins are seen
    ref_set = ref.reference_set(dataset)
    entry = cache_entry(space, ref_set) if cache else None
    return reference_set_features(space, ref_set, entry)[0], entry.path if entry else None


# ---------------------------------------------------------------------------------------
# FID / KID / precision and recall between image sets

ImageSet = Union[str, Path, torch.Tensor, Dataset, Reference]


def compute_fid(
    samples: ImageSet,
    reference: ImageSet,
    kid: bool = False,
    max_examples: Optional[int] = None,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    cache: bool = True,
    progress: bool = False,
    kid_subsets: int = KID_SUBSETS,
    kid_subset_size: Optional[int] = None,
    prc: bool = False,
) -> dict[str, Any]:
    """FID (and KID, and precision / recall of the samples) between two image sets: each a
    folder of PNGs, an image tensor (uint8, or float in [-1, 1]), a dataset, or a
    :class:`Reference` split (features cached). ``max_examples`` caps each side. Returns
    ``{"fid", ["kid_mean", "kid_std"], ["precision", "recall"], "num_samples", "num_reference"}``."""
    def features(images: ImageSet) -> torch.Tensor:
        if isinstance(images, Reference):
            if max_examples and not images.max_examples:
                images = dataclasses.replace(images, max_examples=max_examples)
            return reference_features(images, batch_size=batch_size, device=device, cache=cache,
                                      progress=progress)[0]
        return extract_features(images, max_examples, batch_size, device, progress=progress)

    return fid_scores(features(samples), features(reference), kid=kid, prc=prc, kid_subsets=kid_subsets,
                      kid_subset_size=kid_subset_size, unit="images")


@torch.no_grad()
def reconstruction_fid(
    tokenizer,
    data: DataConfig,
    split: str,
    max_examples: Optional[int] = None,
    batch_size: int = 64,
    kid: bool = False,
    dataset: Optional[Dataset] = None,
    cache: bool = True,
    progress: bool = False,
) -> dict[str, Any]:
    """rFID of a tokenizer: FID of its reconstructions of ``max_examples`` images spread
    evenly over a split against those images (reference features cached like any reference).
    Returns ``{"rfid", ["rkid_mean", "rkid_std"], "examples"}``."""
    if tokenizer.modality != "image":
        raise ValueError("rFID: the tokenizer works on audio; rFID needs an image tokenizer")
    device = tokenizer.device
    ref = Reference(data, split, max_examples)
    dataset = dataset if dataset is not None else build_reference_dataset(
        dataclasses.replace(data, modality="image"), split)
    real, _ = reference_features(ref, dataset=dataset, batch_size=batch_size, device=device,
                                 cache=cache, progress=progress)
    n = len(real)  # the same rows as the reference features
    loader = DataLoader(Subset(dataset, spread_indices(len(dataset), n)), batch_size=batch_size, shuffle=False)
    recon = []
    for batch in tqdm(loader, desc="rfid: reconstruct", disable=not progress, leave=False):
        y = tokenizer.reconstruct(batch["x"].to(device)).clamp(-1, 1)
        recon.append(inception_uint8(y.float().cpu()))
    fake = extract_features(torch.cat(recon), batch_size=batch_size, device=device, progress=progress)
    m = metrics_from_features(fake, real, kid=kid)
    out: dict[str, Any] = {"rfid": m["fid"], "examples": n}
    if kid:
        out["rkid_mean"], out["rkid_std"] = m["kid_mean"], m["kid_std"]
    return out


# ---------------------------------------------------------------------------------------
# `hqvae fid`: a folder of samples against a dataset split


def _sample_tokenizer_data(folder: Path, root: Path) -> Optional[DataConfig]:
    """The data config of the tokenizer named by a `hqvae sample` folder's samples.json
    (the folder given or the one above its images/; a JSON file of another tool is none)."""
    for where in (folder, root.parent):
        record = read_record(where)
        if record is None:
            continue
        run = record.get("tokenizer_run")
        if run and (Path(run) / "config.yaml").is_file():
            return load_tokenizer_config(Path(run) / "config.yaml").data
        if run:  # moved or relative to another folder: say so rather than guess quietly
            warnings.warn(
                f"{where / RECORD}: its tokenizer run {run!r} is not found from here (no config.yaml); "
                f"the reference is read with the default data settings (3 channels, centre crop)",
                stacklevel=3)
        return None
    return None


def score_folder(
    folder: Union[str, Path],
    reference: str,
    path: Optional[str] = None,
    image_size: Optional[int] = None,
    max_examples: Optional[int] = None,
    kid: bool = False,
    batch_size: int = 32,
    device: Union[str, torch.device, None] = None,
    cache: bool = True,
    progress: bool = False,
    skip_bad_examples: bool = False,
    prc: bool = False,
    max_reference: Optional[int] = None,
) -> dict[str, Any]:
    """FID (and KID, and precision / recall) of the images in ``folder`` against a dataset
    split named as ``DATASET[:split]`` (``data.source`` syntax; ``path`` is ``data.path``).
    The reference is read at the samples' size unless ``image_size`` is given;
    ``max_examples`` caps both sides, ``max_reference`` the reference only;
    ``skip_bad_examples`` skips undecodable reference rows (as ``data.skip_bad_examples``).
    Every input error is raised before any network runs."""
    device = resolve_device(device) if device is None or isinstance(device, str) else device
    samples = ImageFolderSamples(folder)
    if min(samples.width, samples.height) < MIN_IMAGE_SIZE:
        raise ValueError(
            f"{samples.root}: the samples are {samples.width}x{samples.height} images, too small to "
            f"score (FID needs at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE})")
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"--image-size {image_size}: too small to score (at least {MIN_IMAGE_SIZE})")
    if image_size is None:
        if samples.width != samples.height:
            raise ValueError(
                f"{samples.root}: images are {samples.width}x{samples.height}, not square; "
                f"pass --image-size for the reference"
            )
        image_size = samples.width
    source, split = parse_reference(reference)
    data = DataConfig(source=source, path=path, image_size=image_size, modality="image",
                      skip_bad_examples=skip_bad_examples)
    tok_data = _sample_tokenizer_data(Path(folder), samples.root)
    if tok_data is not None:
        # samples of `hqvae sample` name their tokenizer: read the reference the way its data
        # was read (grey, resize policy; all of it when it is the same dataset)
        same = location(tok_data.source, tok_data.path) == location(source, path)
        data = dataclasses.replace(tok_data if same else data, channels=tok_data.channels,
                                   resize=tok_data.resize, image_size=image_size, modality="image",
                                   skip_bad_examples=skip_bad_examples or (same and tok_data.skip_bad_examples))
    caps = [c for c in (max_examples, max_reference) if c is not None]
    ref = Reference(data, split, min(caps) if caps else None).reference_set()
    space = image_space(device, batch_size, 0, progress)
    out = score_against_reference(space, space.wrap(samples, max_examples, "samples"), ref, kid=kid,
                                  prc=prc, cache=cache)
    out.update({
        "folder": str(samples.root), "sample_size": [samples.height, samples.width],
        "reference": {"source": source, "path": path, "split": split, "image_size": image_size,
                      "channels": data.channels, "resize": data.resize},
    })
    return out
