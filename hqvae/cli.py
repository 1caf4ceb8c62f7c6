"""hqvae: HQ-VAE tokenizers, per-level transformer priors, sampling and FID.

Each command's own --help lists its arguments; configs take key=value overrides."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.config import ConfigError
from engine.devices import resolve_device
from engine.run_dir import check_folder, check_output_file, check_writable, hold_folder
from hqvae.sample_command import add_sample_command


def _train_tokenizer(args: argparse.Namespace) -> int:
    from tokenizer.config import load_tokenizer_config
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


def _eval_tokenizer(args: argparse.Namespace) -> int:
    import dataclasses

    from engine.config import validate
    from sampling.tokenizer_eval import run_tokenizer_evaluation
    from tokenizer.data import eval_dataset
    from tokenizer.pretrained import Tokenizer
    from tokenizer.train import format_summary

    if not args.out and Path(args.run_dir).expanduser().is_file():
        # a weights file (as encode takes one): its evaluation goes to eval/ beside it, where
        # a run folder's would go, not below the file
        args.out = str(Path(args.run_dir).expanduser().parent / "eval")
    out = Path(args.out) if args.out else Path(args.run_dir) / "eval"
    check_folder(out, "tokenizer-eval", "--out")  # new, empty or an evaluation of ours
    check_writable(out, "--out")  # before the evaluation, not after it
    device = resolve_device(args.device)
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
    dataset = eval_dataset(cfg.data, cfg.data.eval_split, cfg.eval.max_examples)
    with hold_folder(out, "tokenizer-eval", "--out"):  # a second evaluation writing it is refused
        metrics = run_tokenizer_evaluation(tok, cfg, dataset, out, rfid=args.rfid)
    print(format_summary(metrics, out))
    return 0


def _encode(args: argparse.Namespace) -> int:
    import dataclasses

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
    from engine.signals import interrupt_on_signals
    from prior.codes import encode_splits

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
    from engine.signals import Interrupted

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
    from prior.config import load_prior_config
    from prior.train import format_summary, train_prior

    cfg = load_prior_config(args.config, args.overrides)
    results = train_prior(cfg, levels=args.level)
    if not results:  # a non-main process of a data-parallel run
        return 0
    print(format_summary(results, cfg.run_dir))
    return 0


def _train_classifier(args: argparse.Namespace) -> int:
    # imported on use, as every command's: the CLI starts without torch or the trainer
    from sampling.classifier.config import load_classifier_config
    from sampling.classifier.train import format_summary, train_classifier

    cfg = load_classifier_config(args.config, args.overrides)
    metrics = train_classifier(cfg)
    if not metrics:  # a non-main process of a data-parallel run
        return 0
    print(format_summary(metrics, cfg.run_dir))
    return 0


def _audio_fid(args: argparse.Namespace) -> int:
    # imported on use, as every command's: the CLI starts without torch-fidelity
    from sampling.metrics.audio_fid import score_folder
    from sampling.metrics.scorer import format_report

    if args.out:
        check_output_file(args.out)  # before the scoring, not after it
    if args.max_ref is not None:
        raise ValueError("--max-ref: renamed --max-examples (at most N on each side, as in `hqvae fid`)")
    result = score_folder(
        args.dir, args.classifier, reference=args.ref, path=args.path, labels=args.labels,
        max_examples=args.max_examples, batch_size=args.batch_size, device=resolve_device(args.device),
        recursive=args.recursive, cache=not args.no_cache,
    )
    return _report_result(format_report(result), result, args.out)


def _classify(args: argparse.Namespace) -> int:
    # imported on use, as every command's: the CLI starts without torch-fidelity
    from sampling.metrics.class_accuracy import score_folder
    from sampling.metrics.scorer import format_report

    if args.out:
        check_output_file(args.out)  # before the scoring, not after it
    result = score_folder(args.dir, args.classifier, labels=args.labels, batch_size=args.batch_size,
                          device=resolve_device(args.device), recursive=args.recursive)
    return _report_result(format_report(result), result, args.out)


def _report_result(text: str, result: dict, out: str | None) -> int:
    """Print a scoring command's report and, with --out, save its result as JSON."""
    import json

    print(text)
    if out:
        from engine.files import write_text_atomic

        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(result, indent=2))  # never a half-written result
        print(f"wrote {out}")
    return 0


