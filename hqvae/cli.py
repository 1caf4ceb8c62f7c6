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


def _encode(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from engine.config import validate
    from prior.codes import encode_split
    from tokenizer.data import build_dataset
    from tokenizer.pretrained import Tokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = Tokenizer.from_pretrained(args.tokenizer_run, device=device)
    data = tok.config.data
    if args.data:
        data = dataclasses.replace(data, source=args.data, path=args.path)
    validate(data)
    if data.shape != tok.input_shape:
        raise ConfigError(f"data: shape {data.shape} differs from the tokenizer's {tok.input_shape}")
    splits = args.split or [data.train_split, data.eval_split]
    source = {"source": data.source, "path": data.path, "column": data.column}
    for split in dict.fromkeys(splits):
        dataset = build_dataset(data, split, train=False)
        entry = encode_split(
            tok, dataset, args.out, split, batch_size=args.batch_size, num_workers=args.num_workers,
            max_examples=args.max_examples, source=source, overwrite=args.overwrite,
        )
        print(f"{split}: {entry['num_examples']} examples -> {Path(args.out) / split}")
    shapes = ", ".join(f"{h}x{w}" for h, w in tok.code_shapes)
    print(f"codes of tokenizer {tok.identity} (levels {shapes}, K {tok.codebook_sizes}); "
          f"manifest: {Path(args.out) / 'codes.json'}")
    return 0


def _train_prior(args: argparse.Namespace) -> int:
    from prior.config import load_prior_config
    from prior.train import format_summary, train_prior

    cfg = load_prior_config(args.config, args.overrides)
    results = train_prior(cfg, levels=args.level)
    if not results:  # a non-main process of a data-parallel run
        return 0
    print(format_summary(results, cfg.run_dir))
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

    p = sub.add_parser("encode", help="encode dataset splits into codes for stage two")
    p.add_argument("tokenizer_run", help="tokenizer run directory (or its model.safetensors)")
    p.add_argument("--out", required=True, help="codes directory to write")
    p.add_argument("--data", help="data source (shapes, tones, parquet, a path, a hub name); default: the run's")
    p.add_argument("--path", help="data path for parquet / imagefolder / audiofolder sources")
    p.add_argument("--split", action="append",
                   help="split to encode (repeatable; default: the run's train and eval splits)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-examples", type=int, help="encode at most this many examples per split")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers decoding the data")
    p.add_argument("--overwrite", action="store_true", help="re-encode splits already in --out")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_encode)

    p = sub.add_parser("train-prior", help="train the autoregressive priors on encoded codes")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides alone work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.codes=runs/codes")
    p.add_argument("--level", type=int, action="append",
                   help="train only this level (repeatable; default: every level, top first)")
    p.set_defaults(func=_train_prior)
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
