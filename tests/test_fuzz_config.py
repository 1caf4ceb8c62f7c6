"""Config fuzzing (docs/reliability.md, guarantee 4): random ``key=value`` overrides -- real
dotted keys of the config dataclasses, junk keys, values of every type (negative, zero,
huge, null, strings, lists, NaN) -- either fail with :class:`ConfigError` naming a key, or
give a config whose model builds and runs a forward pass. Any other exception fails.

Sizes (image size, widths, codebook sizes...) are drawn from small ranges so each example
is fast; ``derandomize`` keeps the suite reproducible. ``HQVAE_FUZZ_EXAMPLES=2000`` and
``HQVAE_FUZZ_RANDOM=1`` run a longer, random search.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from engine.config import ConfigError  # noqa: E402
from hqvae.pipeline import PipelineConfig, load_pipeline_config  # noqa: E402
from prior.config import PriorConfig, load_prior_config  # noqa: E402
from prior.model import LevelPrior  # noqa: E402
from sampling.classifier.config import ClassifierConfig, load_classifier_config  # noqa: E402
from sampling.classifier.model import Classifier  # noqa: E402
from tokenizer.config import TokenizerConfig, load_tokenizer_config  # noqa: E402
from tokenizer.model import HQVAE  # noqa: E402

EXAMPLES = int(os.environ.get("HQVAE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None,
    derandomize=not os.environ.get("HQVAE_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# keys whose value sets a tensor size: drawn from a small range (negatives and 0 included)
SIZE_KEYS = {
    "image_size", "channels", "res_channels", "res_blocks", "state_channels", "codebook_size",
    "codebook_dim", "factor", "downsample", "depth", "n_fft", "hop_length", "num_frames",
    "n_mels", "n_layer", "n_head", "n_embd", "cond_channels", "cond_blocks", "embedding_dim",
    "convs_per_block", "groups", "num_classes", "time_shift", "time_mask", "freq_mask",
    "crop_padding",
}


def _leaf_keys(cls: type, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of a config dataclass -> its annotation (list items as ``.0``/``.1``)."""
    out: dict[str, Any] = {}
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        inner = [a for a in get_args(tp) if a is not type(None)] if get_origin(tp) in (
            Union, types.UnionType) else [tp]
        sections = [a for a in inner if dataclasses.is_dataclass(a)]
        if sections:
            out.update(_leaf_keys(sections[0], f"{key}."))
        elif get_origin(tp) is list and get_args(tp) and dataclasses.is_dataclass(get_args(tp)[0]):
            for i in (0, 1):
                out.update(_leaf_keys(get_args(tp)[0], f"{key}.{i}."))
            out[key] = tp
        else:
            out[key] = tp
    return out


