"""The training commands of `hqvae`: train-tokenizer, encode, train-prior and
train-classifier (their arguments and what each runs)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from engine.devices import resolve_device
from engine.run_dir import check_folder, check_writable, hold_folder
from engine.signals import Interrupted, interrupt_on_signals
from hqvae.arguments import DEVICE_HELP, add_data_arguments, non_negative_int, positive_int
from prior.config import load_prior_config
from sampling.classifier.config import load_classifier_config
from tokenizer.config import load_tokenizer_config


def _train_tokenizer(args: argparse.Namespace) -> int:
    # the trainers are imported on use, as every command's models: they load torch, which
    # `hqvae --help` and the other commands start without
    from tokenizer.train import format_summary, train_tokenizer

    cfg = load_tokenizer_config(args.config, args.overrides)
    metrics = train_tokenizer(cfg)
    if not metrics:  # a non-main process of a data-parallel run: the main one reports
        return 0
    t = metrics["train"]
    procs = f" on {t['processes']} processes" if t.get("processes", 1) > 1 else ""
    resumed = t.get("resumed_from") or 0
    done = (f"trained {t['steps'] - resumed} steps (resumed at step {resumed}; {t['steps']} in all)"
            if resumed else f"trained {t['steps']} steps")
    print(f"{done} in {t['seconds']:.0f}s{procs} ({t['examples_per_s']:.0f} examples/s)")
    print(format_summary(metrics, cfg.run_dir))
    print(f"weights: {Path(cfg.run_dir) / 'model.safetensors'}; eval: {Path(cfg.run_dir) / 'eval'}")
    return 0


def _encode(args: argparse.Namespace) -> int:
    # imported on use: they load torch
    from prior.codes import check_encoding
    from tokenizer.pretrained import Tokenizer

    check_folder(args.out, "codes", "--out")  # new, empty or a codes directory of ours
    check_writable(args.out, "--out")
    device = resolve_device(args.device)
    tok = Tokenizer.from_pretrained(args.tokenizer_run, device=device)
    data = tok.config.data
    if args.data:
        data = dataclasses.replace(data, source=args.data, path=args.path)
    splits = args.split or [data.train_split, data.eval_split]
    check_encoding(tok, data, args.out, splits)  # before the lock creates --out: refuse a split not ours
    with hold_folder(args.out, "codes", "--out"):  # a second process writing these codes is refused
        return _encode_splits(args, tok, data, splits)


def _encode_splits(args: argparse.Namespace, tok, data, splits: list[str]) -> int:
    from prior.codes import encode_splits  # imported on use: it loads torch

    splits = list(dict.fromkeys(splits))
    finished: list[str] = []
    for split in splits:  # one at a time: a Ctrl-C can say which splits are kept
        try:
            with interrupt_on_signals():
                encode_splits(tok, data, args.out, [split], batch_size=args.batch_size,
                              num_workers=args.num_workers, max_examples=args.max_examples,
                              overwrite=args.overwrite, tokenizer_run=args.tokenizer_run, log=print)
        except KeyboardInterrupt as err:
            name = getattr(err, "signal_name", "SIGINT")
            raise _encoding_interrupted(args, finished, split, splits[splits.index(split):], name) from None
        finished.append(split)
    shapes = ", ".join(f"{h}x{w}" for h, w in tok.code_shapes)
    print(f"codes of tokenizer {tok.identity} (levels {shapes}, K {tok.codebook_sizes}); "
          f"manifest: {Path(args.out) / 'codes.json'}")
    return 0


def _encoding_interrupted(args: argparse.Namespace, finished: list[str], split: str, rest: list[str],
                          signal_name: str = "SIGINT"):
    """What a Ctrl-C during `hqvae encode` leaves and what running it again does: finished
    splits are complete datasets on disk that a rerun keeps (without --overwrite); the split
    it stopped in is not written (its partial rows are dropped) and is encoded from its start."""
    kept = (f"split{'s' if len(finished) > 1 else ''} {', '.join(map(repr, finished))} finished "
            f"and kept in {args.out}" if finished else "no split finished")
    if not args.overwrite:
        again = (f"Run the same command again to continue: finished splits are kept and split "
                 f"{split!r} is encoded from its start")
    elif finished:  # --overwrite would encode the finished splits a second time
        again = (f"Running the same command again encodes every split again (--overwrite); to "
                 f"continue, run it with {' '.join(f'--split {s}' for s in rest)} instead")
    else:
        again = "Run the same command again to encode from the start"
    return Interrupted(f"{signal_name}: stopped while encoding split {split!r} ({kept}). {again}")


def _train_prior(args: argparse.Namespace) -> int:
    from prior.train import format_summary, train_prior  # imported on use: it loads torch

    cfg = load_prior_config(args.config, args.overrides)
    results = train_prior(cfg, levels=args.level)
    if not results:  # a non-main process of a data-parallel run
        return 0
    print(format_summary(results, cfg.run_dir))
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    # imported on use, as every command's: the CLI starts without torch or the trainer
    from sampling.classifier.train import format_summary, train_classifier

    cfg = load_classifier_config(args.config, args.overrides)
    metrics = train_classifier(cfg)
    if not metrics:  # a non-main process of a data-parallel run
        return 0
    print(format_summary(metrics, cfg.run_dir))
    return 0


def add_train_tokenizer(sub) -> None:
    p = sub.add_parser("train-tokenizer", help="train a stage-one HQ-VAE tokenizer")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides alone work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=500")
    p.set_defaults(func=_train_tokenizer)


def add_encode(sub) -> None:
    p = sub.add_parser("encode", help="encode dataset splits into codes for stage two")
    p.add_argument("tokenizer_run", help="tokenizer run directory (or its model.safetensors)")
    p.add_argument("--out", required=True, help="codes directory to write")
    add_data_arguments(p)
    p.add_argument("--split", action="append",
                   help="split to encode (repeatable; default: the run's train and eval splits)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--max-examples", type=positive_int, help="encode at most this many examples per split")
    p.add_argument("--num-workers", type=non_negative_int, default=0, help="DataLoader workers decoding the data")
    p.add_argument("--overwrite", action="store_true", help="re-encode splits already in --out")
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=_encode)


def add_train_prior(sub) -> None:
    p = sub.add_parser("train-prior", help="train the autoregressive priors on encoded codes")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides alone work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.codes=runs/codes")
    p.add_argument("--level", type=int, action="append",
                   help="train only this level (repeatable; default: every level, top first)")
    p.set_defaults(func=_train_prior)


def add_train_classifier(sub) -> None:
    p = sub.add_parser("train-classifier", help="train a classifier of the data's classes (images or "
                       "spectrograms): class accuracy of samples, audio FID features")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides alone work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=500")
    p.set_defaults(func=_train_classifier)
