"""The CLI frees a data-parallel run's process group before the interpreter's teardown: the
group's Gloo worker threads are joined by then, so none of them can take the GIL during
finalization and abort the finished process ("terminate called without an active
exception", pytorch/pytorch#190489: rank 1 of 2-process accelerate launches, now and then)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]

# A fresh interpreter: torch.distributed.nn.functional must be imported after the group exists,
# as in a launched process, where DistributedDataParallel's constructor imports it (through
# torch._dynamo); a pytest process has long imported it. Prints the group's threads that are
# still alive after main() returned.
CHILD = r"""
import os, sys
import torch
import torch.distributed as dist

def threads():
    return set(os.listdir("/proc/self/task"))

before = threads()
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
import torch._dynamo  # noqa: E402,F401  (what DistributedDataParallel's constructor imports)
t = torch.ones(4)
dist.all_reduce(t)
del t
gloo = threads() - before
assert gloo, "the gloo group started no threads of its own"
from hqvae.cli import main  # noqa: E402
assert main(["config", "sqvae2"]) == 0
assert not dist.is_initialized()
print("left", len(gloo & threads()), "of", len(gloo))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads through /proc")
def test_the_cli_joins_the_gloo_threads_of_a_process_group_before_exit(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "store")], capture_output=True,
                         text=True, timeout=120, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    left = out.stdout.strip().splitlines()[-1]
    assert left.startswith("left 0 of "), left  # every thread of the group is joined
