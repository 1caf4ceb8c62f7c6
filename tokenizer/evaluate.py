"""Tokenizer evaluation: reconstruction error and the two failure modes, per layer.

* reconstruction: RMSE and PSNR; images also SSIM (``tokenizer/ssim.py``), audio the
  log-spectral distance in dB
* codebook collapse: perplexity exp(H(usage)) and codes used, per layer, on the eval split
  (SQ layers also: the posterior's mean entropy per position, log K when it is flat)
* layer collapse:
    - residual layers: RMSE when decoding with depths 1..l (each depth must help)
    - every layer: RMSE when that layer's codes are replaced by codes drawn from the
      layer's own empirical code distribution (a layer that carries information makes
      the error grow; one that does not, leaves it unchanged)

:func:`run_evaluation` is a trained tokenizer's full evaluation (``RUN_DIR/eval/``): these
metrics, reconstructions beside the originals, ``eval.json``. rFID, which needs the FID
machinery of ``sampling``, is added from there (``sampling/tokenizer_eval.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from engine.config import ConfigError
from engine.files import write_text_atomic
from engine.subsets import spread_indices
from tokenizer.audio import write_wav
from tokenizer.config import TokenizerConfig
from tokenizer.losses.perceptual import load_lpips
from tokenizer.media import save_grid, spectrogram_rows
from tokenizer.model import HQVAE
from tokenizer.quantizers import perplexity
from tokenizer.ssim import ssim

if TYPE_CHECKING:
    from tokenizer.pretrained import Tokenizer


def _loader(dataset: Dataset, max_examples: int, batch_size: int) -> DataLoader:
    return DataLoader(Subset(dataset, spread_indices(len(dataset), max_examples)),
                      batch_size=batch_size, shuffle=False)


class _ErrorMeter:
    """Accumulates squared error (and, for audio, per-frame log-spectral distance; with
    ``with_ssim``, the per-image SSIM of images)."""

    def __init__(self, with_ssim: bool = False, lpips: Optional[torch.nn.Module] = None):
        self.sq, self.n, self.lsd, self.frames = 0.0, 0, 0.0, 0
        self.with_ssim, self.ssim_sum, self.images = with_ssim, 0.0, 0
        self.lpips, self.lpips_sum, self.lpips_images = lpips, 0.0, 0

    def add(self, x: torch.Tensor, y: torch.Tensor, db_per_unit: float | None) -> None:
        x, y = x.float(), y.float().clamp(-1, 1)
        d = y - x
        self.sq += float(d.pow(2).sum())
        self.n += d.numel()
        if self.with_ssim:  # on the 0-255 pixel scale that RMSE and PSNR are reported on
            s = ssim((x + 1) * 127.5, (y + 1) * 127.5, data_range=255.0)
            self.ssim_sum += float(s.sum())
            self.images += s.numel()
        if self.lpips is not None:
            d_lpips = self.lpips(x, y)
            self.lpips_sum += float(d_lpips.sum())
            self.lpips_images += d_lpips.numel()
        if db_per_unit is not None:  # spectrogram images (B, 1, F, T): LSD per frame
            per_frame = (d * db_per_unit).pow(2).mean(dim=-2).sqrt()
            self.lsd += float(per_frame.sum())
            self.frames += per_frame.numel()

    @property
    def mse(self) -> float:
        return self.sq / max(self.n, 1)


def _report(meter: _ErrorMeter, modality: str) -> dict[str, float]:
    """RMSE over every value of every example, and PSNR = 20 log10(peak / RMSE) from it: the
    PSNR of the mean squared error over the whole set, not the mean of per-image PSNRs (which,
    -log being convex, is never lower). SSIM is the mean of per-image SSIMs."""
    if modality == "image":
        # images live in [-1, 1]; report RMSE in 0-255 pixel units and PSNR on that scale
        rmse = math.sqrt(meter.mse) * 127.5
        out = {"rmse": rmse, "psnr": 20 * math.log10(255.0 / max(rmse, 1e-8))}
        if meter.images:
            out["ssim"] = meter.ssim_sum / meter.images
        if meter.lpips_images:
            out["lpips"] = meter.lpips_sum / meter.lpips_images
        return out
    out = {"rmse": math.sqrt(meter.mse), "psnr": 20 * math.log10(2.0 / max(math.sqrt(meter.mse), 1e-8))}
    if meter.frames:
        out["lsd_db"] = meter.lsd / meter.frames
    return out


@torch.no_grad()
def evaluate_tokenizer(
    model: HQVAE,
    dataset: Dataset,
    modality: str = "image",
    max_examples: int = 2000,
    batch_size: int = 128,
    db_range: float | None = None,
    layer_collapse: bool = True,
    seed: int = 0,
    progress: bool = False,
    lpips: Optional[torch.nn.Module] = None,
) -> dict:
    """Metrics of ``model`` on ``dataset`` (items {"x": (C,H,W) in [-1,1], ...}).

    Reconstructions are clamped to [-1, 1]. ``rmse`` and ``psnr`` pool the squared error
    over the whole set (PSNR of the mean MSE); images report them in 0-255 pixel units
    (peak 255) with ``ssim``, the mean over images of SSIM (Wang et al. 2004, on the 0-255
    range, averaged over channels); audio reports them in normalised spectrogram units
    (peak 2, the width of [-1, 1]) with ``lsd_db``. ``db_range`` (db_max - db_min) turns
    spectrogram errors into dB for LSD. With ``lpips`` (a :class:`tokenizer.losses.LPIPS`)
    images also report ``lpips``, the mean over images of that perceptual distance.
    """
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    db_per_unit = db_range / 2 if (modality == "audio" and db_range) else None
    n_layers = len(model.layers)
    hists = [torch.zeros(k, dtype=torch.float64) for k in model.codebook_sizes]
    entropy = [0.0] * n_layers  # SQ: summed posterior entropy (nats) over positions
    full = _ErrorMeter(with_ssim=modality == "image", lpips=lpips.to(device) if modality == "image" and lpips else None)
    loader = _loader(dataset, max_examples, batch_size)
    for batch in tqdm(loader, desc="eval: encode", disable=not progress, leave=False):
        x = batch["x"].to(device)
        quant = model.quantize(x)[1]  # eval mode: the deterministic codes of encode()
        codes = [q.codes for q in quant]
        full.add(x, model.decode_codes(codes), db_per_unit)
        for h, c in zip(hists, codes):
            h += torch.bincount(c.flatten().cpu(), minlength=h.numel()).double()
        if model.is_stochastic:
            for i, q in enumerate(quant):  # kl_discrete = sum_n sum_k P log P / B
                entropy[i] -= float(q.losses["kl_discrete"]) * x.shape[0]
    result: dict = {"examples": min(len(dataset), max_examples), **_report(full, modality)}
    layers = []
    for i, h in enumerate(hists):
        layers.append({
            "layer": i,
            "kind": model.layers[i].kind,
            "grid": list(model.code_shapes[i]),
            "codebook_size": h.numel(),
            "perplexity": perplexity(h),
            "codes_used": int((h > 0).sum()),
        })
        if model.is_stochastic:
            # mean entropy of the posterior per position (log K = flat: the layer says nothing)
            layers[-1]["posterior_entropy"] = entropy[i] / max(h.sum().item(), 1.0)
    if layer_collapse:
        # residual depths: every trailing residual layer can be dropped
        first_droppable = n_layers
        while first_droppable > 1 and model.layers[first_droppable - 1].kind == "residual":
            first_droppable -= 1
        depths = list(range(first_droppable, n_layers))
        depth_meters = {d: _ErrorMeter() for d in depths}
        sub_meters = [_ErrorMeter() for _ in range(n_layers)]
        g = torch.Generator().manual_seed(seed)
        for batch in tqdm(loader, desc="eval: layer collapse", disable=not progress, leave=False):
            x = batch["x"].to(device)
            codes = model.encode(x)
            for d in depths:
                depth_meters[d].add(x, model.decode_codes(codes, depth=d), db_per_unit)
            for i in range(n_layers):
                # replace layer i's codes with draws from its empirical distribution
                p = hists[i] / hists[i].sum()
                drawn = torch.multinomial(p.float(), codes[i].numel(), replacement=True, generator=g)
                swapped = list(codes)
                swapped[i] = drawn.view_as(codes[i]).to(device)
                sub_meters[i].add(x, model.decode_codes(swapped), db_per_unit)
        for i in range(n_layers):
            sub = _report(sub_meters[i], modality)["rmse"]
            layers[i]["rmse_substituted"] = sub
            layers[i]["substitution_gain"] = sub / max(result["rmse"], 1e-12)
            if (i + 1) in depth_meters:
                layers[i]["rmse_depth"] = _report(depth_meters[i + 1], modality)["rmse"]
            elif i + 1 == n_layers and depths:
                layers[i]["rmse_depth"] = result["rmse"]
    result["layers"] = layers
    if model.is_stochastic:
        result["variances"] = [float(v.exp()) for v in model.log_variances()]
    model.train(was)
    return result


@torch.no_grad()
def write_reconstructions(
    model: HQVAE, dataset: Dataset, out_dir: str | Path, modality: str, n: int = 8,
    spectrogram=None, sample_rate: int | None = None, n_audio: int = 4,
) -> list[Path]:
    """Originals beside reconstructions: a PNG grid (top row originals) and, for audio,
    WAV pairs (the original spectrogram and its reconstruction, both through Griffin-Lim,
    so the pair differs only by what the tokenizer lost)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = next(model.parameters()).device
    n = min(n, len(dataset))
    x = torch.stack([dataset[i]["x"] for i in range(n)]).to(device)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model.decode_codes(model.encode(x)).clamp(-1, 1)
    finally:
        model.train(was)
    written = []
    pair = torch.cat([x, y])
    if modality == "audio":
        pair = spectrogram_rows(pair)
    written.append(save_grid(pair.cpu(), out_dir / "reconstructions.png", nrow=n))
    if modality == "audio" and spectrogram is not None and sample_rate:
        k = min(n_audio, n)
        spectrogram = spectrogram.to(device)
        wav_x = spectrogram.to_waveform(x[:k])
        wav_y = spectrogram.to_waveform(y[:k])
        for i in range(k):
            for tag, wav in (("original", wav_x), ("reconstructed", wav_y)):
                path = out_dir / f"clip{i}_{tag}.wav"
                write_wav(path, wav[i].cpu(), sample_rate)
                written.append(path)
    return written