def _fid(args: argparse.Namespace) -> int:
    # imported on use, as every command's: the CLI starts without torch-fidelity
    from sampling.metrics.image_fid import score_folder
    from sampling.metrics.scorer import format_report

    if args.out:
        check_output_file(args.out)  # before the scoring, not after it
    result = score_folder(
        args.dir, args.ref, path=args.path, image_size=args.image_size,
        max_examples=args.max_examples, kid=args.kid, batch_size=args.batch_size,
        device=resolve_device(args.device), cache=not args.no_cache, progress=True,
        skip_bad_examples=args.skip_bad_examples, prc=args.prc,
    )
    return _report_result(format_report(result), result, args.out)


def _report(args: argparse.Namespace) -> int:
    from hqvae.report import count_media, write_report

    path = write_report(args.run_dir, args.out)
    n = count_media(path.read_text(encoding="utf-8"))
    print(f"wrote {path} ({n['images']} images, {n['audio']} audio players, {n['plots']} plots)")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from hqvae.pipeline import format_summary, load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(args.config, args.overrides)
    summary = run_pipeline(cfg)
    print(format_summary(summary))
    return 0


CONFIG_KINDS = ("tokenizer", "prior", "classifier", "pipeline")


def _config_kind(data: dict) -> str:
    """Which stage a config file is for, from its keys."""
    if "image" in data or "audio" in data:
        return "pipeline"
    model = data.get("model") if isinstance(data.get("model"), dict) else {}
    if "augment" in data or "widths" in model:
        return "classifier"
    codes = isinstance(data.get("data"), dict) and "codes" in data["data"]
    if codes or "levels" in data or "class_cond" in data or "tokenizer" in data:
        return "prior"
    return "tokenizer"


