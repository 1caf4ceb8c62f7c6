"""The ``hqvae`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.config import ConfigError


def _train_tokenizer(args: argparse.Namespace) -> int:
    from tokenizer.config import load_tokenizer_config
    from tokenizer.train import format_summary, train_tokenizer

    cfg = load_tokenizer_config(args.config, args.overrides)
    metrics = train_tokenizer(cfg)
    if not metrics:  # a non-main process of a data-parallel run: the main one reports
        return 0
    t = metrics["train"]
    print(f"trained {t['steps']} steps in {t['seconds']:.0f}s ({t['examples_per_s']:.0f} examples/s)")
    print(format_summary(metrics, cfg.run_dir))
    print(f"weights: {Path(cfg.run_dir) / 'model.safetensors'}; eval: {Path(cfg.run_dir) / 'eval'}")
    return 0


def _eval_tokenizer(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from engine.config import validate
    from tokenizer.data import build_dataset
    from tokenizer.pretrained import Tokenizer
    from tokenizer.train import format_summary, run_evaluation

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = Tokenizer.from_pretrained(args.run_dir, device=device)
    cfg = tok.config
    data = cfg.data
    if args.data:
        data = dataclasses.replace(data, source=args.data, path=args.path)
    if args.split:
        data = dataclasses.replace(data, eval_split=args.split)
    eval_cfg = cfg.eval
    if args.max_examples:
        eval_cfg = dataclasses.replace(eval_cfg, max_examples=args.max_examples)
    cfg = dataclasses.replace(cfg, data=data, eval=eval_cfg)
    validate(cfg)
    if cfg.data.shape != tok.input_shape:
        raise ConfigError(f"data: shape {cfg.data.shape} differs from the tokenizer's {tok.input_shape}")
    dataset = build_dataset(cfg.data, cfg.data.eval_split, train=False)
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    metrics = run_evaluation(tok, cfg, dataset, out)
    print(format_summary(metrics, out))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hqvae", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-tokenizer", help="train a stage-one HQ-VAE tokenizer")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides alone work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=500")
    p.set_defaults(func=_train_tokenizer)

    p = sub.add_parser("eval-tokenizer", help="evaluate a trained tokenizer")
    p.add_argument("run_dir")
    p.add_argument("--data", help="data source (shapes, tones, parquet, a path, a hub name); default: the run's")
    p.add_argument("--path", help="data path for parquet / imagefolder / audiofolder sources")
    p.add_argument("--split", help="split to evaluate (default: the run's eval split)")
    p.add_argument("--max-examples", type=int, help="evaluate at most this many examples")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_eval_tokenizer)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "config", None) and "=" in args.config:
        # `hqvae train-tokenizer key=value ...` without a config file
        args.overrides = [args.config, *args.overrides]
        args.config = None
    try:
        return args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if os.environ.get("HQVAE_DEBUG"):  # the full traceback, for bug reports
            raise
        print(f"hqvae {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
