"""SSIM (tokenizer/ssim.py) against a direct reading of Wang et al. 2004, and as
``evaluate_tokenizer`` reports it next to PSNR."""

import math

import numpy as np
import pytest
import torch

from tokenizer.ssim import ssim


def reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 255.0) -> float:
    """SSIM of one (C, H, W) image pair, window by window from the paper's equations
    (Wang et al. 2004, eqs. 13-16): weighted means, variances and covariance inside each
    Gaussian window that fits the image, the local index from them, the mean over windows and
    then over channels. scikit-image is not a dependency, so this is the independent check."""
    _, h, w = x.shape
    size = min(11, h, w)
    if size % 2 == 0:
        size -= 1
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    per_channel = []
    for xc, yc in zip(x.astype(np.float64), y.astype(np.float64)):
        local = []
        for i in range(h - size + 1):
            for j in range(w - size + 1):
                px, py = xc[i:i + size, j:j + size], yc[i:i + size, j:j + size]
                mx, my = (win * px).sum(), (win * py).sum()
                vx, vy = (win * (px - mx) ** 2).sum(), (win * (py - my) ** 2).sum()
                cov = (win * (px - mx) * (py - my)).sum()
                local.append((2 * mx * my + c1) * (2 * cov + c2)
                             / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2)))
        per_channel.append(np.mean(local))
    return float(np.mean(per_channel))


@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 16, 24), (3, 8, 8)])
def test_ssim_matches_the_papers_formula(shape):
    """Random images and noisy copies of them (SSIM spread over its range), including a
    non-square grey image and one smaller than the 11×11 window."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(3, *shape))
    noise = rng.normal(0, 1, size=x.shape) * np.array([10.0, 40.0, 120.0]).reshape(3, 1, 1, 1)
    y = np.clip(x + noise, 0, 255)
    y[0] = rng.uniform(0, 255, size=shape)  # unrelated images: SSIM near 0
    got = ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float())
    want = [reference_ssim(a.astype(np.float32), b.astype(np.float32)) for a, b in zip(x, y)]
    assert got.shape == (3,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-6)


def test_ssim_matches_scikit_image_where_installed():
    """scikit-image's SSIM with the settings that reproduce the paper (its docs say so)."""
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, size=(3, 32, 40))
    for sigma in (5.0, 30.0, 100.0):
        y = np.clip(x + rng.normal(0, sigma, size=x.shape), 0, 255)
        want = metrics.structural_similarity(x, y, channel_axis=0, gaussian_weights=True, sigma=1.5,
                                             use_sample_covariance=False, data_range=255)
        got = float(ssim(torch.from_numpy(x[None]), torch.from_numpy(y[None]))[0])
        assert got == pytest.approx(want, abs=1e-9)


def test_ssim_of_an_image_with_itself_is_one_and_falls_with_noise():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32) * 255
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64), atol=1e-12)
    means = [float(ssim(x, (x + s * torch.randn_like(x)).clamp(0, 255)).mean())
             for s in (2, 8, 32, 128)]
    assert all(a > b for a, b in zip(means, means[1:])), means
    assert means[0] > 0.99 and means[-1] < 0.6, means


def test_ssim_refuses_batches_of_different_shapes():
    with pytest.raises(ValueError, match="ssim: needs two"):
        ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 9))


def test_evaluate_tokenizer_reports_ssim_and_pooled_psnr_for_images_only():
    """``ssim`` is the mean per-image SSIM of the clamped reconstructions on the 0-255 scale;
    ``psnr`` is the PSNR of the MSE pooled over every pixel of the set (its docstring)."""
    from tokenizer.config import load_tokenizer_config
    from tokenizer.evaluate import evaluate_tokenizer
    from tokenizer.model import HQVAE

    small = ["model.preset=vqvae", "model.channels=16", "model.res_channels=8",
             "model.res_blocks=1"]
    torch.manual_seed(0)
    cfg = load_tokenizer_config(None, small)
    model = HQVAE(cfg.model, cfg.data.shape).eval()
    data = [{"x": torch.rand(*cfg.data.shape) * 2 - 1} for _ in range(5)]
    m = evaluate_tokenizer(model, data, layer_collapse=False, batch_size=2)
    x = torch.stack([d["x"] for d in data])
    with torch.no_grad():
        y = model.decode_codes(model.encode(x)).clamp(-1, 1)
    want = float(ssim((x + 1) * 127.5, (y + 1) * 127.5).mean())
    assert m["ssim"] == pytest.approx(want, abs=1e-6)
    rmse = float((y - x).pow(2).mean().sqrt()) * 127.5
    assert m["psnr"] == pytest.approx(20 * math.log10(255 / rmse), abs=1e-4)
    assert list(m)[:4] == ["examples", "rmse", "psnr", "ssim"]

    acfg = load_tokenizer_config(None, [*small, "data.source=tones", "data.audio.num_frames=32",
                                        "data.audio.n_fft=64", "data.audio.hop_length=16",
                                        "model.downsample=8"])
    audio = HQVAE(acfg.model, acfg.data.shape)
    clips = [{"x": torch.rand(*acfg.data.shape) * 2 - 1} for _ in range(2)]
    assert "ssim" not in evaluate_tokenizer(audio, clips, modality="audio", layer_collapse=False)
