"""The tokenizer's optional losses (tokenizer/losses): LPIPS, the PatchGAN discriminator, the
adversarial losses and adaptive weight, and the objective that trains both players.

The LPIPS tests that need a backbone use a randomly initialised VGG16 (random_vgg16_state):
they test the plumbing (loading, shapes, gradients, what is stored), not the distance's
calibration, which needs the ImageNet weights this test suite does not download."""

import importlib.util
import json
import math

import pytest
import torch
from safetensors.torch import save_file

import tokenizer.losses.objective as objective_module
from engine.config import ConfigError
from tokenizer.config import load_tokenizer_config
from tokenizer.losses import (
    LPIPS,
    PatchDiscriminator,
    TokenizerObjective,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
    load_lpips,
    random_vgg16_state,
)
from tokenizer.losses.perceptual import BLOCK_WIDTHS
from tokenizer.model import HQVAE


def random_heads(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate(BLOCK_WIDTHS)}


@pytest.fixture(scope="module")
def lpips():
    return LPIPS(random_vgg16_state(), random_heads())  # random backbone: plumbing only


def test_lpips_is_zero_for_equal_images_positive_otherwise_and_has_gradients(lpips):
    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    assert torch.allclose(lpips(x, x), torch.zeros(2), atol=1e-6)
    d = lpips(x, y)
    assert d.shape == (2,) and (d > 0).all()
    torch.testing.assert_close(d, lpips(y, x), rtol=1e-5, atol=1e-7)
    d.sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    grey = lpips(x[:, :1], y[:, :1].detach())  # grey images are compared as RGB
    assert grey.shape == (2,) and (grey > 0).all()


def test_lpips_trains_nothing_and_stays_out_of_checkpoints(lpips):
    assert not list(lpips.parameters())
    assert lpips.state_dict() == {}
    assert lpips.to(torch.float64).w0.dtype == torch.float64  # moves with .to()
    lpips.float()


def test_lpips_loads_from_configured_files_in_either_format(tmp_path):
    torch.save(random_vgg16_state(), tmp_path / "vgg.pth")
    save_file(random_vgg16_state(), str(tmp_path / "vgg.safetensors"))
    torch.save(random_heads(), tmp_path / "heads.pth")
    x, y = torch.zeros(1, 3, 16, 16), torch.ones(1, 3, 16, 16) * 0.5
    a = load_lpips(str(tmp_path / "vgg.pth"), str(tmp_path / "heads.pth"))(x, y)
    b = load_lpips(str(tmp_path / "vgg.safetensors"), str(tmp_path / "heads.pth"))(x, y)
    torch.testing.assert_close(a, b)


def test_missing_lpips_weights_are_refused_naming_the_key_and_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.save(random_heads(), tmp_path / "heads.pth")
    with pytest.raises(ConfigError, match=r"^loss.perceptual.vgg_path: VGG16 weights not found; looked for "
                                          rf"{tmp_path}/hub/checkpoints/vgg16-397923af.pth; set loss.perceptual.vgg_path"):
        load_lpips(None, str(tmp_path / "heads.pth"))
    with pytest.raises(ConfigError, match=rf"^loss.perceptual.vgg_path: VGG16 weights not found at {tmp_path}/nope.pth"):
        load_lpips(str(tmp_path / "nope.pth"), str(tmp_path / "heads.pth"))
    bad = random_vgg16_state()
    del bad["features.28.weight"]
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ConfigError, match=r"features.28 missing or not of shape \(512, 512, 3, 3\)"):
        load_lpips(str(tmp_path / "bad.pth"), str(tmp_path / "heads.pth"))


def test_the_lpips_package_heads_load_when_installed(tmp_path):
    if importlib.util.find_spec("lpips") is None:  # located, not imported: it imports torchvision
        pytest.skip("the lpips package (which ships the linear heads) is not installed")
    torch.save(random_vgg16_state(), tmp_path / "vgg.pth")
    net = load_lpips(str(tmp_path / "vgg.pth"))
    assert (net.head0 >= 0).all() and net.head4.shape == (1, 512, 1, 1)


