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
from tokenizer.pretrained import Tokenizer
from tokenizer.train import train_tokenizer


class _Wrapped(torch.nn.Module):
    """Stands in for torch.compile's OptimizedModule (it too holds the model as _orig_mod)."""

    def __init__(self, mod):
        super().__init__()
        self._orig_mod = mod
        self.calls = 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self._orig_mod(*args, **kwargs)


def test_options_default_off_and_type_checked(tmp_path):
    cfg = cfg_for(tmp_path, "vqvae")
    assert cfg.train.compile is False and cfg.train.channels_last is False
    with pytest.raises(ConfigError, match="train.compile"):
        cfg_for(tmp_path, "vqvae", "train.compile=maybe")
    with pytest.raises(ConfigError, match="train.channels_last"):
        cfg_for(tmp_path, "vqvae", "train.channels_last=3")


@pytest.mark.parametrize("preset", ["vqvae", "sqvae2"])
def test_compile_and_channels_last_save_plain_keys_and_match_eager(tmp_path, monkeypatch, preset):
    train_tokenizer(cfg_for(tmp_path / "eager", preset, "train.steps=3"))
    ref = train_losses(tmp_path / "eager" / "run")
    wrapped = []

    def fake_compile(mod, *args, **kwargs):
        wrapped.append(_Wrapped(mod))
        return wrapped[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    fast = cfg_for(tmp_path / "fast", preset, "train.steps=3", "train.compile=true",
                   "train.channels_last=true")
    train_tokenizer(fast)
    assert len(wrapped) == 1 and wrapped[0].calls == 3
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
