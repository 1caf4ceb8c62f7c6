"""Folders of samples as datasets, for every scorer: images (PNG, JPEG) as uint8 tensors
and audio files as spectrograms of one ``AudioConfig``. A `hqvae sample` folder is read from
its ``images/`` or ``audio/`` folder (``sampling.sample_reader.media_folder``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from sampling.sample_reader import media_folder
from tokenizer.audio import Spectrogram, fit_length, read_audio, resample
from tokenizer.config import AudioConfig
from tokenizer.data.transforms import convert_mode

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg")


def list_images(root: Union[str, Path]) -> list[Path]:
    """The image files (PNG, JPEG) directly in ``root``, sorted; errors name the folder."""
    root = Path(root).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder of images")
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder (expected a folder of PNG images)")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    others = sorted(p.name for p in root.iterdir()
                    if p.is_file() and p.suffix.lower() in (".gif", ".bmp", ".webp", ".tif", ".tiff"))
    if others:  # leaving them out silently would score another set than the folder holds
        raise ValueError(f"{root}: {', '.join(others[:3])}{' ...' if len(others) > 3 else ''} "
                         f"not scored: FID reads {', '.join(IMAGE_EXTENSIONS)} files; convert or move them")
    if not files:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return files


def _upright(img: Image.Image) -> Image.Image:
    """Camera JPEGs turned upright by their EXIF orientation, as the reference side reads them."""
    return ImageOps.exif_transpose(img) if img.getexif().get(0x0112, 1) != 1 else img


class ImageFolderSamples(Dataset):
    """A folder of same-sized images as uint8 (``channels``, H, W) tensors (3: RGB, 1: grey),
    decoded on demand. Sizes are checked up front from the file headers, so mixed sizes fail
    at once, by name."""

    def __init__(self, root: Union[str, Path], channels: int = 3, needs: str = "FID needs one size"):
        self.channels = channels
        self.root = Path(root).expanduser()
        if self.root.is_dir():
            self.root = media_folder(self.root, "images", IMAGE_EXTENSIONS)  # a `hqvae sample` folder's images/
        self.files = list_images(self.root)
        first = None
        for path in self.files:
            try:
                with Image.open(path) as img:
                    size = _upright(img).size
            except Exception as err:  # PIL raises several types on bad files
                raise ValueError(f"{path}: not a readable image ({err})") from None
            if first is None:
                first = (path, size)
            elif size != first[1]:
                raise ValueError(
                    f"{self.root}: images of mixed sizes ({first[0].name} is {first[1][0]}x"
                    f"{first[1][1]}, {path.name} is {size[0]}x{size[1]}); {needs}"
                )
        self.width, self.height = first[1]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        try:
            with Image.open(self.files[index]) as img:
                img.load()
                # alpha over white, 16-bit greys rescaled, as our data
                img = convert_mode(_upright(img), self.channels)
        except Exception as err:  # a truncated file passes the header check at start
            raise ValueError(f"{self.files[index]}: not a readable image ({err})") from None
        return torch.from_numpy(np.array(img, dtype=np.uint8).reshape(img.height, img.width, -1)).permute(2, 0, 1)



def audio_files(folder: Union[str, os.PathLike], recursive: bool = False) -> list[Path]:
    """The audio files in ``folder`` (below it too with ``recursive``), sorted; errors name it."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder of audio files")
    found = root.rglob("*") if recursive else root.iterdir()
    files = sorted(p for p in found if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
    if not files:
        raise FileNotFoundError(
            f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)})"
            + ("" if recursive else " directly inside it")
        )
    return files


class WavFolder(Dataset):
    """A folder of audio files as spectrogram tensors (1, F, T) of one ``AudioConfig``.

    Each file is read (``tokenizer.audio.read_audio``: mono, float), resampled when its rate
    differs from ``audio.sample_rate`` (an error if ``audio.resample`` is false), cut or
    zero-padded to ``audio.num_samples`` like the evaluation data (``crop`` 'start' or
    'center'; 'random' reads from the start) and turned into the spectrogram image. Files
    are decoded per item, nothing is held in memory. ``names``: paths relative to the folder.
    """

    def __init__(self, folder: Union[str, os.PathLike], audio: AudioConfig, recursive: bool = False):
        audio.validate()
        self.root = Path(folder)
        self.files = audio_files(folder, recursive)
        self.names = [p.relative_to(self.root).as_posix() for p in self.files]
        self.audio = audio
        self.shape = (1, audio.num_bins, audio.num_frames)
        self._spectrogram = None

    def __len__(self) -> int:
        return len(self.files)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_spectrogram": None}  # rebuilt in a worker, not pickled

    def waveform(self, index: int) -> torch.Tensor:
        """The mono waveform of file ``index``, at the config's rate and length."""
        path = self.files[index]
        wave, rate = read_audio(path)
        x = torch.from_numpy(wave)
        if rate != self.audio.sample_rate:
            if not self.audio.resample:
                raise ValueError(
                    f"{path}: sample rate {rate} Hz differs from the classifier's "
                    f"{self.audio.sample_rate} Hz and its data.audio.resample is false"
                )
            try:
                x = resample(x, rate, self.audio.sample_rate)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
        mode = self.audio.crop if self.audio.crop != "random" else "start"
        return fit_length(x, self.audio.num_samples, mode)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._spectrogram is None:
            self._spectrogram = Spectrogram(self.audio)
        with torch.no_grad():
            return self._spectrogram(self.waveform(index))


def load_wav_folder(
    folder: Union[str, os.PathLike], audio: AudioConfig, recursive: bool = False
) -> tuple[torch.Tensor, list[str]]:
    """All audio files of ``folder`` as one (N, 1, F, T) tensor, plus their names (paths
    relative to the folder, sorted). For large folders pass a :class:`WavFolder` instead."""
    data = WavFolder(folder, audio, recursive)
    return torch.stack([data[i] for i in range(len(data))]), data.names
