"""Configuration of stage one: model (hierarchy + quantizers + nets), data, training.

Every key lives here once, with its default and meaning. Presets only fill in
``model.layers`` and the quantizer kind; anything can still be overridden.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from engine.config import ConfigError, load_config
from engine.train_config import TrainConfig
from tokenizer.losses.config import LossConfig
from tokenizer.quantizer_config import (  # noqa: F401 -- re-exported: the config's public names
    CODEBOOK_DIM_RANGE,
    CODEBOOK_SIZE_RANGE,
    DEPTH_RANGE,
    ConfigTypeError,
    QuantizerConfig,
    check_codebook,
    check_field_types,
    check_int,
    check_number,
)


@dataclass
class LayerConfig:
    # injected: a new code grid of its own factor; residual: quantizes what the layer above left
    kind: Literal["injected", "residual"] = "injected"
    factor: int = 4  # downsampling of this layer's code grid relative to the input (power of 2)
    codebook_size: int = 512  # K
    codebook_dim: int = 64  # D

    def validate(self) -> None:
        check_field_types(self)
        check_codebook(self.codebook_size, self.codebook_dim)
        if self.factor < 1 or self.factor & (self.factor - 1):
            raise ConfigError(f"factor: must be a power of 2 (1, 2, 4, ...), got {self.factor}")


@dataclass
class ModelConfig:
    preset: Optional[str] = None  # vqvae | sqvae | vqvae2 | sqvae2 | rqvae | rsqvae | hqvae
    downsample: int = 4  # finest code grid factor used when a preset fills in `layers`
    depth: int = 4  # residual depth used by the rqvae / rsqvae presets
    layers: list[LayerConfig] = field(default_factory=list)  # top (coarsest) first
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)  # every layer's quantizer
    channels: int = 128  # width of the encoder / decoder conv nets
    res_blocks: int = 2  # residual blocks per resolution stage
    res_channels: int = 32  # bottleneck width inside a residual block
    state_channels: Optional[int] = None  # top-down state width; default: D of residual layers, else `channels`
    norm: Literal["none", "batch"] = "none"  # normalisation inside residual blocks
    # normalisation of every quantizer input (the output of a layer's 1x1 projection): 'batch'
    # keeps it on the unit scale of the N(0, 1) codebook, as SQ-VAE's batch-normalised
    # encoder does, so a sigma^2 initialisation means the same thing whatever the encoder's
    # scale (docs/benchmarks.md, "HQ-VAE objective")
    code_norm: Literal["none", "batch"] = "none"
    # how an injected layer builds its state: 'concat' (VQ-VAE-2 style) H_l = h([up(H_{l-1}),
    # z_l]) with convs and residual blocks; 'add' (the public port of HQ-VAE's code)
    # ẑ_l = conv1x1(relu(conv3x3([Ĥ, up(H_{l-1})]))) and H_l = up(H_{l-1}) + z_l, the state
    # then living in codebook space (one codebook_dim for every layer). The SQ presets with
    # injected layers set add (SQ_INJECTED below)
    injection: Literal["concat", "add"] = "concat"
    # the encoder / decoder network (tokenizer/nets): 'conv', the small stack sized by the
    # keys above (quickstart and CPU benchmarks), or 'vqgan', the scalable network of the
    # VQGAN family for 256 px and above; a registered network's own keys go in net_options
    net: str = "conv"
    net_options: dict = field(default_factory=dict)  # the keys of model.net (reference: "Tokenizer networks")

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("layers: at least one layer is required (or set `preset`)")
        # imported here: the registry imports the networks, and with them torch, which
        # loading and checking a config does not otherwise need
        from tokenizer.nets.registry import net_options

        net_options(self.net, self.net_options, [la.factor for la in self.layers])
        if self.channels < 1 or self.res_channels < 1 or self.res_blocks < 0:
            raise ConfigError("channels/res_channels must be >= 1 and res_blocks >= 0")
        for name, cap in (("channels", 4096), ("res_channels", 4096), ("res_blocks", 64)):
            if getattr(self, name) > cap:
                raise ConfigError(f"{name}: at most {cap}, got {getattr(self, name)}")
        for i, (prev, layer) in enumerate(zip(self.layers, self.layers[1:]), start=1):
            if layer.factor > prev.factor:
                raise ConfigError(
                    f"layers.{i}.factor: layers go from coarse to fine, but factor "
                    f"{layer.factor} is coarser than layers.{i - 1}.factor={prev.factor}"
                )
            if layer.kind == "residual" and layer.factor != prev.factor:
                raise ConfigError(
                    f"layers.{i}.factor: a residual layer refines the state at the same "
                    f"resolution, so its factor must equal layers.{i - 1}.factor={prev.factor}"
                )
        if self.injection == "add":
            dims = {la.codebook_dim for la in self.layers}
            if len(dims) > 1:
                raise ConfigError(
                    f"injection: 'add' sums every layer's codewords into one state, so the layers "
                    f"need one codebook_dim; got {sorted(dims)}")
            if self.state_channels is not None and self.state_channels != dims.pop():
                raise ConfigError("state_channels: injection 'add' keeps the state in codebook space "
                                  "(state_channels == codebook_dim)")
        residual_dims = {la.codebook_dim for la in self.layers if la.kind == "residual"}
        if len(residual_dims) > 1:
            raise ConfigError(
                f"layers: residual layers add codewords to one state, so they need one "
                f"codebook_dim; got {sorted(residual_dims)}"
            )
        if residual_dims and self.state_channels is not None:
            (d,) = residual_dims
            if self.state_channels != d:
                raise ConfigError(
                    f"state_channels: residual layers need state_channels == codebook_dim ({d}), "
                    f"got {self.state_channels}"
                )

    @property
    def resolved_state_channels(self) -> int:
        if self.injection == "add":
            return self.layers[0].codebook_dim
        residual_dims = [la.codebook_dim for la in self.layers if la.kind == "residual"]
        if residual_dims:
            return residual_dims[0]
        return self.state_channels or self.channels


@dataclass
class AudioConfig:
    sample_rate: int = 8000  # Hz; clips at other rates are resampled (see resample)
    n_fft: int = 256  # STFT window length in samples (even)
    hop_length: int = 64  # STFT hop in samples (below n_fft)
    num_frames: int = 128  # clip length in STFT frames: samples = hop_length * (num_frames - 1)
    mel: bool = False  # mel instead of linear-frequency magnitudes
    n_mels: int = 128  # mel bands when mel is true
    db_min: float = -80.0  # log-magnitude range mapped linearly onto [-1, 1]
    db_max: float = 40.0  # top of that range
    crop: Literal["start", "center", "random"] = "start"  # where a long clip is cut
    resample: bool = True  # resample clips at another rate (else: error)
    griffin_lim_iters: int = 64  # Griffin-Lim iterations when a spectrogram becomes audio

    def validate(self) -> None:
        if self.n_fft < 4 or self.n_fft % 2:
            raise ConfigError(f"n_fft: must be an even number >= 4, got {self.n_fft}")
        if not 0 < self.hop_length < self.n_fft:
            # hop = n_fft leaves the Hann window's zero at every frame edge uncovered, so the
            # inverse STFT behind Griffin-Lim cannot exist (NOLA condition)
            raise ConfigError(
                f"hop_length: must be in (0, n_fft) = (0, {self.n_fft}) so that spectrograms can "
                f"be inverted to audio, got {self.hop_length}")
        if self.num_frames < 2:
            raise ConfigError(f"num_frames: must be >= 2, got {self.num_frames}")
        if self.db_max <= self.db_min:
            raise ConfigError(f"db_max: must exceed db_min ({self.db_min}), got {self.db_max}")
        for name in ("db_min", "db_max"):
            if abs(getattr(self, name)) > 1000:
                raise ConfigError(f"{name}: must lie within [-1000, 1000] dB, got {getattr(self, name)}")
        if self.n_mels < 1:
            raise ConfigError(f"n_mels: must be >= 1, got {self.n_mels}")
        if self.griffin_lim_iters < 0:
            raise ConfigError(f"griffin_lim_iters: must be >= 0, got {self.griffin_lim_iters}")
        if self.sample_rate < 1:
            raise ConfigError(f"sample_rate: must be >= 1, got {self.sample_rate}")

    @property
    def num_bins(self) -> int:
        return self.n_mels if self.mel else self.n_fft // 2  # Nyquist bin dropped

    @property
    def num_samples(self) -> int:
        return self.hop_length * (self.num_frames - 1)


def _source_entry(name: str):
    """tokenizer/data/registry.py's entry for ``data.source: name``. Imported when called:
    the registry's loaders import this module."""
    # imported here: the registry imports this module (a cycle if imported at the top)
    from tokenizer.data.registry import source_entry

    return source_entry(name)


