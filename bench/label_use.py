"""Diagnostic: how much a class-conditional prior uses its label.

For every level of the given prior runs, the held-out NLL (bits per token) of the run's eval
split scored three ways: with the true labels, with the labels shuffled across the split,
and with the null label (the unconditional branch that classifier-free guidance steers away
from). (null - true) x tokens per example is how many bits the label saves per example; a
digit label carries at most log2(10) = 3.3 bits. A prior whose samples ignore their label
shows it here first, without sampling or a classifier.

    python bench/label_use.py runs/bench_priors_long/fsdd_sqvae2_tau/prior
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.data import Dataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prior.codes import CodesDataset  # noqa: E402
from prior.pretrained import Prior, evaluate_level  # noqa: E402


class Relabelled(Dataset):
    """``base`` with its labels replaced by ``labels`` (one per row)."""

    def __init__(self, base: Dataset, labels: torch.Tensor):
        self.base, self.labels = base, labels

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict:
        return {**self.base[i], "label": self.labels[i]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("priors", nargs="+", help="class-conditional prior runs")
    p.add_argument("--max-examples", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    print("| prior | level | tokens | bits/token: true label | shuffled | null | label saves (bits/example) |")
    print("|---|---|---|---|---|---|---|")
    for run in args.priors:
        prior = Prior.from_pretrained(run)
        data = prior.config.data
        if data.eval_split is None:
            raise SystemExit(f"{run}: the prior has no eval split to score")
        for level, model in prior.levels.items():
            if not model.class_conditional:
                raise SystemExit(f"{run}: level {level} is not class-conditional")
            held_out = CodesDataset(data.codes, data.eval_split, levels=list(range(level + 1)))
            n = min(len(held_out), args.max_examples)
            true = torch.stack([held_out[i]["label"] for i in range(n)])
            g = torch.Generator().manual_seed(args.seed)
            variants = {"true": true, "shuffled": true[torch.randperm(n, generator=g)],
                        "null": torch.full_like(true, model.null_label)}
            bits = {name: evaluate_level(model, Relabelled(torch.utils.data.Subset(held_out, range(n)), labels),
                                         n, args.batch_size)["bits_per_token"]
                    for name, labels in variants.items()}
            saved = (bits["null"] - bits["true"]) * model.length
            print(f"| {run} | {level} | {model.length} | {bits['true']:.4f} | {bits['shuffled']:.4f} "
                  f"| {bits['null']:.4f} | {saved:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
