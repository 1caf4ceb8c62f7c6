"""Which encoder / decoder networks a tokenizer can be built on (``model.net``).

A network is one registration: its name, the dataclass of its own options
(``model.net_options``, checked key by key at load like every other section) and a builder::

    @register_net("mynet", MyNetOptions)
    def build(model_cfg, options, in_channels, factors, state_channels):
        return encoder, decoder

The builder returns an encoder mapping an input (B, C, H, W) to a dict {factor: features
with ``model.channels`` channels} for every factor in ``factors`` (the code grids of the
hierarchy, coarse to fine), and a decoder mapping the top-down state (B, state_channels,
H / f, W / f) at the finest factor f back to (B, C, H, W); both derive from
:class:`tokenizer.nets.checkpointing.Checkpointed` so that gradient checkpointing reaches
them, and the decoder's ``last_weight()`` returns its output layer's weight (the adaptive
adversarial weight compares gradients there). The hierarchy (tokenizer/model.py)
is the same on every network, so every preset runs on each.

This module does not import torch, so a config can be loaded and checked without it; the
networks themselves register when :mod:`tokenizer.nets` is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.config import ConfigError, from_dict, valid_keys_hint


@dataclass(frozen=True)
class NetEntry:
    name: str
    options: type  # dataclass of the network's own keys (model.net_options)
    build: Callable[..., Any]
    summary: str  # one line for docs and errors


NETS: dict[str, NetEntry] = {}


def register_net(name: str, options: type) -> Callable:
    """Register the decorated builder as network ``name`` with options dataclass ``options``
    (its docstring's first line is the network's summary)."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"register_net({name!r}): options must be a dataclass, got {options!r}")

    def decorate(build: Callable) -> Callable:
        if name in NETS:
            raise ValueError(f"a tokenizer network named {name!r} is registered already")
        summary = (build.__doc__ or "").strip().splitlines()[0] if build.__doc__ else name
        NETS[name] = NetEntry(name, options, build, summary)
        return build

    return decorate


def net_entry(name: str) -> NetEntry:
    """The registered network ``name``, or a one-line error naming ``model.net``."""
    import tokenizer.nets  # noqa: F401 -- registers the networks (imports torch: only when a config is checked)

    if name not in NETS:
        raise ConfigError(f"net: unknown network {name!r}; registered: {', '.join(sorted(NETS))}")
    return NETS[name]


def net_options(name: str, options: dict, factors: list[int]) -> Any:
    """``model.net_options`` as the network's options dataclass, checked against the code
    grid ``factors`` of the hierarchy; errors name the key under ``net_options``."""
    entry = net_entry(name)
    if not isinstance(options, dict):
        raise ConfigError(f"net_options: expected a mapping of {name!r} options, got {options!r}")
    keys = [f.name for f in dataclasses.fields(entry.options)]
    for key in options:
        # named from here: this section is checked inside model's validate, which prefixes
        # its errors with "model."
        if key not in keys:
            raise ConfigError(f"net_options.{key}: not a key of network {name!r}{valid_keys_hint(key, keys)}")
    obj = from_dict(entry.options, options, prefix="net_options")
    check = getattr(obj, "check_factors", None)
    if check is not None:
        check(sorted(set(factors)))
    return obj