@dataclass
class DataConfig:
    # 'shapes' / 'tones' (built-in, procedural), 'parquet', 'webdataset', 'imagefolder',
    # 'audiofolder' (tokenizer/data/registry.py), a hub dataset name, or a local path (a
    # .parquet file or a folder of them)
    source: str = "shapes"
    path: Optional[str] = None  # data_dir / files for parquet, imagefolder, audiofolder
    train_split: str = "train"  # split trained on; a slice such as train[:90%] works
    eval_split: str = "test"  # split evaluated on
    column: Optional[str] = None  # image / audio column; detected when unset
    label_column: Optional[str] = "label"  # kept when present
    modality: Optional[Literal["image", "audio"]] = None  # detected when unset
    image_size: int = 32  # square side after resizing / cropping
    channels: int = 3  # 3 = RGB, 1 = grey
    resize: Literal["resize", "center_crop", "random_crop"] = "center_crop"  # how images reach image_size
    num_train: int = 5000  # procedural datasets: examples in the train split
    num_eval: int = 500  # procedural datasets: examples in the eval split
    seed: int = 0  # procedural datasets: generation seed
    # an example that cannot be decoded (corrupt / truncated file, empty cell): false = stop
    # with an error naming the split, row and file; true = replace it by the next good row
    # (the batch keeps its size), warn naming the first few, and count it in the summary
    skip_bad_examples: bool = False
    # read the splits as streams (datasets' streaming mode: no download or Arrow cache of
    # the whole split) for train-tokenizer and encode: Parquet / WebDataset shards or a hub
    # dataset (docs/guides/streaming.md)
    streaming: bool = False
    # streaming: rows held in the seeded shuffle buffer of each reader (the order is a
    # function of train.seed and the epoch); 0 reads the shards in file order. Default 1000
    shuffle_buffer: Optional[int] = None
    audio: AudioConfig = field(default_factory=AudioConfig)  # spectrogram settings of audio data

    def validate(self) -> None:
        if self.streaming:
            if not _source_entry(self.source).streamable:
                raise ConfigError(
                    f"streaming: source {self.source!r} is not read as a stream; use Parquet "
                    f"(data.source=parquet), WebDataset .tar shards (data.source=webdataset) or a "
                    f"hub dataset")
            for key in ("train_split", "eval_split"):
                if "[" in getattr(self, key):
                    raise ConfigError(
                        f"{key}: a slice ({getattr(self, key)!r}) needs random access, which "
                        f"data.streaming=true does not have; name a whole split")
        elif self.shuffle_buffer is not None:
            raise ConfigError("shuffle_buffer: applies to data.streaming=true only")
        if self.shuffle_buffer is not None and not 0 <= self.shuffle_buffer <= 10**7:
            raise ConfigError(f"shuffle_buffer: must be in [0, 1e7], got {self.shuffle_buffer}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels: must be 1 or 3, got {self.channels}")
        if not 1 <= self.image_size <= 4096:
            raise ConfigError(f"image_size: must be in [1, 4096], got {self.image_size}")
        if self.num_train < 1 or self.num_eval < 1:
            raise ConfigError("num_train / num_eval: must be >= 1")

    @property
    def resolved_shuffle_buffer(self) -> int:
        return 1000 if self.shuffle_buffer is None else self.shuffle_buffer

    @property
    def resolved_modality(self) -> str:
        if self.modality is not None:
            return self.modality
        return _source_entry(self.source).modality or "image"

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one model input."""
        if self.resolved_modality == "audio":
            return (1, self.audio.num_bins, self.audio.num_frames)
        return (self.channels, self.image_size, self.image_size)


@dataclass
class EvalConfig:
    max_examples: int = 2000  # examples of the eval split used during / after training
    batch_size: int = 128  # examples evaluated at a time
    grid_size: int = 8  # originals and reconstructions shown in the PNG grid
    num_audio: int = 4  # original / reconstructed WAV pairs written for audio

    def validate(self) -> None:
        for name in ("max_examples", "batch_size", "grid_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.num_audio < 0:
            raise ConfigError(f"num_audio: must be >= 0, got {self.num_audio}")


@dataclass
class TokenizerConfig:
    run_dir: str = "runs/tokenizer"  # output folder: config, checkpoints, weights, eval
    model: ModelConfig = field(default_factory=ModelConfig)  # the hierarchy, quantizers and network
    data: DataConfig = field(default_factory=DataConfig)  # what is tokenized
    train: TrainConfig = field(default_factory=TrainConfig)  # optimisation
    eval: EvalConfig = field(default_factory=EvalConfig)  # evaluation during and after training
    loss: LossConfig = field(default_factory=LossConfig)  # optional perceptual / adversarial terms

    def validate(self) -> None:
        c, h, w = self.data.shape
        if self.loss.perceptual.weight > 0 and self.data.resolved_modality == "audio":
            raise ConfigError("loss.perceptual.weight: LPIPS compares images (an ImageNet VGG16's "
                              "features); the data here is audio")
        for i, layer in enumerate(self.model.layers):
            if h % layer.factor or w % layer.factor:
                raise ConfigError(
                    f"model.layers.{i}.factor: {layer.factor} does not divide the input size "
                    f"{h}x{w} (data.{'audio.num_frames / bins' if self.data.resolved_modality == 'audio' else 'image_size'})"
                )


# ---------------------------------------------------------------------------------------
# presets: the table of docs/concepts/hierarchy.md's "Presets" section, all from one implementation

# The SQ presets anneal the Gumbel temperature over the run, whatever its length: SQ-VAE's
# per-step decay (tau_decay 1e-5) was tuned for ~150k steps and barely moves in a few
# thousand. tau_end is the measured best (docs/benchmarks.md, "HQ-VAE objective"); a config
# that sets tau_decay / tau_min itself keeps the 'exp' schedule those keys belong to.
SQ_SCHEDULE = {"tau_schedule": "run", "tau_end": 0.5}
# The SQ presets with injected layers build them additively, H_l = up(H_{l-1}) + z_l (as the
# public port of the HQ-VAE authors' code does): on CIFAR-10 it lowered SQ-VAE-2's RMSE and
# kept the mixed HQ-VAE's top layer in use where the VQ-VAE-2-style concatenation let it
# collapse to one code (docs/benchmarks.md, "HQ-VAE objective")
SQ_INJECTED = {"injection": "add"}

PRESETS = {
    # name: (quantizer kind, layer kinds as a function of (downsample, depth), quantizer
    # defaults, model defaults)
    "vqvae": ("vq", lambda d, n: [("residual", d)], {}, {}),
    "sqvae": ("sq", lambda d, n: [("residual", d)], SQ_SCHEDULE, {}),
    "vqvae2": ("vq", lambda d, n: [("injected", 2 * d), ("injected", d)], {"ema": True}, {}),
    "sqvae2": ("sq", lambda d, n: [("injected", 2 * d), ("injected", d)], SQ_SCHEDULE, SQ_INJECTED),
    "rqvae": ("vq", lambda d, n: [("residual", d)] * n, {"ema": True}, {}),
    "rsqvae": ("sq", lambda d, n: [("residual", d)] * n, SQ_SCHEDULE, {}),
    # general HQ-VAE: injected top layer, then a residual refinement of the bottom layer
    "hqvae": ("sq", lambda d, n: [("injected", 2 * d), ("injected", d), ("residual", d)], SQ_SCHEDULE,
              SQ_INJECTED),
}


def expand_preset(data: dict) -> dict:
    """Fill ``model.layers`` and quantizer defaults from ``model.preset``.

    Layer overrides given as ``model.layers.<i>.<key>=...`` on top of a preset arrive as a
    mapping of indices and are applied to the preset's layer list.
    """
    data = copy.deepcopy(data)
    model = data.setdefault("model", {}) or {}
    if not isinstance(model, dict):
        raise ConfigError(f"model: expected a mapping of model settings, got {model!r}")
    data["model"] = model
    preset = model.get("preset")
    if preset is None:
        if isinstance(model.get("layers"), dict):
            raise ConfigError("model.layers: indexed layer overrides need a preset or a layer list")
        return data
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    qkind, layout, qdefaults, model_defaults = PRESETS[preset]
    down = model.get("downsample", 4)
    depth = model.get("depth", 4)
    if isinstance(down, bool) or not isinstance(down, int) or down < 1:
        raise ConfigError(f"model.downsample: must be a positive integer, got {down!r}")
    check_int("model.depth", depth, DEPTH_RANGE)
    layers = model.get("layers")
    if layers is None or isinstance(layers, dict):
        base = [{"kind": k, "factor": f} for k, f in layout(down, depth)]
        for key, value in (layers or {}).items():
            if not str(key).isdigit() or int(key) >= len(base):
                raise ConfigError(f"model.layers.{key}: preset {preset!r} has {len(base)} layers")
            if not isinstance(value, dict):
                raise ConfigError(f"model.layers.{key}: expected a mapping")
            base[int(key)].update(value)
        model["layers"] = base
    quant = model.setdefault("quantizer", {}) or {}
    if not isinstance(quant, dict):
        raise ConfigError(f"model.quantizer: expected a mapping of quantizer settings, got {quant!r}")
    model["quantizer"] = quant
    if quant.get("kind", qkind) != qkind:
        raise ConfigError(
            f"model.quantizer.kind: preset {preset!r} uses {qkind!r}, got {quant['kind']!r}"
        )
    quant["kind"] = qkind
    defaults = dict(qdefaults)
    if "tau_schedule" not in quant and {"tau_decay", "tau_min"} & set(quant):
        defaults.pop("tau_schedule", None)  # the user's 'exp' settings keep their schedule
        defaults.pop("tau_end", None)
    for key, value in defaults.items():
        quant.setdefault(key, value)
    for key, value in model_defaults.items():
        model.setdefault(key, value)
    return data


def load_tokenizer_config(
    path: str | Path | None = None, overrides: Sequence[str] = ()
) -> TokenizerConfig:
    return load_config(TokenizerConfig, path, overrides, prepare=expand_preset)
