"""End-to-end stage one on tiny procedural data: train, resume, evaluate, load, CLI."""

import json

import pytest
import torch
from launchers import launch_command, launch_env, launch_failure  # tests/launchers.py

from engine.checkpoint import list_checkpoints
from engine.config import ConfigError
from hqvae.cli import main
from tokenizer.config import load_tokenizer_config
from tokenizer.pretrained import Tokenizer
from tokenizer.train import train_tokenizer

TINY = ["model.channels=16", "model.res_channels=8", "model.res_blocks=1",
        "data.num_train=64", "data.num_eval=16", "train.batch_size=8", "train.progress=false",
        "train.log_every=1", "eval.max_examples=16", "eval.batch_size=8", "eval.grid_size=4"]


def cfg_for(tmp_path, preset="sqvae2", *extra):
    return load_tokenizer_config(None, [f"run_dir={tmp_path / 'run'}", f"model.preset={preset}",
                                        *TINY, *extra])


def train_losses(run_dir):
    lines = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def test_train_writes_run_and_from_pretrained_round_trips(tmp_path):
    cfg = cfg_for(tmp_path, "sqvae2", "train.steps=3")
    metrics = train_tokenizer(cfg)
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "eval/eval.json",
                 "eval/reconstructions.png"):
        assert (run / name).exists(), name
    assert len(metrics["layers"]) == 2 and metrics["train"]["steps"] == 3
    tok = Tokenizer.from_pretrained(run)
    assert tok.code_shapes == [(4, 4), (8, 8)] and tok.codebook_sizes == [512, 512]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = tok.encode(x)
    assert [tuple(c.shape) for c in codes] == [(2, 4, 4), (2, 8, 8)]
    assert tok.decode_codes(codes).shape == x.shape
    # same weights -> same codes after reloading
    again = Tokenizer.from_pretrained(run).encode(x)
    assert all(torch.equal(a, b) for a, b in zip(codes, again))
    assert len(tok.identity) == 16


# sqvae2 draws Gumbel noise every step; its per-step temperature schedule ('exp') does not
# depend on the run's length, which this test changes (3 steps, then 6): under the presets'
# 'run' schedule a longer run anneals differently from its first step on
@pytest.mark.parametrize("preset, extra", [("vqvae2", ()), ("sqvae2", ("model.quantizer.tau_schedule=exp",))])
def test_resume_continues_from_saved_step_with_identical_losses(tmp_path, preset, extra):
    # uninterrupted reference run: 6 steps
    ref = cfg_for(tmp_path / "a", preset, "train.steps=6", "train.ckpt_every=3", *extra)
    train_tokenizer(ref)
    ref_losses = train_losses(tmp_path / "a" / "run")
    # interrupted run: stop after 3 steps, then ask for 6 on the same run_dir
    first = cfg_for(tmp_path / "b", preset, "train.steps=3", "train.ckpt_every=3", *extra)
    train_tokenizer(first)
    run = tmp_path / "b" / "run"
    assert [p.name for p in list_checkpoints(run)] == ["step_00000003"]
    resumed = train_tokenizer(cfg_for(tmp_path / "b", preset, "train.steps=6", "train.ckpt_every=3", *extra))
    assert resumed["train"]["resumed_from"] == 3 and resumed["train"]["steps"] == 6
    losses = train_losses(run)
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-5), step


def test_resume_refuses_other_model(tmp_path):
    train_tokenizer(cfg_for(tmp_path, "vqvae", "train.steps=1"))
    with pytest.raises(ConfigError, match="different config.*model"):
        train_tokenizer(cfg_for(tmp_path, "sqvae", "train.steps=1"))


