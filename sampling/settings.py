"""Every option of drawing a sample set, with its default and its bounds, in one place.

`hqvae sample` builds its flags from :class:`SamplingSettings` (defaults, help, the names
in messages), the pipeline's ``sample:`` section is a subset of it (:func:`settings_section`)
and :func:`sampling.sample_set.sample_into` takes it, so the three accept the same values and
refuse the same ones with the same words, naming the option the way its caller spells it
(``--top-p`` on the command line, ``image.sample.top_p`` in a pipeline config).

Kept free of torch: the command line imports it before it knows which command runs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union, get_type_hints

from engine.config import ConfigError

MAX_SAMPLES = 10**9  # one folder of numbered files; far beyond what a file system lists well
MAX_SEED = 2**32 - 1  # torch's generators take seeds below 2**64; the batch seeds multiply it
MAX_GRID = 1024  # a sample shown in grid.png costs its bytes in memory until the grid is written
MAX_GRIFFIN_LIM_ITERS = 10_000
MAX_CFG_SCALE = 1000.0  # beyond it the guided logits overflow float32
CACHES = ("static", "dynamic", "none")

Keys = Optional[Mapping[str, str]]


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class SamplingSettings:
    """How a sample set is drawn and written. ``temperature`` / ``top_k`` / ``top_p`` take
    one value for every prior level or a list with one per level (top level first)."""

    n: int = field(default=64, metadata=_help("number of samples (1e6 style accepted)"))
    batch_size: int = field(default=64, metadata=_help(
        "samples drawn, decoded and written at a time (memory grows with it, not with n)"))
    temperature: Union[float, list[float]] = field(default=1.0, metadata=_help(
        "sampling temperature: one value or one per level, e.g. 1.0,0.9 (0 = greedy)"))
    top_k: Union[int, list[int]] = field(default=0, metadata=_help(
        "keep the k most likely codes: one value or one per level (0 = off)"))
    top_p: Union[float, list[float]] = field(default=1.0, metadata=_help(
        "nucleus sampling mass: one value or one per level (1 = off)"))
    cfg_scale: float = field(default=1.0, metadata=_help(
        "classifier-free guidance scale (1 = plain conditional, 0 = unconditional)"))
    # 'cycle' = balanced classes 0, 1, ..., K-1, 0, ...; a class id or class name; or
    # None = unconditional
    label: Union[int, str, None] = field(default=None, metadata=_help(
        "class id (or class name) for every sample, or 'cycle' for balanced classes "
        "(class-conditional priors; default: unconditional)"))
    seed: int = field(default=0, metadata=_help("seed of the draws (batch b draws from seed * 1000003 + b)"))
    cache: Literal["static", "dynamic", "none"] = field(default="static", metadata=_help(
        "key/value cache: preallocated (static), growing (dynamic), or none (re-run the prefix "
        "each step; slow, for checking); all draw the same codes"))
    compile: bool = field(default=False, metadata=_help(
        "torch.compile the one-token step (with CUDA graphs on a GPU); pays off for many "
        "samples, the first batch pays the compilation"))
    grid: int = field(default=64, metadata=_help(f"samples shown in grid.png (at most {MAX_GRID})"))
    npz: bool = field(default=False, metadata=_help(
        "also write samples.npz: the uint8 (N, H, W, 3) arr_0 batch of the ADM / guided-diffusion "
        "evaluator (images)"))
    griffin_lim_iters: Optional[int] = field(default=None, metadata=_help(
        "audio: Griffin-Lim iterations (default: the tokenizer's)"))

    def validate(self, keys: Keys = None, min_n: int = 1) -> None:
        """Raise :class:`ConfigError` naming the first option out of its bounds; ``keys``
        maps an option to its name in the message (default: the field's name), ``min_n``
        is the least number of samples the caller can use."""
        k = (lambda name: keys.get(name, name)) if keys else (lambda name: name)
        check_whole(self.n, k("n"), min_n, MAX_SAMPLES)
        check_whole(self.batch_size, k("batch_size"), 1)
        check_whole(self.grid, k("grid"), 1, MAX_GRID)
        check_whole(self.seed, k("seed"), 0, MAX_SEED)
        if self.griffin_lim_iters is not None:
            check_whole(self.griffin_lim_iters, k("griffin_lim_iters"), 0, MAX_GRIFFIN_LIM_ITERS)
        for name, check in (("temperature", check_temperature), ("top_k", check_top_k), ("top_p", check_top_p)):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if not value:
                    raise ConfigError(f"{k(name)}: expected one value or one per level, got []")
                for level, v in enumerate(value):
                    check(v, f"{k(name)} for level {level}")
            else:
                check(value, k(name))
        check_cfg_scale(self.cfg_scale, k("cfg_scale"))
        check_cache(self.cache, self.compile, k("cache"), k("compile"))
        for name in ("compile", "npz"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{k(name)}: expected true/false, got {getattr(self, name)!r}")
        label = self.label
        whole = isinstance(label, int) and not isinstance(label, bool)
        if not (label is None or (isinstance(label, str) and label) or (whole and label >= 0)):
            # a class name is checked against the prior's (or the data's) classes
            raise ConfigError(f"{k('label')}: expected 'cycle', a class id, a class name or null, got {label!r}")

    def labelled(self) -> bool:
        """Whether a set drawn with these settings carries labels: a label was given and
        guidance does not turn it off (scale 0 draws with the null label)."""
        return self.label is not None and self.cfg_scale != 0


def check_whole(value: Any, key: str, low: int, high: Optional[int] = None) -> None:
    """A whole number in [low, high] (``high`` None: no upper bound)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high:,}]" if high is not None else f">= {low}"
        raise ConfigError(f"{key}: must be {bound}, got {value:,}")


