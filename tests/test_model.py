import math

import pytest
import torch
from torch import nn

from tokenizer.config import PRESETS, load_tokenizer_config
from tokenizer.model import HQVAE

SMALL = ["model.channels=16", "model.res_channels=8", "model.res_blocks=1",
         "model.layers.0.codebook_size=32"]


def small_cfg(preset: str, audio: bool = False, extra=()):
    over = [f"model.preset={preset}", *SMALL, *extra]
    if audio:
        over += ["data.source=tones", "data.audio.num_frames=32", "data.audio.n_fft=64",
                 "data.audio.hop_length=16", "model.downsample=8"]
    return load_tokenizer_config(None, over)


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("audio", [False, True])
def test_presets_build_and_round_trip(preset, audio):
    cfg = small_cfg(preset, audio)
    c, h, w = cfg.data.shape
    model = HQVAE(cfg.model, cfg.data.shape)
    x = torch.rand(2, c, h, w) * 2 - 1
    terms = model(x, step=0)
    assert torch.isfinite(terms["loss"])
    codes = model.encode(x)
    assert [tuple(t.shape[1:]) for t in codes] == model.code_shapes
    assert all(t.dtype == torch.long for t in codes)
    for t, k in zip(codes, model.codebook_sizes):
        assert 0 <= int(t.min()) and int(t.max()) < k
    assert model.decode_codes(codes).shape == x.shape


def test_preset_layouts():
    assert [la.kind for la in small_cfg("vqvae2").model.layers] == ["injected", "injected"]
    assert [la.factor for la in small_cfg("sqvae2").model.layers] == [8, 4]
    rq = small_cfg("rqvae", extra=["model.depth=3"]).model
    assert [la.kind for la in rq.layers] == ["residual"] * 3 and rq.quantizer.ema
    assert small_cfg("rsqvae").model.quantizer.kind == "sq"


@pytest.mark.parametrize("preset", ["vqvae2", "sqvae2", "rqvae", "rsqvae", "hqvae"])
def test_gradients_reach_every_trainable_parameter(preset):
    torch.manual_seed(0)
    cfg = small_cfg(preset)
    model = HQVAE(cfg.model, cfg.data.shape).train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    model(x, step=0)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    if cfg.model.quantizer.ema:
        # the EMA codebook is a buffer, never a trainable parameter
        names = {n for n, _ in model.named_parameters()}
        assert not any(n.endswith("quantizer.codebook") for n in names)
        assert any(n.endswith("quantizer.codebook") for n, _ in model.named_buffers())


