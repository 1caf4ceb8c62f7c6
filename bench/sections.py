"""Shared by the bench scripts: replace one marked section of docs/benchmarks.md, the
command a section records, device statistics, and the help of the data arguments."""

from __future__ import annotations

from pathlib import Path

# the Parquet layout of the hub copies (one file per split), read offline
CIFAR_HELP = ("CIFAR-10 as Parquet: a folder with train.parquet and test.parquet, columns img and label "
              "(the layout of the hub's uoft-cs/cifar10); default: %(default)s")
FSDD_HELP = ("the Free Spoken Digit Dataset as Parquet: a folder with train.parquet and test.parquet, "
             "columns audio (8 kHz) and label; default: %(default)s")


def write_section(out: Path, mark: str, text: str) -> None:
    """Put ``text`` between ``<!-- mark:begin -->`` and ``<!-- mark:end -->`` in ``out``
    (appended when the markers are not there yet), leaving every other section alone."""
    begin, end = f"<!-- {mark}:begin -->", f"<!-- {mark}:end -->"
    doc = out.read_text() if out.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in doc and end in doc:
        pre, rest = doc.split(begin, 1)
        _, post = rest.split(end, 1)
        doc = pre + block + post
    else:
        doc = doc.rstrip() + "\n\n" + block + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(doc)


def run_command(script: str, argv: list[str]) -> str:
    """The command that produced a study's results, as its section records it: the one run
    with ``--report-only`` rewrites the section from results another invocation measured."""
    import shlex

    return shlex.join(["python", f"bench/{script}", *(a for a in argv if a != "--report-only")])


def device_stats() -> dict:
    """Where the numbers were taken and the peak memory there (GPU: allocated by torch
    since the last ``torch.cuda.reset_peak_memory_stats()``; CPU: this process's max RSS)."""
    import os
    import resource

    import torch

    if torch.cuda.is_available():
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20,
                "device": torch.cuda.get_device_name()}
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device": f"CPU ({os.cpu_count()} cores)"}


def sync(device) -> None:
    """Wait for queued GPU work (timings would otherwise stop before it ran); no-op on CPU."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
