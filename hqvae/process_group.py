"""Freeing a data-parallel run's process group before the interpreter's teardown (the
last thing `hqvae` does, whatever the command)."""

from __future__ import annotations

import sys


def end_process_group() -> None:
    """A data-parallel run (``accelerate launch``) frees its process group before the
    interpreter's teardown, so that the group's destructor joins Gloo's worker threads
    while the interpreter is whole. A worker thread still alive in the teardown may release
    the last reference to a tensor of a finished collective there; that takes the GIL, and
    CPython ends a thread that takes the GIL during finalization with pthread_exit, whose
    unwinding through Gloo's noexcept work destructor aborts the process ("terminate called
    without an active exception", pytorch/pytorch#190489) after all its work is done."""
    dist = sys.modules.get("torch.distributed")  # never imported: nothing to end
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    world = dist.group.WORLD
    dist.destroy_process_group()
    unpin_group(world)


def unpin_group(group) -> None:
    """destroy_process_group() only drops torch.distributed's own references to the group;
    the group (and its Gloo threads) lives on while anything else holds it. One holder is
    in torch itself: torch.distributed.nn.functional's collectives take ``group=group.WORLD``
    as a default argument, evaluated when that module is first imported, and
    DistributedDataParallel's constructor imports it (through torch._dynamo) after the group
    exists. Put back the None those defaults have when imported before the group (the same
    meaning: the default group), so that dropping the last reference here frees the group."""
    functional = sys.modules.get("torch.distributed.nn.functional")
    for fn in vars(functional).values() if functional is not None else ():
        defaults = getattr(fn, "__defaults__", None)
        if defaults and any(d is group for d in defaults):
            fn.__defaults__ = tuple(None if d is group else d for d in defaults)
