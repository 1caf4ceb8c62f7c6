"""Argument types and argument groups several `hqvae` commands share."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--data / --path: the data a tokenizer's own run is replaced with."""
    p.add_argument("--data", help="data source (shapes, tones, parquet, a path, a hub name); default: the run's")
    p.add_argument("--path", help="data path for parquet / imagefolder / audiofolder sources")


DEVICE_HELP = "cpu, cuda, ... (default: cuda when available)"