def test_audio_tokenizer_writes_wavs_and_lsd(tmp_path):
    cfg = cfg_for(tmp_path, "rsqvae", "model.depth=2", "data.source=tones", "model.downsample=8",
                  "data.audio.num_frames=32", "train.steps=2", "eval.num_audio=2",
                  "data.audio.griffin_lim_iters=4")
    metrics = train_tokenizer(cfg)
    assert "lsd_db" in metrics and "ssim" not in metrics  # SSIM is an image metric
    assert "rmse_depth" in metrics["layers"][0]
    wavs = sorted(p.name for p in (tmp_path / "run" / "eval").glob("*.wav"))
    assert wavs == ["clip0_original.wav", "clip0_reconstructed.wav",
                    "clip1_original.wav", "clip1_reconstructed.wav"]


@pytest.mark.e2e
def test_cli_train_and_eval(tmp_path, capsys):
    run = tmp_path / "cli"
    rc = main(["train-tokenizer", f"run_dir={run}", "model.preset=rqvae", "model.depth=2",
               "train.steps=2", *TINY])
    assert rc == 0
    out = capsys.readouterr().out
    assert "perplexity" in out and "layer 1" in out
    rc = main(["eval-tokenizer", str(run), "--max-examples", "8", "--out", str(tmp_path / "ev")])
    assert rc == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev["examples"] == 8 and len(ev["layers"]) == 2
    assert -1 <= ev["ssim"] <= 1 and f"ssim {ev['ssim']:.4f}" in capsys.readouterr().out
    assert ev["layers"][1]["rmse_depth"] == pytest.approx(ev["rmse"])


@pytest.mark.e2e
@pytest.mark.parametrize("override, key", [
    ("train.stepz=3", "train.stepz"),
    ("data.image_size=20", "model.layers.0.factor"),
    ("model.layers.0.codebook_size=1", "model.layers.0.codebook_size"),
])
def test_cli_config_errors_fail_before_training(tmp_path, capsys, override, key):
    run = tmp_path / "bad"
    rc = main(["train-tokenizer", f"run_dir={run}", "model.preset=vqvae2", override])
    assert rc == 2
    assert key in capsys.readouterr().err
    assert not run.exists()


def test_bf16_autocast_trains_with_float32_quantizer(tmp_path):
    cfg = cfg_for(tmp_path, "rsqvae", "model.depth=2", "train.steps=2", "train.mixed_precision=bf16",
                  "train.grad_accum=2", "train.clip_grad=1.0", "train.schedule=cosine",
                  "train.warmup_steps=1")
    metrics = train_tokenizer(cfg)
    losses = train_losses(tmp_path / "run")
    assert sorted(losses) == [1, 2] and all(v == v for v in losses.values())  # finite, not NaN
    assert metrics["train"]["steps"] == 2


def test_fp16_on_cpu_says_it_trains_in_float32(tmp_path):
    cfg = cfg_for(tmp_path, "vqvae", "train.steps=1", "train.mixed_precision=fp16")
    with pytest.warns(UserWarning, match="fp16 needs a GPU"):
        train_tokenizer(cfg)


