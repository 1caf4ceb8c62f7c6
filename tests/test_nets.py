"""The tokenizer networks (tokenizer/nets): every registered network under every preset,
their options checked against the hierarchy, attention and gradient checkpointing."""

import math

import pytest
import torch
from conftest import assert_recomputed_with_same_gradients

from engine.config import ConfigError
from tokenizer.config import PRESETS, load_tokenizer_config
from tokenizer.model import HQVAE
from tokenizer.nets import NETS
from tokenizer.nets.vqgan import AttentionBlock, VQGANEncoder, VQGANOptions

TINY = {  # per network: the overrides that make it small enough for a unit test
    "conv": ["model.channels=16", "model.res_channels=8", "model.res_blocks=1"],
    "vqgan": ["model.channels=16", "model.net_options.base_channels=8", "model.net_options.norm_groups=4",
              "model.net_options.num_res_blocks=1"],
}


def tiny_cfg(net: str, preset: str, extra=()):
    return load_tokenizer_config(None, [f"model.preset={preset}", f"model.net={net}", *TINY[net],
                                        "model.layers.0.codebook_size=32", "data.image_size=16", *extra])


def test_every_registered_network_has_tiny_settings_here():
    assert set(NETS) == set(TINY)  # a new network: add its tiny settings, and the tests below cover it


@pytest.mark.parametrize("net", sorted(NETS))
@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_network_runs_every_preset(net, preset):
    torch.manual_seed(0)
    cfg = tiny_cfg(net, preset)
    model = HQVAE(cfg.model, cfg.data.shape).train()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    model(x)["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    codes = model.encode(x)
    assert [tuple(c.shape[1:]) for c in codes] == model.code_shapes
    assert model.decode_codes(codes).shape == x.shape


@pytest.mark.parametrize("net", sorted(NETS))
def test_every_network_round_trips_its_config_through_save_and_load(net, tmp_path):
    from tokenizer.pretrained import Tokenizer

    torch.manual_seed(0)
    cfg = tiny_cfg(net, "hqvae")
    tok = Tokenizer(HQVAE(cfg.model, cfg.data.shape), cfg)
    tok.save_pretrained(tmp_path / "tok")
    again = Tokenizer.from_pretrained(tmp_path / "tok")
    assert again.model.cfg.net == net and again.model.cfg.net_options == cfg.model.net_options
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    for a, b in zip(tok.model.encode(x), again.model.encode(x)):
        assert torch.equal(a, b)


def test_the_scalable_encoder_taps_every_factor_the_hierarchy_reads():
    opt = VQGANOptions(base_channels=8, norm_groups=4, num_res_blocks=1)
    enc = VQGANEncoder(3, 12, [8, 4, 4], opt)
    feats = enc(torch.randn(1, 3, 32, 32))
    assert {f: tuple(t.shape) for f, t in feats.items()} == {4: (1, 12, 8, 8), 8: (1, 12, 4, 4)}
    # widths per resolution follow the default multipliers (1, 1, 2, 2) of factors 1..8
    assert [lvl[0].body[2].out_channels for lvl in enc.levels] == [8, 8, 16, 16]


@pytest.mark.parametrize("override, message", [
    ("model.net=transformer", r"model.net: unknown network 'transformer'; registered: conv, vqgan"),
    ("model.net_options.channel_mult=[1,2]",
     r"model.net_options.channel_mult: 2 multipliers for code grids down to factor 8; give one per "
     r"resolution from 1 to 8 \(4\)"),
    ("model.net_options.attn_factors=[3]", r"model.net_options.attn_factors.0: a power of 2 in \[1, 8\]"),
    ("model.net_options.norm_groups=5", r"model.net_options.norm_groups: 5 groups do not divide the width 8"),
    ("model.net_options.depth=3", r"^model.net_options.depth: not a key of network 'vqgan'; valid keys here: "
                                  r"attn_factors, base_channels, channel_mult, dropout, mid_attention, "
                                  r"norm_groups, num_res_blocks$"),
    ("model.net_options.base_channel=3", r"^model.net_options.base_channel: not a key of network 'vqgan' "
                                         r"\(did you mean 'base_channels'\?\)"),
    ("model.net_options.dropout=1.0", r"model.net_options.dropout: must be in \[0, 1\)"),
    ("model.net_options.num_res_blocks=0", r"model.net_options.num_res_blocks: must be in \[1, 64\], got 0"),
])
def test_network_options_that_do_not_fit_are_refused_naming_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_cfg("vqgan", "vqvae2", [override])


def test_the_small_network_takes_no_options():
    with pytest.raises(ConfigError, match=r"^model.net_options.base_channels: not a key of network 'conv'; "
                                          r"this section takes no keys$"):
        tiny_cfg("conv", "vqvae", ["model.net_options.base_channels=8"])


def test_attention_block_is_softmax_attention_over_positions():
    torch.manual_seed(0)
    block = AttentionBlock(8, 4).eval()
    x = torch.randn(2, 8, 3, 5)
    h = block.norm(x)
    q, k, v = block.qkv(h).reshape(2, 3, 8, 15).unbind(1)  # (B, C, N)
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(8), dim=-1)  # (B, N, N)
    expected = x + block.out((v @ weights.transpose(1, 2)).reshape(2, 8, 3, 5))
    torch.testing.assert_close(block(x), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("net, extra", [*((n, ()) for n in sorted(NETS)), ("conv", ("model.norm=batch",))],
                         ids=[*sorted(NETS), "conv-batchnorm"])
def test_gradient_checkpointing_recomputes_the_blocks_and_gives_the_same_gradients(net, extra):
    """... and BatchNorm's running statistics are updated once per step, not again in the rerun."""
    torch.manual_seed(0)
    cfg = tiny_cfg(net, "rqvae", extra)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    assert_recomputed_with_same_gradients(HQVAE(cfg.model, cfg.data.shape).train(),
                                          lambda model: model(x)["loss"].backward(), ("ResBlock", "ResnetBlock"))
