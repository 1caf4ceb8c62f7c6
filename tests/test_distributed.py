"""Two CPU processes (gloo): EMA statistics and dead-code restarts stay identical across
processes, and the EMA update equals the single-process update on the union of batches."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tokenizer.config import QuantizerConfig
from tokenizer.quantizers import StochasticQuantizer, VectorQuantizer

pytestmark = pytest.mark.e2e

EMA = dict(kind="vq", ema=True, ema_decay=0.9)
RESTART = dict(EMA, restart_threshold=0.05, usage_decay=0.5)
# SQ seeded from the first batch: codebook and sigma^2 must come out the same everywhere
SQ_FROM_DATA = dict(kind="sq", data_init=True, var_init_from_data=5.0, variance="bounded")
STEPS = 4


def _data(rank: int, step: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(100 * step + rank)
    return torch.randn(3, 4, 4, 4, generator=g) * (1 + rank)


def _worker(rank: int, world: int, port: int, out: str, cfg: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same initial codebook everywhere, as DDP would broadcast
    cls = StochasticQuantizer if cfg["kind"] == "sq" else VectorQuantizer
    q = cls(dim=4, codebook_size=16, cfg=QuantizerConfig(**cfg)).train()
    torch.manual_seed(1234 + rank)  # restart draws differ per process unless broadcast
    for step in range(STEPS):
        q(_data(rank, step))
    torch.save({k: v.clone() for k, v in q.state_dict().items()}, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def _run(tmp_path, cfg: dict) -> tuple[dict, dict]:
    port = 29500 + (os.getpid() + len(cfg)) % 2000
    mp.spawn(_worker, args=(2, port, str(tmp_path), cfg), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    return a, b


@pytest.mark.parametrize("cfg", [EMA, RESTART, SQ_FROM_DATA], ids=["ema", "ema+restart", "sq-from-data"])
def test_codebooks_identical_across_processes(tmp_path, cfg):
    a, b = _run(tmp_path, cfg)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    if cfg is SQ_FROM_DATA:
        # the seeds are rank 0's: its first batch's vectors and 5x its variance
        first = _data(0, 0).permute(0, 2, 3, 1).reshape(-1, 4)
        assert (a["codebook"][:, None] == first[None]).all(-1).any(1).all()
        assert float(a["var_start"]) == pytest.approx(5 * float(first.var(0, unbiased=False).mean()), rel=1e-5)
    if cfg is EMA:
        # equal to one process that saw both processes' batches
        torch.manual_seed(0)
        single = VectorQuantizer(dim=4, codebook_size=16, cfg=QuantizerConfig(**cfg)).train()
        for step in range(STEPS):
            single(torch.cat([_data(0, step), _data(1, step)]))
        torch.testing.assert_close(a["codebook"], single.codebook, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a["ema_count"], single.ema_count, rtol=1e-5, atol=1e-5)
