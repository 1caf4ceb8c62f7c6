"""Audio as images: log-magnitude spectrograms in [-1, 1] and their inversion by Griffin-Lim.

Everything numeric here is plain torch (``torch.stft`` / ``torch.istft``), so the same code
turns generated spectrograms back into sound on a GPU as on a CPU. File I/O goes through
``soundfile`` (no torchaudio / torchcodec / FFmpeg in this environment); resampling
through libsoxr (``soxr``), on the CPU.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Literal, Optional, Union

import numpy as np
import soundfile as sf
import soxr
import torch

from tokenizer.config import AudioConfig

MAG_FLOOR = 1e-5  # -100 dB: below every sensible db_min, so the clamp decides the floor


# ---------------------------------------------------------------------------------------
# mel filterbank


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """HTK mel scale."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor | float) -> torch.Tensor:
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0, f_max: Optional[float] = None
) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular filters on the HTK mel scale, rows summing to 1.

    Two departures from the textbook bank, both deliberate:

    * Each side of a triangle is at least one FFT bin wide. With the defaults (128 mels
      over 129 bins at 8 kHz) the low filters are narrower than the bin spacing and would
      fall between bin centres, leaving channels that are always silent. Widening a side
      to one bin turns such a filter into linear interpolation between its two nearest
      bins, so every channel carries signal.
    * Rows are normalised to unit sum, so a mel channel is a weighted *mean* of linear
      magnitudes: mel and linear spectrograms share one dB scale and one
      ``[db_min, db_max]`` range.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    n_bins = n_fft // 2 + 1
    bin_hz = torch.linspace(0.0, sample_rate / 2, n_bins, dtype=torch.float64)
    spacing = sample_rate / n_fft
    mels = torch.linspace(
        hz_to_mel(f_min).item(), hz_to_mel(f_max).item(), n_mels + 2, dtype=torch.float64
    )
    edges = mel_to_hz(mels)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    # each side at least one bin wide (see above); outside the triangle the weight is 0
    left = (centre - lower).clamp(min=spacing)
    right = (upper - centre).clamp(min=spacing)
    rise = (bin_hz - (centre - left)) / left
    fall = (centre + right - bin_hz) / right
    fb = torch.minimum(rise, fall).clamp(min=0.0)
    fb = fb / fb.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return fb.float()


# ---------------------------------------------------------------------------------------
# Griffin-Lim