def _config(args: argparse.Namespace) -> int:
    from engine.config import read_yaml, to_dict, yaml_dump
    from tokenizer.config import PRESETS

    target, overrides = args.target, list(args.overrides)
    if target in PRESETS:  # a tokenizer preset: its config with every default filled in
        kind, path, overrides = args.kind or "tokenizer", None, [f"model.preset={target}", *overrides]
        if kind != "tokenizer":
            raise ValueError(f"--kind {kind}: {target!r} is a tokenizer preset")
    elif "=" in target:  # overrides alone, on the defaults of --kind
        kind, path, overrides = args.kind or "tokenizer", None, [target, *overrides]
    else:
        path = Path(target)
        if not path.is_file():
            raise ConfigError(f"{target}: neither a config file nor a tokenizer preset "
                              f"({', '.join(PRESETS)})")
        kind = args.kind or _config_kind(read_yaml(path))
    if kind == "tokenizer":
        from tokenizer.config import load_tokenizer_config as load
    elif kind == "prior":
        from prior.config import load_prior_config as load
    elif kind == "classifier":
        from sampling.classifier.config import load_classifier_config as load
    else:
        from hqvae.pipeline import load_pipeline_config as load
    cfg = load(path, overrides)
    print(f"# hqvae config: the resolved {kind} config" + (f" of {path}" if path else "")
          + (f" with {' '.join(args.overrides)}" if args.overrides else "")
          + "; every key with its value (defaults filled in)")
    print(yaml_dump(to_dict(cfg)), end="")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hqvae")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown (not installed)"


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    """--data / --path: the data a tokenizer's own run is replaced with."""
    p.add_argument("--data", help="data source (shapes, tones, parquet, a path, a hub name); default: the run's")
    p.add_argument("--path", help="data path for parquet / imagefolder / audiofolder sources")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hqvae", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hqvae {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-tokenizer", help="train a stage-one HQ-VAE tokenizer")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides alone work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=500")
    p.set_defaults(func=_train_tokenizer)

    p = sub.add_parser("eval-tokenizer", help="evaluate a trained tokenizer: RMSE / PSNR / SSIM (images) or LSD "
                       "(audio), per-layer usage and collapse; rFID with --rfid")
    p.add_argument("run_dir", help="tokenizer run directory (or its model.safetensors)")
    _add_data_arguments(p)
    p.add_argument("--split", help="split to evaluate (default: the run's eval split)")
    p.add_argument("--max-examples", type=_positive_int, help="evaluate at most this many examples")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval)")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--rfid", action="store_true",
                   help="also report rFID: FID of the reconstructions vs the originals (images)")
    p.set_defaults(func=_eval_tokenizer)

    p = sub.add_parser("encode", help="encode dataset splits into codes for stage two")
    p.add_argument("tokenizer_run", help="tokenizer run directory (or its model.safetensors)")
    p.add_argument("--out", required=True, help="codes directory to write")
    _add_data_arguments(p)
    p.add_argument("--split", action="append",
                   help="split to encode (repeatable; default: the run's train and eval splits)")
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--max-examples", type=_positive_int, help="encode at most this many examples per split")
    p.add_argument("--num-workers", type=_non_negative_int, default=0, help="DataLoader workers decoding the data")
    p.add_argument("--overwrite", action="store_true", help="re-encode splits already in --out")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_encode)

    p = sub.add_parser("train-prior", help="train the autoregressive priors on encoded codes")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides alone work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.codes=runs/codes")
    p.add_argument("--level", type=int, action="append",
                   help="train only this level (repeatable; default: every level, top first)")
    p.set_defaults(func=_train_prior)

    add_sample_command(sub)

    p = sub.add_parser("train-classifier", help="train a classifier of the data's classes (images or "
                       "spectrograms): class accuracy of samples, audio FID features")
    p.add_argument("config", nargs="?", help="YAML config (optional: overrides alone work)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=500")
    p.set_defaults(func=_train_classifier)

    p = sub.add_parser("audio-fid", help="audio FID (classifier features) of a folder of WAV files")
    p.add_argument("dir", help="folder of generated audio files (or a `hqvae sample` output folder)")
    p.add_argument("--classifier", required=True, help="classifier run directory (from train-classifier)")
    p.add_argument("--ref", help="reference data as DATASET[:split], e.g. parquet:test or tones:test "
                   "(default: the classifier's data and eval split)")
    p.add_argument("--path", help="data path of the reference (parquet / audiofolder sources)")
    p.add_argument("--labels", help="JSON {file name: label} of class-conditional samples: also report "
                   "the classifier's accuracy (default: DIR/labels.json when present)")
    p.add_argument("--max-examples", type=_positive_int, help="use at most this many files / examples on each side")
    p.add_argument("--max-ref", type=int, help=argparse.SUPPRESS)  # renamed: refused with a hint
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--recursive", action="store_true", help="also take audio files in subfolders of DIR")
    p.add_argument("--no-cache", action="store_true", help="recompute the reference features")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_audio_fid)

    p = sub.add_parser("classify", help="class accuracy of labelled samples (images or WAV files): "
                       "does a sample show the class it was drawn for?")
    p.add_argument("dir", help="a `hqvae sample` output folder (images/ or audio/ and labels.json) "
                   "or any folder of images / audio files")
    p.add_argument("--classifier", required=True, help="classifier run directory (from train-classifier)")
    p.add_argument("--labels", help="JSON {file name: class index or name} (default: DIR/labels.json)")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--recursive", action="store_true", help="audio: also take files in subfolders of DIR")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_classify)

    p = sub.add_parser("fid", help="image FID / KID of a folder of PNGs against a dataset split")
    p.add_argument("dir", help="folder of generated images (PNG; e.g. the images/ of `hqvae sample`)")
    p.add_argument("--ref", required=True, help="reference as DATASET[:split] (data.source syntax: "
                   "shapes, a parquet file or folder, imagefolder, a hub name; default split: test)")
    p.add_argument("--path", help="data path of the reference (parquet / imagefolder sources)")
    p.add_argument("--image-size", type=_positive_int,
                   help="read the reference at this size (default: the samples' size)")
    p.add_argument("--max-examples", type=_positive_int, help="use at most this many images on each side")
    p.add_argument("--kid", action="store_true", help="also report KID (mean ± std over subsets)")
    p.add_argument("--prc", action="store_true",
                   help="also report precision and recall (Kynkäänniemi et al. 2019, k=3)")
    p.add_argument("--batch-size", type=_positive_int, default=32)
    p.add_argument("--no-cache", action="store_true", help="recompute the reference features")
    p.add_argument("--skip-bad-examples", action="store_true",
                   help="skip undecodable reference rows (warned about) instead of failing on the first")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.set_defaults(func=_fid)

    p = sub.add_parser("config", help="print a fully resolved config: every key with its value and default")
    p.add_argument("target", help="a config file, a tokenizer preset (rsqvae, sqvae2, ...) or key=value")
    p.add_argument("overrides", nargs="*", help="key=value overrides, as for the command that takes the config")
    p.add_argument("--kind", choices=CONFIG_KINDS,
                   help="which stage's config (default: told by the file's keys; tokenizer for a preset)")
    p.set_defaults(func=_config)

    p = sub.add_parser("pipeline", help="tokenizer -> encode -> priors -> sample -> FID -> report, "
                       "skipping finished stages")
    p.add_argument("config", nargs="?", help="pipeline YAML config, e.g. configs/quickstart.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. image.sample.n=500")
    p.set_defaults(func=_pipeline)

    p = sub.add_parser("report", help="write a static HTML report of a pipeline run (opens offline)")
    p.add_argument("run_dir", help="pipeline run directory (from `hqvae pipeline`)")
    p.add_argument("--out", help="HTML file to write (default: RUN_DIR/report.html)")
    p.set_defaults(func=_report)
    return parser


