"""The one rule shared by the name -> entry tables (prior/backbones.py,
tokenizer/data/registry.py): each is a plain dict filled by ``register`` calls in the module
that owns it, and a name is registered once."""

from __future__ import annotations

from typing import Any, TypeVar

E = TypeVar("E")


def register_entry(table: dict[str, Any], entry: E, key: str) -> E:
    """Add ``entry`` to ``table`` under ``entry.name`` (the config key ``key`` names it);
    a second entry of the same name is refused, as it would silently replace the first."""
    name = entry.name
    if name in table:
        raise ValueError(f"{key}: {name!r} is already registered")
    table[name] = entry
    return entry