def test_patch_discriminator_gives_a_logit_per_patch():
    d = PatchDiscriminator(3, channels=8, layers=3)
    assert d(torch.randn(2, 3, 32, 32)).shape == (2, 1, 2, 2)
    assert PatchDiscriminator(1, channels=8, layers=2, norm="group")(torch.randn(2, 1, 64, 64)).shape == (2, 1, 14, 14)
    # widths 48, 96, 192 after the first conv: 32 groups do not divide 48
    wide = PatchDiscriminator(3, channels=24, layers=3, norm="group")
    assert [m.num_groups for m in wide.modules() if isinstance(m, torch.nn.GroupNorm)] == [16, 32, 32]
    assert wide(torch.randn(1, 3, 32, 32)).shape == (1, 1, 2, 2)


def test_adversarial_losses_take_their_textbook_values():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # hinge: (mean(relu(1 - real)) + mean(relu(1 + fake))) / 2 = (0.25 + 0.75) / 2
    assert float(discriminator_loss(real, fake, "hinge")) == pytest.approx(0.5)
    assert float(generator_loss(fake, "hinge")) == pytest.approx(0.75)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert float(discriminator_loss(real, fake, "non_saturating")) == pytest.approx(
        0.5 * ((sp(-2) + sp(-0.5)) / 2 + (sp(-2) + sp(0.5)) / 2), rel=1e-6)
    assert float(generator_loss(fake, "non_saturating")) == pytest.approx((sp(2) + sp(-0.5)) / 2, rel=1e-6)


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_layer():
    w = torch.nn.Parameter(torch.ones(3))
    a, b = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 1.0, 0.0])
    weight = adaptive_weight((w * a).sum(), (w * b).sum(), w)
    assert float(weight) == pytest.approx(5.0 / (1.0 + 1e-4))
    assert float(adaptive_weight((w * a).sum(), (w * b * 1e-9).sum(), w, max_weight=10.0)) == 10.0


def tiny_objective(preset: str, **adv) -> tuple[TokenizerObjective, torch.Tensor]:
    cfg = load_tokenizer_config(None, [
        f"model.preset={preset}", "model.channels=16", "model.res_channels=8", "model.res_blocks=1",
        "model.layers.0.codebook_size=32", "data.image_size=16", "loss.adversarial.weight=0.5",
        "loss.adversarial.channels=8", "loss.adversarial.layers=2", "loss.perceptual.weight=0.1",
        *[f"loss.adversarial.{k}={v}" for k, v in adv.items()]])
    torch.manual_seed(0)
    model = HQVAE(cfg.model, cfg.data.shape)
    obj = TokenizerObjective(model, cfg.loss, 3, LPIPS(random_vgg16_state(), random_heads())).train()
    return obj, torch.rand(4, 3, 16, 16) * 2 - 1


def _grads(obj, x, part) -> list[torch.Tensor]:
    obj.zero_grad()
    torch.manual_seed(5)
    obj(x, step=10)["loss"].backward()
    return [p.grad.clone() for p in part.parameters()]


@pytest.mark.parametrize("preset", ["vqvae", "sqvae2"])
def test_each_player_gets_the_gradient_of_its_own_loss_only(preset, monkeypatch):
    """One backward serves both: scaling the discriminator's loss changes no tokenizer
    gradient, and scaling the generator's adversarial loss changes no discriminator one."""
    obj, x = tiny_objective(preset, adaptive_weight="false")
    model_grads, disc_grads = _grads(obj, x, obj.model), _grads(obj, x, obj.discriminator)
    state = {k: v.clone() for k, v in obj.state_dict().items()}  # BatchNorm statistics move per call
    scaled = objective_module.discriminator_loss
    monkeypatch.setattr(objective_module, "discriminator_loss", lambda *a: 1000 * scaled(*a))
    obj.load_state_dict(state)
    for a, b in zip(_grads(obj, x, obj.model), model_grads):
        torch.testing.assert_close(a, b)
    monkeypatch.setattr(objective_module, "discriminator_loss", scaled)
    g = objective_module.generator_loss
    monkeypatch.setattr(objective_module, "generator_loss", lambda *a: 1000 * g(*a))
    obj.load_state_dict(state)
    for a, b in zip(_grads(obj, x, obj.discriminator), disc_grads):
        torch.testing.assert_close(a, b)


