"""Stage two on CPU: level priors (causality, conditioning, labels), code extraction,
`train-prior` end to end (save/load, resume, identity checks, config errors, CLI)."""

import dataclasses
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_recomputed_with_same_gradients
from torch.utils.data import Dataset

import prior.train as prior_train
from engine.checkpoint import list_checkpoints
from engine.config import ConfigError
from hqvae.cli import main
from prior.codes import CodesDataset, IdentityError, encode_split, level_column, read_manifest
from prior.config import LevelModelConfig, load_prior_config
from prior.model import LevelPrior, sequence_order
from prior.pretrained import Prior, evaluate_level
from prior.train import train_prior
from tokenizer.config import load_tokenizer_config
from tokenizer.data import build_dataset
from tokenizer.pretrained import Tokenizer
from tokenizer.train import train_tokenizer

# the TINY tokenizer of tests/test_train.py at 16x16 with small codebooks: codes 2x2 (K=16)
# over 4x4 (K=32), an injected hierarchy
TINY_TOK = ["model.preset=vqvae2", "data.image_size=16", "model.layers.0.codebook_size=16",
            "model.layers.1.codebook_size=32", "model.channels=16", "model.res_channels=8",
            "model.res_blocks=1", "data.num_train=64", "data.num_eval=16", "train.batch_size=8",
            "train.progress=false", "train.log_every=1", "eval.max_examples=16",
            "eval.batch_size=8", "eval.grid_size=4", "train.steps=5"]
TINY_PRIOR = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.cond_channels=16",
              "model.cond_blocks=1", "train.batch_size=8", "train.log_every=1",
              "train.lr=1e-3", "train.schedule=constant", "train.warmup_steps=2",
              "train.progress=false", "eval.max_examples=16", "eval.batch_size=8"]


def small(**kw) -> LevelModelConfig:
    base = dict(n_layer=2, n_embd=32, n_head=2, cond_channels=16, cond_blocks=1, dropout=0.0)
    return LevelModelConfig(**{**base, **kw})


def prior_cfg(codes, run_dir, *extra):
    return load_prior_config(None, [f"data.codes={codes}", f"run_dir={run_dir}", *TINY_PRIOR, *extra])