def test_fp16_loss_scale_is_checkpointed_and_restored(tmp_path, monkeypatch):
    """The GradScaler's state travels with the checkpoint. CPU Accelerate has no scaler, so
    a CPU GradScaler is put in its place (as Accelerate's own is on a GPU under fp16)."""
    import accelerate

    import engine.trainer

    made = []

    class ScaledAccelerator(accelerate.Accelerator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            # doubles the scale after every finite step, so the scale counts the steps
            self.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
            made.append(self)

    monkeypatch.setattr(engine.trainer, "Accelerator", ScaledAccelerator)
    train_tokenizer(cfg_for(tmp_path, "vqvae", "train.steps=2", "train.ckpt_every=2"))
    assert made[-1].scaler.get_scale() == 2.0**10
    resumed = train_tokenizer(cfg_for(tmp_path, "vqvae", "train.steps=4", "train.ckpt_every=2"))
    assert resumed["train"]["resumed_from"] == 2
    assert made[-1].scaler.get_scale() == 2.0**12  # a fresh scaler would be at 2**10


ADVERSARIAL = ["loss.adversarial.weight=0.5", "loss.adversarial.start_step=1", "loss.adversarial.channels=8",
               "loss.adversarial.layers=2"]


@pytest.mark.e2e
@pytest.mark.parametrize("launcher, extra", [("torchrun", []), ("accelerate", ADVERSARIAL)],
                         ids=["torchrun", "accelerate-adversarial"])
def test_two_process_data_parallel_run(tmp_path, launcher, extra):
    """2 CPU processes (gloo): really two, one writer, one checkpoint, one report. Accelerate's
    route to several CPU processes is its torchrun launcher (``--multi_gpu``); ``--cpu`` starts one.
    With the discriminator on, its step before start_step runs (every parameter takes part)
    but is not an Adam step for it."""
    import subprocess

    from engine.checkpoint import load_checkpoint

    run = tmp_path / "ddp"
    cmd = [*launch_command(launcher, 2), "train-tokenizer", f"run_dir={run}", "model.preset=vqvae2",
           "train.steps=2", *TINY, *extra]
    env = launch_env()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, launch_failure(out)
    assert out.stdout.count("trained 2 steps") == 1
    assert "on 2 processes" in out.stdout, out.stdout
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002"]
    tok = Tokenizer.from_pretrained(run)
    assert tok.code_shapes == [(4, 4), (8, 8)]
    if extra:
        state = load_checkpoint(list_checkpoints(run)[-1])["optimizer"]["state"]
        assert sorted({int(s["step"]) for s in state.values()}) == [1, 2]  # discriminator, tokenizer


def test_logged_lr_is_the_rate_the_step_used(tmp_path):
    cfg = cfg_for(tmp_path, "vqvae", "train.steps=3", "train.warmup_steps=2", "train.schedule=constant",
                  "train.lr=0.01")
    train_tokenizer(cfg)
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in lines if r["split"] == "train"]
    assert lrs == pytest.approx([0.005, 0.01, 0.01])  # warm-up (step + 1) / 2, then the base rate


def test_run_temperature_schedule_goes_from_tau_init_to_tau_end_over_the_run(tmp_path):
    cfg = cfg_for(tmp_path, "rsqvae", "model.depth=2", "train.epochs=2",
                  "model.quantizer.tau_schedule=run", "model.quantizer.tau_end=0.01")
    train_tokenizer(cfg)  # 64 examples / batch 8 = 8 steps an epoch: 16 steps
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    taus = {r["step"]: r["tau"] for r in lines if r["split"] == "train"}
    assert max(taus) == 16
    for step, tau in taus.items():  # logged after `step` steps: the next step's temperature
        assert tau == pytest.approx(0.01 ** min(step / 15, 1.0), rel=1e-5), step


def test_a_dataset_smaller_than_one_global_batch_is_refused(tmp_path):
    # with grad_accum, one micro-batch fits, but an optimizer step would span several epochs
    cfg = cfg_for(tmp_path, "vqvae", "train.steps=2", "data.num_train=6", "train.grad_accum=4")
    with pytest.raises(ValueError, match=r"6 examples, fewer than one batch \(train.batch_size=8\)"):
        train_tokenizer(cfg)


def test_an_error_mid_progress_bar_starts_its_own_line(monkeypatch, capsys):
    """The bar the error interrupted is closed first, so the message is not glued to it."""
    from tqdm import tqdm

    import hqvae.cli as cli

    def failing(args):
        bar = tqdm(total=10, desc="train")
        bar.update(3)
        raise ValueError("row 7 (file x.png): cannot decode")

    args = cli.parse_cli(["train-tokenizer", "model.preset=vqvae"])
    args.func = failing
    monkeypatch.setattr(cli, "parse_cli", lambda argv: args)
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "\nhqvae train-tokenizer: error: row 7" in err
    assert not list(getattr(tqdm, "_instances", ()))


