"""`hqvae sample`: its flags, one per field of :class:`SamplingSettings` (default, help and
the name in messages come from there), their checks and the run."""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing

from engine.devices import resolve_device
from engine.run_dir import check_folder, check_writable, hold_folder
from hqvae.arguments import DEVICE_HELP
from sampling.settings import SamplingSettings, flag_names


def _per_level_arg(text: str | None, cast, name: str):
    """'0.9' -> 0.9 (every level); '1.0,0.8' -> [1.0, 0.8] (one per level)."""
    if text is None:
        return None
    try:
        values = [cast(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--{name}: {text!r} is not a number or a comma-separated list of numbers") from None
    return values[0] if len(values) == 1 else values


# the sampling settings' flags (--top-p ...), also the names in sample_into's messages
SAMPLE_FLAGS = {**flag_names(), "out": "--out"}
# settings given one value or one per level ("1.0,0.8"), parsed after argparse so that a
# bad list is a one-line error naming the flag
PER_LEVEL = {"temperature": float, "top_k": int, "top_p": float}


def sampling_settings(args: argparse.Namespace) -> SamplingSettings:
    """The sampling settings of `hqvae sample`'s arguments, checked (a bad value is one line
    naming its flag, before any folder or model is touched)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(SamplingSettings)}
    for name, cast in PER_LEVEL.items():
        if isinstance(values[name], str):  # given on the command line, not the default
            values[name] = _per_level_arg(values[name], cast, name.replace("_", "-"))
    settings = SamplingSettings(**values)
    settings.validate(SAMPLE_FLAGS)
    return settings


def _sample(args: argparse.Namespace) -> int:
    settings = sampling_settings(args)
    check_folder(args.out, "samples", "--out")  # before any sampling: refuse a folder not ours
    check_writable(args.out, "--out")
    with hold_folder(args.out, "samples", "--out"):  # a second process writing it is refused
        return _sample_into(args, settings)


def _sample_into(args: argparse.Namespace, settings: SamplingSettings) -> int:
    # imported when sampling: it loads torch, which `hqvae --help` and the other commands' start skip
    from sampling.sample_set import sample_into

    record = sample_into(args.out, args.prior_run, args.tokenizer, settings,
                         device=resolve_device(args.device), flags=SAMPLE_FLAGS)
    kind = "clips" if record["modality"] == "audio" else "images"
    seconds = record["sampling_seconds"]
    print(f"sampled {settings.n} {kind} in {seconds:.1f}s "
          f"({record['tokens_per_s']:.0f} tokens/s, {settings.n / max(seconds, 1e-9):.1f} {kind}/s)")
    print(f"wrote {args.out}: {'audio/*.wav' if kind == 'clips' else 'images/*.png'}, grid.png, "
          f"codes.safetensors, samples.json" + (", labels.json" if settings.labelled() else "")
          + (" (replacing the sample set that was there)" if record.replaced == "finished" else ""))
    return 0


def _whole_number(text: str) -> int:
    """A whole number, also written in scientific notation (``--n 1e6``)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not (math.isfinite(number) and number.is_integer()):
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    return int(number)


def _add_sampling_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per field of SamplingSettings, with its default and help; the values are
    parsed here and checked by SamplingSettings.validate (:func:`sampling_settings`)."""
    hints = typing.get_type_hints(SamplingSettings)
    for f in dataclasses.fields(SamplingSettings):
        flag, tp = SAMPLE_FLAGS[f.name], hints[f.name]
        kwargs: dict = {"default": f.default, "help": f.metadata["help"]}
        if tp is bool:
            kwargs["action"] = "store_true"
        elif typing.get_origin(tp) is typing.Literal:
            kwargs["choices"] = typing.get_args(tp)
        elif f.name in PER_LEVEL or f.name == "label":
            pass  # given, a string: sampling_settings reads it
        elif float in typing.get_args(tp) or tp is float:
            kwargs["type"] = float
        else:  # a count or a seed
            kwargs["type"] = _whole_number
        p.add_argument(flag, **kwargs)


def add_sample_command(sub) -> None:
    """The ``sample`` subcommand of the ``hqvae`` parser (``sub``: its subparsers)."""
    p = sub.add_parser("sample", help="sample new images / audio from trained priors")
    p.add_argument("prior_run", help="prior run directory (from train-prior)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--tokenizer", help="tokenizer run (default: the one recorded with the priors)")
    _add_sampling_arguments(p)
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=_sample)