def test_the_adaptive_weight_clamp_binds_on_the_per_element_scale_under_the_sq_objective(monkeypatch):
    """The SQ objective's reconstruction gradient is D / (2 MSE) times a per-element mean's
    (the term's recon_scale): max_adaptive_weight and the logged adv/weight are on the
    per-element scale, so a clamp binds alike for the SQ and the MSE objectives."""
    obj, x = tiny_objective("sqvae2", start_step=0)
    state = {k: v.clone() for k, v in obj.state_dict().items()}  # BatchNorm statistics move per call

    def terms_with(clamp: float) -> dict:
        obj.cfg.adversarial.max_adaptive_weight = clamp
        obj.load_state_dict(state)
        torch.manual_seed(5)
        return obj(x, step=10)

    ratios = []  # the gradient-norm ratio itself, on the objective's own scale

    def recording(rec, adv, last, max_weight):
        ratios.append(float(adaptive_weight(rec, adv, last, float("inf"))))
        return adaptive_weight(rec, adv, last, max_weight)

    monkeypatch.setattr(objective_module, "adaptive_weight", recording)
    free = terms_with(1e30)
    assert float(free["adv/weight"]) == pytest.approx(0.5 * ratios[-1] / float(free["recon_scale"]), rel=1e-4)
    d_x = x[0].numel()
    expected_scale = 0.5 * d_x / (free["mse"] + 0.1 * free["lpips"])  # perceptual weight 0.1
    assert float(free["recon_scale"]) == pytest.approx(float(expected_scale), rel=1e-4)
    per_element = float(free["adv/weight"]) / 0.5  # the unclamped ratio, per element
    assert float(free["recon_scale"]) > 100 and 0 < per_element < 1e4
    assert float(terms_with(2 * per_element)["adv/weight"]) == pytest.approx(0.5 * per_element, rel=1e-4)
    assert float(terms_with(per_element / 2)["adv/weight"]) == pytest.approx(0.25 * per_element, rel=1e-4)


def test_before_its_start_step_the_adversarial_game_weighs_nothing(monkeypatch):
    """A single process skips both players before start_step (no terms, no discriminator
    gradient); data-parallel training computes them weighted 0 so every parameter takes
    part in every step."""
    obj, x = tiny_objective("vqvae", start_step=100)
    plain = obj.model.objective(x, obj.model.run(x), obj.cfg.perceptual.weight * obj.perceptual(
        obj.model.run(x).recon, x).mean())
    terms = obj(x, step=99)
    assert not any(k.startswith("adv/") for k in terms)
    assert float(terms["loss"]) == pytest.approx(float(plain["loss"]), rel=1e-5)
    obj.zero_grad(set_to_none=True)
    terms["loss"].backward()
    assert all(p.grad is None for p in obj.discriminator.parameters())

    monkeypatch.setattr(objective_module, "_data_parallel", lambda: True)
    obj.zero_grad(set_to_none=True)
    terms = obj(x, step=99)
    assert float(terms["adv/weight"]) == 0.0
    assert float(terms["loss"]) == pytest.approx(float(plain["loss"]), rel=1e-5)
    terms["loss"].backward()
    assert all(p.grad is not None and not p.grad.any() for p in obj.discriminator.parameters())

    terms = obj(x, step=100)
    assert float(terms["adv/weight"]) > 0


def test_perceptual_distance_joins_the_distortion_inside_the_sq_log_likelihood():
    obj, x = tiny_objective("sqvae")
    obj.eval()
    with torch.no_grad():
        out = obj.model.run(x)
        lp = obj.perceptual(out.recon, x).mean()
        terms = obj.model.objective(x, out, 0.1 * lp)
        d_x = x[0].numel()
        sq = (out.recon - x).pow(2).sum() / x.shape[0]
        assert float(terms["recon"]) == pytest.approx(float(0.5 * d_x * torch.log(sq + d_x * 0.1 * lp)), rel=1e-6)


