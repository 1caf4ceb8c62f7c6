"""Spectrogram images, Griffin-Lim, resampling and WAV I/O (CPU, generated signals only)."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from tokenizer.audio import (
    Spectrogram,
    fit_length,
    griffin_lim,
    mel_filterbank,
    read_audio,
    resample,
    write_wav,
)
from tokenizer.config import AudioConfig, DataConfig
from tokenizer.data import build_dataset

SR = 8000


def two_sines(n: int, sr: int = SR) -> torch.Tensor:
    """Two partials under a smooth attack/decay envelope: a signal with a well-defined
    magnitude spectrogram that Griffin-Lim should be able to match closely."""
    t = torch.arange(n, dtype=torch.float64) / sr
    env = torch.exp(-3 * t) * (1 - torch.exp(-60 * t))
    x = 0.5 * torch.sin(2 * math.pi * 440 * t) + 0.3 * torch.sin(2 * math.pi * 1320 * t)
    return (x * env).float()


def spectral_convergence(ref: torch.Tensor, est: torch.Tensor) -> float:
    return float((ref - est).norm() / ref.norm())


def test_default_spectrogram_shape_and_range():
    cfg = AudioConfig()
    spec = Spectrogram(cfg)
    assert spec.shape == (1, 128, 128)
    assert spec.num_samples == cfg.num_samples == 64 * 127
    x = two_sines(spec.num_samples)
    image = spec(x)
    assert image.shape == (1, 128, 128)
    assert image.min() >= -1 and image.max() <= 1
    assert image.max() > 0.5  # the partials are loud
    batch = spec(torch.stack([x, 0.1 * x]))
    assert batch.shape == (2, 1, 128, 128)
    assert torch.allclose(batch[0], image, atol=1e-6)
    assert batch[1].mean() < batch[0].mean()  # quieter -> darker


def test_spectrogram_rejects_wrong_length():
    spec = Spectrogram(AudioConfig())
    with pytest.raises(ValueError, match="8128"):
        spec(torch.zeros(1000))


def test_spectrogram_has_no_checkpoint_state_and_pickles():
    spec = Spectrogram(AudioConfig(mel=True, n_mels=32))
    assert spec.state_dict() == {}  # buffers follow from the config
    clone = pickle.loads(pickle.dumps(spec))
    x = two_sines(spec.num_samples)
    assert torch.equal(clone(x), spec(x))


def test_to_db_inverts_the_normalisation():
    cfg = AudioConfig()
    spec = Spectrogram(cfg)
    x = two_sines(cfg.num_samples)
    db = spec.to_db(spec(x))
    mag = spec.magnitude(x)[: cfg.n_fft // 2]
    expected = (20 * torch.log10(mag.clamp(min=1e-5))).clamp(cfg.db_min, cfg.db_max)
    assert torch.allclose(db[0], expected, atol=1e-3)
    # magnitudes come back (within the clamped range) with a zero Nyquist row re-added
    back = spec.to_magnitude(spec(x))
    assert back.shape == (1, cfg.n_fft // 2 + 1, cfg.num_frames)
    assert torch.all(back[0, -1] == 0)
    loud = mag > 10 ** (cfg.db_min / 20) * 10
    assert torch.allclose(back[0, :-1][loud], mag[loud], rtol=1e-3)


def test_mel_option():
    cfg = AudioConfig(mel=True, n_mels=64)
    spec = Spectrogram(cfg)
    assert spec.shape == (1, 64, 128)
    x = two_sines(cfg.num_samples)
    image = spec(x)
    assert image.shape == (1, 64, 128)
    wave = spec.to_waveform(image, n_iter=4)
    assert wave.shape == (cfg.num_samples,)
    assert torch.isfinite(wave).all()


def test_mel_filterbank_rows_are_nonempty_weighted_means():
    fb = mel_filterbank(128, 256, SR)
    assert fb.shape == (128, 129)
    assert torch.all(fb >= 0)
    assert torch.allclose(fb.sum(dim=1), torch.ones(128), atol=1e-5)
    # centres rise with the channel index (a mel bank, not a permutation)
    centres = (fb * torch.arange(129)).sum(dim=1)
    assert torch.all(centres[1:] >= centres[:-1] - 1e-6)


def test_griffin_lim_converges_and_iterations_matter():
    cfg = AudioConfig()
    spec = Spectrogram(cfg)
    x = two_sines(cfg.num_samples)
    target = spec.magnitude(x)

    def error(n_iter: int) -> float:
        wave = griffin_lim(target, cfg.n_fft, cfg.hop_length, n_iter, length=cfg.num_samples)
        assert wave.shape == (cfg.num_samples,)
        return spectral_convergence(target, spec.magnitude(wave))

    converged = error(64)
    assert converged < 0.1  # measured ~0.06
    assert error(0) > 0.4  # random phases: measured ~0.66
    assert error(1) > 3 * converged  # measured ~0.35


def test_griffin_lim_is_deterministic_and_batched():
    cfg = AudioConfig()
    spec = Spectrogram(cfg)
    x = two_sines(cfg.num_samples)
    mags = spec.magnitude(torch.stack([x, x.flip(0)]))
    a = griffin_lim(mags, cfg.n_fft, cfg.hop_length, 4, seed=3)
    b = griffin_lim(mags, cfg.n_fft, cfg.hop_length, 4, seed=3)
    c = griffin_lim(mags, cfg.n_fft, cfg.hop_length, 4, seed=4)
    assert a.shape == (2, cfg.num_samples)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    zeros = griffin_lim(mags, cfg.n_fft, cfg.hop_length, 2, seed=None)
    assert torch.isfinite(zeros).all()
    with pytest.raises(ValueError, match="129"):
        griffin_lim(mags[:, :-1], cfg.n_fft, cfg.hop_length, 1)


def test_to_waveform_shapes_and_quality():
    cfg = AudioConfig()
    spec = Spectrogram(cfg)
    x = two_sines(cfg.num_samples)
    image = spec(x)
    wave = spec.to_waveform(image)  # default: cfg.griffin_lim_iters
    assert wave.shape == (cfg.num_samples,)
    assert spectral_convergence(spec.magnitude(x), spec.magnitude(wave)) < 0.12
    batch = spec.to_waveform(torch.stack([image, image]), n_iter=2)
    assert batch.shape == (2, cfg.num_samples)
    with pytest.raises(ValueError, match="expected"):
        spec.to_waveform(torch.zeros(1, 64, 128))


@pytest.mark.parametrize("orig,new", [(16000, 8000), (8000, 16000), (44100, 8000), (8000, 11025)])
def test_resample_preserves_a_sines_frequency(orig, new):
    n = orig // 2
    t = torch.arange(n, dtype=torch.float64) / orig
    x = torch.sin(2 * math.pi * 440 * t).float()
    y = resample(x, orig, new)
    assert y.shape == (round(n * new / orig),)
    spectrum = torch.fft.rfft(y).abs()
    peak_hz = spectrum.argmax().item() * new / y.shape[0]
    assert abs(peak_hz - 440) <= new / y.shape[0]  # within one bin
    assert abs(y.abs().max().item() - 1.0) < 0.05


def test_resample_removes_content_above_the_new_nyquist():
    t = torch.arange(16000, dtype=torch.float64) / 16000
    x = (torch.sin(2 * math.pi * 500 * t) + torch.sin(2 * math.pi * 6000 * t)).float()
    y = resample(x, 16000, 8000)
    spectrum = torch.fft.rfft(y).abs()
    # 6 kHz cannot exist at 8 kHz; a naive decimation would fold it onto 2 kHz
    assert spectrum[2000] < 1e-3 * spectrum[500]
    batch = resample(torch.stack([x, x]), 16000, 8000)
    assert batch.shape == (2, 8000)
    assert resample(x, 16000, 16000) is x


def test_fit_length_modes():
    x = torch.arange(10.0)
    assert fit_length(x, 4, "start").tolist() == [0, 1, 2, 3]
    assert fit_length(x, 4, "center").tolist() == [3, 4, 5, 6]
    gen = torch.Generator().manual_seed(0)
    starts = {int(fit_length(x, 4, "random", generator=gen)[0]) for _ in range(50)}
    assert len(starts) > 3 and min(starts) >= 0 and max(starts) <= 6
    padded = fit_length(x, 13, "random")
    assert padded.tolist() == list(range(10)) + [0, 0, 0]
    assert fit_length(torch.ones(2, 10), 5, "center").shape == (2, 5)
    with pytest.raises(ValueError, match="mode"):
        fit_length(x, 4, "middle")


def test_wav_round_trip_and_stereo_to_mono(tmp_path):
    wave = two_sines(4000)
    path = write_wav(tmp_path / "sub" / "a.wav", torch.cat([wave, torch.tensor([3.0])]), SR)
    data, rate = read_audio(path)
    assert rate == SR and data.dtype == np.float32 and data.shape == (4001,)
    assert np.abs(data[:-1] - wave.numpy()).max() < 1e-3  # 16-bit PCM
    assert data[-1] == pytest.approx(1.0, abs=1e-3)  # clipped, not wrapped
    assert sf.info(str(path)).subtype == "PCM_16"

    buf = io.BytesIO()
    stereo = np.stack([np.full(100, 0.5), np.full(100, -0.1)], axis=1)
    sf.write(buf, stereo, 16000, format="WAV", subtype="PCM_16")
    mono, rate = read_audio(buf.getvalue())
    assert rate == 16000 and mono.shape == (100,)
    assert np.allclose(mono, 0.2, atol=1e-3)


def test_read_audio_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="clip7.wav: cannot read audio"):
        read_audio(b"definitely not a wav", name="clip7.wav")
    missing = tmp_path / "nope.wav"
    with pytest.raises(ValueError, match="nope.wav: cannot read audio"):
        read_audio(missing)


def test_an_implausible_sample_rate_is_refused_before_allocating(tmp_path):
    """A WAV whose header claims 1 Hz made resampling allocate ~6 GB per row."""
    import soundfile as sf

    from tokenizer.audio import MAX_RESAMPLED, resample

    with pytest.raises(ValueError, match="sample rate is implausible"):
        resample(torch.zeros(8000), 1, 8000)  # would be 64M samples
    assert resample(torch.zeros(8000), 16000, 8000).shape == (4000,)
    assert MAX_RESAMPLED >= 8000 * 3600  # an hour of 8 kHz audio still resamples
    folder = tmp_path / "clips" / "train" / "a"
    folder.mkdir(parents=True)
    sf.write(str(folder / "odd.wav"), np.zeros(8000, dtype=np.float32), 1, format="WAV")
    ds = build_dataset(DataConfig(source="audiofolder", path=str(tmp_path / "clips"), modality="audio"), "train")
    with pytest.raises(ValueError, match=r"odd\.wav.*implausible"):
        ds[0]


def test_resample_44k1_to_8k_keeps_a_tone_and_does_not_smear_the_clip_edges():
    """The periodic FFT resampler treated a clip as one period of a loop, so a
    click at its start leaked into its end; soxr filters the clip as it is."""
    t = torch.arange(44100, dtype=torch.float64) / 44100
    tone = torch.sin(2 * math.pi * 1000 * t).float()
    y = resample(tone, 44100, 8000)
    assert y.shape == (8000,) and y.dtype == torch.float32
    spectrum = torch.fft.rfft(y).abs()
    assert spectrum.argmax().item() == 1000  # 1 s at 8 kHz: one bin per Hz
    assert abs(y[400:-400].abs().max().item() - 1.0) < 0.02

    click = torch.zeros(44100)
    click[2] = 1.0  # off the 8 kHz grid (at sample 0 the FFT method's sinc is 0 at the end)
    y = resample(click, 44100, 8000)
    head, tail = y[:40].pow(2).sum(), y[-400:].pow(2).sum()
    assert head > 1e-3
    # nothing of the click reaches the last 50 ms (the FFT method put 10% of its energy there)
    assert tail < 1e-9 * head

    batch = resample(torch.stack([tone, click]), 44100, 8000)
    assert torch.equal(batch[1], y)
