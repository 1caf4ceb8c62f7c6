"""The torch Dataset over an HF ``datasets`` table: picks the media and label columns,
decodes one row per item (PIL / soundfile) and handles rows that cannot be decoded."""

from __future__ import annotations

import io
import warnings
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from tokenizer.audio import fit_length, read_audio, resample
from tokenizer.config import DataConfig
from tokenizer.data.modality import check_modality, feature_modality
from tokenizer.data.transforms import LazySpectrogram, convert_mode, image_to_tensor, resize_image

MAX_CONSECUTIVE_BAD = 64  # skip_bad_examples gives up (with an error) after this many in a row
WARN_BAD_EXAMPLES = 5  # bad rows named in a warning, per process (and tiny images)
TINY_IMAGE_FACTOR = 4  # images with both sides under image_size / 4 are warned about


def _describe_columns(features) -> str:
    return ", ".join(f"{name} ({type(feat).__name__})" for name, feat in features.items())


def _raw_media_column(feature) -> bool:
    """Columns that can hold encoded media without HF's Image/Audio type: raw bytes, a file
    path, or the {bytes, path} struct that Image/Audio columns become in parquet files
    written by other tools."""
    import datasets

    if isinstance(feature, datasets.Value):
        return feature.dtype in ("binary", "large_binary", "string", "large_string")
    return isinstance(feature, dict) and set(feature) <= {"bytes", "path"} and "bytes" in feature


class BadExampleError(ValueError):
    """A row that cannot be decoded; the message names the source, split, row and file."""


