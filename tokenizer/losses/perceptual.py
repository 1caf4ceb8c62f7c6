"""LPIPS, the learned perceptual distance of Zhang et al. 2018 ("The Unreasonable Effectiveness
of Deep Features as a Perceptual Metric"), on a VGG16 backbone.

The distance: both images through VGG16's conv stack, features taken after the last ReLU
of each of its five blocks, each normalised to unit length along channels; the squared
differences weighted per channel by a learned non-negative 1x1 head, averaged over
positions, summed over blocks.

Nothing here downloads. The backbone's weights come from the path ``loss.perceptual.vgg_path``
names or from a local cache; the linear heads from ``loss.perceptual.heads_path`` or the
installed ``lpips`` package (which is read as data, never imported: it imports
torchvision). Every weight is a non-persistent buffer: the distance trains nothing, moves
with ``.to()``, and stays out of checkpoints and exported tokenizers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ConfigError

# VGG16's conv widths ("configuration D"), 'M' a 2x2 max-pool; LPIPS reads the ReLU after
# the last conv of each block
VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
BLOCK_WIDTHS = (64, 128, 256, 512, 512)
# torchvision's ImageNet VGG16 file; the index of each conv in its `features` Sequential
TORCH_HUB_FILE = "vgg16-397923af.pth"
HF_REPO_DIR = "models--timm--vgg16.tv_in1k"
# the input scaling LPIPS applies to images in [-1, 1] (its ScalingLayer)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)


def conv_indices() -> list[int]:
    """Indices of the convs in torchvision's ``vgg16().features`` (conv, ReLU, ..., pool)."""
    out, i = [], 0
    for item in VGG16:
        if item == "M":
            i += 1
        else:
            out.append(i)
            i += 2  # conv, ReLU
    return out


def random_vgg16_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A randomly initialised VGG16 state dict of torchvision's keys: for tests of the
    plumbing only (its distances mean nothing)."""
    g = torch.Generator().manual_seed(seed)
    state, c_in = {}, 3
    for idx, c_out in zip(conv_indices(), [c for c in VGG16 if c != "M"]):
        state[f"features.{idx}.weight"] = torch.randn(c_out, c_in, 3, 3, generator=g) * (2 / (9 * c_in)) ** 0.5
        state[f"features.{idx}.bias"] = torch.zeros(c_out)
        c_in = c_out
    return state


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def vgg16_candidates() -> list[Path]:
    """Where the backbone is looked for when no path is configured, in order: the torch hub
    cache (where torchvision keeps it), then the Hugging Face cache (timm's copy)."""
    from huggingface_hub import constants

    paths = [Path(torch.hub.get_dir()) / "checkpoints" / TORCH_HUB_FILE]
    paths += sorted((Path(constants.HF_HUB_CACHE) / HF_REPO_DIR / "snapshots").glob("*/model.safetensors"))
    return paths


def lpips_heads_candidates() -> list[Path]:
    spec = importlib.util.find_spec("lpips")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return []
    return [Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / "vgg.pth"]


def _find(configured: Optional[str], candidates: list[Path], key: str, what: str) -> Path:
    if configured is not None:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ConfigError(f"{key}: {what} not found at {path}")
        return path
    for path in candidates:
        if path.is_file():
            return path
    looked = ", ".join(str(p) for p in candidates) or "(no candidate location)"
    raise ConfigError(f"{key}: {what} not found; looked for {looked}; set {key} to the file")


class LPIPS(nn.Module):
    """LPIPS distance per image: ``lpips(x, y)`` -> (B,) for images in [-1, 1] of 1 or 3
    channels (grey is repeated to RGB)."""

    def __init__(self, vgg_state: dict[str, torch.Tensor], heads_state: dict[str, torch.Tensor]):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.layers: list[tuple[str, int]] = []  # ('conv', i) / ('pool', 0) / ('tap', block)
        convs, block, c_in = iter(conv_indices()), 0, 3
        for item in VGG16:
            if item == "M":
                self.layers += [("tap", block), ("pool", 0)]
                block += 1
                continue
            idx = next(convs)
            w, b = vgg_state.get(f"features.{idx}.weight"), vgg_state.get(f"features.{idx}.bias")
            if w is None or b is None or tuple(w.shape) != (item, c_in, 3, 3):
                raise ValueError(f"VGG16 weights: features.{idx} missing or not of shape ({item}, {c_in}, 3, 3)")
            self.register_buffer(f"w{idx}", w.float().clone(), persistent=False)
            self.register_buffer(f"b{idx}", b.float().clone(), persistent=False)
            self.layers.append(("conv", idx))
            c_in = item
        self.layers.append(("tap", block))
        for i, c in enumerate(BLOCK_WIDTHS):
            head = heads_state.get(f"lin{i}.model.1.weight")
            if head is None or tuple(head.shape) != (1, c, 1, 1):
                raise ValueError(f"LPIPS heads: lin{i}.model.1.weight missing or not of shape (1, {c}, 1, 1)")
            self.register_buffer(f"head{i}", head.float().clone(), persistent=False)
        self.requires_grad_(False)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for kind, i in self.layers:
            if kind == "conv":
                x = F.relu(F.conv2d(x, getattr(self, f"w{i}"), getattr(self, f"b{i}"), padding=1))
            elif kind == "pool":
                x = F.max_pool2d(x, 2)
            else:
                taps.append(x)
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            fx, fy = self.features(x.float()), self.features(y.float())
            total = x.new_zeros(x.shape[0], dtype=torch.float32)
            for i, (a, b) in enumerate(zip(fx, fy)):
                a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total = total + F.conv2d((a - b).pow(2), getattr(self, f"head{i}")).mean((1, 2, 3))
        return total


def load_lpips(vgg_path: Optional[str] = None, heads_path: Optional[str] = None,
               key: str = "loss.perceptual") -> LPIPS:
    """LPIPS with VGG16 from ``vgg_path`` (or the local caches) and heads from ``heads_path``
    (or the installed lpips package); a missing file is a one-line error naming the key
    and every file looked for."""
    vgg = _find(vgg_path, vgg16_candidates(), f"{key}.vgg_path", "VGG16 weights")
    heads = _find(heads_path, lpips_heads_candidates(), f"{key}.heads_path",
                  "LPIPS linear heads (pip install lpips ships them)")
    try:
        return LPIPS(_read_weights(vgg), _read_weights(heads))
    except ValueError as err:
        raise ConfigError(f"{key}: {vgg} / {heads}: {err}") from None
