"""The configs sized for GPUs (configs/tokenizer/imagenet256_*.yaml, speech16k_*.yaml: one of
each per preset) run: each trains two steps here at its own resolution, presets, code layout,
network shape (channel multipliers, attention), bf16 autocast and gradient checkpointing, with
the widths shrunk and generated data in place of the dataset, so a GPU user's first run does
not fail on a setting. So do the pipeline configs at 256 px and 16 kHz."""

from pathlib import Path

import pytest

from tokenizer.config import load_tokenizer_config
from tokenizer.train import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted((ROOT / "configs" / "tokenizer").glob("imagenet256_*.yaml")) + sorted(
    (ROOT / "configs" / "tokenizer").glob("speech16k_*.yaml"))
SHRINK = ["model.channels=8", "model.net_options.base_channels=8", "model.net_options.norm_groups=4",
          "model.net_options.num_res_blocks=1", "data.num_train=4", "data.num_eval=2", "train.epochs=1",
          "train.batch_size=2", "train.num_workers=0", "train.warmup_steps=0", "train.progress=false",
          "eval.max_examples=2", "eval.batch_size=2", "eval.grid_size=2", "eval.num_audio=1"]


def test_every_preset_has_a_gpu_config_for_images_and_for_audio():
    from tokenizer.config import PRESETS

    names = {p.stem for p in CONFIGS}
    for preset in PRESETS:
        assert {f"imagenet256_{preset}", f"speech16k_{preset}"} <= names, preset


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_a_gpu_config_trains_two_steps_at_its_resolution(path, tmp_path):
    audio = "speech" in path.stem
    data = ["data.source=tones", "data.path=null"] if audio else ["data.source=shapes", "data.path=null"]
    extra = ["loss.adversarial.weight=0.5", "loss.adversarial.start_step=0", "loss.adversarial.channels=8"] \
        if path.stem.endswith("vqvae") else []  # one of them with the discriminator on
    cfg = load_tokenizer_config(path, [f"run_dir={tmp_path / 'run'}", *data, *SHRINK, *extra])
    assert cfg.train.mixed_precision == "bf16" and cfg.train.gradient_checkpointing
    metrics = train_tokenizer(cfg)
    assert metrics["train"]["steps"] == 2
    assert len(metrics["layers"]) == len(cfg.model.layers)


def _shrunk_pipeline(track: str, source: str) -> list[str]:
    """A pipeline track's overrides: the tokenizer as SHRINK, a one-layer prior of width 32,
    generated data in place of the dataset."""
    tok = [f"{track}.tokenizer.{o}" for o in SHRINK if track == "audio" or not o.startswith("eval.num_audio")]
    prior = [f"{track}.prior.{o}" for o in (
        "model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.cond_channels=8", "model.cond_blocks=1",
        "train.epochs=1", "train.batch_size=2", "train.warmup_steps=0", "train.num_workers=0")]
    return [f"{track}.tokenizer.data.source={source}", f"{track}.tokenizer.data.path=null", *tok, *prior,
            f"{track}.sample.n=2", f"{track}.sample.batch_size=2"]


def test_the_256px_pipeline_config_runs_end_to_end(tmp_path):
    """configs/pipeline/imagenet256_sqvae2.yaml, widths shrunk and generated shapes in place of
    ImageNet: the tokenizer at 256 px, class-conditional priors at 256 and 1024 tokens (the
    finer one through the conditioning network at 32x32), and samples decoded at 256x256.
    Scoring is off: the FID stage is the quickstart pipeline's test."""
    import json

    from PIL import Image
    from safetensors.torch import load_file

    from hqvae import layout
    from hqvae.cli import main

    run = tmp_path / "run"
    assert main(["pipeline", str(ROOT / "configs" / "pipeline" / "imagenet256_sqvae2.yaml"), f"run_dir={run}",
                 *_shrunk_pipeline("image", "shapes"), "image.score.enabled=false"]) == 0
    for stage in ("tokenizer", "codes", "prior", "samples"):
        assert layout.is_done(run, "image", stage), stage
    assert len(json.loads((run / layout.SUMMARY).read_text())["tracks"]["image"]["prior"]["bits_per_token"]) == 2
    codes = load_file(run / "image" / "samples" / "codes.safetensors")
    assert codes["level_0"].shape == (2, 16, 16) and codes["level_1"].shape == (2, 32, 32)  # 256 and 1024 tokens
    images = sorted((run / "image" / "samples" / "images").glob("*.png"))
    assert len(images) == 2 and all(Image.open(p).size == (256, 256) for p in images)


def test_the_16khz_pipeline_config_runs_end_to_end(tmp_path, monkeypatch):
    """configs/pipeline/speech16k_sqvae2.yaml, widths shrunk and generated tones in place of the
    speech set: the tokenizer on 80x128 log-mel spectrograms, column-order priors at 160 and 640
    tokens, the classifier of its classes, 16 kHz clips and their audio FID."""
    import json
    import math

    import soundfile as sf
    from safetensors.torch import load_file

    from hqvae import layout
    from hqvae.cli import main

    monkeypatch.setenv("HQVAE_CACHE", str(tmp_path / "cache"))  # reference features: not the user's cache
    run = tmp_path / "run"
    clf = [f"audio.classifier.{o}" for o in ("model.widths=[4,4,4,4,4]", "model.embedding_dim=8", "train.steps=2",
                                             "train.batch_size=2", "train.warmup_steps=0")]
    assert main(["pipeline", str(ROOT / "configs" / "pipeline" / "speech16k_sqvae2.yaml"), f"run_dir={run}",
                 *_shrunk_pipeline("audio", "tones"), "audio.tokenizer.data.audio.griffin_lim_iters=4", *clf,
                 "audio.score.max_reference=4", "audio.score.batch_size=2"]) == 0
    for stage in ("tokenizer", "codes", "prior", "classifier", "samples", "fid"):
        assert layout.is_done(run, "audio", stage), stage
    codes = load_file(run / "audio" / "samples" / "codes.safetensors")
    assert codes["level_0"].shape == (2, 10, 16) and codes["level_1"].shape == (2, 20, 32)  # 160 and 640 tokens
    clips = sorted((run / "audio" / "samples").rglob("*.wav"))
    assert len(clips) == 2 and all(sf.info(str(c)).samplerate == 16000 for c in clips)
    score = json.loads((run / layout.SUMMARY).read_text())["tracks"]["audio"]["score"]
    assert math.isfinite(score["samples"]["fid"]) and 0 <= score["samples"]["accuracy"] <= 1
