"""The processes of a run: Accelerate's process state, with CPU-only multi-process runs
recognised.

Accelerate starts its distributed (gloo) setup on a CPU only when told to run on the CPU
(``cpu=True`` or ``ACCELERATE_USE_CPU``); otherwise each of ``torchrun --nproc_per_node 2``'s
processes on a machine without CUDA believes it is a run of its own, and all of them train
alone and write the same run directory. ``use_cpu`` tells it whenever several processes were
launched where there is no CUDA device. (``accelerate launch --cpu --num_processes N`` is no
way to get N CPU processes: its launcher starts one unless given an MPI host file.)
"""

from __future__ import annotations

import os

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def use_cpu() -> bool:
    """Run on the CPU: asked for (``ACCELERATE_USE_CPU``, which ``accelerate launch --cpu``
    sets), or several processes launched (``WORLD_SIZE`` > 1) on a machine without CUDA."""
    if parse_flag_from_env("ACCELERATE_USE_CPU"):
        return True
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()


def process_state() -> PartialState:
    """Accelerate's process state (a process-wide singleton: the first call decides it)."""
    return PartialState(cpu=use_cpu())
