"""Which device a command runs on: the one asked for, checked, or CUDA when present."""

from __future__ import annotations


def resolve_device(name: str | None = None, what: str = "--device") -> str:
    """``name`` checked (a clear error for a device torch does not know or this build cannot
    use), or 'cuda' when a GPU is present, else 'cpu'."""
    import torch

    if not name:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"{what}: unknown device {name!r} (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{what}: {name!r} asked for, but this torch build sees no CUDA GPU "
                             f"(torch {torch.__version__}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{what}: {name!r} asked for, but there are {torch.cuda.device_count()} GPUs")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what}: {name!r} asked for, but MPS is not available here")
    return str(device)