def parse_cli(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    # argparse ends a positional list at the first flag, so `train-prior CFG --level 1
    # train.steps=500` would leave the override unparsed: key=value words after flags
    # are overrides too, anything else unknown is still an error
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "config", None) and "=" in args.config:
        # `hqvae train-tokenizer key=value ...` without a config file
        args.overrides = [args.config, *args.overrides]
        args.config = None
    # `~` is the home folder in every path argument, also when quoted past the shell (as in
    # a config's run_dir: engine.config.load_config): one rule, or a command would write a
    # literal ./~ while another looked in the home folder
    for name in PATH_ARGUMENTS:
        value = getattr(args, name, None)
        if isinstance(value, str) and value.startswith("~"):
            setattr(args, name, os.path.expanduser(value))
    return args


PATH_ARGUMENTS = ("config", "run_dir", "tokenizer_run", "prior_run", "tokenizer", "out", "dir",
                  "classifier", "path", "labels", "data", "ref")


def main(argv: list[str] | None = None) -> int:
    from engine.signals import Interrupted

    args = parse_cli(argv)
    try:
        return args.func(args)
    except Interrupted as err:  # Ctrl-C / SIGTERM: what was finished is kept (a checkpoint, codes)
        _close_progress_bars()
        print(f"hqvae {args.command}: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        # Ctrl-C outside the loops that stop cleanly (loading, scoring, a second Ctrl-C):
        # what is written stays as it was (files are written to a temporary name and renamed)
        _close_progress_bars()
        print(f"hqvae {args.command}: stopped by Ctrl-C before it finished; files already written "
              f"are kept, nothing is half-written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConfigError, FileNotFoundError, ValueError) as err:
        if os.environ.get("HQVAE_DEBUG"):  # the full traceback, for bug reports
            raise
        _close_progress_bars()
        print(f"hqvae {args.command}: error: {_error_text(err)}", file=sys.stderr)
        return 2
    finally:
        _end_process_group()


def _error_text(err: BaseException) -> str:
    """The message of an error; one raised in a DataLoader worker process comes back with
    the worker's traceback in its message ("Caught BadExampleError in DataLoader worker
    process 0. Original Traceback ..."), whose last line is the error itself."""
    import re

    text = str(err)
    if text.startswith("Caught ") and "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = re.sub(r"^[\w.]+: ", "", last, count=1)
    return text


def _end_process_group() -> None:
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
    _unpin_group(world)


def _unpin_group(group) -> None:
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


def _close_progress_bars() -> None:
    """A bar the error interrupted would leave its line unfinished, and the error message
    would start in the middle of it: close open bars first (each ends its line)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