def test_the_loss_settings_are_checked_at_load():
    with pytest.raises(ConfigError, match=r"loss.perceptual.weight: LPIPS compares images"):
        load_tokenizer_config(None, ["model.preset=vqvae", "data.source=tones", "loss.perceptual.weight=1"])
    with pytest.raises(ConfigError, match=r"loss.adversarial.loss: 'wasserstein' is not one of"):
        load_tokenizer_config(None, ["model.preset=vqvae", "loss.adversarial.loss=wasserstein"])
    with pytest.raises(ConfigError, match=r"loss.adversarial.start_step: must be >= 0"):
        load_tokenizer_config(None, ["model.preset=vqvae", "loss.adversarial.start_step=-1"])


def test_the_evaluation_reports_lpips_when_its_weights_are_there(tmp_path, monkeypatch):
    """With the weights named (random ones here: plumbing only) the images' mean LPIPS is
    reported; with none named and none cached, the metric is left out."""
    from tokenizer.data import ShapesDataset
    from tokenizer.evaluate import available_lpips, evaluate_tokenizer

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.save(random_vgg16_state(), tmp_path / "vgg.pth")
    torch.save(random_heads(), tmp_path / "heads.pth")
    base = ["model.preset=vqvae", "model.channels=16", "model.res_channels=8", "model.res_blocks=1",
            "data.image_size=16"]
    cfg = load_tokenizer_config(None, base)
    assert available_lpips(cfg) is None or importlib.util.find_spec("lpips") is None
    cfg = load_tokenizer_config(None, [*base, f"loss.perceptual.vgg_path={tmp_path}/vgg.pth",
                                       f"loss.perceptual.heads_path={tmp_path}/heads.pth"])
    torch.manual_seed(0)
    model = HQVAE(cfg.model, cfg.data.shape)
    data = ShapesDataset(4, 16, 3, 0, "test")
    m = evaluate_tokenizer(model, data, layer_collapse=False, batch_size=2, lpips=available_lpips(cfg))
    assert m["lpips"] > 0
    assert "lpips" not in evaluate_tokenizer(model, data, layer_collapse=False, batch_size=2)


def test_eval_tokenizer_reports_lpips_from_the_weights_its_flags_name(tmp_path, monkeypatch, capsys):
    """`hqvae eval-tokenizer --lpips-vgg F --lpips-heads F` (random weights here: plumbing
    only) adds LPIPS to eval.json; a flag naming no file is refused, naming the flag, before
    anything is written."""
    from hqvae.cli import main

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    torch.save(random_vgg16_state(), tmp_path / "vgg.pth")
    torch.save(random_heads(), tmp_path / "heads.pth")
    run = tmp_path / "run"
    assert main(["train-tokenizer", f"run_dir={run}", "model.preset=vqvae", "model.channels=16",
                 "model.res_channels=8", "model.res_blocks=1", "data.image_size=16", "data.num_train=16",
                 "data.num_eval=8", "train.batch_size=8", "train.steps=1", "train.progress=false",
                 "eval.max_examples=8", "eval.grid_size=2"]) == 0
    assert main(["eval-tokenizer", str(run), "--out", str(tmp_path / "missing"),
                 "--lpips-vgg", str(tmp_path / "nothing.pth")]) == 2
    assert "--lpips-vgg: no file at" in capsys.readouterr().err
    assert not (tmp_path / "missing" / "eval.json").exists()
    assert main(["eval-tokenizer", str(run), "--out", str(tmp_path / "ev"), "--lpips-vgg", str(tmp_path / "vgg.pth"),
                 "--lpips-heads", str(tmp_path / "heads.pth")]) == 0
    lpips = json.loads((tmp_path / "ev" / "eval.json").read_text())["lpips"]
    assert lpips > 0 and f"lpips {lpips:.4f}" in capsys.readouterr().out


