"""train.compile / train.channels_last: plumbing, checkpoint keys, reload, same losses.

The real torch.compile takes ~30-60 s on a 2-core CPU, so here torch.compile is replaced by
a wrapper that records the call and returns an identity-forwarding module: what is tested is
that the trainer calls through the wrapper while saving the plain module's weights. The
compiled speed (and compiled numerics) are measured by bench/tokenizer_speed.py."""

import pytest
import torch
from safetensors.torch import load_file
from test_train import cfg_for, train_losses

from engine.checkpoint import list_checkpoints
from engine.config import ConfigError
from tokenizer.config import load_tokenizer_config
from tokenizer.pretrained import Tokenizer
from tokenizer.train import train_tokenizer


class _Wrapped(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule (it too holds the model as _orig_mod)."""

    def __init__(self, mod):
        super().__init__()
        self._orig_mod = mod
        self.steps = []

    def forward(self, *args, **kwargs):
        self.steps.append((torch.is_tensor(kwargs["step"]), int(kwargs["step"])))
        return self._orig_mod(*args, **kwargs)


def test_options_default_off_and_type_checked(tmp_path):
    cfg = cfg_for(tmp_path, "vqvae")
    assert cfg.train.compile is False and cfg.train.channels_last is False
    with pytest.raises(ConfigError, match="train.compile"):
        cfg_for(tmp_path, "vqvae", "train.compile=maybe")
    with pytest.raises(ConfigError, match="train.channels_last"):
        cfg_for(tmp_path, "vqvae", "train.channels_last=3")
    with pytest.raises(ConfigError, match="compile_mode.*needs compile=true"):
        cfg_for(tmp_path, "vqvae", "train.compile_mode=reduce-overhead")
    with pytest.raises(ConfigError, match="compile_mode"):
        cfg_for(tmp_path, "vqvae", "train.compile=true", "train.compile_mode=fast")


@pytest.mark.parametrize("preset", ["vqvae", "sqvae2"])
def test_compile_and_channels_last_save_plain_keys_and_match_eager(tmp_path, monkeypatch, preset):
    train_tokenizer(cfg_for(tmp_path / "eager", preset, "train.steps=3"))
    ref = train_losses(tmp_path / "eager" / "run")
    wrapped = []

    def fake_compile(mod, *args, mode="default", **kwargs):
        assert mode == "max-autotune"
        wrapped.append(_Wrapped(mod))
        return wrapped[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    fast = cfg_for(tmp_path / "fast", preset, "train.steps=3", "train.compile=true",
                   "train.compile_mode=max-autotune", "train.channels_last=true")
    train_tokenizer(fast)
    # the step arrives as a tensor (an int would be a graph constant: a recompile per step)
    assert len(wrapped) == 1 and wrapped[0].steps == [(True, 0), (True, 1), (True, 2)]
    run = tmp_path / "fast" / "run"
    losses = train_losses(run)
    for step in (1, 2, 3):  # channels_last only reorders float sums
        assert losses[step] == pytest.approx(ref[step], rel=1e-3), step
    eager_keys = set(load_file(str(tmp_path / "eager" / "run" / "model.safetensors")))
    for path in (run / "model.safetensors", list_checkpoints(run)[-1] / "model.safetensors"):
        keys = set(load_file(str(path)))
        assert keys == eager_keys and not any("_orig_mod" in k for k in keys)
    tok = Tokenizer.from_pretrained(run)  # reloads into a plain model
    assert all(p.is_contiguous() for p in tok.model.parameters())
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    assert tok.decode_codes(tok.encode(x)).shape == x.shape


def test_plain_run_resumes_with_the_options_on_and_continues_the_same_losses(tmp_path, monkeypatch):
    """Checkpoints written without the options resume with them (and the losses carry on as
    an uninterrupted plain run's would): the options live in `train`, which may change."""
    base = ("train.steps=4", "train.ckpt_every=2", "train.log_every=1")
    train_tokenizer(cfg_for(tmp_path / "ref", "vqvae2", *base))
    ref = train_losses(tmp_path / "ref" / "run")
    train_tokenizer(cfg_for(tmp_path / "split", "vqvae2", "train.steps=2", *base[1:]))
    monkeypatch.setattr(torch, "compile", lambda mod, *a, mode="default", **k: _Wrapped(mod))
    train_tokenizer(cfg_for(tmp_path / "split", "vqvae2", *base, "train.compile=true",
                            "train.channels_last=true"))
    losses = train_losses(tmp_path / "split" / "run")
    assert sorted(losses) == [1, 2, 3, 4]
    for step in (3, 4):
        assert losses[step] == pytest.approx(ref[step], rel=1e-3), step


VQGAN = ["model.net=vqgan", "model.net_options.base_channels=8", "model.net_options.norm_groups=4",
         "model.net_options.num_res_blocks=1"]


@pytest.mark.parametrize("preset, net", [
    *[(p, "conv") for p in ("vqvae", "sqvae", "vqvae2", "sqvae2", "rqvae", "rsqvae", "hqvae")],
    ("sqvae2", "vqgan"), ("rqvae", "vqgan"), ("sqvae2", "vqgan+checkpointing")])
def test_training_forward_traces_as_one_graph(preset, net):
    """No graph breaks in any preset's training forward, on either network, with gradient
    checkpointing too (a break is a host round trip and splits the compiled step; SQ's code
    histogram once broke it with bincount). Tracing only."""
    import torch._dynamo

    cfg = load_tokenizer_config(None, [f"model.preset={preset}", "model.channels=16", "model.res_blocks=1",
                                       "model.res_channels=8", "model.depth=2",
                                       "model.quantizer.restart_threshold=0.01"
                                       if preset in ("vqvae", "vqvae2", "rqvae") else "model.quantizer.tau_min=0.5",
                                       *(VQGAN if net != "conv" else [])])
    model = Tokenizer.from_config(cfg).model.train()
    model.set_gradient_checkpointing(net.endswith("checkpointing"))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.rand(2, 3, 32, 32) * 2 - 1, step=torch.tensor(3))
    assert explained.graph_break_count == 0, [r.reason[:200] for r in explained.break_reasons]


@pytest.mark.parametrize("step, parallel", [(1, False), (1, True), (3, False)],
                         ids=["before-start", "before-start-data-parallel", "game-on"])
def test_the_adversarial_objective_traces_as_one_graph_without_the_adaptive_weight(step, parallel, monkeypatch):
    """The game starts at start_step without reading the (device tensor) step on the host:
    the trainer tells the objective the step first (set_step). Data-parallel passes before
    the start (on copies of the discriminator's buffers) trace too. The adaptive weight's
    autograd.grad is a graph break of its own, so it is off here."""
    import torch._dynamo

    import tokenizer.losses.objective as objective_module
    from tokenizer.losses import TokenizerObjective
    from tokenizer.model import HQVAE

    monkeypatch.setattr(objective_module, "_data_parallel", lambda: parallel)

    cfg = load_tokenizer_config(None, [
        "model.preset=sqvae2", "model.channels=16", "model.quantizer.tau_min=0.5", *VQGAN,
        "loss.adversarial.weight=0.5", "loss.adversarial.channels=8", "loss.adversarial.layers=2",
        "loss.adversarial.start_step=2", "loss.adversarial.adaptive_weight=false"])
    obj = TokenizerObjective(HQVAE(cfg.model, cfg.data.shape), cfg.loss, 3).train()
    obj.set_step(step)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(obj)(torch.rand(2, 3, 32, 32) * 2 - 1, step=torch.tensor(step))
    assert explained.graph_break_count == 0, [r.reason[:200] for r in explained.break_reasons]


def test_a_compiled_adversarial_run_learns_each_step_on_the_host(tmp_path, monkeypatch):
    """Under train.compile the objective is handed the step as a tensor and told it on the
    host before each forward; the game's terms appear from start_step on, as eagerly."""
    import json

    from tokenizer.losses import TokenizerObjective

    told = []
    set_step = TokenizerObjective.set_step
    monkeypatch.setattr(TokenizerObjective, "set_step", lambda self, step: (told.append(step), set_step(self, step)))
    monkeypatch.setattr(torch, "compile", lambda mod, *a, mode="default", **k: _Wrapped(mod))
    adv = ("loss.adversarial.weight=0.5", "loss.adversarial.start_step=2", "loss.adversarial.channels=8",
           "loss.adversarial.layers=2")
    train_tokenizer(cfg_for(tmp_path, "vqvae", "train.steps=3", "train.compile=true", *adv))
    assert told == [0, 1, 2]
    rows = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["split"] == "train" and "adv/generator" in r] == [3]


@pytest.mark.parametrize("classes", [3, 0])
def test_prior_training_forward_traces_as_one_graph(classes, make_prior, make_tokenizer):
    """The prior's training step (label dropout included) has no graph break: the label range
    check, a host sync, runs once on the training data instead (prior/train.py)."""
    import torch._dynamo

    from prior.codes import level_column

    tok = make_tokenizer()
    prior = make_prior(tok, classes, "label_dropout=0.2")
    for level, model in prior.levels.items():
        model.train()
        batch = {level_column(j): torch.randint(0, tok.codebook_sizes[j], (4, h * w))
                 for j, (h, w) in enumerate(tok.code_shapes[: level + 1])}
        if classes:
            batch["label"] = torch.tensor([0, 1, 2, 0])
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(batch)
        assert explained.graph_break_count == 0, [r.reason[:200] for r in explained.break_reasons]
