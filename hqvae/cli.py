"""hqvae: HQ-VAE tokenizers, per-level transformer priors, sampling and FID.

Each command's own --help lists its arguments; configs take key=value overrides."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from engine.config import ConfigError, read_yaml, to_dict, yaml_dump
from engine.signals import Interrupted
from hqvae.process_group import end_process_group
from hqvae.sample_command import add_sample_command
from hqvae.score_commands import add_eval_tokenizer, add_sample_scores
from hqvae.train_commands import (
    add_encode,
    add_train_classifier,
    add_train_prior,
    add_train_tokenizer,
)
from prior.config import load_prior_config
from sampling.classifier.config import load_classifier_config
from tokenizer.config import PRESETS, load_tokenizer_config


def _report(args: argparse.Namespace) -> int:
    # imported on use: the report's modules load numpy
    from hqvae.report import count_media, write_report

    path = write_report(args.run_dir, args.out)
    n = count_media(path.read_text(encoding="utf-8"))
    print(f"wrote {path} ({n['images']} images, {n['audio']} audio players, {n['plots']} plots)")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    # imported on use: the pipeline's modules load numpy
    from hqvae.pipeline import format_summary, load_pipeline_config, run_pipeline

    cfg = load_pipeline_config(args.config, args.overrides)
    summary = run_pipeline(cfg)
    print(format_summary(summary))
    return 0


CONFIG_KINDS = ("tokenizer", "prior", "classifier", "pipeline")
# the loader of each kind of config but the pipeline's
CONFIG_LOADERS = {"tokenizer": load_tokenizer_config, "prior": load_prior_config,
                  "classifier": load_classifier_config}


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
    if kind == "pipeline":
        from hqvae.pipeline import load_pipeline_config  # imported on use: it loads numpy

        load = load_pipeline_config
    else:
        load = CONFIG_LOADERS[kind]
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hqvae", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hqvae {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    add_train_tokenizer(sub)
    add_eval_tokenizer(sub)
    add_encode(sub)
    add_train_prior(sub)
    add_sample_command(sub)
    add_train_classifier(sub)
    add_sample_scores(sub)

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
        end_process_group()


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


def _close_progress_bars() -> None:
    """A bar the error interrupted would leave its line unfinished, and the error message
    would start in the middle of it: close open bars first (each ends its line)."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


if __name__ == "__main__":
    sys.exit(main())