def test_sq_encoding_is_deterministic_in_eval():
    torch.manual_seed(0)
    cfg = small_cfg("sqvae2")
    model = HQVAE(cfg.model, cfg.data.shape).train()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    a, b = model.encode(x), model.encode(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert model.training  # encode restores the mode it found


@pytest.mark.parametrize("preset", ["vqvae2", "sqvae2", "rsqvae"])
def test_encode_and_decode_codes_agree_with_the_full_pass_in_eval(preset):
    """encode skips the decoder; its codes and their decoding are the eval forward pass's."""
    torch.manual_seed(0)
    cfg = small_cfg(preset)
    model = HQVAE(cfg.model, cfg.data.shape).eval()
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    run = model.run(x)
    codes = model.encode(x)
    assert all(torch.equal(c, q.codes) for c, q in zip(codes, run.quant))
    torch.testing.assert_close(model.decode_codes(codes), run.recon, rtol=1e-4, atol=1e-4)


def test_sq_recon_term_scales_as_gaussian_ml():
    """recon = (D_x / 2) log(sum ||x - x_hat||^2 / B): per example, not per element."""
    torch.manual_seed(0)
    cfg = small_cfg("sqvae")
    model = HQVAE(cfg.model, cfg.data.shape).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    terms = model(x)
    out = model.run(x)
    expected = 0.5 * 3 * 32 * 32 * torch.log((out.recon - x).pow(2).sum() / 2)
    torch.testing.assert_close(terms["recon"], expected, rtol=1e-5, atol=1e-3)


def test_residual_depth_decoding_and_continuous_kl():
    torch.manual_seed(0)
    cfg = small_cfg("rsqvae", extra=["model.depth=3"])
    model = HQVAE(cfg.model, cfg.data.shape).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = model.encode(x)
    outs = [model.decode_codes(codes, depth=d) for d in (1, 2, 3)]
    assert not torch.equal(outs[0], outs[2])
    torch.testing.assert_close(outs[2], model.decode_codes(codes))
    # one continuous term for the run, at its last depth: ||p(H) - H_L||^2 / (2 sum_l sigma_l^2)
    with torch.no_grad():
        for layer, v in zip(model.layers, (0.5, 1.0, 2.0)):
            layer.quantizer.log_var.fill_(math.log(v))
    feats = model.encoder(x)
    target = model.proj["4"](feats[4])
    run = model.run(x)
    state = sum(layer.quantizer.lookup(q.codes) for layer, q in zip(model.layers, run.quant))
    assert [("kl_continuous" in q.losses) for q in run.quant] == [False, False, True]
    expected = (target - state).pow(2).sum() / (2 * 3.5) / x.shape[0]
    torch.testing.assert_close(run.quant[-1].losses["kl_continuous"], expected, rtol=1e-4, atol=1e-3)


class _FixedFeatures(nn.Module):
    """Stands in for the encoder: the same features whatever the input."""

    def __init__(self, feats: dict[int, torch.Tensor]):
        super().__init__()
        self.feats = feats

    def forward(self, x):
        return self.feats


def test_rsq_objective_matches_a_hand_computed_case():
    """Two residual SQ depths, K = 2, D = 1, one position: the objective by hand."""
    cfg = load_tokenizer_config(None, [
        "model.preset=rsqvae", "model.depth=2", "model.channels=2", "model.res_channels=1",
        "model.res_blocks=0", "model.layers.0.codebook_size=2", "model.layers.1.codebook_size=2",
        "model.layers.0.codebook_dim=1", "model.layers.1.codebook_dim=1", "data.image_size=4",
        "data.channels=1"])
    model = HQVAE(cfg.model, cfg.data.shape).eval()
    model.encoder = _FixedFeatures({4: torch.tensor([1.6, 0.0]).view(1, 2, 1, 1)})
    with torch.no_grad():
        model.proj["4"].weight.copy_(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
        model.proj["4"].bias.zero_()
        q1, q2 = (layer.quantizer for layer in model.layers)
        q1.codebook.copy_(torch.tensor([[0.0], [2.0]]))
        q2.codebook.copy_(torch.tensor([[-0.5], [0.5]]))
        q1.log_var.fill_(math.log(1.0))
        q2.log_var.fill_(math.log(0.25))
    terms = model(torch.zeros(1, 1, 4, 4))

    def neg_entropy(logits):
        p = [math.exp(v) for v in logits]
        p = [v / sum(p) for v in p]
        return sum(v * math.log(v) for v in p)

    # depth 1 sees 1.6: distances 2.56 and 0.16, sigma^2 = 1 -> code 1 (2.0), residual -0.4
    # depth 2 sees -0.4: distances 0.01 and 0.81, sigma^2 = 0.25 -> code 0 (-0.5), H_L = 1.5
    # one continuous term: (1.6 - 1.5)^2 / (2 * (1 + 0.25)) = 0.004
    assert terms["l0/kl_discrete"].item() == pytest.approx(neg_entropy([-2.56 / 2, -0.16 / 2]), abs=1e-6)
    assert terms["l1/kl_discrete"].item() == pytest.approx(neg_entropy([-0.01 / 0.5, -0.81 / 0.5]), abs=1e-6)
    assert "l0/kl_continuous" not in terms
    assert terms["l1/kl_continuous"].item() == pytest.approx(0.004, abs=1e-6)
    kl = terms["l0/kl_discrete"] + terms["l1/kl_discrete"] + terms["l1/kl_continuous"]
    torch.testing.assert_close(terms["loss"] - terms["recon"], kl)


def test_every_rq_depth_commits_the_encoder_to_its_running_sum_with_one_straight_through():
    """RQ-VAE's cumulative commitment: depth l pulls p toward sg(H_l) (not toward nothing,
    as p - H_{l-1} would with H_{l-1} = p + sg(...)); the decoder's gradient reaches p once."""
    torch.manual_seed(0)
    cfg = small_cfg("rqvae", extra=["model.depth=3", "model.quantizer.ema=false"])
    model = HQVAE(cfg.model, cfg.data.shape).train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    projections = []  # p = proj(Ĥ), computed once per residual layer

    def keep(module, inputs, out):
        out.retain_grad()
        projections.append(out)

    model.proj["4"].register_forward_hook(keep)
    state, quant = model.quantize(x)
    p, partial = projections[0], torch.zeros_like(projections[0])
    beta = cfg.model.quantizer.beta
    for i, (layer, q) in enumerate(zip(model.layers, quant)):
        partial = partial + layer.quantizer.lookup(q.codes)
        torch.testing.assert_close(q.losses["commitment"], beta * (p - partial).pow(2).mean())
        enc = torch.autograd.grad(q.losses["commitment"], model.encoder.parameters(), retain_graph=True,
                                  allow_unused=True)
        assert sum(float(g.abs().sum()) for g in enc if g is not None) > 0, f"depth {i + 1} commits nothing"
    torch.testing.assert_close(state, partial)  # forward: the sum of the codewords
    for q in projections:
        q.grad = None  # (autograd.grad above fed the retained grads)
    r = torch.randn_like(state)
    (state * r).sum().backward()
    grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in projections]
    torch.testing.assert_close(sum(grads), r)  # backward: identity to p, once


def test_decode_codes_rejects_bad_codes():
    cfg = small_cfg("vqvae2")
    model = HQVAE(cfg.model, cfg.data.shape)
    codes = model.encode(torch.zeros(1, 3, 32, 32))
    with pytest.raises(ValueError, match="layers"):
        model.decode_codes(codes[:1])
    k = model.codebook_sizes[1]
    bad = [codes[0], torch.full_like(codes[1], k)]
    with pytest.raises(ValueError, match=rf"\[0, {k}\)"):
        model.decode_codes(bad)
    with pytest.raises(ValueError, match="injected"):
        model.decode_codes(codes, depth=1)


def test_monotone_variances_decrease_with_depth():
    cfg = small_cfg("rsqvae", extra=["model.quantizer.variance=monotone"])
    model = HQVAE(cfg.model, cfg.data.shape)
    v = [float(t.exp()) for t in model.log_variances()]
    assert all(a > b for a, b in zip(v, v[1:]))
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    model(x)["loss"].backward()
    assert all(layer.quantizer.log_var.grad is not None for layer in model.layers)


@pytest.mark.parametrize("preset", ["sqvae2", "rsqvae", "hqvae"])
def test_the_first_step_already_uses_the_variances_seeded_from_its_batch(preset):
    """var_init_from_data seeds every SQ layer's sigma^2 from the first batch; the objective
    of that same batch must use the seeded values (the residual run's summed variance and
    the posteriors read sigma^2 before their layer's forward call)."""
    cfg = small_cfg(preset, extra=["model.quantizer.var_init_from_data=5.0",
                                   "model.quantizer.variance=bounded"])
    torch.manual_seed(0)
    model = HQVAE(cfg.model, cfg.data.shape).train()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    torch.manual_seed(1)
    first = model(x)
    assert all(bool(layer.quantizer.initialised) for layer in model.layers)
    starts = [float(layer.quantizer.var_start) for layer in model.layers]
    assert all(abs(v - 1.0) > 1e-3 for v in starts)  # seeded, not var_init
    torch.manual_seed(1)  # same Gumbel noise; no seeding the second time
    second = model(x)
    for key in first:
        torch.testing.assert_close(first[key], second[key], msg=key)


def _fit(preset: str, steps: int) -> tuple[float, float]:
    from tokenizer.data import ShapesDataset

    torch.manual_seed(0)
    cfg = small_cfg(preset, extra=["model.channels=32", "model.res_channels=16"])
    model = HQVAE(cfg.model, cfg.data.shape).train()
    ds = ShapesDataset(8, 32, 3, seed=1)
    x = torch.stack([ds[i]["x"] for i in range(8)])
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.eval()
    first = float((model.decode_codes(model.encode(x)) - x).pow(2).mean())
    model.train()
    for step in range(steps):
        loss = model(x, step=step)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    last = float((model.decode_codes(model.encode(x)) - x).pow(2).mean())
    return first, last


@pytest.mark.parametrize("preset", ["vqvae", "sqvae"])
def test_few_hundred_steps_drive_reconstruction_error_down(preset):
    first, last = _fit(preset, 300)
    assert last < 0.25 * first, (first, last)


@pytest.mark.parametrize("log_var, expected", [(30.0, "flat"), (-30.0, "sharp")])
def test_eval_reports_sq_posterior_entropy(log_var, expected):
    """posterior_entropy per SQ layer: log K for a flat posterior (huge sigma^2: the layer says
    nothing), ~0 for a sharp one; VQ layers have no posterior to report."""
    import math

    from tokenizer.evaluate import evaluate_tokenizer

    torch.manual_seed(0)
    data = [{"x": torch.rand(3, 32, 32) * 2 - 1} for _ in range(4)]
    cfg = small_cfg("sqvae2")
    model = HQVAE(cfg.model, cfg.data.shape)
    with torch.no_grad():
        model.layers[0].quantizer.log_var.fill_(log_var)
    layers = evaluate_tokenizer(model, data, layer_collapse=False, batch_size=2)["layers"]
    top = layers[0]["posterior_entropy"]
    if expected == "flat":
        assert top == pytest.approx(math.log(layers[0]["codebook_size"]), abs=1e-3)
    else:
        assert top < 1e-3
    assert 0 <= layers[1]["posterior_entropy"] <= math.log(layers[1]["codebook_size"]) + 1e-6
    vq = HQVAE(small_cfg("vqvae2").model, cfg.data.shape)
    assert all("posterior_entropy" not in la for la in evaluate_tokenizer(vq, data, layer_collapse=False)["layers"])


def test_evaluation_spreads_a_capped_subset_over_the_split():
    from engine.subsets import spread_indices as eval_indices

    assert eval_indices(5, 100) == [0, 1, 2, 3, 4]
    idx = eval_indices(1000, 4)  # folder datasets are ordered by class: not the first 4 rows
    assert idx == [0, 333, 666, 999]
    assert len(set(eval_indices(10, 7))) == 7


def test_decoding_and_reconstruction_grids_keep_the_training_mode(tmp_path):
    from tokenizer.evaluate import write_reconstructions
    from tokenizer.pretrained import Tokenizer

    cfg = small_cfg("sqvae2")
    tok = Tokenizer.from_config(cfg)
    tok.model.train()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    tok.decode_codes(tok.encode(x))
    assert tok.model.training
    write_reconstructions(tok.model, [{"x": xi} for xi in x], tmp_path, "image", n=2)
    assert tok.model.training and (tmp_path / "reconstructions.png").is_file()


@pytest.mark.parametrize("preset", ["sqvae2", "rsqvae", "hqvae"])
def test_code_norm_puts_every_quantizer_input_on_the_codebook_scale(preset):
    torch.manual_seed(0)
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    rms = {}
    for norm in ("none", "batch"):
        cfg = small_cfg(preset, extra=[f"model.code_norm={norm}", "model.depth=2", "model.channels=64"])
        model = HQVAE(cfg.model, cfg.data.shape).train()
        seen = []
        hooks = [layer.quantizer.register_forward_pre_hook(lambda m, args, seen=seen: seen.append(args[0]))
                 for layer in model.layers]
        model(x)
        for h in hooks:
            h.remove()
        rms[norm] = float(seen[0].pow(2).mean().sqrt())  # the top layer's input
    assert rms["none"] < 0.5  # the plain 1x1 projection starts far below the N(0, 1) codebook
    assert rms["batch"] == pytest.approx(1.0, abs=0.05)


def test_additive_injection_sums_upsampled_codewords_in_codebook_space():
    torch.manual_seed(0)
    cfg = small_cfg("sqvae2", extra=["model.injection=add"])
    model = HQVAE(cfg.model, cfg.data.shape).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    state, quant = model.quantize(x)
    top, bottom = model.layers
    expected = bottom.up(top.quantizer.lookup(quant[0].codes)) + bottom.quantizer.lookup(quant[1].codes)
    torch.testing.assert_close(state, expected)
    assert model.state_channels == cfg.model.layers[0].codebook_dim
    terms = model.train()(x)
    terms["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("injection", ["concat", "add"])
def test_mixed_hierarchy_gives_an_additive_injected_layer_and_its_refinement_one_term(injection):
    # hqvae: injected top (4x coarser), injected bottom, residual refinement of the bottom
    cfg = small_cfg("hqvae", extra=[f"model.injection={injection}"])
    model = HQVAE(cfg.model, cfg.data.shape).eval()
    with torch.no_grad():
        for la, v in zip(model.layers, (0.5, 1.0, 2.0)):
            la.quantizer.log_var.fill_(math.log(v))
    _, quant = model.quantize(torch.rand(2, 3, 32, 32) * 2 - 1)
    has_term = ["kl_continuous" in q.losses for q in quant]
    if injection == "concat":
        # h([up(H), z]) is not a sum of codewords: every layer keeps its own term
        assert model.residual_runs == [[2]] and has_term == [True, True, True]
        return
    # up(H) + z_1 + z_2: the bottom injected layer's noise and its refinement's add up
    assert model.residual_runs == [[0], [1, 2]] and has_term == [True, False, True]
    # its value: ||H_hat - H_L||^2 / (2 (sigma_1^2 + sigma_2^2)), summed, over the batch
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    feats = model.encoder(x)
    state, quant = model.quantize(x)
    h_hat = model.proj[str(cfg.model.layers[2].factor)](feats[cfg.model.layers[2].factor])
    expected = (h_hat - state).pow(2).sum() / (2 * (1.0 + 2.0)) / 2
    torch.testing.assert_close(quant[2].losses["kl_continuous"], expected)


def test_additive_injection_needs_one_codebook_dim():
    from engine.config import ConfigError

    with pytest.raises(ConfigError, match="injection: 'add'"):
        small_cfg("sqvae2", extra=["model.injection=add", "model.layers.1.codebook_dim=32"])
