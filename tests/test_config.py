import re
from pathlib import Path

import pytest

from engine.config import ConfigError, from_dict, load_config, parse_override, to_dict
from tokenizer.config import TokenizerConfig, load_tokenizer_config


def write(tmp_path, text):
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_yaml_plus_overrides(tmp_path):
    p = write(tmp_path, "model:\n  preset: rsqvae\n  depth: 3\ntrain:\n  lr: 1e-3\n")
    cfg = load_tokenizer_config(p, ["train.steps=7", "model.layers.1.codebook_size=64"])
    assert cfg.train.lr == pytest.approx(1e-3)  # YAML 1.1 reads 1e-3 as text: coerced
    assert cfg.train.steps == 7
    assert len(cfg.model.layers) == 3 and cfg.model.layers[1].codebook_size == 64
    assert cfg.model.layers[0].codebook_size == 512


def test_unknown_key_is_named_with_suggestion(tmp_path):
    p = write(tmp_path, "model:\n  preset: sqvae\ntrain:\n  stepz: 3\n")
    with pytest.raises(ConfigError, match=r"train\.stepz.*did you mean 'steps'") as err:
        load_tokenizer_config(p)
    assert str(p) in str(err.value)


def test_unknown_override_key():
    with pytest.raises(ConfigError, match="model.chanels"):
        load_tokenizer_config(None, ["model.preset=sqvae", "model.chanels=3"])


def test_wrong_type_named():
    with pytest.raises(ConfigError, match=r"train\.steps: expected an integer"):
        load_tokenizer_config(None, ["model.preset=sqvae", "train.steps=abc"])