@pytest.mark.e2e
def test_cli_says_how_many_steps_a_resumed_run_trained(tmp_path, capsys):
    args = ["train-tokenizer", "model.preset=vqvae", f"run_dir={tmp_path / 'run'}", *TINY]
    assert main([*args, "train.steps=2"]) == 0
    assert "trained 2 steps in" in capsys.readouterr().out
    assert main([*args, "train.steps=5"]) == 0
    assert "trained 3 steps (resumed at step 2; 5 in all)" in capsys.readouterr().out


def test_a_killed_run_resumed_with_the_same_length_matches_under_the_run_schedule(tmp_path):
    """The presets' 'run' temperature depends on the run's length, not on where it resumed:
    the same 6 steps, interrupted after 3 and resumed, give the uninterrupted losses."""
    ref = cfg_for(tmp_path / "a", "sqvae2", "train.steps=6", "train.ckpt_every=3")
    assert ref.model.quantizer.tau_schedule == "run"
    train_tokenizer(ref)
    run = tmp_path / "b" / "run"
    cfg = cfg_for(tmp_path / "b", "sqvae2", "train.steps=6", "train.ckpt_every=3")
    import engine.trainer as trainer

    real = trainer.save_checkpoint

    def stop_after_first(run_dir, step, *args, **kwargs):  # a crash right after step 3's checkpoint
        path = real(run_dir, step, *args, **kwargs)
        if step == 3:
            raise KeyboardInterrupt
        return path

    trainer.save_checkpoint = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train_tokenizer(cfg)
    finally:
        trainer.save_checkpoint = real
    train_tokenizer(cfg)
    losses, ref_losses = train_losses(run), train_losses(tmp_path / "a" / "run")
    assert sorted(losses) == list(range(1, 7))
    for step in range(1, 7):
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-5), step


@pytest.mark.e2e
def test_eval_tokenizer_takes_a_weights_file_as_its_run(tmp_path, capsys):
    """Given model.safetensors instead of its run folder, eval-tokenizer blamed --out (it
    looked for a folder below the file); like encode it takes the file, and evaluates into
    eval/ beside it, where the run folder's evaluation goes."""
    from tokenizer.config import load_tokenizer_config
    from tokenizer.pretrained import Tokenizer

    cfg = load_tokenizer_config(None, ["model.preset=vqvae", *TINY])
    Tokenizer.from_config(cfg).save_pretrained(tmp_path / "tok")
    rc = main(["eval-tokenizer", str(tmp_path / "tok" / "model.safetensors"), "--max-examples", "4",
               "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 0 and "--out" not in err, err
    assert json.loads((tmp_path / "tok" / "eval" / "eval.json").read_text())["examples"] == 4


def test_gradient_clipping_takes_each_parameter_group_on_its_own():
    """train.clip_grad clips a discriminator's gradients by their own norm, not by one norm
    shared with the tokenizer's (whose SQ-objective gradients are far larger)."""
    import accelerate

    from engine.optim import clip_each_group

    model = torch.nn.ModuleDict({"tokenizer": torch.nn.Linear(4, 4), "discriminator": torch.nn.Linear(4, 1)})
    optimizer = torch.optim.AdamW([{"params": list(model["tokenizer"].parameters())},
                                   {"params": list(model["discriminator"].parameters())}])
    for p in model["tokenizer"].parameters():
        p.grad = torch.full_like(p, 100.0)
    for p in model["discriminator"].parameters():
        p.grad = torch.full_like(p, 0.1)
    disc = [p.grad.clone() for p in model["discriminator"].parameters()]
    clip_each_group(accelerate.Accelerator(cpu=True), optimizer, model, 1.0)
    tok_norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in model["tokenizer"].parameters()]))
    assert float(tok_norm) == pytest.approx(1.0, rel=1e-4)
    for p, before in zip(model["discriminator"].parameters(), disc):
        torch.testing.assert_close(p.grad, before)  # norm 0.22 < 1: left as it was
