"""Which rows a capped evaluation or reference takes."""

from __future__ import annotations

import torch


def spread_indices(total: int, n: int | None) -> list[int]:
    """All ``total`` rows, or ``n`` of them evenly spaced through the split (first and last
    included). Capped evaluations and references use it: folder datasets list their files
    class by class, so the first ``n`` rows would hold one or two classes."""
    n = total if n is None else min(total, n)
    if n >= total:
        return list(range(total))
    if n <= 0:
        return []
    if total > 2**24 or n > 2**24:
        # float32 linspace cannot tell such rows apart (the last one rounds past the end):
        # exact integer rounding (half up); smaller sets keep the rows they always took
        if n == 1:
            return [0]
        return [(2 * i * (total - 1) + n - 1) // (2 * (n - 1)) for i in range(n)]
    return [int(i) for i in torch.linspace(0, total - 1, n).round().long()]
