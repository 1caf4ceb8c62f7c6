"""Benchmark: one tokenizer training step (forward + backward + AdamW) in this process,
median of 3 x 10 steps after 3 warm-up steps, on synthetic 3x32x32 batches (2 threads).

    python bench/step_speed.py --preset vqvae2 --channels 128       # our model
    python bench/step_speed.py --peer-shaped                        # the comparison net

``--peer-shaped`` times a plain conv net with the layer shapes of rosinality's VQ-VAE-2
(channel 128, 2 residual blocks of 32, D 64, K 512, two VQ layers, MSE + 0.25 commitment),
written here for the comparison in docs/benchmarks.md; it is a timing reference, not a
model of this toolkit. Run it at two commits to compare code versions (as docs/benchmarks.md
does). Prints images/s; writes nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Res(nn.Module):
    def __init__(self, c: int, r: int):
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(c, r, 3, padding=1), nn.ReLU(), nn.Conv2d(r, c, 1))

    def forward(self, x):
        return x + self.body(x)


class PeerShaped(nn.Module):
    """Two-level VQ net with VQ-VAE-2's reference layer shapes (timing only)."""

    def __init__(self, c: int = 128, d: int = 64, k: int = 512):
        super().__init__()
        res = lambda: [_Res(c, 32), _Res(c, 32), nn.ReLU()]  # noqa: E731
        self.enc_b = nn.Sequential(nn.Conv2d(3, c // 2, 4, 2, 1), nn.ReLU(), nn.Conv2d(c // 2, c, 4, 2, 1),
                                   nn.ReLU(), nn.Conv2d(c, c, 3, padding=1), *res())
        self.enc_t = nn.Sequential(nn.Conv2d(c, c // 2, 4, 2, 1), nn.ReLU(), nn.Conv2d(c // 2, c, 3, padding=1), *res())
        self.q_t = nn.Conv2d(c, d, 1)
        self.dec_t = nn.Sequential(nn.Conv2d(d, c, 3, padding=1), *res(), nn.ConvTranspose2d(c, d, 4, 2, 1))
        self.q_b = nn.Conv2d(c + d, d, 1)
        self.up_t = nn.ConvTranspose2d(d, d, 4, 2, 1)
        self.dec = nn.Sequential(nn.Conv2d(2 * d, c, 3, padding=1), *res(), nn.ConvTranspose2d(c, c // 2, 4, 2, 1),
                                 nn.ReLU(), nn.ConvTranspose2d(c // 2, 3, 4, 2, 1))
        self.register_buffer("emb_t", torch.randn(d, k))
        self.register_buffer("emb_b", torch.randn(d, k))

    @staticmethod
    def _quant(z, emb):
        flat = z.permute(0, 2, 3, 1).reshape(-1, emb.shape[0])
        idx = (flat.pow(2).sum(1, keepdim=True) - 2 * flat @ emb + emb.pow(2).sum(0, keepdim=True)).argmin(1)
        q = F.embedding(idx, emb.t()).view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
        return z + (q - z).detach(), (q.detach() - z).pow(2).mean()

    def forward(self, x, step=None):
        b = self.enc_b(x)
        q_t, d1 = self._quant(self.q_t(self.enc_t(b)), self.emb_t)
        q_b, d2 = self._quant(self.q_b(torch.cat([self.dec_t(q_t), b], 1)), self.emb_b)
        out = self.dec(torch.cat([self.up_t(q_t), q_b], 1))
        return {"loss": F.mse_loss(out, x) + 0.25 * (d1 + d2)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="vqvae2")
    p.add_argument("--channels", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--peer-shaped", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    if args.peer_shaped:
        model, name = PeerShaped(args.channels), f"peer-shaped VQ-VAE-2 net, width {args.channels}"
    else:
        from tokenizer.config import load_tokenizer_config
        from tokenizer.pretrained import Tokenizer

        cfg = load_tokenizer_config(None, [f"model.preset={args.preset}", f"model.channels={args.channels}",
                                           "model.res_blocks=2", "model.res_channels=32", "model.downsample=4"])
        model, name = Tokenizer.from_config(cfg).model, f"{args.preset}, width {args.channels}"
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    x = torch.rand(args.batch, 3, 32, 32) * 2 - 1

    def step(i: int) -> None:
        loss = model(x, torch.tensor(i))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(3):
        step(i)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for i in range(10):
            step(i)
        times.append((time.perf_counter() - t) / 10)
    dt = sorted(times)[1]
    params = sum(q.numel() for q in model.parameters())
    print(f"{name}: {params / 1e6:.2f} M params, batch {args.batch}: {dt * 1000:.1f} ms/step, "
          f"{args.batch / dt:.0f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