def _number(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    return float(value)


def check_temperature(value: Any, key: str = "temperature") -> None:
    """0 (greedy) or more, finite."""
    t = _number(value, key)
    if not (t >= 0 and math.isfinite(t)):
        raise ConfigError(f"{key}: must be >= 0, got {value}")


def check_top_k(value: Any, key: str = "top_k") -> None:
    """0 (off) or more codes."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected a whole number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{key}: must be >= 0 (0 = off), got {value}")


def check_top_p(value: Any, key: str = "top_p") -> None:
    """A probability mass in (0, 1]."""
    if not 0 < _number(value, key) <= 1:
        raise ConfigError(f"{key}: must be in (0, 1] (1 = off), got {value}")


def check_cfg_scale(value: Any, key: str = "cfg_scale") -> None:
    """A finite guidance scale within +-MAX_CFG_SCALE."""
    s = _number(value, key)
    if not math.isfinite(s) or abs(s) > MAX_CFG_SCALE:
        raise ConfigError(f"{key}: must be a number in [-{MAX_CFG_SCALE:g}, {MAX_CFG_SCALE:g}], got {value}")


def check_cache(cache: Any, compile: bool, key: str = "cache", compile_key: str = "compile") -> None:
    """One of :data:`CACHES`; ``compile`` only with the static cache."""
    if cache not in CACHES:
        raise ConfigError(f"{key}: expected 'static', 'dynamic' or 'none', got {cache!r}")
    if compile and cache != "static":
        # only the static cache gives the step fixed shapes; with a growing cache every
        # step would be a new graph
        raise ConfigError(f"{compile_key}: needs {key}='static', got {key}={cache!r}")


def flag_names(prefix: str = "--") -> dict[str, str]:
    """Each option's command-line flag: ``top_p`` -> ``--top-p``."""
    return {f.name: prefix + f.name.replace("_", "-") for f in dataclasses.fields(SamplingSettings)}


class SettingsSection:
    """Methods of a config section made by :func:`settings_section`."""

    # the least number of samples the section's user can do anything with
    min_n = 1

    def settings(self, **changes: Any) -> SamplingSettings:
        """These values (and ``changes``) over :class:`SamplingSettings`' defaults."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return SamplingSettings(**{**values, **changes})

    def validate(self) -> None:
        self.settings().validate(min_n=self.min_n)


def settings_section(name: str, keys: Sequence[str], **defaults: Any) -> type:
    """A dataclass of the options ``keys`` of :class:`SamplingSettings` (a config section
    offering only those, in that order), with other ``defaults`` where given; its types,
    bounds and help are the settings'. Subclass it to add checks of the section's own."""
    hints = get_type_hints(SamplingSettings)
    own = {f.name: f for f in dataclasses.fields(SamplingSettings)}
    unknown = sorted(set(keys) - set(own)) + sorted(set(defaults) - set(keys))
    if unknown:
        raise TypeError(f"settings_section: not options of the section: {unknown}")
    specs = [(key, hints[key], field(default=defaults.get(key, own[key].default), metadata=own[key].metadata))
             for key in keys]
    return dataclasses.make_dataclass(name, specs, bases=(SettingsSection,))