def _literals(tp: Any) -> list:
    if get_origin(tp) is Literal:
        return list(get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return [v for a in get_args(tp) for v in _literals(a)]
    return []


PRESETS = ["vqvae", "sqvae", "vqvae2", "sqvae2", "rqvae", "rsqvae", "hqvae", "nope"]
JUNK_KEYS = ["zzz", "model.zzz", "train.stepz", "data.audio.nope", "model.layers.5.factor",
             "model.layers.x.kind", "levels.0.n_embd", "levels.3.arch", "model", "train",
             "image.tokenizer.model.zzz", "audio.classifier.model.widths.0", "..", "a.b.c.d"]


def _wild() -> st.SearchStrategy[str]:
    """Any YAML scalar or collection, mostly of the wrong kind."""
    return st.one_of(
        st.integers(-(10**12), 10**12).map(str),
        st.floats(-1e6, 1e6, allow_nan=False).map(repr),
        st.sampled_from([".nan", ".inf", "-.inf", "null", "true", "false", "''", "[]", "{}",
                         "[1, 2]", "{a: 1}", "abc", "1e-3", "-0.0", "0", "-1", "99999999999999999999"]),
        st.text(alphabet="ab01-.:[]{}, =", max_size=8),
    )


def _plausible(key: str, tp: Any) -> st.SearchStrategy[str]:
    """YAML text of the right type for ``key`` (sizes small; negatives and 0 included)."""
    leaf = key.rsplit(".", 1)[-1]
    if leaf in SIZE_KEYS:
        return st.integers(-1, 40 if leaf == "codebook_size" else 33).map(str)
    if leaf == "preset":
        return st.sampled_from(PRESETS)
    if leaf == "widths":
        return st.lists(st.integers(-1, 12), min_size=0, max_size=4).map(str)
    typed: list[st.SearchStrategy[str]] = []
    lit = _literals(tp)
    if lit:
        typed.append(st.sampled_from([str(v) if v is not None else "null" for v in lit]))
    for a in [a for a in get_args(tp) if a is not type(None)] or [tp]:
        if a is int:
            typed.append(st.integers(-3, 12).map(str))
        elif a is float:
            typed.append(st.floats(-2.0, 2.0, allow_nan=False).map(repr))
        elif a is bool:
            typed.append(st.sampled_from(["true", "false"]))
        elif a is str:
            typed.append(st.sampled_from(["train", "test", "x", ""]))
    if type(None) in get_args(tp):
        typed.append(st.just("null"))
    return st.one_of(*typed) if typed else _wild()


def overrides(cls: type, base: list[str] = ()) -> st.SearchStrategy[list[str]]:
    """``base`` + 0-4 plausible overrides of real keys + sometimes one wild one (a junk key,
    a value of any type, or text that is no override at all)."""
    keys = _leaf_keys(cls)
    names = sorted(keys)
    plausible = st.sampled_from(names).flatmap(
        lambda k: _plausible(k, keys[k]).map(lambda v: f"{k}={v}"))
    wild = st.one_of(
        st.sampled_from(names + JUNK_KEYS).flatmap(lambda k: _wild().map(lambda v: f"{k}={v}")),
        st.sampled_from(JUNK_KEYS).flatmap(lambda k: _plausible(k, int).map(lambda v: f"{k}={v}")),
        st.sampled_from(["noequals", "=3", " =1", "model.layers.0.factor"]),
    )
    return st.tuples(
        st.lists(plausible, max_size=4),
        st.one_of(st.just([]), st.just([]), wild.map(lambda w: [w])),
    ).map(lambda t: [*base, *t[0], *t[1]])


def _names_a_key(message: str, given_overrides: list[str], cls: type) -> bool:
    fields = {k.rsplit(".", 1)[-1] for k in _leaf_keys(cls)} | {
        seg for k in _leaf_keys(cls) for seg in k.split(".")}
    segments = {seg for o in given_overrides for seg in o.split("=", 1)[0].strip().split(".") if seg}
    return any(name in message for name in fields | segments | {"override"})


def _load(loader, cls, ovs):
    try:
        cfg = loader(None, ovs)
    except ConfigError as err:
        assert _names_a_key(str(err), ovs, cls), f"{ovs}: {err}"
        event("ConfigError")
        return None
    event("loaded")
    return cfg


# -- the fuzz tests ------------------------------------------------------------------------

SMALL_TOK = ["model.preset=vqvae", "model.channels=8", "model.res_channels=4", "model.res_blocks=1",
             "data.image_size=16", "model.layers.0.codebook_size=8", "model.layers.0.codebook_dim=4",
             "data.audio.n_fft=32", "data.audio.hop_length=8", "data.audio.num_frames=16", "data.audio.n_mels=8"]


@FUZZ
@given(st.one_of(*[overrides(TokenizerConfig, SMALL_TOK)] * 3, overrides(TokenizerConfig)))
# what the fuzzer found (each was a deep AttributeError / TypeError / NaN before the fix)
@example([*SMALL_TOK, "model=1"])
@example([*SMALL_TOK, "model.quantizer=5"])
@example([*SMALL_TOK, "model.preset=[]"])
@example([*SMALL_TOK, "data.source=tones", "data.audio.mel=true", "data.audio.n_mels=0"])
@example([*SMALL_TOK, "data.source=tones", "data.audio.db_min=-1e300", "data.audio.db_max=1e300"])
@example([*SMALL_TOK, "train.lr=.nan"])
@example([*SMALL_TOK, "train.beta1=1.5"])
@example([*SMALL_TOK, "train.seed=-1"])
@example([*SMALL_TOK, "eval.batch_size=0"])
def test_tokenizer_configs_fail_cleanly_or_build(ovs):
    cfg = _load(load_tokenizer_config, TokenizerConfig, ovs)
    if cfg is None:
        return
    c, h, w = cfg.data.shape
    if c * h * w > 3 * 64 * 64 or cfg.model.channels > 64 or any(
            la.codebook_size * la.codebook_dim > 40 * 64 for la in cfg.model.layers):
        return  # a valid but large model (defaults from unset keys): not this test's business
    torch.manual_seed(0)
    event("built")
    model = HQVAE(cfg.model, cfg.data.shape)
    x = torch.rand(2, c, h, w) * 2 - 1
    terms = model(x, step=0)
    assert torch.isfinite(terms["loss"]), (ovs, terms)
    model.eval()
    codes = model.encode(x)
    assert model.decode_codes(codes).shape == x.shape


SMALL_PRIOR = ["model.n_layer=1", "model.n_embd=16", "model.n_head=2", "model.cond_channels=8",
               "model.cond_blocks=1"]


@FUZZ
@given(st.one_of(*[overrides(PriorConfig, SMALL_PRIOR)] * 3, overrides(PriorConfig)))
def test_prior_configs_fail_cleanly_or_build(ovs):
    cfg = _load(load_prior_config, PriorConfig, ovs)
    if cfg is None:
        return
    shapes, sizes = [(2, 2), (4, 4)], [8, 8]
    num_classes = 3 if cfg.class_cond else None
    for level in range(min(2, max(1, len(cfg.levels)))):
        m = cfg.level_model(level)
        if m.n_embd * m.n_layer > 64 * 4 or m.cond_channels > 64:
            continue  # a valid but large model
        event("built")
        model = LevelPrior(m, level, shapes, sizes, num_classes, cfg.label_dropout)
        batch = {f"level_{lv}": torch.randint(8, (2, h * w)) for lv, (h, w) in enumerate(shapes)}
        if num_classes:
            batch["label"] = torch.tensor([0, 2])
        assert torch.isfinite(model(batch)["loss"]), ovs


SMALL_CLF = ["model.widths=[4, 8]", "model.embedding_dim=8", "data.audio.n_fft=32",
             "data.audio.hop_length=8", "data.audio.num_frames=16", "model.num_classes=3",
             "data.audio.n_mels=8"]


@FUZZ
@given(st.one_of(*[overrides(ClassifierConfig, SMALL_CLF)] * 3, overrides(ClassifierConfig)))
def test_classifier_configs_fail_cleanly_or_build(ovs):
    cfg = _load(load_classifier_config, ClassifierConfig, ovs)
    if cfg is None:
        return
    c, f, t = cfg.data.shape
    if cfg.model.num_classes is None:
        cfg.model.num_classes = 3
    if f * t > 64 * 64 or max(cfg.model.widths) > 32 or cfg.model.embedding_dim > 64:
        return
    event("built")
    model = Classifier(cfg)
    x = torch.rand(2, c, f, t) * 2 - 1
    out = model({"x": x, "label": torch.tensor([0, 1])})
    assert torch.isfinite(out["loss"]), ovs


@FUZZ
@given(st.one_of(overrides(PipelineConfig, ["image.tokenizer.model.preset=vqvae"]),
                 overrides(PipelineConfig, ["audio.tokenizer.data.source=tones",
                                            "audio.tokenizer.model.preset=sqvae",
                                            "audio.score.enabled=false"]),
                 overrides(PipelineConfig)))
def test_pipeline_configs_fail_cleanly(ovs):
    _load(load_pipeline_config, PipelineConfig, ovs)


def test_the_fuzzer_reaches_real_keys():
    keys = _leaf_keys(TokenizerConfig)
    assert "model.layers.1.codebook_size" in keys and "data.audio.n_fft" in keys
    assert "train.nan_policy" in keys and "data.skip_bad_examples" in keys
    assert "image.tokenizer.model.quantizer.tau_min" in _leaf_keys(PipelineConfig)
    assert typing.get_origin(keys["model.quantizer.kind"]) is Literal