class RowDecoding:
    """Which columns of an HF table hold the media and the label, and the decoding of one
    row into an item: the one decoding path of the map-style :class:`HFDataset` and the
    streaming ``tokenizer.data.streaming.StreamingDataset``.

    Media columns are switched to ``decode=False`` and decoded here (PIL / soundfile), which
    avoids torchcodec + FFmpeg for audio and lets a bad row fail with its index.
    """

    def _pick_columns(self, features, cfg: DataConfig, split: str, train: bool, where: str) -> None:
        import datasets

        self.cfg = cfg
        self.split = split
        self.train = train
        self.where = where or cfg.source
        if cfg.column is not None:
            if cfg.column not in features:
                raise ValueError(
                    f"{self.where}: data.column {cfg.column!r} not found; columns: "
                    f"{_describe_columns(features)}"
                )
            column = cfg.column
            modality = feature_modality(features[column])
            if modality is None:
                if not _raw_media_column(features[column]):
                    raise ValueError(
                        f"{self.where}: data.column {column!r} is "
                        f"{type(features[column]).__name__}, not an image or audio column"
                    )
                modality = cfg.resolved_modality  # raw bytes / paths: the config says which
        else:
            wanted = cfg.modality
            candidates = [
                (name, feature_modality(feat))
                for name, feat in features.items()
                if feature_modality(feat) is not None
                and (wanted is None or feature_modality(feat) == wanted)
            ]
            if not candidates:
                other = [(name, feature_modality(feat)) for name, feat in features.items()
                         if feature_modality(feat) is not None]
                if other:  # only media of the other kind: the modality is what is wrong
                    check_modality(cfg, other[0][1], f"{self.where} column {other[0][0]!r}")
                kind = f"{wanted} " if wanted else "Image or Audio "
                raise ValueError(
                    f"{self.where}: no {kind}column found; set data.column to one of: "
                    f"{_describe_columns(features)}"
                )
            column, modality = candidates[0]
        check_modality(cfg, modality, f"{self.where} column {column!r}")
        self.column = column
        self.modality = modality

        label = cfg.label_column
        if label is not None and label not in features and label != DataConfig.label_column:
            # the default "label" is optional; a column the user named must exist
            raise ValueError(
                f"{self.where}: data.label_column {label!r} not found; columns: "
                f"{_describe_columns(features)} (null for no labels)")
        self.label_column = label if label is not None and label in features else None
        self.num_classes: Optional[int] = None
        self.class_names: Optional[list[str]] = None
        if self.label_column is not None:
            feat = features[self.label_column]
            if isinstance(feat, datasets.ClassLabel):
                self.num_classes = feat.num_classes
                self.class_names = list(feat.names)
            elif not (isinstance(feat, datasets.Value) and "int" in feat.dtype):
                raise ValueError(
                    f"{self.where}: label column {self.label_column!r} is {feat}, not a "
                    f"ClassLabel or integer; set data.label_column to another column or null"
                )

        self.shape = cfg.shape
        self.spectrogram = LazySpectrogram(cfg.audio) if modality == "audio" else None
        self.bad_seen = 0  # bad rows met by this process (DataLoader workers count their own)
        self.tiny_rows: set[int] = set()  # rows of images far smaller than data.image_size, likewise

    def _raw_columns(self, table, features):
        """``table`` (map-style or streaming) cut to the media and label columns, the media
        left undecoded for :meth:`_item`."""
        import datasets

        column = self.column
        table = table.select_columns([column] + ([self.label_column] if self.label_column else []))
        if self.modality == "image" and isinstance(features[column], datasets.Image):
            table = table.cast_column(column, datasets.Image(decode=False))
        elif self.modality == "audio" and isinstance(features[column], datasets.Audio):
            table = table.cast_column(column, datasets.Audio(decode=False))
        return table

    def _report_bad(self, err: Exception) -> None:
        self.bad_seen += 1
        if self.bad_seen <= WARN_BAD_EXAMPLES:
            more = " (further bad rows are counted, not shown)" if self.bad_seen == WARN_BAD_EXAMPLES else ""
            warnings.warn(f"skipped a bad example (data.skip_bad_examples=true): {err}{more}",
                          stacklevel=3)

    def _item(self, row: dict, index: int) -> dict[str, Any]:
        value = row.get(self.column)
        try:
            x = self._image(value, index) if self.modality == "image" else self._audio(value, index)
            if tuple(x.shape) != tuple(self.shape):  # never silently a wrongly-shaped example
                raise ValueError(f"decoded to shape {tuple(x.shape)}, expected {tuple(self.shape)}")
        except Exception as err:
            path = self._cell_path(value)
            where = f" (file {path})" if path else ""
            raise BadExampleError(
                f"{self.where} (split {self.split!r}) row {index}{where}: cannot decode column "
                f"{self.column!r}: {err}"
            ) from err
        label = row[self.label_column] if self.label_column else None
        return {"x": x, "label": -1 if label is None else int(label)}

    @staticmethod
    def _cell_path(value: Any) -> Optional[str]:
        if isinstance(value, dict):
            return value.get("path") or None
        return value if isinstance(value, str) else None

    @staticmethod
    def _unpack(value: Any) -> tuple[Optional[bytes], Optional[str]]:
        """{bytes, path} dict, raw bytes or a path -> (bytes, path)."""
        if isinstance(value, dict):
            return value.get("bytes"), value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value), None
        if isinstance(value, str):
            return None, value
        if value is None:
            raise ValueError("the cell is empty")
        raise TypeError(f"unsupported cell type {type(value).__name__}")

    # -- images ----------------------------------------------------------------------------
    def _image(self, value: Any, index: int) -> torch.Tensor:
        if isinstance(value, Image.Image):
            img = value
        else:
            data, path = self._unpack(value)
            if data is None and not path:
                raise ValueError("the cell holds neither bytes nor a path")
            img = Image.open(io.BytesIO(data) if data is not None else path)
        img.load()
        if img.getexif().get(0x0112, 1) != 1:  # camera JPEGs: upright as HF's decoder makes them
            img = ImageOps.exif_transpose(img)
        if max(img.size) * TINY_IMAGE_FACTOR < self.cfg.image_size:
            self._report_tiny(img.size, value, index)
        img = convert_mode(img, self.cfg.channels)
        img = resize_image(img, self.cfg.image_size, self.cfg.resize, self.train)
        return image_to_tensor(np.array(img, dtype=np.uint8))  # a writable copy for torch

    def _report_tiny(self, size: tuple[int, int], value: Any, index: int) -> None:
        """An image whose sides are both under a quarter of data.image_size is blown up to a
        blur of a few pixels (a 1x1 image to one flat colour): rarely what the data was meant
        to hold, so say so, per row once: the first few by name, then how many."""
        if index in self.tiny_rows:
            return
        self.tiny_rows.add(index)
        count, target = len(self.tiny_rows), self.cfg.image_size
        if count <= WARN_BAD_EXAMPLES:
            path = self._cell_path(value)
            more = " (further ones are counted, not shown)" if count == WARN_BAD_EXAMPLES else ""
            warnings.warn(
                f"{self.where} (split {self.split!r}) row {index}{f' (file {path})' if path else ''}: "
                f"a {size[0]}x{size[1]} image, far smaller than data.image_size={target} (both sides "
                f"under a quarter of it), is upscaled to {target}x{target}{more}", stacklevel=4)
        elif count & (count - 1) == 0 or count % 1000 == 0:  # 8, 16, 32, ... then every 1000
            warnings.warn(
                f"{self.where} (split {self.split!r}): {count} images so far were far smaller than "
                f"data.image_size={target} (both sides under a quarter of it) and upscaled", stacklevel=4)

    # -- audio ------------------------------------------------------------------------------
    def _audio(self, value: Any, index: int) -> torch.Tensor:
        data, path = self._unpack(value)
        name = path or f"row {index}"
        if data is not None:
            wave, rate = read_audio(data, name=name)
        elif path:
            wave, rate = read_audio(path)
        else:
            raise ValueError("the cell holds neither bytes nor a path")
        audio = self.cfg.audio
        x = torch.from_numpy(wave)
        if rate != audio.sample_rate:
            if not audio.resample:
                raise ValueError(
                    f"{name}: sample rate {rate} Hz differs from data.audio.sample_rate="
                    f"{audio.sample_rate} Hz and data.audio.resample is false"
                )
            # The whole clip is resampled before cropping: the resampling filter then sees
            # the real neighbours of the crop's first and last samples.
            try:
                x = resample(x, rate, audio.sample_rate)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
        mode = audio.crop if (audio.crop != "random" or self.train) else "start"
        x = fit_length(x, audio.num_samples, mode)
        return self.spectrogram(x)