def griffin_lim(
    magnitude: torch.Tensor,
    n_fft: int,
    hop_length: int,
    n_iter: int,
    momentum: float = 0.99,
    length: Optional[int] = None,
    seed: Optional[int] = 0,
    window: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Waveform(s) whose STFT magnitude approximates ``magnitude`` (..., n_fft//2+1, frames).

    Fast Griffin-Lim (Perraudin, Balazs & Søndergaard, 2013): alternate the projection onto
    spectrograms with the target magnitude and the projection onto consistent spectrograms
    (STFT of an iSTFT), with an extrapolation ``t_n = c_n + momentum * (c_n - c_{n-1})``
    that converges much faster than plain Griffin-Lim (``momentum=0``).

    The initial phase is uniform random from a CPU ``torch.Generator`` seeded with ``seed``
    (so CPU and GPU start from the same phases), or all zeros when ``seed`` is None.
    Returns (..., length) with ``length = hop_length * (frames - 1)`` unless given.
    """
    if magnitude.shape[-2] != n_fft // 2 + 1:
        raise ValueError(
            f"griffin_lim: expected {n_fft // 2 + 1} frequency bins for n_fft={n_fft}, "
            f"got magnitude of shape {tuple(magnitude.shape)}"
        )
    lead = magnitude.shape[:-2]
    bins, frames = magnitude.shape[-2:]
    mag = magnitude.detach().float().reshape(-1, bins, frames)
    device = mag.device
    length = hop_length * (frames - 1) if length is None else length
    if window is None:
        window = torch.hann_window(n_fft, device=device)
    window = window.to(device=device, dtype=mag.dtype)

    def stft(x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, n_fft, hop_length, window=window, center=True, return_complex=True)
        # a longer `length` than the frames cover would add frames; keep the target grid
        return spec[..., :frames]

    def istft(spec: torch.Tensor) -> torch.Tensor:
        return torch.istft(spec, n_fft, hop_length, window=window, center=True, length=length)

    if seed is None:
        phase = torch.zeros_like(mag)
    else:
        gen = torch.Generator().manual_seed(int(seed))
        phase = (torch.rand(mag.shape, generator=gen) * (2 * math.pi)).to(device)
    t = torch.polar(mag, phase)
    prev = None
    for _ in range(n_iter):
        # P_C2 (impose the target magnitude, keep the phase), then P_C1 (make consistent)
        c = stft(istft(torch.polar(mag, torch.angle(t))))
        t = c if prev is None else c + momentum * (c - prev)
        prev = c
    wave = istft(torch.polar(mag, torch.angle(t)))
    return wave.reshape(*lead, wave.shape[-1])


# ---------------------------------------------------------------------------------------
# the spectrogram image


class Spectrogram(torch.nn.Module):
    """Waveforms <-> log-magnitude spectrogram images (1, F, frames) in [-1, 1].

    Linear: F = n_fft // 2 (the Nyquist bin is dropped so F is a power of two for the
    default n_fft). Mel: F = n_mels. dB = 20 log10(max(|X|, 1e-5)) mapped linearly from
    ``[db_min, db_max]`` to ``[-1, 1]`` and clamped. Buffers are not persistent: they are
    fully determined by the config, so they never enter a checkpoint.
    """

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.n_fft = cfg.n_fft
        self.hop_length = cfg.hop_length
        self.num_frames = cfg.num_frames
        self.num_samples = cfg.num_samples
        self.num_bins = cfg.num_bins
        self.mel = cfg.mel
        self.db_min = float(cfg.db_min)
        self.db_max = float(cfg.db_max)
        self.register_buffer("window", torch.hann_window(cfg.n_fft), persistent=False)
        if cfg.mel:
            fb = mel_filterbank(cfg.n_mels, cfg.n_fft, cfg.sample_rate)
            self.register_buffer("mel_basis", fb, persistent=False)
            # Least-squares way back to linear bins, computed once in float64. The bank is
            # rank deficient (many low filters interpolate the same pair of bins), so drop
            # directions with singular values under 1% of the largest: they carry no
            # information and would only amplify the noise of generated spectrograms.
            inverse = torch.linalg.pinv(fb.double(), rtol=1e-2).float()
            self.register_buffer("mel_inverse", inverse, persistent=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (1, self.num_bins, self.num_frames)

    def extra_repr(self) -> str:
        kind = f"mel={self.cfg.n_mels}" if self.mel else "linear"
        return (
            f"sample_rate={self.cfg.sample_rate}, n_fft={self.n_fft}, hop={self.hop_length}, "
            f"{kind}, shape={self.shape}, dB=[{self.db_min}, {self.db_max}]"
        )

    # -- analysis -----------------------------------------------------------------------
    def magnitude(self, wave: torch.Tensor) -> torch.Tensor:
        """(..., T) -> linear STFT magnitudes (..., n_fft//2+1, frames), Nyquist kept."""
        lead = wave.shape[:-1]
        x = wave.float().reshape(-1, wave.shape[-1])
        spec = torch.stft(
            x,
            self.n_fft,
            self.hop_length,
            window=self.window.to(x.device),
            center=True,
            return_complex=True,
        )
        mag = spec.abs()
        return mag.reshape(*lead, *mag.shape[-2:])

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(T,) -> (1, F, frames); (B, T) -> (B, 1, F, frames); T must be ``num_samples``."""
        if wave.dim() not in (1, 2) or wave.shape[-1] != self.num_samples:
            raise ValueError(
                f"Spectrogram: expected a waveform of shape (T,) or (B, T) with "
                f"T={self.num_samples} (hop_length * (num_frames - 1)), got {tuple(wave.shape)}"
            )
        mag = self.magnitude(wave)
        if self.mel:
            mag = torch.matmul(self.mel_basis.to(mag.device), mag)
        else:
            mag = mag[..., : self.n_fft // 2, :]
        db = 20.0 * torch.log10(mag.clamp(min=MAG_FLOOR))
        image = ((db - self.db_min) / (self.db_max - self.db_min) * 2.0 - 1.0).clamp(-1.0, 1.0)
        return image.unsqueeze(-3)

    # -- synthesis -----------------------------------------------------------------------
    def to_db(self, spec: torch.Tensor) -> torch.Tensor:
        """Inverse of the [-1, 1] normalisation (values beyond the clamp stay clamped)."""
        return (spec.float() + 1.0) * 0.5 * (self.db_max - self.db_min) + self.db_min

    def to_magnitude(self, spec: torch.Tensor) -> torch.Tensor:
        """Spectrogram image(s) (..., F, frames) -> linear magnitudes (..., n_fft//2+1, frames).

        Linear images get the dropped Nyquist bin back as zeros; mel images go through the
        pseudo-inverse of the filterbank, clamped at zero since magnitudes cannot be negative.
        """
        mag = 10.0 ** (self.to_db(spec) / 20.0)
        if self.mel:
            mag = torch.matmul(self.mel_inverse.to(mag.device), mag).clamp(min=0.0)
        else:
            mag = torch.nn.functional.pad(mag, (0, 0, 0, 1))
        return mag

    def to_waveform(
        self, spec: torch.Tensor, n_iter: Optional[int] = None, seed: Optional[int] = 0
    ) -> torch.Tensor:
        """(1, F, frames) -> (num_samples,); (B, 1, F, frames) -> (B, num_samples)."""
        if spec.dim() not in (3, 4) or tuple(spec.shape[-3:]) != self.shape:
            raise ValueError(
                f"to_waveform: expected (1, F, frames) or (B, 1, F, frames) with "
                f"(1, F, frames)={self.shape}, got {tuple(spec.shape)}"
            )
        # Generated images can overshoot [-1, 1]; past the ends the dB scale is undefined and
        # extrapolating (+1.5 -> db_max + 30 dB) would turn a decoder spike into a blast.
        mag = self.to_magnitude(spec.squeeze(-3).clamp(-1.0, 1.0))
        n_iter = self.cfg.griffin_lim_iters if n_iter is None else n_iter
        return griffin_lim(
            mag,
            self.n_fft,
            self.hop_length,
            n_iter,
            length=self.num_samples,
            seed=seed,
            window=self.window,
        )


# ---------------------------------------------------------------------------------------
# waveform utilities


MAX_RESAMPLED = 2**25  # samples after resampling: over an hour at 8 kHz, 128 MB of float32


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last axis of a (T,) or (B, T) tensor.

    Done by libsoxr (the ``soxr`` package, its high-quality preset): a linear-phase
    low-pass at the new Nyquist, so nothing aliases, applied to the clip as it is. The
    periodic FFT method used before treated each clip as one period of a loop and so
    leaked its last samples into its first (a click at the start rang at the end), which
    this does not. The result has ``round(T * new_sr / orig_sr)`` samples (at least one),
    float32, on the input's device.
    """
    if orig_sr == new_sr:
        return wave
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"resample: sample rates must be positive, got {orig_sr} -> {new_sr}")
    n = wave.shape[-1]
    m = max(1, int(round(n * new_sr / orig_sr)))
    if m > MAX_RESAMPLED:
        # a header claiming a 1 Hz rate made one clip ~6 GB here: refuse before allocating
        raise ValueError(f"resampling {n} samples from {orig_sr} Hz to {new_sr} Hz would make {m} "
                         f"samples (more than {MAX_RESAMPLED}); the file's sample rate is implausible")
    lead = wave.shape[:-1]
    # soxr takes (frames, channels): every row of a batch is one channel
    frames = wave.detach().reshape(-1, n).T.float().cpu().numpy()
    out = soxr.resample(np.ascontiguousarray(frames), orig_sr, new_sr, quality="HQ")
    out = torch.from_numpy(np.ascontiguousarray(out.T)).reshape(*lead, -1)
    # soxr rounds half-way lengths its own way: keep the length contract above
    if out.shape[-1] > m:
        out = out[..., :m]
    elif out.shape[-1] < m:
        out = torch.nn.functional.pad(out, (0, m - out.shape[-1]))
    return out.to(wave.device)


def fit_length(
    wave: torch.Tensor,
    n: int,
    mode: Literal["start", "center", "random"] = "start",
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Crop the last axis to exactly ``n`` samples (where: ``mode``) or zero-pad at the end.

    ``random`` draws its offset from ``generator`` or torch's global RNG, which DataLoader
    seeds differently in every worker.
    """
    length = wave.shape[-1]
    if length == n:
        return wave
    if length < n:
        return torch.nn.functional.pad(wave, (0, n - length))
    if mode == "start":
        start = 0
    elif mode == "center":
        start = (length - n) // 2
    elif mode == "random":
        start = int(torch.randint(0, length - n + 1, (1,), generator=generator))
    else:
        raise ValueError(f"fit_length: mode must be 'start', 'center' or 'random', got {mode!r}")
    return wave[..., start : start + n]


AudioSource = Union[str, os.PathLike, bytes, bytearray, io.IOBase]


def _wav_shortfall(head: bytes, total: int) -> Optional[tuple[int, int]]:
    """(declared, present) bytes of a RIFF/WAVE file's ``data`` chunk when the file is
    shorter than its header says; None when it is complete or not a plain WAV. libsndfile
    reads a truncated WAV without complaint (it returns the samples that are there)."""
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(head):
        chunk, size = head[pos:pos + 4], int.from_bytes(head[pos + 4:pos + 8], "little")
        if chunk == b"data":
            present = total - (pos + 8)
            # 0 and 0xFFFFFFFF: a streamed WAV whose writer never filled the size in
            if size not in (0, 0xFFFFFFFF) and present < size:
                return size, present
            return None
        pos += 8 + size + (size & 1)
    return None


def read_audio(source: AudioSource, name: Optional[str] = None) -> tuple[np.ndarray, int]:
    """A path, file object or encoded bytes -> (mono float32 samples in [-1, 1], sample rate).

    Multi-channel audio is averaged to mono. ``name`` labels errors (defaults to the path).
    A WAV file shorter than its header declares (truncated) is an error, not a short clip.
    """
    if isinstance(source, (bytes, bytearray)):
        label = name or "<audio bytes>"
        handle = io.BytesIO(bytes(source))
        short = _wav_shortfall(bytes(source[:1 << 16]), len(source))
    else:
        label = name or str(getattr(source, "name", source))
        handle = source
        short = None
        if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
            with open(source, "rb") as fh:
                short = _wav_shortfall(fh.read(1 << 16), os.path.getsize(source))
    if short is not None:
        raise ValueError(
            f"{label}: truncated WAV file: its header declares {short[0]} bytes of samples, "
            f"the file holds {short[1]}"
        )
    try:
        data, sample_rate = sf.read(handle, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError)
        raise ValueError(f"{label}: cannot read audio: {err}") from err
    if data.shape[0] == 0:
        raise ValueError(f"{label}: cannot read audio: the file holds no samples")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(mono, dtype=np.float32), int(sample_rate)


def write_wav(
    path: Union[str, os.PathLike], wave: Union[torch.Tensor, np.ndarray], sample_rate: int
) -> Path:
    """Write a mono waveform as 16-bit PCM WAV, clipping to [-1, 1]."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    data = np.clip(np.asarray(wave, dtype=np.float32).reshape(-1), -1.0, 1.0)
    sf.write(str(path), data, int(sample_rate), subtype="PCM_16", format="WAV")
    return path