def test_codebook_size_below_two():
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.codebook_size: must be in \[2, "):
        load_tokenizer_config(None, ["model.preset=vqvae", "model.layers.0.codebook_size=1"])


def test_factor_must_divide_input():
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.factor: 8 does not divide the input size 20x20"):
        load_tokenizer_config(None, ["model.preset=vqvae2", "data.image_size=20"])
    with pytest.raises(ConfigError, match=r"factor: must be a power of 2"):
        load_tokenizer_config(None, ["model.preset=vqvae", "model.downsample=3"])


def test_layer_order_and_residual_rules():
    layers = [{"kind": "injected", "factor": 4}, {"kind": "injected", "factor": 8}]
    with pytest.raises(ConfigError, match=r"model\.layers\.1\.factor"):
        from_dict(TokenizerConfig, {"model": {"layers": layers}})
    layers = [{"kind": "injected", "factor": 8}, {"kind": "residual", "factor": 4}]
    with pytest.raises(ConfigError, match="residual layer refines"):
        from_dict(TokenizerConfig, {"model": {"layers": layers}})


def test_preset_quantizer_conflict_and_unknown_preset():
    with pytest.raises(ConfigError, match="preset 'vqvae2' uses 'vq'"):
        load_tokenizer_config(None, ["model.preset=vqvae2", "model.quantizer.kind=sq"])
    with pytest.raises(ConfigError, match="unknown preset 'vqgan'"):
        load_tokenizer_config(None, ["model.preset=vqvae3".replace("vqvae3", "vqgan")])


def test_round_trip_to_dict():
    cfg = load_tokenizer_config(None, ["model.preset=hqvae"])
    again = from_dict(TokenizerConfig, to_dict(cfg))
    assert again == cfg


def test_parse_override_forms():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    with pytest.raises(ConfigError):
        parse_override("novalue")


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_config(TokenizerConfig, "/nonexistent.yaml")


def test_shipped_configs_load():
    from pathlib import Path

    files = sorted((Path(__file__).parent.parent / "configs" / "tokenizer").glob("*.yaml"))
    assert files
    for f in files:
        load_tokenizer_config(f)
    from prior.config import load_prior_config

    priors = sorted((Path(__file__).parent.parent / "configs" / "prior").glob("*.yaml"))
    assert priors
    for f in priors:
        cfg = load_prior_config(f)
        assert cfg.data.codes and cfg.tokenizer
    from sampling.classifier.config import load_classifier_config

    classifiers = sorted((Path(__file__).parent.parent / "configs" / "classifier").glob("*.yaml"))
    assert {f.name for f in classifiers} >= {"fsdd.yaml", "tones.yaml"}
    for f in classifiers:
        load_classifier_config(f)
    from hqvae.pipeline import load_pipeline_config

    root = Path(__file__).parent.parent / "configs"
    pipelines = [root / "quickstart.yaml", *sorted((root / "pipeline").glob("*.yaml"))]
    assert len(pipelines) >= 3
    for f in pipelines:
        cfg = load_pipeline_config(f)
        assert cfg.image is not None or cfg.audio is not None


def test_yaml_scalars_follow_yaml_1_2(tmp_path):
    # YAML 1.1 would read `no` as false and 1e-3 as a string
    p = write(tmp_path, "model:\n  preset: sqvae\ntrain:\n  mixed_precision: no\n  lr: 1e-3\n")
    cfg = load_tokenizer_config(p, ["train.progress=false"])
    assert cfg.train.mixed_precision == "no" and cfg.train.lr == 1e-3 and cfg.train.progress is False
    cfg = load_tokenizer_config(None, ["model.preset=sqvae", "train.mixed_precision=no"])
    assert cfg.train.mixed_precision == "no"
    # no YAML 1.1 octal / base-60 integers, and an exponent needs a digit before it
    from engine.config import yaml_load

    assert yaml_load("a: 010\nb: 1:30\nc: .e5\nd: 12\ne: .5e3\nf: -3") == {
        "a": "010", "b": "1:30", "c": ".e5", "d": 12, "e": 500.0, "f": -3}
    with pytest.raises(ConfigError, match="train.seed"):
        load_tokenizer_config(None, ["model.preset=sqvae", "train.seed=010"])


def test_saved_configs_read_back_identically(tmp_path):
    # a string the loader would take for a number is written quoted
    from engine.config import save_yaml

    cfg = load_tokenizer_config(None, ["model.preset=sqvae", 'data.eval_split="1e3"', "data.column=010",
                                       "train.mixed_precision=no"])
    assert cfg.data.eval_split == "1e3"
    save_yaml(cfg, tmp_path / "c.yaml")
    back = load_tokenizer_config(tmp_path / "c.yaml")
    assert back.data.eval_split == "1e3" and back.data.column == "010" and back.train.mixed_precision == "no"


def test_hop_as_long_as_the_window_is_refused():
    # hop = n_fft passes the STFT but the inverse (Griffin-Lim) fails at the end of a run
    with pytest.raises(ConfigError, match=r"hop_length: must be in \(0, n_fft\)"):
        load_tokenizer_config(None, ["model.preset=sqvae", "data.source=tones", "data.audio.n_fft=64",
                                     "data.audio.hop_length=64"])


def test_a_bad_prior_model_key_is_named_under_model_whatever_the_order():
    from prior.config import load_prior_config

    for over in (["levels=[{}, {n_layer: 8}]", "model.n_layers=8"], ["model.n_layers=8", "levels=[{}, {}]"]):
        with pytest.raises(ConfigError, match="unknown key 'model.n_layers'"):
            load_prior_config(None, over)
    with pytest.raises(ConfigError, match="model.n_layer: expected an integer"):
        load_prior_config(None, ["levels=[{}]", "model.n_layer=x"])


def test_a_steps_override_that_epochs_would_ignore_is_refused(tmp_path):
    from hqvae.pipeline import load_pipeline_config

    p = write(tmp_path, "model:\n  preset: vqvae\ntrain:\n  epochs: 25\n")
    with pytest.raises(ConfigError, match=r"train\.steps: has no effect while train\.epochs=25 "
                                          r".*add train\.epochs=null"):
        load_tokenizer_config(p, ["train.steps=20"])
    assert load_tokenizer_config(p, ["train.steps=20", "train.epochs=null"]).train.steps == 20
    assert load_tokenizer_config(p, ["train.epochs=3"]).train.epochs == 3
    # the same for a stage of a pipeline whose section starts from such a file
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(f"image:\n  tokenizer:\n    base: {p}\n    data: {{source: shapes}}\n"
                    "  prior: {}\n  score: {enabled: false}\n")
    with pytest.raises(ConfigError, match=r"image\.tokenizer\.train\.steps: has no effect"):
        load_pipeline_config(pipe, ["image.tokenizer.train.steps=5"])
    assert load_pipeline_config(pipe, ["image.tokenizer.train.steps=5",
                                       "image.tokenizer.train.epochs=null"]).image.tokenizer.train.steps == 5


def test_cli_config_prints_every_key_of_a_preset_or_file(capsys):
    import yaml

    from hqvae.cli import main

    assert main(["config", "rsqvae", "model.depth=2", "train.lr=3e-4"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["model"]["preset"] == "rsqvae" and len(cfg["model"]["layers"]) == 2
    assert cfg["train"]["lr"] == 3e-4
    assert cfg["model"]["quantizer"]["tau_schedule"] and "var_init" in cfg["model"]["quantizer"]
    root = Path(__file__).resolve().parent.parent / "configs"
    for path, key in [("quickstart.yaml", "image"), ("prior/shapes.yaml", "class_cond"),
                      ("classifier/tones.yaml", "augment"), ("tokenizer/cifar10_vqvae2.yaml", "eval")]:
        assert main(["config", str(root / path)]) == 0
        assert key in yaml.safe_load(capsys.readouterr().out), path
    assert main(["config", "rsqvae", "model.nosuch=1"]) == 2
    assert "model.nosuch" in capsys.readouterr().err
    assert main(["config", "nosuch"]) == 2
    assert "neither a config file nor a tokenizer preset" in capsys.readouterr().err


@pytest.mark.parametrize("override, message", [
    ("train.steps=100000000000000000000000", "train.steps: at most 1e9"),
    ("train.num_workers=100000", "train.num_workers: at most"),  # forked 1,246 processes
    ("model.layers.0.codebook_size=100000000", "codebook_size: must be in [2, 1048576]"),
    ("model.layers.0.codebook_dim=100000", "codebook_dim: must be in [1, 4096]"),
    ("model.channels=1000000", "model.channels: at most 4096"),
    ("data.image_size=100000", "data.image_size: must be in [1, 4096]"),
])
def test_resource_bombs_are_refused_at_load_time(override, message):
    """These ended in fork storms or allocator tracebacks instead of an error."""
    from tokenizer.config import load_tokenizer_config

    with pytest.raises(ConfigError, match=re.escape(message)):
        load_tokenizer_config(None, ["model.preset=rsqvae", override])


def test_duplicate_yaml_keys_and_non_utf8_files_are_errors_naming_the_file(tmp_path):
    from tokenizer.config import load_tokenizer_config

    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  steps: 3\n  lr: 0.1\n  steps: 5\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: the key 'steps' appears twice \(lines 2 and 4\)"):
        load_tokenizer_config(dup)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("run_dir: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin\.yaml: not a UTF-8 text file"):
        load_tokenizer_config(latin)


def test_sq_presets_anneal_over_the_run_unless_a_config_sets_the_exp_schedule():
    from tokenizer.config import PRESETS, SQ_SCHEDULE, load_tokenizer_config

    for preset, (kind, *_) in PRESETS.items():
        q = load_tokenizer_config(None, [f"model.preset={preset}"]).model.quantizer
        if kind == "sq":
            assert (q.tau_schedule, q.tau_end) == (SQ_SCHEDULE["tau_schedule"], SQ_SCHEDULE["tau_end"])
        else:
            assert q.tau_schedule == "exp"  # unused by VQ
    # SQ-VAE's per-step decay, asked for by its own keys, stays what it was
    q = load_tokenizer_config(None, ["model.preset=rsqvae", "model.quantizer.tau_decay=1e-3",
                                     "model.quantizer.tau_min=0.1"]).model.quantizer
    assert (q.tau_schedule, q.tau_decay, q.tau_min) == ("exp", 1e-3, 0.1)
    q = load_tokenizer_config(None, ["model.preset=sqvae2", "model.quantizer.tau_end=0.2"]).model.quantizer
    assert (q.tau_schedule, q.tau_end) == ("run", 0.2)


def test_sq_presets_with_injected_layers_add_them_unless_a_config_says_otherwise():
    from tokenizer.config import load_tokenizer_config

    injection = {p: load_tokenizer_config(None, [f"model.preset={p}"]).model.injection
                 for p in ("vqvae2", "sqvae2", "hqvae")}
    assert injection == {"vqvae2": "concat", "sqvae2": "add", "hqvae": "add"}
    cfg = load_tokenizer_config(None, ["model.preset=sqvae2", "model.injection=concat"])
    assert cfg.model.injection == "concat"


def test_the_cli_ends_a_data_parallel_process_group_before_exit(tmp_path, capsys):
    """Left to the interpreter's teardown, Gloo's threads can abort a finished
    `accelerate launch` process (pytorch/pytorch#190489): the CLI ends the group itself."""
    import torch.distributed as dist

    from hqvae.cli import main

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert main(["config", "sqvae2"]) == 0
        assert "preset: sqvae2" in capsys.readouterr().out
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("command", ["train-tokenizer", "train-prior", "train-classifier", "pipeline", "config"])
@pytest.mark.parametrize("text", ["", "\n\n", "# settings to come\n  # indented\n"])
def test_an_empty_config_file_is_refused_naming_it(command, text, tmp_path, capsys, monkeypatch):
    """`hqvae train-classifier empty.yaml` started a 2,000-step run of every default without
    a word; every command that takes a config file refuses one that sets nothing (one rule,
    in engine.config.load_config). No config file at all, with overrides, stays allowed."""
    import hqvae.pipeline
    import prior.train
    import sampling.classifier.train
    import tokenizer.train
    from hqvae.cli import main

    def must_not_run(*args, **kwargs):
        raise AssertionError("a run started on a config file that sets nothing")

    for module, name in ((tokenizer.train, "train_tokenizer"), (prior.train, "train_prior"),
                         (sampling.classifier.train, "train_classifier"), (hqvae.pipeline, "run_pipeline")):
        monkeypatch.setattr(module, name, must_not_run)
    monkeypatch.chdir(tmp_path)  # a run that started anyway would write into runs/ here
    empty = tmp_path / "empty.yaml"
    empty.write_text(text)
    assert main([command, str(empty), f"run_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"hqvae {command}: error: {empty}: "), err
    assert "sets nothing" in err and "leave the file out" in err, err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="sets nothing"):
        load_tokenizer_config(empty, [])
    assert load_tokenizer_config(None, ["model.preset=vqvae"]).model.preset == "vqvae"


@pytest.mark.parametrize("override, message", [
    ("run_dir=~", "run_dir: '~' (like null or an empty value) is YAML's null, not a path; give a path"),
    ("data.train_split=~", "data.train_split: '~' (like null or an empty value) is YAML's null, not a "
                           "string; give a string"),
])
def test_a_tilde_for_a_string_key_says_it_is_yaml_s_null(override, message, tmp_path, capsys):
    """A quoted `run_dir=~` said "expected a string, got None": YAML reads a bare `~` as null."""
    from hqvae.cli import main

    assert main(["train-tokenizer", override, "model.preset=vqvae"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    key, _ = override.split("=")
    config = tmp_path / "c.yaml"
    config.write_text("model: {preset: vqvae}\n" + (f"{key}: ~\n" if key == "run_dir" else
                                                    "data: {train_split: ~}\n"))
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_tokenizer_config(config)
