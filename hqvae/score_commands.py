"""The scoring commands of `hqvae`: eval-tokenizer, audio-fid, classify and fid (their
arguments and what each runs)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from engine.config import ConfigError, validate
from engine.devices import resolve_device
from engine.files import write_text_atomic
from engine.run_dir import check_folder, check_output_file, check_writable, hold_folder
from hqvae.arguments import DEVICE_HELP, add_data_arguments, positive_int


def _eval_tokenizer(args: argparse.Namespace) -> int:
    # imported on use, as every command's models and scorers: they load torch, which
    # `hqvae --help` and the other commands start without
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
    perceptual = cfg.loss.perceptual
    for flag, value, field in (("--lpips-vgg", args.lpips_vgg, "vgg_path"),
                               ("--lpips-heads", args.lpips_heads, "heads_path")):
        if value is not None:
            if not Path(value).expanduser().is_file():
                raise ConfigError(f"{flag}: no file at {Path(value).expanduser()}")
            perceptual = dataclasses.replace(perceptual, **{field: value})
    loss = dataclasses.replace(cfg.loss, perceptual=perceptual)
    cfg = dataclasses.replace(cfg, data=data, eval=eval_cfg, loss=loss)
    validate(cfg)
    if cfg.data.shape != tok.input_shape:
        raise ConfigError(f"data: shape {cfg.data.shape} differs from the tokenizer's {tok.input_shape}")
    dataset = eval_dataset(cfg.data, cfg.data.eval_split, cfg.eval.max_examples)
    with hold_folder(out, "tokenizer-eval", "--out"):  # a second evaluation writing it is refused
        metrics = run_tokenizer_evaluation(tok, cfg, dataset, out, rfid=args.rfid)
    print(format_summary(metrics, out))
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
    print(text)
    if out:
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


def add_eval_tokenizer(sub) -> None:
    p = sub.add_parser("eval-tokenizer", help="evaluate a trained tokenizer: RMSE / PSNR / SSIM (images) or LSD "
                       "(audio), per-layer usage and collapse; rFID with --rfid")
    p.add_argument("run_dir", help="tokenizer run directory (or its model.safetensors)")
    add_data_arguments(p)
    p.add_argument("--split", help="split to evaluate (default: the run's eval split)")
    p.add_argument("--max-examples", type=positive_int, help="evaluate at most this many examples")
    p.add_argument("--out", help="output folder (default: RUN_DIR/eval)")
    p.add_argument("--device", help=DEVICE_HELP)
    p.add_argument("--rfid", action="store_true",
                   help="also report rFID: FID of the reconstructions vs the originals (images)")
    p.add_argument("--lpips-vgg", metavar="FILE", help="VGG16 weights for LPIPS (images; default: the run's "
                   "loss.perceptual.vgg_path, else the local torch / Hugging Face caches; none found: no LPIPS)")
    p.add_argument("--lpips-heads", metavar="FILE", help="LPIPS linear heads (default: the run's "
                   "loss.perceptual.heads_path, else the installed lpips package)")
    p.set_defaults(func=_eval_tokenizer)


def add_sample_scores(sub) -> None:
    """audio-fid, classify and fid: scores of a folder of samples."""
    p = sub.add_parser("audio-fid", help="audio FID (classifier features) of a folder of WAV files")
    p.add_argument("dir", help="folder of generated audio files (or a `hqvae sample` output folder)")
    p.add_argument("--classifier", required=True, help="classifier run directory (from train-classifier)")
    p.add_argument("--ref", help="reference data as DATASET[:split], e.g. parquet:test or tones:test "
                   "(default: the classifier's data and eval split)")
    p.add_argument("--path", help="data path of the reference (parquet / audiofolder sources)")
    p.add_argument("--labels", help="JSON {file name: label} of class-conditional samples: also report "
                   "the classifier's accuracy (default: DIR/labels.json when present)")
    p.add_argument("--max-examples", type=positive_int, help="use at most this many files / examples on each side")
    p.add_argument("--max-ref", type=int, help=argparse.SUPPRESS)  # renamed: refused with a hint
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--recursive", action="store_true", help="also take audio files in subfolders of DIR")
    p.add_argument("--no-cache", action="store_true", help="recompute the reference features")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=_audio_fid)

    p = sub.add_parser("classify", help="class accuracy of labelled samples (images or WAV files): "
                       "does a sample show the class it was drawn for?")
    p.add_argument("dir", help="a `hqvae sample` output folder (images/ or audio/ and labels.json) "
                   "or any folder of images / audio files")
    p.add_argument("--classifier", required=True, help="classifier run directory (from train-classifier)")
    p.add_argument("--labels", help="JSON {file name: class index or name} (default: DIR/labels.json)")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--recursive", action="store_true", help="audio: also take files in subfolders of DIR")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=_classify)

    p = sub.add_parser("fid", help="image FID / KID of a folder of PNGs against a dataset split")
    p.add_argument("dir", help="folder of generated images (PNG; e.g. the images/ of `hqvae sample`)")
    p.add_argument("--ref", required=True, help="reference as DATASET[:split] (data.source syntax: "
                   "shapes, a parquet file or folder, imagefolder, a hub name; default split: test)")
    p.add_argument("--path", help="data path of the reference (parquet / imagefolder sources)")
    p.add_argument("--image-size", type=positive_int,
                   help="read the reference at this size (default: the samples' size)")
    p.add_argument("--max-examples", type=positive_int, help="use at most this many images on each side")
    p.add_argument("--kid", action="store_true", help="also report KID (mean ± std over subsets)")
    p.add_argument("--prc", action="store_true",
                   help="also report precision and recall (Kynkäänniemi et al. 2019, k=3)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--no-cache", action="store_true", help="recompute the reference features")
    p.add_argument("--skip-bad-examples", action="store_true",
                   help="skip undecodable reference rows (warned about) instead of failing on the first")
    p.add_argument("--out", help="also write the results as JSON here")
    p.add_argument("--device", help=DEVICE_HELP)
    p.set_defaults(func=_fid)