def test_training_with_both_losses_resumes_exactly_and_exports_the_tokenizer_only(tmp_path):
    """The discriminator's weights and Adam state (its own parameter group, learning rate
    and schedule) are checkpointed: a run stopped at step 3 and resumed to 6 logs the
    uninterrupted run's losses, the adversarial terms included (they start at step 2)."""
    from safetensors import safe_open

    from engine.checkpoint import list_checkpoints, load_checkpoint
    from tokenizer.train import train_tokenizer

    torch.save(random_vgg16_state(), tmp_path / "vgg.pth")
    torch.save(random_heads(), tmp_path / "heads.pth")

    def cfg(run, steps):
        return load_tokenizer_config(None, [
            f"run_dir={run}", "model.preset=vqvae", "model.net=vqgan", "model.channels=16",
            "model.net_options.base_channels=8", "model.net_options.norm_groups=4",
            "model.net_options.num_res_blocks=1", "data.image_size=16", "data.num_train=32",
            "data.num_eval=8", "train.batch_size=8", "train.progress=false", "train.log_every=1",
            f"train.steps={steps}", "train.ckpt_every=3", "train.gradient_checkpointing=true",
            "eval.max_examples=8", "eval.batch_size=8", "eval.grid_size=2",
            "loss.adversarial.weight=0.5", "loss.adversarial.start_step=2", "loss.adversarial.channels=8",
            "loss.adversarial.layers=2", "loss.adversarial.lr=0.01", "loss.perceptual.weight=0.1",
            f"loss.perceptual.vgg_path={tmp_path}/vgg.pth", f"loss.perceptual.heads_path={tmp_path}/heads.pth"])

    def logged(run):
        rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: (r["loss"], r.get("adv/discriminator")) for r in rows if r["split"] == "train"}

    metrics = train_tokenizer(cfg(tmp_path / "a", 6))
    assert "lpips" in metrics  # evaluated with the configured weights
    train_tokenizer(cfg(tmp_path / "b", 3))
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "b")[-1])
    assert any(k.startswith("discriminator.") for k in ckpt["model"])
    groups = ckpt["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[1]["lr"] == pytest.approx(0.01) and groups[1]["betas"] == [0.5, 0.9]
    train_tokenizer(cfg(tmp_path / "b", 6))
    ref, resumed = logged(tmp_path / "a"), logged(tmp_path / "b")
    assert sorted(resumed) == [1, 2, 3, 4, 5, 6]
    for step in range(1, 7):
        assert (ref[step][1] is None) == (step <= 2), step  # the game's terms from its start on
        assert resumed[step][0] == pytest.approx(ref[step][0], rel=1e-5), step
        assert resumed[step][1] == (None if step <= 2 else pytest.approx(ref[step][1], rel=1e-5)), step
    with safe_open(str(tmp_path / "b" / "model.safetensors"), "pt") as f:
        assert not any("discriminator" in k or "perceptual" in k for k in f.keys())


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    obj, _ = tiny_objective("vqvae")
    if rank == 1:  # marks: what DDP syncs from rank 0 comes back as rank 0's
        obj.perceptual.shift.fill_(7.0)
        obj.discriminator.net[3].running_mean.fill_(3.0)
    DistributedDataParallel(obj)
    torch.save({"shift": obj.perceptual.shift.clone(), "bn": obj.discriminator.net[3].running_mean.clone()},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.e2e
def test_data_parallel_leaves_the_lpips_weights_out_of_its_buffer_broadcasts(tmp_path):
    """DDP broadcasts rank 0's buffers (at wrapping and before every forward); the LPIPS
    network's constant weights (~59 MB) are left out, the discriminator's are not."""
    import torch.multiprocessing as mp
    from launchers import free_port  # tests/launchers.py

    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert (rank1["shift"] == 7.0).all()  # not overwritten by rank 0's
    assert not rank1["bn"].any()  # rank 0's zeros


def test_data_parallel_passes_before_the_start_step_leave_the_discriminator_as_a_single_process_does(
        tmp_path, monkeypatch):
    """Data-parallel training runs the discriminator before start_step too, weighted 0. Its
    zero gradients must not count as Adam steps (the first real update would be 1.6x a single
    process's) nor move BatchNorm's running statistics: the run ends bit for bit where a
    single process's does, the discriminator's Adam state counting only the game's steps."""
    from engine.checkpoint import list_checkpoints, load_checkpoint
    from tokenizer.train import train_tokenizer

    def run(name):
        cfg = load_tokenizer_config(None, [
            f"run_dir={tmp_path / name}", "model.preset=vqvae", "model.channels=16", "model.res_channels=8",
            "model.res_blocks=1", "data.image_size=16", "data.num_train=32", "data.num_eval=8",
            "train.batch_size=8", "train.progress=false", "train.steps=4", "eval.max_examples=8",
            "eval.batch_size=8", "eval.grid_size=2", "loss.adversarial.weight=0.5",
            "loss.adversarial.start_step=2", "loss.adversarial.channels=8", "loss.adversarial.layers=2",
            "loss.adversarial.adaptive_weight=false"])
        train_tokenizer(cfg)
        return load_checkpoint(list_checkpoints(tmp_path / name)[-1])

    single = run("single")
    monkeypatch.setattr(objective_module, "_data_parallel", lambda: True)
    parallel = run("parallel")
    for key, value in single["model"].items():
        assert torch.equal(parallel["model"][key], value), key
    steps = {int(s["step"]) for s in parallel["optimizer"]["state"].values()}
    assert steps == {4, 2}  # the tokenizer's 4 steps, the discriminator's from start_step 2 on
    assert parallel["optimizer"]["state"].keys() == single["optimizer"]["state"].keys()


@pytest.mark.parametrize("preset", ["vqvae", "sqvae", "vqvae2", "sqvae2", "rqvae", "rsqvae", "hqvae"])
@pytest.mark.parametrize("audio", [False, True], ids=["image", "spectrogram"])
def test_every_preset_trains_on_the_scalable_network_with_the_adversarial_loss(preset, audio):
    data = (["data.source=tones", "data.audio.num_frames=16", "data.audio.n_fft=32", "data.audio.hop_length=8"]
            if audio else ["data.image_size=16"])
    cfg = load_tokenizer_config(None, [
        f"model.preset={preset}", "model.net=vqgan", "model.channels=16", "model.net_options.base_channels=8",
        "model.net_options.norm_groups=4", "model.net_options.num_res_blocks=1", "model.downsample=4",
        "model.layers.0.codebook_size=32", "loss.adversarial.weight=0.5", "loss.adversarial.channels=8",
        "loss.adversarial.layers=2", *data])
    torch.manual_seed(0)
    c, h, w = cfg.data.shape
    obj = TokenizerObjective(HQVAE(cfg.model, cfg.data.shape), cfg.loss, c).train()
    # no weight decay: a weight that moves was moved by its gradient ("schedule" is ignored here)
    optimizer = torch.optim.AdamW(obj.param_groups(1e-3), weight_decay=0.0)
    before = {n: p.detach().clone() for n, p in obj.named_parameters()}
    terms = obj(torch.rand(2, c, h, w) * 2 - 1, step=0)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"]) and float(terms["adv/weight"]) > 0
    missing = [n for n, p in obj.named_parameters() if p.grad is None]
    assert not missing, missing
    optimizer.step()
    # both players moved: the decoder and the discriminator's first conv
    moved = {n for n, p in obj.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("model.decoder") for n in moved) and "discriminator.net.0.weight" in moved


def test_missing_lpips_weights_stop_training_before_any_data_is_read(tmp_path):
    """The perceptual network is loaded first: with a data path that does not exist either,
    the error is about the weights, and nothing was written."""
    from tokenizer.train import train_tokenizer

    cfg = load_tokenizer_config(None, [
        f"run_dir={tmp_path / 'run'}", "model.preset=vqvae", "data.source=parquet",
        f"data.path={tmp_path / 'no-data'}", "loss.perceptual.weight=1.0",
        f"loss.perceptual.vgg_path={tmp_path / 'missing-vgg.pth'}"])
    with pytest.raises(ConfigError, match=r"loss.perceptual.vgg_path: VGG16 weights not found at"):
        train_tokenizer(cfg)
    assert not (tmp_path / "run" / "checkpoints").exists()
