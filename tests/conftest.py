"""Fixtures several test files share: tiny untrained tokenizers and priors, a tiny trained
classifier, WAV bytes, and a Hugging Face cache that never reaches the network.

The model builders are fixtures that return the builder (``make_prior(tok, 3)`` in a test
that asks for ``make_prior``), so that a test can build as many variants as it needs."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch

from prior.config import load_prior_config
from prior.pretrained import Prior, build_level
from sampling.classifier.config import load_classifier_config
from sampling.classifier.train import train_classifier
from tokenizer.config import load_tokenizer_config
from tokenizer.data import build_dataset
from tokenizer.pretrained import Tokenizer

# a two-level tokenizer of 16 x 16 images (codes 4 x 4 and 8 x 8, codebooks 16 and 32)
TINY_TOKENIZER = ["model.preset=vqvae2", "model.channels=16", "model.res_channels=8", "model.res_blocks=1",
                  "data.image_size=16", "model.layers.0.codebook_size=16", "model.layers.1.codebook_size=32"]
# ... its audio variant: 16-frame spectrograms of `tones`
TINY_AUDIO_TOKENIZER = ["data.source=tones", "data.audio.num_frames=16", "data.audio.n_fft=32",
                        "data.audio.hop_length=16", "data.audio.griffin_lim_iters=2", "model.downsample=4"]
TINY_PRIOR = ["data.codes=unused", "model.n_layer=2", "model.n_embd=32", "model.n_head=2",
              "model.cond_channels=8", "model.cond_blocks=1", "model.dropout=0.0"]


def build_tokenizer(audio: bool = False, seed: int = 0):
    """An untrained tiny tokenizer (images, or `tones` spectrograms with ``audio``), in eval mode."""
    cfg = load_tokenizer_config(None, [*TINY_TOKENIZER, *(TINY_AUDIO_TOKENIZER if audio else [])])
    torch.manual_seed(seed)
    tok = Tokenizer.from_config(cfg)
    tok.model.eval()
    return tok


def build_prior(tok, num_classes: int = 3, *extra: str, seed: int = 0, class_names=None):
    """Untrained tiny priors over ``tok``'s codes (class-conditional with ``num_classes``;
    ``extra``: prior config overrides), sharpened so that draws depend on labels visibly."""
    cfg = load_prior_config(None, [*TINY_PRIOR, f"class_cond={'true' if num_classes else 'false'}", *extra])
    info = {"tokenizer_identity": tok.identity, "code_shapes": [list(s) for s in tok.code_shapes],
            "codebook_sizes": tok.codebook_sizes, "num_classes": num_classes or None,
            "class_names": class_names, "modality": tok.modality}
    torch.manual_seed(seed)
    levels = {lv: build_level(cfg, info, lv).eval() for lv in range(len(tok.codebook_sizes))}
    # an untrained prior is near-uniform and barely looks at its label (init std 0.02):
    # sharpen it so that labels and guidance visibly change the draws
    with torch.no_grad():
        for model in levels.values():
            model.head.weight.mul_(30)
            if num_classes:
                model.class_emb.weight.mul_(100)
    return Prior(cfg, info, levels)


def encode_wav(seconds: float, rate: int = 8000, channels: int = 1, freq: float = 440.0) -> bytes:
    """A 16-bit WAV file of a sine at ``freq`` (the same on every channel)."""
    t = np.arange(int(seconds * rate)) / rate
    mono = 0.5 * np.sin(2 * np.pi * freq * t)
    data = np.stack([mono] * channels, axis=1) if channels > 1 else mono
    buf = io.BytesIO()
    sf.write(buf, data, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def assert_recomputed_with_same_gradients(plain: torch.nn.Module, run, counted_types: tuple[str, ...]) -> None:
    """Gradient checkpointing reruns every counted block in the backward pass and leaves the
    gradients and the buffers (BatchNorm running statistics, EMA codebooks) as they were:
    ``run(model)`` computes a loss and calls backward, once on ``plain`` and once on a copy
    with checkpointing on (copied before any forward, since buffers move with each)."""
    import copy

    recomputing = copy.deepcopy(plain)
    recomputing.set_gradient_checkpointing(True)
    calls = {}
    for name, model in (("plain", plain), ("recomputing", recomputing)):
        calls[name] = 0

        def counted(*_, name=name):
            calls[name] += 1

        # a pre-hook: it fires when the recomputation starts a block, which a forward hook
        # would miss where the recomputation stops early
        handles = [m.register_forward_pre_hook(counted) for m in model.modules()
                   if type(m).__name__ in counted_types]
        run(model)
        for h in handles:
            h.remove()
    assert calls["recomputing"] == 2 * calls["plain"] > 0  # each block ran again in backward
    grads = dict(recomputing.named_parameters())
    for n, p in plain.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n].grad, p.grad, rtol=1e-5, atol=1e-6, msg=n)
    buffers = dict(recomputing.named_buffers())
    for n, b in plain.named_buffers():
        torch.testing.assert_close(buffers[n], b, rtol=1e-5, atol=1e-6, msg=n)


@pytest.fixture(scope="session")
def make_tokenizer():
    return build_tokenizer


@pytest.fixture(scope="session")
def make_prior():
    return build_prior


@pytest.fixture(scope="session")
def wav_bytes():
    return encode_wav


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture(scope="module")
def prior(tok):
    return build_prior(tok)


@pytest.fixture
def hermetic_hf(tmp_path, monkeypatch):
    """Keep the HF cache inside the test's tmp dir and forbid any network access."""
    import datasets  # imported on use: slow to import, and only the data tests need it

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def trained(request, tmp_path_factory):
    """(run folder, config, metrics) of a classifier trained on the test module's ``TINY``
    overrides for its ``CLASSIFIER_STEPS`` steps (images or spectrograms: the module's data)."""
    run = tmp_path_factory.mktemp("classifier") / "run"
    cfg = load_classifier_config(None, [f"run_dir={run}", *request.module.TINY,
                                        f"train.steps={request.module.CLASSIFIER_STEPS}"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: a second intra-op thread only adds contention
    try:
        return run, cfg, train_classifier(cfg)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def eval_batch(trained):
    """The eval split of the trained classifier's data: (x, labels)."""
    _, cfg, _ = trained
    data = build_dataset(cfg.data, cfg.data.eval_split)
    return (torch.stack([data[i]["x"] for i in range(len(data))]),
            torch.tensor([data[i]["label"] for i in range(len(data))]))
