"""Run directories: a resumed run must be the same run, not another one in the same place."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.config import ConfigError, yaml_load


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += config_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [prefix]


def check_run_dir(run_dir: str | Path, config: dict, resumable: Sequence[str]) -> None:
    """Refuse a run directory whose ``config.yaml`` differs from ``config`` outside the
    top-level sections in ``resumable`` (those may change between a run and its resumption:
    more steps, other evaluation sizes)."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return
    old = yaml_load(path.read_text()) or {}
    changed = [k for k in config_diff(old, config) if k.split(".")[0] not in resumable]
    if changed:
        raise ConfigError(
            f"run_dir {str(run_dir)!r} already holds a run with a different config "
            f"({', '.join(changed[:6])}); choose another run_dir or delete it"
        )
