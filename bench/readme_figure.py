"""The README's figure, composed from a quickstart run folder (never edited by hand).

    python bench/readme_figure.py [RUN_DIR] [--out docs/assets] [--run]

Reads ``RUN_DIR`` (default ``runs/quickstart``) as ``hqvae pipeline configs/quickstart.yaml``
writes it, or with ``--run`` runs that command first, then writes into ``--out``:

* ``quickstart_samples.png`` — class-conditional image samples (one column per class);
* ``quickstart_reconstructions.png`` — originals above the tokenizer's reconstructions;
* ``quickstart_audio.png`` — log-magnitude spectrograms of generated clips, one per class;
* ``quickstart.png`` — the three side by side (the figure the README and the site show).

Only the images and WAV files of the run are read; the spectrograms are computed here with
the audio track's own STFT settings (its ``pipeline.yaml``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
PAD = 8
LABEL_H = 18
BACKGROUND = (255, 255, 255)
# a perceptually ordered dark-blue -> yellow colour map (anchors of matplotlib's viridis)
_ANCHORS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], float)


def colormap(x: np.ndarray) -> np.ndarray:
    """Values in [0, 1] -> uint8 RGB, interpolated between the anchors."""
    pos = np.clip(x, 0, 1) * (len(_ANCHORS) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_ANCHORS) - 2)
    t = (pos - lo)[..., None]
    return (_ANCHORS[lo] * (1 - t) + _ANCHORS[lo + 1] * t).astype(np.uint8)


def _labels(folder: Path) -> dict[str, int | str]:
    path = folder / "labels.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _by_class(files: list[Path], labels: dict, per_class: int) -> list[list[Path]]:
    """Up to ``per_class`` files of each class, classes in order of first appearance."""
    groups: dict = {}
    for f in files:
        groups.setdefault(labels.get(f.name, labels.get(f.stem, 0)), []).append(f)
    return [g[:per_class] for g in groups.values()]


def sample_grid(run: Path, per_class: int = 6, scale: int = 2) -> Image.Image:
    folder = run / "image" / "samples"
    files = sorted((folder / "images").glob("*.png"))
    if not files:
        raise FileNotFoundError(f"{folder / 'images'}: no generated images")
    columns = _by_class(files, _labels(folder), per_class)
    first = Image.open(columns[0][0]).convert("RGB")
    w, h = first.width * scale, first.height * scale
    grid = Image.new("RGB", (len(columns) * (w + 2) - 2, per_class * (h + 2) - 2), BACKGROUND)
    for c, col in enumerate(columns):
        for r, f in enumerate(col):
            img = Image.open(f).convert("RGB").resize((w, h), Image.NEAREST)
            grid.paste(img, (c * (w + 2), r * (h + 2)))
    return grid


def reconstructions(run: Path, scale: int = 2) -> Image.Image:
    path = run / "image" / "tokenizer" / "eval" / "reconstructions.png"
    img = Image.open(path).convert("RGB")
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def spectrogram(wav: Path, n_fft: int, hop: int, db_min: float, db_max: float) -> np.ndarray:
    """Log-magnitude STFT (frequency up, time right) scaled to [0, 1] over [db_min, db_max]."""
    import soundfile

    audio, _ = soundfile.read(str(wav), dtype="float32", always_2d=True)
    x = audio.mean(axis=1)
    x = np.pad(x, (n_fft // 2, n_fft // 2))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop] * np.hanning(n_fft)
    mag = np.abs(np.fft.rfft(frames, axis=1)).T[1:]  # drop the DC bin
    db = 20 * np.log10(np.maximum(mag, 1e-5))
    return ((db - db_min) / (db_max - db_min))[::-1]


def audio_panel(run: Path, per_class: int = 1, size: int = 96) -> Image.Image:
    import yaml

    folder = run / "audio" / "samples"
    files = sorted((folder / "audio").glob("*.wav"))
    if not files:
        raise FileNotFoundError(f"{folder / 'audio'}: no generated clips")
    cfg = yaml.safe_load((run / "pipeline.yaml").read_text())
    audio = ((cfg.get("audio") or {}).get("tokenizer", {}).get("data", {}).get("audio")) or {}
    n_fft, hop = int(audio.get("n_fft", 256)), int(audio.get("hop_length", 64))
    db_min, db_max = float(audio.get("db_min", -80.0)), float(audio.get("db_max", 40.0))
    clips = [f for group in _by_class(files, _labels(folder), per_class) for f in group][:4]
    tiles = []
    for f in clips:
        s = spectrogram(f, n_fft, hop, db_min, db_max)
        tiles.append(Image.fromarray(colormap(s)).resize((size, size), Image.BILINEAR))
    cols = 2
    rows = (len(tiles) + cols - 1) // cols
    panel = Image.new("RGB", (cols * (size + 2) - 2, rows * (size + 2) - 2), BACKGROUND)
    for i, t in enumerate(tiles):
        panel.paste(t, ((i % cols) * (size + 2), (i // cols) * (size + 2)))
    return panel


def compose(panels: list[tuple[str, Image.Image]]) -> Image.Image:
    """Panels side by side, each with its caption above, aligned at the top."""
    width = sum(p.width for _, p in panels) + PAD * (len(panels) + 1)
    height = max(p.height for _, p in panels) + LABEL_H + 2 * PAD
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    x = PAD
    for caption, p in panels:
        draw.text((x, PAD // 2), caption, fill=(40, 40, 40))
        out.paste(p, (x, PAD + LABEL_H))
        x += p.width + PAD
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", default="runs/quickstart")
    ap.add_argument("--out", default=str(ROOT / "docs" / "assets"))
    ap.add_argument("--run", action="store_true", help="run the quickstart into RUN_DIR first")
    args = ap.parse_args(argv)
    run, out = Path(args.run_dir), Path(args.out)
    if args.run:
        cmd = ["hqvae", "pipeline", str(ROOT / "configs" / "quickstart.yaml"), f"run_dir={run}"]
        if subprocess.call(cmd) != 0:
            return 1
    out.mkdir(parents=True, exist_ok=True)
    samples, recon, audio = sample_grid(run), reconstructions(run), audio_panel(run)
    parts = {"quickstart_samples.png": samples, "quickstart_reconstructions.png": recon,
             "quickstart_audio.png": audio,
             "quickstart.png": compose([("image samples, one class per column", samples),
                                        ("originals / reconstructions", recon),
                                        ("generated audio (spectrograms)", audio)])}
    for name, img in parts.items():
        img.save(out / name, optimize=True)
        print(f"{out / name}: {img.width}x{img.height}, {(out / name).stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
