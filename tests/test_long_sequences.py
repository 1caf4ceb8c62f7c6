"""Priors at the sequence lengths of 256-px images: a 16x16 top level (256 tokens) and a
32x32 bottom level (1024 tokens) conditioned on it through the conditioning network at
32x32. Tiny widths keep this a CPU test; the lengths, the attention path (SDPA), gradient
checkpointing, bf16 autocast, the static KV cache and the compiled one-token step are the
ones a GPU run uses at full width."""

import pytest
import torch

from prior.codes import level_column
from prior.config import load_prior_config
from prior.pretrained import Prior, build_level
from sampling.sampler import Sampler
from tokenizer.config import load_tokenizer_config
from tokenizer.pretrained import Tokenizer

TOK = ["model.preset=vqvae2", "model.channels=8", "model.res_channels=4", "model.res_blocks=0",
       "data.image_size=256", "model.downsample=8", "model.layers.0.codebook_size=16",
       "model.layers.1.codebook_size=16", "model.layers.0.codebook_dim=4", "model.layers.1.codebook_dim=4",
       "model.state_channels=8"]
PRIOR = ["data.codes=unused", "model.n_layer=1", "model.n_embd=16", "model.n_head=2",
         "model.cond_channels=8", "model.cond_blocks=1", "model.dropout=0.0", "model.arch=llama"]


@pytest.fixture(scope="module")
def prior():
    torch.manual_seed(0)
    tok = Tokenizer.from_config(load_tokenizer_config(None, TOK))
    assert tok.code_shapes == [(16, 16), (32, 32)]
    cfg = load_prior_config(None, [*PRIOR, "class_cond=false"])
    info = {"tokenizer_identity": tok.identity, "code_shapes": [list(s) for s in tok.code_shapes],
            "codebook_sizes": tok.codebook_sizes, "num_classes": None, "class_names": None,
            "modality": tok.modality}
    levels = {lv: build_level(cfg, info, lv).eval() for lv in range(2)}
    return Prior(cfg, info, levels)


def test_a_1024_token_level_trains_with_checkpointing_under_bf16(prior):
    model = prior.levels[1].train()
    model.set_gradient_checkpointing(True)
    g = torch.Generator().manual_seed(0)
    batch = {level_column(0): torch.randint(16, (2, 256), generator=g),
             level_column(1): torch.randint(16, (2, 1024), generator=g)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(batch)["loss"]
    loss.backward()
    assert model.length == 1024 and torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.set_gradient_checkpointing(False)
    model.zero_grad()
    model.eval()


def test_static_cache_sampling_at_1024_tokens_matches_the_uncached_loop(prior):
    cached = Sampler(prior, cache="static").sample_codes(2, seed=3, batch_size=2)
    assert [tuple(c.shape) for c in cached] == [(2, 16, 16), (2, 32, 32)]
    plain = Sampler(prior, cache="none").sample_codes(2, seed=3, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(cached, plain))


def test_the_compiled_step_compiles_once_per_level_at_1024_tokens(prior, monkeypatch):
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode="default": real(fn, backend=counter))
    torch._dynamo.reset()
    codes = Sampler(prior, compile=True).sample_codes(2, seed=3, batch_size=2)
    assert counter.frame_count == 2  # one graph per level, however many of its 1280 steps
    reference = Sampler(prior, cache="static").sample_codes(2, seed=3, batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(codes, reference))
