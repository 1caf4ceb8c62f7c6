import math

import numpy as np
import pytest
import torch
from torch import nn

import hqvae
from engine.config import ConfigError
from tokenizer.config import ConfigTypeError, LayerConfig, QuantizerConfig, load_tokenizer_config
from tokenizer.quantizers import (
    NonFiniteInputError,
    ResidualQuantizer,
    StochasticQuantizer,
    VectorQuantizer,
    build_quantizer,
    code_scores,
    perplexity,
    seed_vectors,
    squared_distances,
)


def test_squared_distances_match_brute_force():
    z, b = torch.randn(50, 8), torch.randn(16, 8)
    brute = ((z[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(squared_distances(z, b), brute, atol=1e-4, rtol=1e-4)


def test_code_scores_pick_the_nearest_code_and_give_the_distance_posterior():
    # code_scores drops the per-row constant ||z||^2 / 2 of the distances: argmax, softmax
    # and every gradient through the softmax must not change
    torch.manual_seed(0)
    z = torch.randn(300, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(32, 8, dtype=torch.float64, requires_grad=True)
    log_var = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    d = squared_distances(z, b)
    assert torch.equal(code_scores(z, b).argmax(1), d.argmin(1))
    ref = torch.log_softmax(-0.5 * torch.exp(-log_var) * d, dim=1)
    ours = torch.log_softmax(code_scores(z, b, torch.exp(-log_var)), dim=1)
    torch.testing.assert_close(ours, ref)
    w = torch.randn(300, 32, dtype=torch.float64)
    g_ref = torch.autograd.grad((ref * w).sum(), (z, b, log_var))
    g_ours = torch.autograd.grad((ours * w).sum(), (z, b, log_var))
    for a, c in zip(g_ours, g_ref):
        torch.testing.assert_close(a, c)


def test_vq_straight_through_and_losses():
    torch.manual_seed(0)
    q = VectorQuantizer(dim=4, codebook_size=16, cfg=QuantizerConfig(kind="vq"))
    z = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = q(z)
    assert out.codes.shape == (2, 3, 3) and out.z_q.shape == z.shape
    # forward value is the codeword of the chosen code
    torch.testing.assert_close(out.z_q, q.lookup(out.codes))
    assert set(out.losses) == {"commitment", "codebook"}
    out.z_q.sum().backward()
    # straight-through: d(sum z_q)/dz = 1
    torch.testing.assert_close(z.grad, torch.ones_like(z))
    assert out.counts.sum() == 18


def test_ema_moves_used_codes_toward_assigned_vectors():
    torch.manual_seed(0)
    q = VectorQuantizer(dim=4, codebook_size=8, cfg=QuantizerConfig(kind="vq", ema=True, ema_decay=0.9))
    assert not isinstance(q.codebook, torch.nn.Parameter)
    target = torch.randn(4) * 3
    z = target.view(1, 4, 1, 1).expand(2, 4, 5, 5).contiguous()
    before = q.codebook.clone()
    q.train()
    out = q(z)
    used = int(out.codes.flatten()[0])
    d_before = (before[used] - target).norm()
    for _ in range(30):
        q(z)
    d_after = (q.codebook[used] - target).norm()
    assert d_after < 0.05 * d_before
    # unused codes keep a finite value
    assert torch.isfinite(q.codebook).all()
    assert set(out.losses) == {"commitment"}  # no codebook loss with EMA


@pytest.mark.parametrize("count_init", [0.0, 1.0])
def test_ema_count_init_decides_where_unused_codes_go(count_init):
    """Reference init (0): the first update scales every unused code by ~1/ema_eps, out of
    reach for good (and moves the used code too: its sum starts as if counted once).
    ema_count_init=1: the used code stays on its vectors, unused codes stay put at first
    and then shrink toward the origin (once decay^t < ema_eps), where small encoder
    outputs can pick them again."""
    torch.manual_seed(0)
    cfg = QuantizerConfig(kind="vq", ema=True, ema_decay=0.9, ema_count_init=count_init)
    q = VectorQuantizer(dim=4, codebook_size=8, cfg=cfg).train()
    before = q.codebook.clone()
    z = before[0].view(1, 4, 1, 1).expand(2, 4, 3, 3).contiguous()  # every vector picks code 0
    q(z)
    growth = q.codebook[1:].norm(dim=1) / before[1:].norm(dim=1)
    if count_init == 0:
        assert (growth > 1e3).all()
        return
    torch.testing.assert_close(growth, torch.ones_like(growth), atol=0.02, rtol=0)
    for _ in range(200):
        q(z)
    torch.testing.assert_close(q.codebook[0], before[0])
    assert (q.codebook[1:].norm(dim=1) < 0.1 * before[1:].norm(dim=1)).all()


def test_ema_not_updated_in_eval():
    q = VectorQuantizer(dim=4, codebook_size=8, cfg=QuantizerConfig(kind="vq", ema=True)).eval()
    before = q.codebook.clone()
    q(torch.randn(2, 4, 3, 3))
    torch.testing.assert_close(q.codebook, before)


def test_dead_code_restart_reseeds_unused_codes():
    torch.manual_seed(0)
    cfg = QuantizerConfig(kind="vq", restart_threshold=0.5, usage_decay=0.5)
    q = VectorQuantizer(dim=4, codebook_size=32, cfg=cfg).train()
    z = torch.randn(4, 4, 4, 4) * 5  # far from the tiny initial codebook
    for _ in range(5):
        q(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    # restarted codes were copied from batch vectors
    d = squared_distances(q.codebook.detach(), flat).min(1).values
    assert (d < 1e-6).sum() > 16


def test_data_init_takes_batch_vectors():
    torch.manual_seed(0)
    q = VectorQuantizer(dim=4, codebook_size=8, cfg=QuantizerConfig(kind="vq", data_init=True)).train()
    z = torch.randn(2, 4, 4, 4) + 10
    q(z)
    assert bool(q.initialised)
    assert q.codebook.detach().mean() > 5


def test_sq_eval_is_deterministic_and_hard():
    torch.manual_seed(0)
    q = StochasticQuantizer(dim=4, codebook_size=16, cfg=QuantizerConfig()).eval()
    z = torch.randn(2, 4, 5, 5)
    a, b = q(z), q(z)
    assert torch.equal(a.codes, b.codes) and torch.equal(a.z_q, b.z_q)
    torch.testing.assert_close(a.z_q, q.lookup(a.codes))


def test_sq_training_is_stochastic_soft_mixture():
    torch.manual_seed(0)
    q = StochasticQuantizer(dim=4, codebook_size=16, cfg=QuantizerConfig(var_init=50.0)).train()
    z = torch.randn(2, 4, 5, 5)
    a, b = q(z), q(z)
    assert not torch.equal(a.z_q, b.z_q)


def test_sq_loss_terms_sum_over_positions_and_average_over_batch():
    """Would fail if the KL terms were averaged over positions (the classic bug)."""
    torch.manual_seed(0)
    q = StochasticQuantizer(dim=4, codebook_size=16, cfg=QuantizerConfig()).eval()
    z = torch.randn(2, 4, 3, 3)
    base = q(z).losses
    tiled = q(z.repeat(1, 1, 2, 2)).losses  # 4x the positions, same content
    doubled_batch = q(torch.cat([z, z])).losses  # same examples twice
    for k in ("kl_discrete", "kl_continuous"):
        torch.testing.assert_close(tiled[k], 4 * base[k], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(doubled_batch[k], base[k], rtol=1e-4, atol=1e-4)


def test_sq_kl_values_match_definition():
    q = StochasticQuantizer(dim=2, codebook_size=3, cfg=QuantizerConfig(var_init=2.0)).eval()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]))
    z = torch.tensor([[0.5, 0.5]]).view(1, 2, 1, 1)
    d = torch.tensor([0.5, 0.5, 2.5])
    logits = -d / (2 * 2.0)
    p = torch.softmax(logits, 0)
    out = q(z)
    torch.testing.assert_close(out.losses["kl_discrete"], (p * p.log()).sum(), rtol=1e-5, atol=1e-6)
    # hard code 0 or 1 (tie) at eval: ||z - b||^2 = 0.5
    torch.testing.assert_close(out.losses["kl_continuous"], torch.tensor(0.5 / 4.0))


def test_temperature_schedule():
    q = StochasticQuantizer(dim=2, codebook_size=4, cfg=QuantizerConfig(tau_init=2.0, tau_decay=1e-3, tau_min=0.5))
    assert q.temperature(0) == 2.0
    assert math.isclose(q.temperature(100), 2.0 * math.exp(-0.1))
    assert q.temperature(10**6) == 0.5


def test_run_temperature_schedule_spans_the_run():
    q = StochasticQuantizer(dim=2, codebook_size=4, cfg=QuantizerConfig(tau_schedule="run", tau_init=2.0, tau_end=0.02))
    with pytest.warns(UserWarning, match="set_total_steps"):  # a loop of the user's own
        assert q.temperature(500) == 2.0
    q.set_total_steps(101)  # steps 0..100
    assert q.temperature(0) == pytest.approx(2.0)
    assert q.temperature(50) == pytest.approx(0.2)  # geometric: halfway in log tau
    assert q.temperature(100) == pytest.approx(0.02)  # the last step trains at tau_end
    assert q.temperature(1000) == pytest.approx(0.02)  # a resumed run past its length stays at tau_end
    for step in (0, 37, 100, 150):
        assert float(q.temperature(torch.tensor(step))) == pytest.approx(q.temperature(step), rel=1e-6)


def test_quantizer_math_is_float32_under_autocast():
    q = StochasticQuantizer(dim=4, codebook_size=8, cfg=QuantizerConfig()).train()
    z = torch.randn(2, 4, 3, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = q(z.bfloat16())
    assert out.z_q.dtype == torch.float32
    assert out.losses["kl_discrete"].dtype == torch.float32


def test_perplexity():
    assert perplexity(torch.tensor([1.0, 1.0, 1.0, 1.0])) == pytest.approx(4.0)
    assert perplexity(torch.tensor([5.0, 0.0, 0.0])) == pytest.approx(1.0)


def test_incompatible_options_rejected():
    from engine.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match="ema"):
        from_dict(QuantizerConfig, {"kind": "sq", "ema": True})
    with pytest.raises(ConfigError, match="variance"):
        from_dict(QuantizerConfig, {"kind": "vq", "variance": "monotone"})
    with pytest.raises(ConfigError, match="ema_count_init.*ema=true"):
        from_dict(QuantizerConfig, {"kind": "vq", "ema_count_init": 1.0})
    with pytest.raises(ConfigError, match="ema_count_init: applies to kind 'vq'"):
        from_dict(QuantizerConfig, {"kind": "sq", "ema_count_init": 1.0})
    with pytest.raises(ConfigError, match="ema_count_init: must be >= 0"):
        from_dict(QuantizerConfig, {"kind": "vq", "ema": True, "ema_count_init": -1.0})


def test_restart_leaves_live_codes_alone():
    torch.manual_seed(0)
    cfg = QuantizerConfig(kind="vq", restart_threshold=0.5, usage_decay=0.5)
    q = VectorQuantizer(dim=4, codebook_size=8, cfg=cfg).train()
    q.usage[:4], q.usage[4:] = 10.0, 0.0  # codes 0-3 alive, 4-7 dead
    before = q.codebook.detach().clone()
    q(torch.randn(2, 4, 3, 3) * 5)
    after = q.codebook.detach()
    assert torch.equal(after[:4], before[:4]) and not torch.equal(after[4:], before[4:])


def test_data_init_runs_once_and_again_after_loading_an_uninitialised_state():
    torch.manual_seed(0)
    q = VectorQuantizer(dim=4, codebook_size=8, cfg=QuantizerConfig(kind="vq", data_init=True)).train()
    fresh = {k: v.clone() for k, v in q.state_dict().items()}
    q(torch.randn(2, 4, 4, 4) + 10)
    first = q.codebook.detach().clone()
    q(torch.randn(2, 4, 4, 4) - 10)  # already initialised: not re-seeded (codebook loss only)
    assert torch.equal(q.codebook.detach(), first)
    q.load_state_dict(fresh)
    q(torch.randn(2, 4, 4, 4) - 10)
    assert q.codebook.detach().mean() < -5


def test_seed_vectors_are_distinct_batch_vectors_or_a_noisy_tiling():
    torch.manual_seed(0)
    flat = torch.randn(40, 4) * 3 + 7
    seeds = seed_vectors(flat, 16)  # enough vectors: 16 distinct rows of the batch
    assert seeds.shape == (16, 4)
    assert (seeds[:, None] == flat[None]).all(-1).any(1).all()
    assert len({tuple(r.tolist()) for r in seeds}) == 16
    seeds = seed_vectors(flat[:5], 16)  # fewer: every batch vector tiled, with small noise
    d = torch.cdist(seeds.double(), flat[:5].double()).pow(2)
    assert (d.min(1).values.sqrt() < 0.1 * 3 * 5).all()  # near a batch vector...
    assert (d.min(1).values > 0).all() and len({tuple(r.tolist()) for r in seeds}) == 16  # ...none a copy
    assert set(d.argmin(1).tolist()) == set(range(5))


def test_sq_takes_its_codebook_and_variance_from_the_first_training_batch():
    torch.manual_seed(0)
    q = StochasticQuantizer(dim=4, codebook_size=8, data_init=True, var_init_from_data=5.0)
    z = torch.randn(2, 4, 4, 4) * 3 + 10
    q.eval()(z)  # evaluation seeds nothing
    assert not bool(q.initialised) and float(q.variance()) == pytest.approx(1.0)
    q.train()(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    assert bool(q.initialised)
    assert (q.codebook.detach()[:, None] == flat[None]).all(-1).any(1).all()
    assert float(q.variance()) == pytest.approx(5 * float(flat.var(0, unbiased=False).mean()), rel=1e-5)
    seeded = _state(q)
    q(torch.randn(2, 4, 4, 4) - 10)  # seeded once only
    _assert_same_state(q, seeded)


def test_a_bounded_variance_starts_at_its_start_and_never_exceeds_twice_it():
    torch.manual_seed(0)
    q = StochasticQuantizer(dim=4, codebook_size=8, var_init=0.3, variance="bounded").eval()
    assert float(q.variance()) == pytest.approx(0.3)
    z = torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        q.log_var.fill_(1.5)  # sigma^2 = 2 sigmoid(1.5) * 0.3
        var = 2 * torch.sigmoid(torch.tensor(1.5)) * 0.3
        out = q(z)
        # the dequantisation term with the bounded variance: sum ||z - z_q||^2 / (2 sigma^2) / B
        assert float(out.losses["kl_continuous"]) == pytest.approx(
            float((z - out.z_q).pow(2).sum() / (2 * var) / 2), rel=1e-5)
        q.log_var.fill_(1e4)
        assert float(q.variance()) == pytest.approx(0.6)
        q.log_var.fill_(-30.0)
        assert 0 < float(q.variance()) < 1e-12
    # from data, the bound is twice the seeded start
    q = StochasticQuantizer(dim=4, codebook_size=8, variance="bounded", var_init_from_data=5.0).train()
    q(z)
    start = 5 * float(z.permute(0, 2, 3, 1).reshape(-1, 4).var(0, unbiased=False).mean())
    assert float(q.var_start) == pytest.approx(start, rel=1e-5)
    with torch.no_grad():
        q.log_var.fill_(1e4)
    assert float(q.variance()) == pytest.approx(2 * start, rel=1e-5)


def test_a_residual_stack_sums_the_seeded_variances_from_its_first_step():
    """The last depth's continuous term divides by sum_l sigma_l^2: on the first training
    batch that sum already holds every depth's variance seeded from its own residual."""
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=4, codebook_size=8, depth=3, kind="sq", var_init_from_data=5.0).train()
    z = torch.randn(2, 4, 4, 4) * 2
    out = q(z)
    variances = [float(d.variance()) for d in q.depths]
    assert all(v != pytest.approx(1.0) for v in variances)  # each seeded, from its own residual
    expected = float((z - out.z_q).pow(2).sum() / (2 * sum(variances)) / 2)
    assert float(out.losses["d2/kl_continuous"]) == pytest.approx(expected, rel=1e-5)


def test_sq_variance_options_that_cannot_combine_are_refused():
    with pytest.raises(ConfigError, match="var_init_from_data: a 'monotone' variance"):
        QuantizerConfig(kind="sq", variance="monotone", var_init_from_data=5.0).validate()
    with pytest.raises(ConfigError, match="var_init_from_data: applies to kind 'sq' only"):
        QuantizerConfig(kind="vq", var_init_from_data=5.0).validate()
    with pytest.raises(ConfigError, match=r"variance: 'bounded' applies to kind 'sq' only"):
        QuantizerConfig(kind="vq", variance="bounded").validate()
    with pytest.raises(ConfigError, match=r"var_init_from_data: must be in \[0, 1e6\]"):
        QuantizerConfig(kind="sq", var_init_from_data=-1.0).validate()


def test_sq_temperature_accepts_a_tensor_step():
    q = StochasticQuantizer(dim=4, codebook_size=8, cfg=QuantizerConfig(tau_init=1.0, tau_decay=1e-3, tau_min=0.1))
    for step in (0, 7, 1000, 10**6):
        assert float(q.temperature(torch.tensor(step))) == pytest.approx(q.temperature(step), rel=1e-6)
    z = torch.randn(2, 4, 3, 3)
    torch.manual_seed(1)
    a = q.train()(z, step=500)
    torch.manual_seed(1)
    b = q(z, step=torch.tensor(500))
    torch.testing.assert_close(a.z_q, b.z_q)


@pytest.mark.parametrize("kind", ["sq", "vq_restart", "vq_data_init"])
def test_quantizer_steps_compile_as_one_graph_without_recompiling(kind):
    """The training step has no host syncs (a sync would be a graph break under
    fullgraph=True) and a changing step does not recompile. Dynamo only (backend='eager'),
    so this is fast; bench/tokenizer_speed.py measures the real compiled speed."""
    import torch._dynamo

    torch.manual_seed(0)
    if kind == "sq":
        q = StochasticQuantizer(dim=4, codebook_size=16, cfg=QuantizerConfig())
    else:
        opts = {"restart_threshold": 0.5} if kind == "vq_restart" else {"data_init": True, "ema": True}
        q = VectorQuantizer(dim=4, codebook_size=16, cfg=QuantizerConfig(kind="vq", **opts))
    q.train()
    z = torch.randn(2, 4, 3, 3)
    if kind == "vq_data_init":
        # the first batch seeds the codebook, the second reads that it is seeded (a host
        # sync each, outside the compiled steps; the flag could still be rolled back between)
        q(z)
        q(z)
    torch._dynamo.reset()
    f = torch.compile(q, backend="eager", fullgraph=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for step in range(4):
            out = f(z, step=torch.tensor(step))
            assert torch.isfinite(out.z_q).all()


def test_inductor_compiled_ema_and_restart_updates_match_eager():
    """Regression: torch 2.13's inductor miscompiled `buf.mul_(d).add_(matmul, alpha=1 - d)`
    (the EMA sum came out ~20x too large), so every EMA preset diverged under
    train.compile=true. Real inductor code generation, on one small quantizer."""
    import copy

    import torch._dynamo

    torch.manual_seed(0)
    cfg = QuantizerConfig(kind="vq", ema=True, restart_threshold=0.01)
    eager = VectorQuantizer(dim=8, codebook_size=64, cfg=cfg).train()
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    step = torch.compile(compiled)
    for i in range(3):
        z = torch.randn(8, 8, 4, 4)
        torch.manual_seed(i)  # the restart draws
        a = eager(z)
        torch.manual_seed(i)
        b = step(z)
        assert torch.equal(a.codes, b.codes)
    for name in ("ema_sum", "ema_count", "usage"):
        torch.testing.assert_close(getattr(compiled, name), getattr(eager, name), rtol=1e-4, atol=1e-5)


# -- standalone use: keyword construction, any layout, one call ---------------------------

def test_keyword_construction_and_incompatible_options_are_refused():
    from engine.config import ConfigError

    q = StochasticQuantizer(dim=8, codebook_size=32, var_init=2.0, tau=0.5)
    assert q.cfg.kind == "sq" and q.temperature(10**6) == 0.5 and q.variance() == pytest.approx(2.0)
    vq = VectorQuantizer(dim=8, codebook_size=32, ema=True, restart_threshold=1.0)
    assert vq.cfg.ema and vq.cfg.restart_threshold == 1.0
    for make, match in [
        (lambda: StochasticQuantizer(dim=8, codebook_size=32, ema=True), "applies to kind 'vq' only"),
        (lambda: VectorQuantizer(dim=8, codebook_size=32, ema_count_init=1.0), "set ema=true"),
        (lambda: VectorQuantizer(dim=8, codebook_size=32, betta=0.3), "unknown quantizer option"),
        (lambda: StochasticQuantizer(dim=8, codebook_size=32, tau=0.5, tau_decay=1e-3), "tau"),
        (lambda: VectorQuantizer(dim=8, codebook_size=32, cfg=QuantizerConfig(kind="sq")), "kind"),
    ]:
        with pytest.raises(ConfigError, match=match):
            make()


@pytest.mark.parametrize("make", [
    lambda: VectorQuantizer(dim=6, codebook_size=16),
    lambda: StochasticQuantizer(dim=6, codebook_size=16),
    lambda: ResidualQuantizer(dim=6, codebook_size=16, depth=3, kind="vq"),
    lambda: ResidualQuantizer(dim=6, codebook_size=16, depth=3, kind="sq"),
])
def test_sequences_and_maps_give_the_same_codes(make):
    torch.manual_seed(0)
    q = make().eval()
    seq = torch.randn(2, 5, 6)  # (B, N, D)
    as_map = seq.transpose(1, 2).unsqueeze(-1)  # (B, D, N, 1)
    quantized, indices, loss = q(seq)
    ref = q(as_map)
    assert quantized.shape == seq.shape and indices.shape[:2] == (2, 5)
    torch.testing.assert_close(quantized, ref.z_q.squeeze(-1).transpose(1, 2))
    assert torch.equal(indices, ref.codes.squeeze(2))
    torch.testing.assert_close(loss, ref.loss)
    with pytest.raises(ValueError, match=r"expected \(B, 6, H, W\) or \(B, N, 6\)"):
        q(torch.randn(2, 5, 7))


@pytest.mark.parametrize("make", [
    lambda: VectorQuantizer(dim=4, codebook_size=32, data_init=True),
    lambda: StochasticQuantizer(dim=4, codebook_size=32, tau=0.5),
    lambda: ResidualQuantizer(dim=4, codebook_size=32, depth=2, kind="vq", data_init=True),
    lambda: ResidualQuantizer(dim=4, codebook_size=32, depth=2, kind="sq", tau=0.5),
])
def test_a_short_fit_on_random_data_lowers_the_quantization_error(make):
    """Gradients reach the codebook (and sigma^2) through the one-call loss: fitting the
    codebook to a fixed cloud of points by that loss alone brings the codes closer."""
    torch.manual_seed(0)
    q = make().train()
    data = torch.randn(256, 4) * 3 + 1  # off the N(0, 1) codebook's scale and centre
    opt = torch.optim.Adam(q.parameters(), lr=0.05)

    def error():
        with torch.no_grad():
            return float((q.eval()(data.unsqueeze(0)).z_q - data).pow(2).mean())

    before = error()
    for _ in range(60):
        q.train()
        out = q(data.unsqueeze(0))
        recon = (out.z_q - data).pow(2).sum()
        opt.zero_grad()
        (recon + out.loss).backward()
        assert all(p.grad is not None for p in q.parameters() if p.requires_grad)
        opt.step()
    assert error() < 0.5 * before


def test_residual_sq_stack_has_one_continuous_term_with_the_summed_variance():
    torch.manual_seed(0)
    q = ResidualQuantizer(dim=3, codebook_size=8, depth=3, kind="sq").eval()
    with torch.no_grad():
        for d, v in zip(q.depths, (0.5, 1.0, 2.0)):
            d.log_var.fill_(math.log(v))
    z = torch.randn(2, 3, 4, 4)
    out = q(z)
    assert sorted(k for k in out.losses if "continuous" in k) == ["d2/kl_continuous"]
    expected = (z - q.lookup(out.codes)).pow(2).sum() / (2 * 3.5) / 2
    torch.testing.assert_close(out.losses["d2/kl_continuous"], expected)
    torch.testing.assert_close(out.z_q, q.lookup(out.codes))


@pytest.mark.parametrize("scale", [1.0, 10.0])
def test_var_lr_scale_speeds_up_log_sigma2_under_adam(scale):
    torch.manual_seed(0)
    q = StochasticQuantizer(dim=4, codebook_size=8, var_init=2.0, var_lr_scale=scale).train()
    assert float(q.log_variance().detach()) == pytest.approx(math.log(2.0))
    opt = torch.optim.Adam([q.log_var], lr=1e-3)
    q(torch.randn(2, 4, 4, 4)).loss.backward()
    opt.step()
    # Adam's first step is lr * sign(grad) on the stored parameter, scaled back up
    assert abs(float(q.log_variance().detach()) - math.log(2.0)) == pytest.approx(scale * 1e-3, rel=1e-3)
    assert float(q.variance()) == pytest.approx(math.exp(float(q.log_variance().detach())))


def test_var_lr_scale_is_checked():
    from engine.config import ConfigError

    with pytest.raises(ConfigError, match="var_lr_scale: applies to kind 'sq'"):
        VectorQuantizer(dim=4, codebook_size=8, var_lr_scale=2.0)
    with pytest.raises(ConfigError, match=r"var_lr_scale: must be in \(0, 1000\]"):
        StochasticQuantizer(dim=4, codebook_size=8, var_lr_scale=0.0)


# -- input the quantizers cannot quantize, and constructor arguments that make no sense ----

# every quantizer hqvae exports, in the configurations that hold state (EMA statistics,
# usage counts, a data-initialised codebook) and in plain ones
MAKERS = {
    "VectorQuantizer": {
        "vq": lambda: VectorQuantizer(dim=4, codebook_size=8),
        "vq-ema-restart-init": lambda: VectorQuantizer(
            dim=4, codebook_size=8, ema=True, restart_threshold=0.5, data_init=True),
    },
    "StochasticQuantizer": {
        "sq": lambda: StochasticQuantizer(dim=4, codebook_size=8),
        "sq-from-data": lambda: StochasticQuantizer(
            dim=4, codebook_size=8, data_init=True, var_init_from_data=5.0, variance="bounded"),
    },
    "ResidualQuantizer": {
        "rq-vq": lambda: ResidualQuantizer(dim=4, codebook_size=8, depth=2, kind="vq", ema=True,
                                           restart_threshold=0.5, data_init=True),
        "rq-sq": lambda: ResidualQuantizer(dim=4, codebook_size=8, depth=2, kind="sq"),
        "rq-sq-from-data": lambda: ResidualQuantizer(dim=4, codebook_size=8, depth=2, kind="sq",
                                                     data_init=True, var_init_from_data=5.0),
    },
}
ALL = [pytest.param(make, id=name) for group in MAKERS.values() for name, make in group.items()]
STATEFUL = [pytest.param(MAKERS[c][n], id=n) for c, n in
            [("VectorQuantizer", "vq-ema-restart-init"), ("ResidualQuantizer", "rq-vq"),
             ("StochasticQuantizer", "sq-from-data"), ("ResidualQuantizer", "rq-sq-from-data")]]


def test_every_exported_quantizer_is_covered_by_the_input_tests():
    exported = {name for name, module in hqvae._EXPORTS.items() if module == "tokenizer.quantizers"}
    assert exported == set(MAKERS)
    for name in exported:
        assert all(type(make()).__name__ == name for make in MAKERS[name].values())


def _with_bad_values(layout: str, bad: float) -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(2, 4, 3, 3)
    x[0, 1, 0, 0] = x[1, 2, 2, 1] = x[1, 3, 1, 2] = bad
    return x if layout == "map" else x.flatten(2).transpose(1, 2).contiguous()  # (B, N, D)


def _state(q: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in q.state_dict().items()}


def _assert_same_state(q: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = q.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("layout", ["map", "seq"])
@pytest.mark.parametrize("when", ["first-training-call", "later-training-call", "eval"])
def test_nonfinite_input_is_refused_before_any_state_changes(make, bad, layout, when):
    """NaN / inf used to give NaN z_q and code 0 for every vector, count those codes, and
    with ema=True spread NaN to every codeword for good. Now the call is refused, naming the
    class and the count, and every parameter and buffer is as it was."""
    torch.manual_seed(0)
    q = make().train(when != "eval")
    if when == "later-training-call":
        q(_with_bad_values(layout, 0.5))  # data_init done, EMA statistics and usage moved
    before = _state(q)
    x = _with_bad_values(layout, bad)
    nan, inf = (3, 0) if math.isnan(bad) else (0, 3)
    msg = rf"^{type(q).__name__}: the input holds 3 non-finite values \({nan} NaN, {inf} inf\) of 72;"
    with pytest.raises(NonFiniteInputError, match=msg):
        q(x)
    assert issubclass(NonFiniteInputError, ValueError)  # the CLI's one-line report
    _assert_same_state(q, before)
    if "initialised" in before:
        assert q.state_dict()["initialised"].item() == (when == "later-training-call")


@pytest.mark.parametrize("make", STATEFUL)
@pytest.mark.parametrize("check", ["eval", "never"])
@pytest.mark.parametrize("when", ["first-training-call", "later-training-call"])
def test_without_the_host_check_a_nonfinite_training_batch_changes_no_state(make, check, when):
    """check_finite='eval' (the toolkit's models) or 'never': a training call does not
    read the device; the NaN reaches the loss, and the EMA statistics, usage counts and the
    data initialisation are masked on the device, so the codebook is not poisoned."""
    torch.manual_seed(0)
    q = make().train()
    q.check_finite = check
    if when == "later-training-call":
        q(_with_bad_values("map", 0.5))
    before = _state(q)
    out = q(_with_bad_values("map", float("nan")))
    assert not torch.isfinite(out.loss)  # what a training loop's own NaN handling sees
    _assert_same_state(q, before)
    # and the next finite batch trains as usual: the data initialisation happens then
    q(_with_bad_values("map", 0.5))
    assert all(torch.isfinite(v).all() for v in q.state_dict().values())
    if when == "first-training-call":
        assert all(bool(v) for k, v in q.state_dict().items() if k.endswith("initialised"))


def test_check_finite_takes_only_its_three_values():
    q = VectorQuantizer(dim=4, codebook_size=8)
    assert q.check_finite == "always"
    with pytest.raises(ValueError, match="check_finite: one of 'always', 'eval', 'never', got 'sometimes'"):
        q.check_finite = "sometimes"


@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("given, named", [
    (lambda x: x.long(), r"a torch.int64 tensor \(convert it with .float\(\) if it really holds features\)"),
    (lambda x: x > 0, r"a torch.bool tensor \(convert it with .float\(\) if it really holds features\)"),
    (lambda x: x.to(torch.int8), r"a torch.int8 tensor \(convert it with .float\(\) if it really holds features\)"),
    (lambda x: x.numpy(), r"numpy.ndarray \(torch.from_numpy\(x\).float\(\) converts it\)"),
    (lambda x: x.tolist(), "list"),
], ids=["int64", "bool", "int8", "numpy", "list"])
def test_anything_but_a_floating_point_tensor_is_a_type_error(make, given, named):
    """Integer and bool tensors used to be cast silently; a numpy array failed with
    "'numpy.ndarray' object has no attribute 'dim'"."""
    q = make().train()
    x = torch.randn(2, 4, 3, 3)
    before = _state(q)
    with pytest.raises(TypeError, match=rf"^{type(q).__name__}: expected a floating-point torch.Tensor, got {named}$"):
        q(given(x))
    _assert_same_state(q, before)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):  # every floating type is read
        assert q.eval()(x.to(dtype)).z_q.dtype == torch.float32


# constructor arguments: (keyword, value, the error's text). Types are ConfigTypeError (a
# ConfigError and a TypeError), values ConfigError; both name the argument and the value
COMMON_BAD = [
    ("codebook_size", 0, r"codebook_size: must be in \[2, 1048576\], got 0"),  # was ZeroDivisionError / accepted
    ("codebook_size", -1, r"codebook_size: must be in \[2, 1048576\], got -1"),
    ("codebook_size", 1, r"codebook_size: must be in \[2, 1048576\], got 1"),  # one code for everything
    ("codebook_size", 2**20 + 1, r"codebook_size: must be in \[2, 1048576\], got 1048577"),
    ("codebook_size", 10**10, r"codebook_size: must be in \[2, 1048576\], got 10000000000"),  # 320 GB
    ("codebook_size", 8.5, r"codebook_size: expected an integer, got 8.5"),
    ("codebook_size", 1e10, r"codebook_size: expected an integer, got 10000000000.0"),
    ("codebook_size", "8", r"codebook_size: expected an integer, got '8'"),
    ("codebook_size", True, r"codebook_size: expected an integer, got True"),
    ("dim", 0, r"dim: must be in \[1, 4096\], got 0"),
    ("dim", -4, r"dim: must be in \[1, 4096\], got -4"),
    ("dim", 4097, r"dim: must be in \[1, 4096\], got 4097"),
    ("dim", 4.0, r"dim: expected an integer, got 4.0"),
    ("dim", None, r"dim: expected an integer, got None"),
]
VQ_BAD = [  # keyword options of QuantizerConfig, checked when a quantizer is built from them
    ("beta", float("nan"), r"beta: expected a finite number, got nan"),
    ("beta", "0.25", r"beta: expected a number, got '0.25'"),
    ("ema_decay", float("nan"), r"ema_decay: expected a finite number, got nan"),
    ("ema_eps", 0.0, r"ema_eps: must be > 0, got 0.0"),  # never-used codes divided by zero
    ("ema_eps", -1e-5, r"ema_eps: must be > 0, got -1e-05"),
    ("restart_threshold", float("inf"), r"restart_threshold: expected a finite number, got inf"),
    ("usage_decay", "0.9", r"usage_decay: expected a number, got '0.9'"),
    ("ema", 1, r"ema: expected true/false, got 1"),
    ("data_init", "yes", r"data_init: expected true/false, got 'yes'"),
]
SQ_BAD = [
    ("tau", 0.0, r"tau: must be > 0, got 0.0"),
    ("tau", -0.5, r"tau: must be > 0, got -0.5"),
    ("tau", float("nan"), r"tau: expected a finite number, got nan"),
    ("tau", float("inf"), r"tau: expected a finite number, got inf"),
    ("tau", "0.5", r"tau: expected a number, got '0.5'"),
    ("tau_init", float("nan"), r"tau_init: expected a finite number, got nan"),
    ("tau_decay", float("inf"), r"tau_decay: expected a finite number, got inf"),
    ("tau_min", float("nan"), r"tau_min: expected a finite number, got nan"),
    ("var_init", float("inf"), r"var_init: expected a finite number, got inf"),
    ("var_init", "1", r"var_init: expected a number, got '1'"),
    ("tau_schedule", "linear", r"tau_schedule: 'linear' is not one of 'exp' \| 'run'"),
    ("variance", "shared", r"variance: 'shared' is not one of 'independent' \| 'monotone' \| 'bounded'"),
]
RQ_BAD = [
    ("depth", 0, r"depth: must be in \[1, 64\], got 0"),
    ("depth", -2, r"depth: must be in \[1, 64\], got -2"),
    ("depth", 65, r"depth: must be in \[1, 64\], got 65"),
    ("depth", 2.5, r"depth: expected an integer, got 2.5"),
    ("depth", "2", r"depth: expected an integer, got '2'"),
    ("depth", True, r"depth: expected an integer, got True"),
]
BUILD = {
    "VectorQuantizer": (lambda **kw: VectorQuantizer(**{"dim": 4, "codebook_size": 8, **kw}), COMMON_BAD + VQ_BAD),
    "StochasticQuantizer": (lambda **kw: StochasticQuantizer(**{"dim": 4, "codebook_size": 8, **kw}), COMMON_BAD + SQ_BAD),
    "ResidualQuantizer[vq]": (
        lambda **kw: ResidualQuantizer(**{"dim": 4, "codebook_size": 8, "depth": 2, "kind": "vq", **kw}),
        COMMON_BAD + RQ_BAD + VQ_BAD),
    "ResidualQuantizer[sq]": (
        lambda **kw: ResidualQuantizer(**{"dim": 4, "codebook_size": 8, "depth": 2, "kind": "sq", **kw}),
        COMMON_BAD + RQ_BAD + SQ_BAD),
}


@pytest.mark.parametrize("build, key, value, message", [
    pytest.param(build, key, value, message, id=f"{name}-{key}={value!r}")
    for name, (build, cases) in BUILD.items() for key, value, message in cases])
def test_constructor_arguments_that_make_no_sense_are_refused_naming_them(build, key, value, message):
    with pytest.raises(ConfigError, match=rf"^{message}$") as err:
        build(**{key: value})
    # a wrong type is also a TypeError, a wrong value a ValueError (as ConfigError is)
    assert isinstance(err.value, TypeError) == ("expected an integer" in message or "expected a number" in message
                                                or "expected true/false" in message)


def test_the_config_loader_and_the_constructors_share_the_codebook_and_depth_rules():
    """One set of rules: the loader's model.layers.* / model.depth and the constructors'
    arguments give the same words (LayerConfig built in Python is checked too)."""
    for size, words in [(1, r"codebook_size: must be in \[2, 1048576\], got 1"),
                        (2**21, r"codebook_size: must be in \[2, 1048576\], got 2097152")]:
        with pytest.raises(ConfigError, match=words):
            load_tokenizer_config(None, ["model.preset=vqvae", f"model.layers.0.codebook_size={size}"])
        with pytest.raises(ConfigError, match=words):
            VectorQuantizer(dim=4, codebook_size=size)
    with pytest.raises(ConfigTypeError, match=r"codebook_size: expected an integer, got 8.5"):
        LayerConfig(codebook_size=8.5).validate()
    with pytest.raises(ConfigTypeError, match=r"codebook_dim: expected an integer, got '8'"):
        LayerConfig(codebook_dim="8").validate()
    with pytest.raises(ConfigError, match=r"model\.depth: must be in \[1, 64\], got 65"):
        load_tokenizer_config(None, ["model.preset=rqvae", "model.depth=65"])  # built 65 layers
    with pytest.raises(ConfigError, match=r"^depth: must be in \[1, 64\], got 65$"):
        ResidualQuantizer(dim=4, codebook_size=8, depth=65)
    with pytest.raises(ConfigError, match=r"model\.quantizer\.ema_eps: must be > 0, got 0.0"):
        load_tokenizer_config(None, ["model.preset=vqvae2", "model.quantizer.ema_eps=0"])
    assert load_tokenizer_config(None, ["model.preset=rqvae", "model.depth=64"]).model.layers[63].kind == "residual"


def test_set_total_steps_takes_a_positive_count():
    q = StochasticQuantizer(dim=4, codebook_size=8, tau_schedule="run")
    for total, words in [(0, r"total: must be in \[1, "), (2.5, "total: expected an integer, got 2.5")]:
        with pytest.raises(ConfigError, match=words):
            q.set_total_steps(total)
    q.set_total_steps(np.int64(10))
    assert q.total_steps == 10 and type(q.total_steps) is int


# -- non-finite values inside a training run: train.nan_policy decides ------------------------

class _Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 32):
        self.x = torch.randn(n, 4, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i]}


class _OneLayer(nn.Module):
    """A linear map into one EMA, data-initialised VQ layer; the quantizer's input is NaN at
    ``nan_steps`` (0-based), as when an encoder overflows or a batch holds NaN."""

    def __init__(self, quantizer: nn.Module, nan_steps=()):
        super().__init__()
        self.lin, self.q, self.nan_steps = nn.Linear(4, 4), quantizer, set(nan_steps)

    def forward(self, x: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        z = self.lin(x)
        if int(step) in self.nan_steps:
            z = z * float("nan")
        out = self.q(z[:, None, :])  # (B, N=1, D)
        return {"loss": (out.z_q[:, 0] - x).pow(2).mean() + out.loss}


def _vq_layer(toolkit: bool) -> nn.Module:
    cfg = QuantizerConfig(kind="vq", ema=True, data_init=True, restart_threshold=0.1)
    return build_quantizer(8, 4, cfg) if toolkit else VectorQuantizer(4, 8, cfg)


def _train(tmp_path, model, policy: str, steps: int = 5):
    from engine.train_config import TrainConfig
    from engine.trainer import train

    tc = TrainConfig(steps=steps, batch_size=4, lr=0.05, progress=False, log_every=1, ckpt_every=0,
                     nan_policy=policy)
    return train(model=model, dataset=_Points(), cfg=tc, run_dir=tmp_path / "run", config={})


@pytest.mark.parametrize("first", [True, False], ids=["nan-in-the-first-step", "nan-in-step-3"])
def test_a_nan_inside_a_toolkit_model_is_left_to_the_nan_policy(tmp_path, first):
    """The toolkit's models build their quantizers with check_finite='eval': a NaN that
    reaches a quantizer in training is not refused there (no host sync per step), it reaches
    the loss, and train.nan_policy handles it as documented: 'skip' withholds the step (the
    codebook stays finite, a withheld data-initialising step is seeded again), 'stop' stops
    naming the step. Evaluation calls, which no policy covers, refuse it."""
    from engine.trainer import NonFiniteLossError

    bad = 0 if first else 2
    torch.manual_seed(0)
    model = _OneLayer(_vq_layer(toolkit=True), nan_steps=(bad,))
    assert model.q.check_finite == "eval"
    with pytest.warns(UserWarning, match=rf"step {bad + 1}; step skipped"):
        result = _train(tmp_path / "skip", model, "skip")
    assert result.nonfinite_steps_skipped == 1 and result.step == 5
    assert bool(model.q.initialised)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    torch.manual_seed(0)
    with pytest.raises(NonFiniteLossError, match=rf"at step {bad + 1}\b"):
        _train(tmp_path / "stop", _OneLayer(_vq_layer(toolkit=True), nan_steps=(bad,)), "stop")
    with pytest.raises(NonFiniteInputError, match="^VectorQuantizer: the input holds 4 non-finite"):
        model.q.eval()(torch.full((1, 1, 4), float("nan")))


def test_a_quantizer_of_ones_own_refuses_a_nan_even_under_the_trainer(tmp_path):
    """A quantizer built directly keeps check_finite='always': under the trainer too, a NaN
    input stops the run with NonFiniteInputError naming the quantizer (nan_policy=skip does
    not skip it: the step never produced a loss). check_finite='eval' hands it to the policy."""
    torch.manual_seed(0)
    with pytest.raises(NonFiniteInputError, match=r"^VectorQuantizer: the input holds 16 non-finite values \(16 NaN, 0 inf\) of 16;"):
        _train(tmp_path / "always", _OneLayer(_vq_layer(toolkit=False), nan_steps=(2,)), "skip")
    torch.manual_seed(0)
    q = _vq_layer(toolkit=False)
    q.check_finite = "eval"
    with pytest.warns(UserWarning, match="step 3; step skipped"):
        assert _train(tmp_path / "eval", _OneLayer(q, nan_steps=(2,)), "skip").nonfinite_steps_skipped == 1


@pytest.mark.parametrize("make", ALL)
def test_the_host_check_is_one_read_per_call_and_none_in_toolkit_training(make, monkeypatch):
    """The cost of the check: one host read per call of a quantizer of one's own, whatever
    its depth; none in a training call of the toolkit's models (check_finite='eval'), which
    keeps nan_policy='stop' free of per-step syncs."""
    q = make().train()
    x = torch.randn(2, 4, 3, 3)
    q(x)  # the data initialisation reads its flag on the host until it is seen set
    q(x)
    reads = []
    real = torch.Tensor.__bool__

    def counting(self):
        reads.append(1)
        return real(self)

    monkeypatch.setattr(torch.Tensor, "__bool__", counting)
    q(x)
    assert len(reads) == 1
    reads.clear()
    q.check_finite = "eval"
    q(x)
    assert reads == []