def train_losses(level_dir):
    lines = [json.loads(s) for s in (level_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def random_batch(model: LevelPrior, shapes, sizes, batch=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(sizes[model.level], (batch, model.length), generator=g)
    upper = [torch.randint(sizes[j], (batch, h * w), generator=g)
             for j, (h, w) in enumerate(shapes[: model.level])]
    return codes, upper


# -- fixtures: one tiny tokenizer, its codes, a second tokenizer, one trained prior ---------

@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage1")
    train_tokenizer(load_tokenizer_config(None, [f"run_dir={root / 'tok'}", *TINY_TOK]))
    tok = Tokenizer.from_pretrained(root / "tok")
    for split in ("train", "test"):
        encode_split(tok, build_dataset(tok.config.data, split), root / "codes", split,
                     batch_size=16, progress=False)
    # another tokenizer: the same config with perturbed weights, hence another identity
    other = Tokenizer.from_pretrained(root / "tok")
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    other.save_pretrained(root / "tok_b")
    other = Tokenizer.from_pretrained(root / "tok_b")
    encode_split(other, build_dataset(other.config.data, "train"), root / "codes_b", "train",
                 max_examples=16, progress=False)
    encode_split(other, build_dataset(other.config.data, "test"), root / "codes_b", "test",
                 max_examples=16, progress=False)
    return {"root": root, "tok": tok, "tok_dir": root / "tok", "codes": root / "codes",
            "tok_b": other, "tok_b_dir": root / "tok_b", "codes_b": root / "codes_b"}


@pytest.fixture(scope="module")
def trained(stage1, tmp_path_factory):
    """A class-conditional 2-level prior trained 6 steps; the in-memory models are kept by
    wrapping `save_level`, which `train_prior` calls with the trained model."""
    run = tmp_path_factory.mktemp("prior") / "run"
    cfg = prior_cfg(stage1["codes"], run, "class_cond=true", "train.steps=6",
                    "model.dropout=0.1", "label_dropout=0.2")
    models = {}
    real = prior_train.save_level

    def keep(model, *args, **kwargs):
        models[model.level] = model
        return real(model, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(prior_train, "save_level", keep)
        results = train_prior(cfg)
    return {"run": run, "cfg": cfg, "results": results, "models": models}


# -- causality --------------------------------------------------------------------------

def test_sequence_order_and_grid_round_trip():
    assert sequence_order((2, 3), "raster").tolist() == [0, 1, 2, 3, 4, 5]
    # column order: one column (time frame) after another, top to bottom
    assert sequence_order((2, 3), "column").tolist() == [0, 3, 1, 4, 2, 5]
    model = LevelPrior(small(order="column"), 0, [(2, 3)], [7])
    grid = torch.arange(12).view(2, 6)
    assert torch.equal(model.to_sequence(grid), grid[:, [0, 3, 1, 4, 2, 5]])
    assert torch.equal(model.to_grid(model.to_sequence(grid)), grid)
    with pytest.raises(ValueError, match="order"):
        sequence_order((2, 3), "diagonal")


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("order", ["raster", "column"])
@pytest.mark.parametrize("level", [0, 1])
def test_logits_are_causal_in_sequence_order(arch, order, level):
    # non-square grids, so a raster/column mix-up cannot hide; default dropout, in eval mode
    shapes, sizes = [(2, 3), (3, 4)], [5, 11]
    torch.manual_seed(0)
    model = LevelPrior(small(arch=arch, order=order, dropout=0.1), level, shapes, sizes,
                       num_classes=3).eval()
    codes, upper = random_batch(model, shapes, sizes)
    labels = torch.tensor([0, 1, 3])
    seq = model.to_sequence(codes)
    n = model.length
    with torch.no_grad():
        base = model.logits(codes, upper, labels)
        assert base.shape == (3, n, sizes[level])
        assert torch.equal(base, model.logits(codes, upper, labels))  # no dropout in eval
        for i in range(n - 1):
            changed = seq.clone()
            changed[:, i + 1:] = (changed[:, i + 1:] + 1 + torch.arange(n - i - 1)) % sizes[level]
            out = model.logits(model.to_grid(changed), upper, labels)
            # position j predicts token j from tokens < j: tokens > i reach no position <= i + 1
            torch.testing.assert_close(out[:, : i + 2], base[:, : i + 2], rtol=0, atol=1e-6,
                                       msg=f"position <= {i + 1} saw a token after {i}")
            if i + 2 < n:  # ... and the token at i + 1 is used by position i + 2
                assert (out[:, i + 2] - base[:, i + 2]).abs().max() > 1e-4, i


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_gradient_checkpointing_recomputes_the_layers_and_gives_the_same_gradients(arch):
    shapes, sizes = [(2, 3), (3, 4)], [5, 11]
    torch.manual_seed(0)
    plain = LevelPrior(small(arch=arch, dropout=0.0), 1, shapes, sizes).train()
    codes, upper = random_batch(plain, shapes, sizes)
    # the MLP inside each layer: a hook on the layer itself sees only its outer call
    assert_recomputed_with_same_gradients(
        plain, lambda model: model({level_column(1): codes, level_column(0): upper[0]})["loss"].backward(),
        ("GPT2MLP", "LlamaMLP"))


def test_forward_loss_is_next_token_cross_entropy_in_sequence_order():
    shapes, sizes = [(2, 3), (3, 4)], [5, 11]
    model = LevelPrior(small(order="column"), 1, shapes, sizes).eval()
    codes, upper = random_batch(model, shapes, sizes)
    with torch.no_grad():
        logits = model.logits(codes, upper)
        out = model({"level_0": upper[0], "level_1": codes})
    expected = F.cross_entropy(logits.reshape(-1, 11), model.to_sequence(codes).reshape(-1))
    torch.testing.assert_close(out["loss"], expected)
    torch.testing.assert_close(out["bits_per_token"], expected / math.log(2))


# -- conditioning on the upper levels ----------------------------------------------------

@pytest.mark.parametrize("order", ["raster", "column"])
@pytest.mark.parametrize("style, shapes", [
    ("injected", [(2, 2), (4, 4)]),
    ("residual", [(4, 4), (4, 4)]),
])
def test_upper_codes_condition_the_level(style, shapes, order):
    sizes = [6, 9]
    torch.manual_seed(1)
    model = LevelPrior(small(order=order), 1, shapes, sizes).eval()
    codes, upper = random_batch(model, shapes, sizes)
    (uh, uw), (h, w) = shapes
    rank = {int(g): s for s, g in enumerate(model.order)}  # raster index -> sequence position
    with torch.no_grad():
        base = model.logits(codes, upper)
        # every upper code changed: every position changes, position 0 included
        diff = (model.logits(codes, [(upper[0] + 1) % sizes[0]]) - base).abs().amax(-1)
        assert (diff > 1e-5).all(), style
        for cell in range(uh * uw):
            other = upper[0].clone()
            other[:, cell] = (other[:, cell] + 1) % sizes[0]
            diff = (model.logits(codes, [other]) - base).abs().amax(-1)  # (B, N)
            r, c = divmod(cell, uw)
            under = [(r * h // uh + a) * w + c * w // uw + b
                     for a in range(h // uh) for b in range(w // uw)]
            # the conditioning under the changed cell changed: so do the logits there
            first = min(rank[g] for g in under)
            assert (diff[:, first] > 1e-5).all(), (style, cell, first)
            if cell == 0:  # the cell over the first code of either order
                assert first == 0
    with pytest.raises(ValueError, match="upper levels"):
        model.logits(codes, [])


@pytest.mark.parametrize("order", ["raster", "column"])
@pytest.mark.parametrize("style, shapes", [
    ("injected", [(2, 2), (4, 4)]),
    ("residual", [(4, 4), (4, 4)]),
])
def test_conditioning_is_aligned_with_the_code_it_predicts(style, shapes, order):
    """With no conv blocks the conditioning is local: an upper cell reaches only the lower
    cells under it, so the first sequence position whose logits change is the first such
    cell in this level's order (an off-by-one or raster/column mix-up moves it)."""
    sizes = [6, 9]
    torch.manual_seed(2)
    model = LevelPrior(small(order=order, cond_blocks=0), 1, shapes, sizes).eval()
    codes, upper = random_batch(model, shapes, sizes)
    (uh, uw), (h, w) = shapes
    rank = {int(g): s for s, g in enumerate(model.order)}  # raster index -> sequence position
    with torch.no_grad():
        base = model.logits(codes, upper)
        for cell in range(uh * uw):
            other = upper[0].clone()
            other[:, cell] = (other[:, cell] + 1) % sizes[0]
            diff = (model.logits(codes, [other]) - base).abs().amax(-1)
            r, c = divmod(cell, uw)
            fh, fw = h // uh, w // uw
            under = [(r * fh + a) * w + (c * fw + b) for a in range(fh) for b in range(fw)]
            first = min(rank[g] for g in under)
            assert (diff[:, :first] == 0).all(), (style, cell, first)
            assert (diff[:, first] > 1e-5).all(), (style, cell, first)


# -- labels ----------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_top_level_sees_the_label_everywhere(arch):
    shapes, sizes = [(3, 3)], [8]
    torch.manual_seed(3)
    model = LevelPrior(small(arch=arch), 0, shapes, sizes, num_classes=4).eval()
    assert model.class_conditional and model.null_label == 4
    codes, _ = random_batch(model, shapes, sizes, batch=2)
    with torch.no_grad():
        a = model.logits(codes, [], torch.tensor([0, 1]))
        b = model.logits(codes, [], torch.tensor([2, 3]))
        null = model.logits(codes, [], torch.full((2,), model.null_label))
    assert ((a - b).abs().amax(-1) > 1e-5).all()  # every position, position 0 included
    assert ((a - null).abs().amax(-1) > 1e-5).all()
    for bad in (5, -1):
        with pytest.raises(ValueError, match=rf"label {bad} is out of range.*0\.\.3"):
            model.logits(codes, [], torch.tensor([0, bad]))
    with pytest.raises(ValueError, match="class-conditional.*labels"):
        model.logits(codes, [])


def test_label_every_position_adds_the_class_embedding_to_every_input(stage1, tmp_path):
    shapes, sizes = [(2, 2), (3, 3)], [8, 8]
    torch.manual_seed(0)
    for level in (0, 1):
        plain = LevelPrior(small(), level, shapes, sizes, num_classes=4).eval()
        every = LevelPrior(small(), level, shapes, sizes, num_classes=4, label_every_position=True).eval()
        every.load_state_dict(plain.state_dict())
        upper = [torch.randint(8, (2, 4))] if level else []
        labels = torch.tensor([1, 3])
        with torch.no_grad():
            start, cond = plain.condition(upper, labels, 2)
            start_e, cond_e = every.condition(upper, labels, 2)
        emb = plain.class_emb(labels)[:, None].detach()
        torch.testing.assert_close(start_e, start)
        base = torch.zeros_like(cond_e) if cond is None else cond  # level 0: no upper levels
        torch.testing.assert_close(cond_e, base + emb.expand(-1, every.length, -1))
    with pytest.raises(ValueError, match="label_every_position.*class-conditional"):
        LevelPrior(small(), 0, shapes, sizes, label_every_position=True)
    with pytest.raises(ConfigError, match="label_every_position: needs class_cond=true"):
        prior_cfg(stage1["codes"], tmp_path / "x", "label_every_position=true")
    # trained, saved and loaded with the option; a stock causal LM cannot express it
    cfg = prior_cfg(stage1["codes"], tmp_path / "run", "class_cond=true", "label_every_position=true",
                    "train.steps=2")
    train_prior(cfg, levels=[0])
    loaded = Prior.from_pretrained(tmp_path / "run", levels=[0])
    assert loaded.levels[0].label_every_position
    from prior.stock import stock_causal_lm
    with pytest.raises(ValueError, match="label_every_position"):
        stock_causal_lm(loaded.levels[0])


def test_unconditional_prior_has_no_null_label_and_ignores_labels():
    model = LevelPrior(small(), 0, [(2, 2)], [8]).eval()
    assert not model.class_conditional
    with pytest.raises(ValueError, match="not class-conditional"):
        _ = model.null_label
    codes = torch.randint(8, (2, 4))
    with torch.no_grad():
        assert torch.equal(model.logits(codes, []), model.logits(codes, [], torch.tensor([0, 7])))


# -- label dropout -------------------------------------------------------------------------

def _head_outputs(model, batch):
    seen = []
    hook = model.head.register_forward_hook(lambda mod, inp, out: seen.append(out.detach()))
    try:
        with torch.no_grad():
            model(batch)
    finally:
        hook.remove()
    return seen[0]


@pytest.mark.parametrize("level", [0, 1])
def test_label_dropout_in_training_only(level):
    shapes, sizes = [(2, 2), (4, 4)], [6, 9]
    torch.manual_seed(4)
    codes, upper = random_batch(LevelPrior(small(), level, shapes, sizes), shapes, sizes, batch=32)
    labels = torch.arange(32) % 3
    batch = {f"level_{j}": u for j, u in enumerate(upper)}
    batch.update({f"level_{level}": codes, "label": labels})
    null = torch.full_like(labels, 3)
    for p in (1.0, 1 - 1e-6):
        model = LevelPrior(small(), level, shapes, sizes, num_classes=3, label_dropout=p)
        with torch.no_grad():
            with_labels = model.logits(codes, upper, labels)
            unconditional = model.logits(codes, upper, null)
        assert not torch.equal(with_labels, unconditional)
        model.train()  # dropout=0.0: the labels are the only random thing
        torch.testing.assert_close(_head_outputs(model, batch), unconditional, rtol=0, atol=0)
        model.eval()  # never dropped in eval
        torch.testing.assert_close(_head_outputs(model, batch), with_labels, rtol=0, atol=0)
    # p = 0.5: each example sees either its label or the null one, and both happen
    model = LevelPrior(small(), level, shapes, sizes, num_classes=3, label_dropout=0.5).train()
    with torch.no_grad():
        with_labels = model.logits(codes, upper, labels)
        unconditional = model.logits(codes, upper, null)
    torch.manual_seed(5)
    out = _head_outputs(model, batch)
    kept = [torch.equal(out[i], with_labels[i]) for i in range(32)]
    dropped = [torch.equal(out[i], unconditional[i]) for i in range(32)]
    assert all(k != d for k, d in zip(kept, dropped))
    assert 4 <= sum(dropped) <= 28


# -- learning -----------------------------------------------------------------------------

K0, K1 = 8, 16


def structured_codes(n: int, seed: int) -> list[dict]:
    """Level 0 (2x2, K=8): one free token, the rest a function of it and the label: 0.75
    bits/token given the label, ~1.15 without it. Level 1 (4x4, K=16): a function of the
    upper code above it and of the position: 0 bits/token given level 0, 0.375 without it
    (the first code under each upper code of a row is then a guess among 8)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(3, (n,), generator=g)
    first = torch.randint(K0, (n,), generator=g)
    top = torch.stack([first, (first + labels + 1) % K0, (first * 3 + labels) % K0,
                       (2 * labels + 5) % K0], 1)
    grid = top.view(n, 2, 2).repeat_interleave(2, 1).repeat_interleave(2, 2)  # (n, 4, 4)
    rows, cols = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="ij")
    bottom = (2 * grid + (rows + cols) % 2).flatten(1) % K1
    return [{"level_0": top[i], "level_1": bottom[i], "label": labels[i]} for i in range(n)]


@pytest.mark.parametrize("level", [0, 1])
def test_loss_falls_well_below_uniform_on_structured_codes(level):
    shapes = [(2, 2), (4, 4)]
    train_rows, held_out = structured_codes(512, seed=0), structured_codes(128, seed=1)
    torch.manual_seed(0)
    model = LevelPrior(LevelModelConfig(n_layer=2, n_embd=64, n_head=4, cond_channels=16,
                                        cond_blocks=1, dropout=0.0),
                       level, shapes, [K0, K1], num_classes=3, label_dropout=0.0)
    before = evaluate_level(model, held_out, batch_size=64)
    assert before["uniform_bits"] == math.log2([K0, K1][level])
    assert before["bits_per_token"] > 0.8 * before["uniform_bits"]  # untrained: near uniform
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(250):
        idx = torch.randint(len(train_rows), (64,), generator=g).tolist()
        batch = {k: torch.stack([train_rows[i][k] for i in idx]) for k in train_rows[0]}
        loss = model(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate_level(model, held_out, batch_size=64)
    assert model.training  # evaluate_level restores the mode
    assert after["examples"] == 128
    assert after["bits_per_token"] < 0.5 * after["uniform_bits"], after
    # below what is reachable without the label (level 0) / the upper codes (level 1)
    assert after["bits_per_token"] < [0.95, 0.2][level], after


# -- pipeline: codes ----------------------------------------------------------------------------

def test_codes_manifest_and_dataset(stage1):
    tok, codes = stage1["tok"], stage1["codes"]
    manifest = read_manifest(codes)
    assert manifest["tokenizer_identity"] == tok.identity
    assert manifest["code_shapes"] == [[2, 2], [4, 4]] and manifest["codebook_sizes"] == [16, 32]
    assert manifest["layer_kinds"] == ["injected", "injected"]
    assert manifest["num_classes"] == 5
    assert manifest["class_names"] == ["circle", "square", "triangle", "ring", "cross"]
    assert manifest["splits"]["train"]["num_examples"] == 64
    assert manifest["splits"]["test"]["num_examples"] == 16
    assert manifest["splits"]["train"]["has_label"] is True

    ds = CodesDataset(codes, "train")
    assert len(ds) == 64 and ds.num_classes == 5 and ds.has_label
    item = ds[7]
    assert set(item) == {"level_0", "level_1", "label"}
    assert item["level_0"].dtype == torch.long and item["level_0"].shape == (4,)
    assert item["level_1"].dtype == torch.long and item["level_1"].shape == (16,)
    assert int(item["label"]) == 7 % 5  # shapes: label = index % 5
    assert int(item["level_0"].max()) < 16 and int(item["level_1"].max()) < 32
    # codes == the tokenizer's codes, raster-flattened
    data = build_dataset(tok.config.data, "train")
    x = torch.stack([data[i]["x"] for i in range(10)])
    expected = tok.encode(x)
    rows = ds.__getitems__(list(range(10)))
    for lv in (0, 1):
        assert torch.equal(torch.stack([r[f"level_{lv}"] for r in rows]), expected[lv].flatten(1))
    assert [int(r["label"]) for r in rows] == [i % 5 for i in range(10)]

    top = CodesDataset(codes, "test", levels=[0])
    assert len(top) == 16 and set(top[0]) == {"level_0", "label"}
    with pytest.raises(ValueError, match="level 2"):
        CodesDataset(codes, "test", levels=[2])
    with pytest.raises(FileNotFoundError, match="'validation' has not been encoded.*test, train"):
        CodesDataset(codes, "validation")
    with pytest.raises(FileNotFoundError, match="codes.json"):
        CodesDataset(stage1["root"], "train")


def test_encode_is_deterministic_and_keeps_existing_splits(stage1, tmp_path):
    tok = stage1["tok"]
    data = build_dataset(tok.config.data, "test")
    for name in ("a", "b"):
        encode_split(tok, data, tmp_path / name, "test", batch_size=5, progress=False)
    a, b = CodesDataset(tmp_path / "a", "test"), CodesDataset(tmp_path / "b", "test")
    ref = CodesDataset(stage1["codes"], "test")  # batch size 16 there
    for i in range(16):
        for k in ("level_0", "level_1", "label"):
            assert torch.equal(a[i][k], b[i][k]) and torch.equal(a[i][k], ref[i][k]), (i, k)
    # a split already encoded by the same tokenizer is kept, unless overwrite
    entry = encode_split(tok, data, tmp_path / "a", "test", max_examples=4, progress=False)
    assert entry["num_examples"] == 16 and len(CodesDataset(tmp_path / "a", "test")) == 16
    entry = encode_split(tok, data, tmp_path / "a", "test", max_examples=4, overwrite=True,
                         progress=False)
    assert entry["num_examples"] == 4 and len(CodesDataset(tmp_path / "a", "test")) == 4
    assert not list(tmp_path.glob("a/.tmp-*")) and not list(tmp_path.glob("a/.cache-*"))


class Unlabelled(Dataset):
    """A dataset without labels, the way HFDataset reports one (label_column None)."""

    label_column = None

    def __init__(self, inner):
        self.inner = inner

    def __len__(self):
        return len(self.inner)

    def __getitem__(self, i):
        return {"x": self.inner[i]["x"]}


@pytest.fixture(scope="module")
def unlabelled_codes(stage1, tmp_path_factory):
    tok, out = stage1["tok"], tmp_path_factory.mktemp("unlabelled") / "codes"
    for split in ("train", "test"):
        encode_split(tok, Unlabelled(build_dataset(tok.config.data, split)), out, split,
                     max_examples=16, progress=False)
    return out


def test_unlabelled_codes(unlabelled_codes):
    manifest = read_manifest(unlabelled_codes)
    assert manifest["num_classes"] is None and manifest["class_names"] is None
    assert manifest["splits"]["train"]["has_label"] is False
    ds = CodesDataset(unlabelled_codes, "train")
    assert not ds.has_label and set(ds[0]) == {"level_0", "level_1"}


# -- pipeline: train-prior ------------------------------------------------------------------

def test_train_prior_writes_run(stage1, trained):
    run, results = trained["run"], trained["results"]
    for name in ("config.yaml", "prior.json", "eval.json", "level_0/model.safetensors",
                 "level_1/model.safetensors", "level_0/eval.json", "level_1/metrics.jsonl"):
        assert (run / name).exists(), name
    info = json.loads((run / "prior.json").read_text())
    assert info["tokenizer_identity"] == stage1["tok"].identity
    assert info["num_classes"] == 5 and info["code_shapes"] == [[2, 2], [4, 4]]
    summary = json.loads((run / "eval.json").read_text())
    assert summary["tokenizer_identity"] == stage1["tok"].identity
    assert sorted(summary["levels"]) == ["0", "1"]
    for level, k in ((0, 16), (1, 32)):
        m = summary["levels"][str(level)]
        assert m["uniform_bits"] == math.log2(k) and m["codebook_size"] == k
        assert 0 < m["bits_per_token"] < 2 * math.log2(k)
        assert m["examples"] == 16 and m["steps"] == 6 and m["resumed_from"] == 0
        assert results["levels"][level]["bits_per_token"] == m["bits_per_token"]
        assert [p.name for p in list_checkpoints(run / f"level_{level}")] == ["step_00000006"]
    losses = train_losses(run / "level_0")
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]
    assert losses[6] < losses[1]


def test_from_pretrained_reproduces_trained_logits(stage1, trained):
    prior = Prior.from_pretrained(trained["run"])
    assert prior.tokenizer_identity == stage1["tok"].identity
    assert prior.num_classes == 5 and prior.class_names[0] == "circle"
    assert prior.code_shapes == [(2, 2), (4, 4)] and prior.codebook_sizes == [16, 32]
    batch = CodesDataset(stage1["codes"], "test").__getitems__(list(range(8)))
    batch = {k: torch.stack([r[k] for r in batch]) for k in batch[0]}
    for level in (0, 1):
        live = trained["models"][level].eval()
        loaded = prior.levels[level]
        assert not loaded.training and loaded.cfg == live.cfg
        assert loaded.class_conditional and loaded.null_label == 5 and loaded.level == level
        upper = [batch[f"level_{j}"] for j in range(level)]
        for labels in (batch["label"], torch.full((8,), 5)):
            with torch.no_grad():
                a = live.logits(batch[f"level_{level}"], upper, labels)
                b = loaded.logits(batch[f"level_{level}"], upper, labels)
            assert torch.equal(a, b), level
    only = Prior.from_pretrained(trained["run"], levels=[1])
    assert list(only.levels) == [1]


def test_levels_list_merges_over_model(stage1, tmp_path):
    cfg = prior_cfg(stage1["codes"], tmp_path / "run", "model.n_layer=2",
                    "levels=[{}, {n_layer: 3}]", "train.steps=1")
    assert cfg.level_model(0).n_layer == 2 and cfg.level_model(1).n_layer == 3
    assert cfg.level_model(1).n_embd == 32  # the rest comes from `model`
    results = train_prior(cfg)
    assert sorted(results["levels"]) == [0, 1]
    prior = Prior.from_pretrained(tmp_path / "run")
    assert prior.levels[0].backbone.config.n_layer == 2
    assert prior.levels[1].backbone.config.n_layer == 3


def test_each_level_compiles_its_own_training_step(stage1, tmp_path, monkeypatch):
    """train.compile over levels trained in turn: every level gets a compiled forward, even
    with dynamo's recompile limit at 1 (the levels share LevelPrior.forward; without a reset
    their dead entries add up and past the limit (8) training silently runs eager). dynamo
    with a counting eager backend: the capture is what is under test, not code generation."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode="default": real(fn, backend=counter))
    torch._dynamo.reset()
    with torch._dynamo.config.patch(recompile_limit=1):
        train_prior(prior_cfg(stage1["codes"], tmp_path / "run", "train.steps=2", "train.compile=true"))
    assert counter.frame_count == 2  # level 0, then level 1


DETERMINISTIC = ["model.dropout=0.0", "label_dropout=0.0"]
RANDOM = ["model.dropout=0.1", "label_dropout=0.3"]


@pytest.mark.parametrize("randomness", [
    pytest.param(DETERMINISTIC, id="no-dropout"),
    pytest.param(RANDOM, id="dropout"),
])
def test_resume_continues_with_identical_losses(stage1, tmp_path, randomness):
    # TINY_PRIOR has a constant LR after warmup: a cosine schedule depends on train.steps,
    # so a 4-step run extended to 8 would not be the 8-step run
    extra = ["class_cond=true", *randomness, "train.ckpt_every=2", "train.eval_every=3"]
    train_prior(prior_cfg(stage1["codes"], tmp_path / "ref", "train.steps=8", *extra))
    first = train_prior(prior_cfg(stage1["codes"], tmp_path / "run", "train.steps=4", *extra))
    for level in (0, 1):
        assert first["levels"][level]["steps"] == 4
        assert [p.name for p in list_checkpoints(tmp_path / "run" / f"level_{level}")] == [
            "step_00000002", "step_00000004"]
    resumed = train_prior(prior_cfg(stage1["codes"], tmp_path / "run", "train.steps=8", *extra))
    for level in (0, 1):
        assert resumed["levels"][level]["resumed_from"] == 4
        assert resumed["levels"][level]["steps"] == 8
        ev = json.loads((tmp_path / "run" / f"level_{level}" / "eval.json").read_text())
        assert ev["resumed_from"] == 4 and ev["steps"] == 8
        ref = train_losses(tmp_path / "ref" / f"level_{level}")
        losses = train_losses(tmp_path / "run" / f"level_{level}")
        assert sorted(losses) == list(range(1, 9))
        for step in range(1, 9):
            assert losses[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), (level, step)
    a, b = Prior.from_pretrained(tmp_path / "ref"), Prior.from_pretrained(tmp_path / "run")
    for level in (0, 1):
        for (name, pa), pb in zip(a.levels[level].state_dict().items(),
                                  b.levels[level].state_dict().values()):
            torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)
    summary = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert summary["levels"]["0"]["resumed_from"] == 4


# -- identity ----------------------------------------------------------------------------

def test_encode_refuses_codes_dir_of_another_tokenizer(stage1):
    a, b = stage1["tok"].identity, stage1["tok_b"].identity
    assert a != b
    data = build_dataset(stage1["tok_b"].config.data, "validation")
    with pytest.raises(IdentityError, match=rf"belongs to tokenizer {a}, not to tokenizer {b}"):
        encode_split(stage1["tok_b"], data, stage1["codes"], "validation", max_examples=4,
                     progress=False)
    assert "validation" not in read_manifest(stage1["codes"])["splits"]
    assert not (stage1["codes"] / "validation").exists()


def test_prior_checks_codes_and_tokenizer(stage1, trained):
    prior = Prior.from_pretrained(trained["run"], levels=[0])
    prior.check_codes(stage1["codes"])
    prior.check_tokenizer(stage1["tok"])
    prior.check_tokenizer(Tokenizer.from_pretrained(stage1["tok_dir"]))
    a, b = stage1["tok"].identity, stage1["tok_b"].identity
    with pytest.raises(IdentityError, match=rf"{b}.*{a}"):
        prior.check_codes(stage1["codes_b"])
    with pytest.raises(IdentityError, match=rf"{b}.*{a}"):
        prior.check_tokenizer(stage1["tok_b"])


def test_from_pretrained_refuses_level_of_another_run(stage1, trained, tmp_path):
    run = tmp_path / "mixed"
    shutil.copytree(trained["run"], run)
    info = json.loads((run / "prior.json").read_text())
    info["tokenizer_identity"] = stage1["tok_b"].identity
    (run / "prior.json").write_text(json.dumps(info))
    with pytest.raises(IdentityError, match="another run"):
        Prior.from_pretrained(run)
    with pytest.raises(FileNotFoundError, match="not a prior run"):
        Prior.from_pretrained(tmp_path)


def test_from_pretrained_refuses_a_level_trained_on_another_class_count(trained, tmp_path):
    # e.g. `--level 1` rerun on codes with one class fewer: the sampler's null label (taken
    # from prior.json) would be a real class to the other level
    run = tmp_path / "drift"
    shutil.copytree(trained["run"], run)
    info = json.loads((run / "prior.json").read_text())
    info["num_classes"] = (info["num_classes"] or 0) + 1
    (run / "prior.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"level_0.*num_classes .* differs from .*prior.json.*--level 0"):
        Prior.from_pretrained(run)


def test_train_prior_refuses_codes_of_another_tokenizer(stage1, tmp_path):
    cfg = prior_cfg(stage1["codes"], tmp_path / "run", "train.steps=1",
                    f"tokenizer={stage1['tok_b_dir']}")
    a, b = stage1["tok"].identity, stage1["tok_b"].identity
    with pytest.raises(IdentityError, match=rf"belongs to tokenizer {a}, not to tokenizer {b}"):
        train_prior(cfg)
    assert not (tmp_path / "run").exists()
    # the right tokenizer is accepted
    cfg = prior_cfg(stage1["codes"], tmp_path / "ok", "train.steps=1",
                    f"tokenizer={stage1['tok_dir']}", "data.eval_split=null")
    assert sorted(train_prior(cfg, levels=[0])["levels"]) == [0]


def test_train_prior_refuses_run_dir_of_another_tokenizer(stage1, trained, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(trained["run"] / "prior.json", run / "prior.json")
    shutil.copy(trained["run"] / "config.yaml", run / "config.yaml")
    shutil.copy(trained["run"] / ".hqvae-run.json", run / ".hqvae-run.json")  # a prior run's folder
    cfg = prior_cfg(stage1["codes_b"], run, "class_cond=true", "train.steps=6",
                    "model.dropout=0.1", "label_dropout=0.2")
    with pytest.raises(IdentityError, match=rf"holds priors of tokenizer {stage1['tok'].identity}"):
        train_prior(cfg)
    assert sorted(p.name for p in run.iterdir()) == [".hqvae-run.json", "config.yaml", "prior.json"]
    info = json.loads((run / "prior.json").read_text())
    assert info["tokenizer_identity"] == stage1["tok"].identity


# -- config errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("override, match", [
    ("model.n_layers=2", r"model\.n_layers.*did you mean 'n_layer'"),
    ("model.n_embd=33", r"model\.n_embd: 33 is not divisible by n_head=2"),
    ("levels=[{}, {n_head: 5}]", r"levels\.1\.n_embd"),
    ("model.arch=mamba", r"model\.arch"),
    ("label_dropout=1.0", r"label_dropout"),
])
def test_config_errors_name_the_key(stage1, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        prior_cfg(stage1["codes"], tmp_path / "run", override)


def test_a_train_override_keeps_the_prior_train_defaults():
    base = load_prior_config(None, ["data.codes=codes"]).train
    assert (base.lr, base.schedule, base.warmup_steps, base.clip_grad) == (3e-4, "cosine", 100, 1.0)
    cfg = load_prior_config(None, ["data.codes=codes", "train.steps=5"]).train
    assert cfg.steps == 5
    assert dataclasses.replace(cfg, steps=base.steps) == base


def test_missing_codes_is_a_config_error_before_training(tmp_path):
    # optional when loading (a pipeline fills it in), required to train
    cfg = load_prior_config(None, ["model.n_layer=1", f"run_dir={tmp_path / 'run'}"])
    with pytest.raises(ConfigError, match=r"data\.codes"):
        train_prior(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("extra, levels, error, match", [
    (["levels=[{}, {}, {}]"], None, ConfigError, r"levels: 3 per-level settings.*2 levels"),
    ([], [2], ConfigError, r"--level 2.*levels 0\.\.1"),
    ([], [-1], ConfigError, r"--level -1"),
    (["data.eval_split=validation"], None, ConfigError, r"data: split 'validation'.*test, train"),
    (["data.train_split=valid"], None, ConfigError, r"split 'valid'"),
])
def test_train_prior_input_errors_fail_before_training(stage1, tmp_path, extra, levels, error,
                                                       match):
    cfg = prior_cfg(stage1["codes"], tmp_path / "run", "train.steps=1", *extra)
    with pytest.raises(error, match=match):
        train_prior(cfg, levels=levels)
    assert not (tmp_path / "run").exists()


def test_class_cond_needs_labelled_codes(unlabelled_codes, tmp_path):
    cfg = prior_cfg(unlabelled_codes, tmp_path / "run", "class_cond=true", "train.steps=1")
    with pytest.raises(ConfigError, match="class_cond.*no labels"):
        train_prior(cfg)
    assert not (tmp_path / "run").exists()
    # unconditional training on the same codes works, and its prior has no classes
    cfg = prior_cfg(unlabelled_codes, tmp_path / "run", "train.steps=1")
    train_prior(cfg, levels=[0])
    prior = Prior.from_pretrained(tmp_path / "run", levels=[0])
    assert prior.num_classes is None and not prior.levels[0].class_conditional


def test_class_cond_needs_labelled_eval_split(stage1, tmp_path):
    codes = tmp_path / "codes"
    tok = stage1["tok"]
    encode_split(tok, build_dataset(tok.config.data, "train"), codes, "train", max_examples=16,
                 progress=False)
    encode_split(tok, Unlabelled(build_dataset(tok.config.data, "test")), codes, "test",
                 max_examples=8, progress=False)
    cfg = prior_cfg(codes, tmp_path / "run", "class_cond=true", "train.steps=1")
    with pytest.raises(ConfigError, match="class_cond.*'test'"):
        train_prior(cfg, levels=[0])
    assert not (tmp_path / "run").exists()


def test_class_conditional_forward_without_labels_is_a_value_error():
    model = LevelPrior(small(), 0, [(2, 2)], [8], num_classes=3)
    with pytest.raises(ValueError, match="class-conditional.*labels"):
        model({"level_0": torch.randint(8, (2, 4))})


def test_resume_refuses_changed_model(stage1, tmp_path):
    train_prior(prior_cfg(stage1["codes"], tmp_path / "run", "train.steps=1"), levels=[0])
    with pytest.raises(ConfigError, match=r"different config.*model\.n_embd"):
        train_prior(prior_cfg(stage1["codes"], tmp_path / "run", "train.steps=2",
                              "model.n_embd=64"), levels=[0])


# -- CLI ------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_cli_encode_and_train_prior(stage1, tmp_path, capsys):
    codes = tmp_path / "codes"
    rc = main(["encode", str(stage1["tok_dir"]), "--out", str(codes), "--split", "train",
               "--max-examples", "16"])
    assert rc == 0
    out = capsys.readouterr().out
    assert f"codes of tokenizer {stage1['tok'].identity}" in out
    manifest = read_manifest(codes)
    assert list(manifest["splits"]) == ["train"] and manifest["splits"]["train"]["num_examples"] == 16
    assert manifest["splits"]["train"]["source"]["source"] == "shapes"
    assert len(CodesDataset(codes, "train")) == 16

    run = tmp_path / "prior"
    rc = main(["train-prior", f"data.codes={codes}", f"run_dir={run}", *TINY_PRIOR,
               "train.steps=2", "data.eval_split=null", "--level", "0"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "level 0 (2x2, K=16)" in out and "no held-out split" in out and "level 1" not in out
    assert (run / "level_0" / "model.safetensors").is_file()
    assert not (run / "level_1").exists()
    assert list(json.loads((run / "eval.json").read_text())["levels"]) == ["0"]


@pytest.mark.e2e
def test_cli_encode_never_replaces_folders_it_did_not_write(stage1, tmp_path, capsys):
    # a folder of images laid out by split was deleted by `hqvae encode --out`
    victim = tmp_path / "victim"
    (victim / "train" / "a").mkdir(parents=True)
    (victim / "train" / "a" / "img.png").write_bytes(b"precious")
    rc = main(["encode", str(stage1["tok_dir"]), "--out", str(victim), "--max-examples", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "holds no codes output written by hqvae" in err and err.count("\n") == 1
    assert (victim / "train" / "a" / "img.png").read_bytes() == b"precious"
    assert sorted(p.name for p in victim.iterdir()) == ["train"]
    # a codes directory of ours, with a split folder it never wrote: refused as well
    codes = tmp_path / "codes"
    assert main(["encode", str(stage1["tok_dir"]), "--out", str(codes), "--split", "train",
                 "--max-examples", "4"]) == 0
    (codes / "test").mkdir()
    (codes / "test" / "mine.txt").write_text("mine")
    assert main(["encode", str(stage1["tok_dir"]), "--out", str(codes), "--split", "test",
                 "--max-examples", "4"]) == 2
    assert "was not written by this tool" in capsys.readouterr().err
    assert (codes / "test" / "mine.txt").read_text() == "mine"
    # what it wrote itself it replaces (--overwrite), and a run killed before its first split
    # finished left a manifest behind, so the folder is still recognised as ours
    assert main(["encode", str(stage1["tok_dir"]), "--out", str(codes), "--split", "train",
                 "--max-examples", "3", "--overwrite"]) == 0
    assert read_manifest(codes)["splits"]["train"]["num_examples"] == 3


@pytest.mark.e2e
@pytest.mark.parametrize("override, key", [
    ("model.n_layers=2", "n_layers"),
    ("train.stepz=3", "train.stepz"),
    ("data.eval_split=validation", "validation"),
])
def test_cli_train_prior_errors_exit_2(stage1, tmp_path, capsys, override, key):
    run = tmp_path / "bad"
    rc = main(["train-prior", f"data.codes={stage1['codes']}", f"run_dir={run}", *TINY_PRIOR,
               override])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("hqvae train-prior: error:") and key in err
    assert err.count("\n") == 1  # one line
    assert not run.exists()


@pytest.mark.e2e
def test_cli_identity_error_exit_2(stage1, tmp_path, capsys):
    rc = main(["encode", str(stage1["tok_b_dir"]), "--out", str(stage1["codes"]),
               "--split", "test", "--max-examples", "4"])
    assert rc == 2
    err = capsys.readouterr().err
    assert stage1["tok"].identity in err and stage1["tok_b"].identity in err


def test_tokenizer_identity_is_the_function_not_the_run(stage1):
    """Codes stay valid when only training / data-loading settings differ, or when a config
    key sits at its default (a new option must not orphan existing codes and priors); a
    model key, the input transform or the weights change it."""
    import dataclasses as dc

    tok = stage1["tok"]
    base = tok.identity
    cfg = tok.config
    same = dc.replace(cfg, run_dir="elsewhere", train=dc.replace(cfg.train, steps=12345, lr=0.5),
                      data=dc.replace(cfg.data, num_train=7, path="x", skip_bad_examples=True))
    assert Tokenizer(tok.model, same).identity == base
    other_model = dc.replace(cfg, model=dc.replace(cfg.model, channels=cfg.model.channels + 1))
    assert Tokenizer(tok.model, other_model).identity != base
    other_input = dc.replace(cfg, data=dc.replace(cfg.data, channels=1 if cfg.data.channels == 3 else 3))
    assert Tokenizer(tok.model, other_input).identity != base
    assert Tokenizer.from_pretrained(stage1["root"] / "tok_b").identity != base


def test_out_of_range_training_labels_are_refused_before_training(stage1, tmp_path):
    """Labels are range-checked once when training starts (the training step itself does
    not check them: that would be a host sync per step); -1 marks unlabelled rows in some
    datasets."""
    tok = stage1["tok"]

    class FirstUnlabelled(torch.utils.data.Dataset):
        def __init__(self, base):
            self.base = base

        def __len__(self):
            return 16

        def __getitem__(self, i):
            item = dict(self.base[i])
            if i == 0:
                item["label"] = -1
            return item

    codes = tmp_path / "codes"
    encode_split(tok, FirstUnlabelled(build_dataset(tok.config.data, "train")), codes, "train",
                 progress=False)
    encode_split(tok, build_dataset(tok.config.data, "test"), codes, "test", max_examples=16,
                 progress=False)
    with pytest.raises(ConfigError, match=r"'train' codes .* have labels -1\.\.\d+, outside 0\.\."):
        train_prior(prior_cfg(codes, tmp_path / "run", "class_cond=true", "train.steps=1"))
    assert not (tmp_path / "run" / "level_0").exists()


def test_eval_json_keeps_the_levels_of_an_earlier_call(stage1, tmp_path):
    # killed after level 0 finished but before the run's eval.json was written, then resumed
    # with the remaining level: the summary must still hold both
    run = tmp_path / "run"
    cfg = prior_cfg(stage1["codes"], run, "train.steps=2")
    train_prior(cfg, [0])
    (run / "eval.json").unlink()
    train_prior(cfg, [1])
    assert sorted(json.loads((run / "eval.json").read_text())["levels"]) == ["0", "1"]


def _bad_folder(root, modality: str):
    """A class-per-folder image or audio folder (train and test) with one undecodable file."""
    import numpy as np
    import soundfile as sf
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(3):
                if modality == "image":
                    pixels = np.random.default_rng(i).integers(0, 256, (16, 16, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i}.png")
                else:
                    sf.write(str(folder / f"{i}.wav"), np.zeros(800, dtype=np.float32), 8000)
    bad = root / "train" / "b" / ("bad.png" if modality == "image" else "bad.wav")
    bad.write_bytes(b"not a media file")
    return bad


@pytest.mark.e2e
@pytest.mark.parametrize("modality, workers", [("image", 0), ("image", 1), ("audio", 0)])
def test_cli_encode_names_a_bad_file_in_one_line(tmp_path, capsys, modality, workers):
    """A bad file met while encoding was reported as datasets' 84-line DatasetGenerationError
    traceback; training reports it in one line naming the file, and so does encode (also when
    a DataLoader worker decoded it, whose error carries the worker's traceback)."""
    extra = (["data.image_size=16"] if modality == "image"
             else ["data.source=tones", "data.modality=audio"])
    cfg = load_tokenizer_config(None, ["model.preset=vqvae", "model.channels=16", "model.res_channels=8",
                                       "model.res_blocks=1", *extra])
    Tokenizer.from_config(cfg).save_pretrained(tmp_path / "tok")
    bad = _bad_folder(tmp_path / "data", modality)
    source = "imagefolder" if modality == "image" else "audiofolder"
    rc = main(["encode", str(tmp_path / "tok"), "--out", str(tmp_path / "codes"), "--data", source,
               "--path", str(tmp_path / "data"), "--num-workers", str(workers)])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err, err  # progress bars aside, one line: the error
    line = err.strip().splitlines()[-1]
    assert err.count("error:") == 1 and line.startswith("hqvae encode: error: "), err
    assert f"(file {bad})" in line and "split 'train'" in line, err
    assert not (tmp_path / "codes" / "train").exists()


def test_a_damaged_prior_summary_is_rebuilt_from_its_levels(trained, tmp_path):
    """The run's eval.json is derived from its levels' own records: one damaged (or never a
    summary at all) made every later call fail with KeyError: 'levels' after training."""
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    (run / "eval.json").write_text('{"accuracy": 1}\n')
    cfg = dataclasses.replace(trained["cfg"], run_dir=str(run))
    train_prior(cfg, levels=[1])  # finished: resumes at its last step and evaluates again
    summary = json.loads((run / "eval.json").read_text())
    assert sorted(summary["levels"]) == ["0", "1"] and "accuracy" not in summary
    assert summary["tokenizer_identity"] == json.loads((run / "prior.json").read_text())["tokenizer_identity"]
