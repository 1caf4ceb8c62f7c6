"""One set of sampling settings: `hqvae sample`, the pipeline's ``sample:`` section, the
sampler and sample_into share their defaults and refuse the same values in the same words,
each naming the option as its caller spells it."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from engine.config import ConfigError
from hqvae.cli import build_parser, main
from hqvae.pipeline.config import SampleConfig, load_pipeline_config
from hqvae.sample_command import SAMPLE_FLAGS, sampling_settings
from sampling.sample_set import sample_into
from sampling.sampler import Sampler
from sampling.settings import SamplingSettings

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
# the pipeline samples 256 examples of balanced classes unless told otherwise
PIPELINE_DEFAULTS = {"n": 256, "label": "cycle"}


def test_every_caller_starts_from_the_same_defaults():
    defaults = SamplingSettings()
    args = build_parser().parse_args(["sample", "PRIOR", "--out", "OUT"])
    assert sampling_settings(args) == defaults
    section = SampleConfig()
    for f in dataclasses.fields(section):
        assert getattr(section, f.name) == PIPELINE_DEFAULTS.get(f.name, getattr(defaults, f.name)), f.name
    assert section.settings(**{k: getattr(defaults, k) for k in PIPELINE_DEFAULTS}) == defaults
    # the pipeline's YAML keys are the ones it always had
    assert [f.name for f in dataclasses.fields(SampleConfig)] == [
        "n", "batch_size", "temperature", "top_k", "top_p", "cfg_scale", "label", "seed",
        "griffin_lim_iters", "compile"]
    params = inspect.signature(Sampler).parameters
    for name in ("temperature", "top_k", "top_p", "cfg_scale", "cache", "compile"):
        assert params[name].default == getattr(defaults, name), name


# (option, a bad value as each caller writes it, what every message says after the key)
BAD = [
    ("top_p", 1.5, "must be in (0, 1] (1 = off), got 1.5"),
    ("top_p", 0.0, "must be in (0, 1] (1 = off), got 0.0"),
    ("temperature", -1.0, "must be >= 0, got -1.0"),
    ("top_k", -1, "must be >= 0 (0 = off), got -1"),
    ("cfg_scale", 2000.0, "must be a number in [-1000, 1000], got 2000.0"),
    ("seed", -1, "must be in [0, 4,294,967,295], got -1"),
    ("batch_size", 0, "must be >= 1, got 0"),
    ("griffin_lim_iters", -1, "must be in [0, 10,000], got -1"),
    ("n", 0, "must be in [1, 1,000,000,000], got 0"),
    ("n", 2_000_000_000, "must be in [1, 1,000,000,000], got 2,000,000,000"),
]


@pytest.mark.parametrize("key, value, said", BAD)
def test_every_caller_refuses_the_same_values_naming_the_key(key, value, said, tmp_path, capsys, prior):
    # the command line: one line naming the flag, before the folder or a model is touched
    out = tmp_path / "out"
    assert main(["sample", str(tmp_path / "no-prior"), "--out", str(out), SAMPLE_FLAGS[key], str(value)]) == 2
    err = capsys.readouterr().err
    assert err == f"hqvae sample: error: {SAMPLE_FLAGS[key]}: {said}\n"
    assert not out.exists()
    # the library call: before the priors are loaded
    with pytest.raises(ConfigError) as exc:
        sample_into(out, tmp_path / "no-prior", settings=SamplingSettings(**{key: value}))
    assert str(exc.value) == f"{key}: {said}"
    # the pipeline's config, named by its path in the config
    with pytest.raises(ConfigError) as exc:
        load_pipeline_config(QUICKSTART, [f"image.sample.{key}={value}"])
    message = str(exc.value)
    assert f"image.sample.{key}: " in message
    if key == "n":  # the pipeline scores its samples: FID needs two
        assert ("must be >= 2 (FID needs two samples)" if value < 2 else "must be in [2, 1,000,000,000]") in message
    else:
        assert message.endswith(f"image.sample.{key}: {said}")
    # the sampler, per level
    if key in ("temperature", "top_k", "top_p", "cfg_scale"):
        with pytest.raises(ConfigError) as exc:
            Sampler(prior, **{key: value})
        where = key if key == "cfg_scale" else f"{key} for level 0"
        assert str(exc.value) == f"{where}: {said}"


def test_per_level_values_are_checked_level_by_level(tmp_path, capsys):
    assert main(["sample", "PRIOR", "--out", str(tmp_path / "o"), "--top-p", "0.9,1.5"]) == 2
    assert "--top-p for level 1: must be in (0, 1] (1 = off), got 1.5" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"image\.sample\.temperature for level 1: must be >= 0"):
        load_pipeline_config(QUICKSTART, ["image.sample.temperature=[1.0,-0.5]"])
    cfg = load_pipeline_config(QUICKSTART, ["image.sample.top_k=[0,5]"])
    assert cfg.image.sample.settings().top_k == [0, 5]


def test_settings_only_the_command_line_offers_are_unknown_keys_in_a_pipeline():
    with pytest.raises(ConfigError, match=r"unknown key 'image\.sample\.cache'"):
        load_pipeline_config(QUICKSTART, ["image.sample.cache=none"])
    with pytest.raises(ConfigError, match=r"compile: needs cache='static', got cache='dynamic'"):
        SamplingSettings(compile=True, cache="dynamic").validate()