class HFDataset(RowDecoding, Dataset):
    """A map-style view on a memory-mapped HF dataset that decodes one row per item."""

    def __init__(self, table, cfg: DataConfig, split: str, train: bool = False, where: str = ""):
        self._pick_columns(table.features, cfg, split, train, where)
        self.table = self._raw_columns(table, table.features)

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._checked(self.table[int(index)], int(index))

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """Batched row access for DataLoader: one Arrow read per batch, not per item."""
        indices = [int(i) for i in indices]
        batch = self.table[indices]
        return [
            self._checked({key: values[j] for key, values in batch.items()}, index)
            for j, index in enumerate(indices)
        ]

    # -- bad examples -------------------------------------------------------------------------
    def _checked(self, row: dict, index: int) -> dict[str, Any]:
        """Row ``index`` decoded; a bad one raises :class:`BadExampleError` or, with
        ``data.skip_bad_examples``, is replaced by the next good row. Items then carry
        ``bad_examples`` (how many bad rows this one stands in for): the trainer sums it."""
        if not self.cfg.skip_bad_examples:
            return self._item(row, index)
        try:
            item = self._item(row, index)
            item["bad_examples"] = 0
            return item
        except BadExampleError as err:
            self._report_bad(err)
            first = err
        n = len(self.table)
        run = 1  # consecutive bad rows from `index` on
        for offset in range(1, min(n, MAX_CONSECUTIVE_BAD)):
            j = (index + offset) % n
            try:
                item = self._item(self.table[j], j)
            except BadExampleError:
                run += 1  # reported and counted when row j itself is asked for
                continue
            # this row only: every row is asked for once per epoch, so a bad row followed by
            # bad rows is not counted again for each of them
            item["bad_examples"] = 1
            return item
        raise BadExampleError(
            f"{self.where} (split {self.split!r}): {run} consecutive rows from row {index} "
            f"cannot be decoded, too many for data.skip_bad_examples to skip; first: {first}"
        )
