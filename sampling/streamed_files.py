"""The set's files that are filled in row by row while it is sampled, in the formats
their readers expect byte for byte: safetensors' own layout for the codes, numpy's .npy and
np.savez's .npz for the ADM batch, ``json.dumps(indent=1)`` for labels.json."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import struct
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch


class StreamedSafetensors:
    """A safetensors file of int64 tensors whose shapes are known up front, filled in row
    by row: the header (safetensors' layout: tensors sorted by name, data back to back, the
    JSON header padded with spaces to 8 bytes) is written first, each tensor's rows land at
    their offsets. The finished file is byte for byte what ``safetensors.torch.save_file``
    writes for the same tensors, without the tensors ever being whole in memory."""

    def __init__(self, shapes: dict[str, tuple[int, ...]]):
        self.shapes = {k: tuple(int(d) for d in v) for k, v in shapes.items()}
        header, self.offsets, pos = {}, {}, 0
        for name in sorted(self.shapes):
            size = 8 * math.prod(self.shapes[name])
            header[name] = {"dtype": "I64", "shape": list(self.shapes[name]), "data_offsets": [pos, pos + size]}
            self.offsets[name] = pos
            pos += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-(8 + len(text)) % 8)
        self.header = struct.pack("<Q", len(text)) + text
        self.size = len(self.header) + pos

    def create(self, path: Path) -> None:
        with open(path, "wb") as fh:
            fh.write(self.header)
            fh.truncate(self.size)  # sparse: the rows are written as they come

    def row_bytes(self, name: str) -> int:
        return 8 * math.prod(self.shapes[name][1:])

    def write_rows(self, fd: int, name: str, start: int, rows: torch.Tensor) -> None:
        data = rows.to(torch.int64).contiguous().numpy().tobytes()
        os.pwrite(fd, data, len(self.header) + self.offsets[name] + start * self.row_bytes(name))

    def read_rows(self, fd: int, name: str, start: int, count: int) -> np.ndarray:
        size = count * self.row_bytes(name)
        data = os.pread(fd, size, len(self.header) + self.offsets[name] + start * self.row_bytes(name))
        return np.frombuffer(data, dtype="<i8").reshape(count, *self.shapes[name][1:])


class StreamedNpy:
    """A .npy file of uint8 whose shape is known up front, filled in row by row (the header
    is numpy's own, format 1.0, as ``np.save`` writes it)."""

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(int(d) for d in shape)
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": self.shape})
        self.header = buf.getvalue()
        self.row_bytes = math.prod(self.shape[1:])
        self.size = len(self.header) + self.shape[0] * self.row_bytes

    def create(self, path: Path) -> None:
        with open(path, "wb") as fh:
            fh.write(self.header)
            fh.truncate(self.size)

    def write_rows(self, fd: int, start: int, rows: np.ndarray) -> None:
        os.pwrite(fd, np.ascontiguousarray(rows, dtype=np.uint8).tobytes(), len(self.header) + start * self.row_bytes)


def npz_from_npy(npy: Path, tmp: Path) -> None:
    """The .npz that ``np.savez(tmp, arr_0=array)`` writes (an uncompressed zip holding
    ``arr_0.npy``), from a .npy file on disk, copied through in chunks."""
    with open(tmp, "wb") as fh, zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        with zf.open("arr_0.npy", "w", force_zip64=True) as dst, open(npy, "rb") as src:
            shutil.copyfileobj(src, dst, 1 << 22)



def labels_json(labels: Iterator[tuple[str, int]]) -> Callable[[Path], None]:
    """A writer of ``json.dumps({name: label, ...}, indent=1)``, one entry at a time."""

    def write(tmp: Path) -> None:
        with open(tmp, "w") as fh:
            first = True
            for name, label in labels:
                fh.write(("{\n " if first else ",\n ") + f"{json.dumps(name)}: {int(label)}")
                first = False
            fh.write("{}" if first else "\n}")

    return write