def available_lpips(cfg: TokenizerConfig) -> Optional[torch.nn.Module]:
    """LPIPS for the evaluation when its weights are at hand: the files loss.perceptual
    names (an error if named and absent) or, none named, the local caches (skipped quietly
    when empty: the metric is reported where the weights are present)."""
    p = cfg.loss.perceptual
    try:
        return load_lpips(p.vgg_path, p.heads_path)
    except ConfigError:
        if p.vgg_path is not None or p.heads_path is not None:
            raise
        return None


def run_evaluation(tok: Tokenizer, cfg: TokenizerConfig, dataset: Dataset, out_dir: Path, progress: bool = True,
                   extra: Optional[Callable[[], dict]] = None) -> dict:
    """Metrics of the tokenizer ``tok`` on ``dataset`` (the eval split), written with its
    reconstructions to ``out_dir/eval.json``; ``extra()`` returns metrics computed elsewhere
    (rFID), added before the files are written."""
    audio = cfg.data.audio
    modality = cfg.data.resolved_modality
    metrics = evaluate_tokenizer(
        tok.model, dataset, modality=modality, max_examples=cfg.eval.max_examples,
        batch_size=cfg.eval.batch_size, db_range=audio.db_max - audio.db_min, progress=progress,
        lpips=available_lpips(cfg) if modality == "image" else None,
    )
    if extra is not None:
        metrics.update(extra())
    files = write_reconstructions(
        tok.model, dataset, out_dir, modality, n=cfg.eval.grid_size,
        spectrogram=tok.spectrogram if modality == "audio" else None,
        sample_rate=audio.sample_rate, n_audio=cfg.eval.num_audio,
    )
    metrics["files"] = [str(p) for p in files]
    write_text_atomic(out_dir / "eval.json", json.dumps(metrics, indent=2))
    return metrics
