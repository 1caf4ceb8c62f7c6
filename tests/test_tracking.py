"""Live experiment tracking (`train.report_to`): a tiny tokenizer and a two-level prior log
every metrics.jsonl number and their config to TensorBoard event files, read back here; a
resumed run appends; unknown or uninstalled trackers are refused before any work.

The event files are read with tensorboardX's protocol buffers (the dev extra installs
tensorboardX, which Accelerate's TensorBoard tracker writes with when the tensorboard
package, with its gRPC server dependencies, is not installed)."""

import json
import shutil
import struct
from collections import defaultdict

import accelerate.utils
import pytest
from test_audio_classifier import TINY as TINY_CLASSIFIER  # tests/test_audio_classifier.py
from test_prior import TINY_PRIOR, TINY_TOK  # tests/test_prior.py
from test_reliability import tiny_train  # tests/test_reliability.py

from engine.config import ConfigError
from engine.tracking import Tracking, hyperparameters
from hqvae.cli import main
from prior.codes import encode_split
from prior.config import load_prior_config
from prior.train import train_prior
from sampling.classifier.config import load_classifier_config
from sampling.classifier.train import train_classifier
from tokenizer.config import load_tokenizer_config
from tokenizer.data import build_dataset
from tokenizer.pretrained import Tokenizer
from tokenizer.train import train_tokenizer

TB = "train.report_to=[tensorboard]"


def events(folder):
    """Every event of the TensorBoard files under ``folder`` (TFRecord framing: length,
    its CRC, the serialized Event, its CRC)."""
    from tensorboardX.proto.event_pb2 import Event

    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i: i + 8])
            yield Event.FromString(data[i + 12: i + 12 + n])
            i += 12 + n + 4


def scalars(folder) -> dict[str, dict[int, float]]:
    """{tag: {step: value}}; fails if a step of a tag is logged twice."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for ev in events(folder):
        for v in ev.summary.value:
            if v.WhichOneof("value") == "simple_value":
                assert ev.step not in out[v.tag], f"{v.tag} step {ev.step} logged twice"
                out[v.tag][ev.step] = v.simple_value
    return out


def hparams(folder) -> list[dict]:
    """The hyperparameters of each hparams session under ``folder``, oldest first."""
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    sessions = []
    for sub in sorted((p for p in folder.iterdir() if p.is_dir()), key=lambda p: float(p.name)):
        for ev in events(sub):
            for v in ev.summary.value:
                if v.tag == "_hparams_/session_start_info":
                    info = HParamsPluginData.FromString(v.metadata.plugin_data.content)
                    sessions.append({k: getattr(x, x.WhichOneof("kind"))
                                     for k, x in info.session_start_info.hparams.items()})
    return sessions


def jsonl(run_dir, split, key) -> dict[int, float]:
    return {r["step"]: r[key] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
            if r["split"] == split and key in r}


def assert_mirrors(run_dir, tags):
    """Each tag ``split/key`` holds exactly the metrics.jsonl values of that key."""
    got = scalars(run_dir / "trackers" / "hqvae")
    for tag in tags:
        split, key = tag.split("/", 1)
        want = jsonl(run_dir, split, key)
        assert want, tag
        assert got[tag] == pytest.approx(want, rel=1e-6), tag
    return got


@pytest.fixture(scope="module")
def tokenizer_run(tmp_path_factory):
    """A stochastic (SQ-VAE-2) tokenizer trained 5 steps, evaluated at step 2 and at the end."""
    run = tmp_path_factory.mktemp("track") / "tok"
    cfg = load_tokenizer_config(None, [f"run_dir={run}", *TINY_TOK, "model.preset=sqvae2",
                                       "train.eval_every=2", "train.ckpt_every=5", TB])
    train_tokenizer(cfg)
    return run


def test_tokenizer_run_logs_every_metrics_line_and_its_config(tokenizer_run):
    run = tokenizer_run
    got = assert_mirrors(run, ["train/loss", "train/lr", "train/mse", "train/l0/var", "train/l1/var",
                               "train/tau", "eval/l0/perplexity", "eval/l1/codes_used", "eval/rmse",
                               "eval/nonfinite_steps_skipped"])
    assert sorted(got["train/loss"]) == [1, 2, 3, 4, 5]
    assert sorted(got["eval/l0/perplexity"]) == [2, 4]  # the periodic evaluations
    assert sorted(got["eval/rmse"]) == [2, 4, 5]  # ... and the final one
    assert "train/split" not in got and "eval/final" not in got
    (hp,) = hparams(run / "trackers" / "hqvae")
    assert hp["train.lr"] == pytest.approx(1e-3) and hp["model.preset"] == "sqvae2"
    assert hp["train.report_to.0"] == "tensorboard" and hp["model.layers.1.codebook_size"] == 32
    assert hp["run_dir"] == str(run)
    # everything the trackers wrote is under the run directory's trackers/
    assert {p.name for p in run.iterdir()} >= {"trackers", "metrics.jsonl"}
    assert (run / "trackers" / "run_id").is_file()


def test_resumed_run_appends_to_its_tracker_run(tokenizer_run, tmp_path):
    run = tmp_path / "tok"
    shutil.copytree(tokenizer_run, run)  # the fixture's run stays as it is for the other tests
    run_id = (run / "trackers" / "run_id").read_text()
    cfg = load_tokenizer_config(None, [f"run_dir={run}", *TINY_TOK, "model.preset=sqvae2",
                                       "train.eval_every=2", "train.ckpt_every=5", TB, "train.steps=7"])
    assert train_tokenizer(cfg)["train"]["resumed_from"] == 5
    got = assert_mirrors(run, ["train/loss", "train/tau"])
    assert sorted(got["train/loss"]) == [1, 2, 3, 4, 5, 6, 7]
    assert sorted(got["eval/rmse"]) == [2, 4, 5, 6, 7]
    assert len(list((run / "trackers" / "hqvae").glob("events.out.tfevents.*"))) == 2
    # TensorBoard is told to hide what an interrupted run logged after its checkpoint
    assert [ev.step for ev in events(run / "trackers" / "hqvae") if ev.HasField("session_log")] == [6]
    assert (run / "trackers" / "run_id").read_text() == run_id  # the same tracker run
    assert [h["train.steps"] for h in hparams(run / "trackers" / "hqvae")] == [5, 7]


def test_prior_levels_log_to_their_own_trackers(tokenizer_run, tmp_path):
    tok = Tokenizer.from_pretrained(tokenizer_run)
    for split in ("train", "test"):
        encode_split(tok, build_dataset(tok.config.data, split), tmp_path / "codes", split,
                     batch_size=16, progress=False)
    run = tmp_path / "prior"
    cfg = load_prior_config(None, [f"data.codes={tmp_path / 'codes'}", f"run_dir={run}", *TINY_PRIOR,
                                   "train.steps=3", "train.eval_every=2", TB])
    train_prior(cfg)
    for level in (0, 1):
        got = assert_mirrors(run / f"level_{level}", ["train/loss", "train/lr", "eval/bits_per_token"])
        assert sorted(got["train/lr"]) == [1, 2, 3]
        assert got["train/lr"][1] == pytest.approx(5e-4)  # warmup: 1/2 of train.lr at step 1
        assert sorted(got["eval/bits_per_token"]) == [2, 3]
        (hp,) = hparams(run / f"level_{level}" / "trackers" / "hqvae")
        assert hp["level"] == level and hp["model.n_embd"] == 32
    assert not (run / "trackers").exists()


def test_classifier_logs_its_losses_and_accuracy(tmp_path):
    run = tmp_path / "clf"
    cfg = load_classifier_config(None, [f"run_dir={run}", *TINY_CLASSIFIER, "train.steps=3",
                                        "train.log_every=1", "train.eval_every=2", TB])
    train_classifier(cfg)
    got = assert_mirrors(run, ["train/loss", "train/lr", "eval/accuracy", "eval/loss"])
    assert sorted(got["train/loss"]) == [1, 2, 3] and sorted(got["eval/accuracy"]) == [2, 3]
    assert hparams(run / "trackers" / "hqvae")[0]["model.widths.2"] == 32


def test_the_loop_alone_opens_and_ends_its_own_trackers(tmp_path):
    # engine.trainer.train without a stage around it (no finish_run): its own Tracking
    _, result = tiny_train(tmp_path / "run", steps=4, report_to=["tensorboard"])
    got = assert_mirrors(tmp_path / "run", ["train/loss", "train/lr"])
    assert sorted(got["train/loss"]) == [1, 2, 3, 4]
    assert hparams(tmp_path / "run" / "trackers" / "hqvae") == [{"width": 4}]


def test_trackers_are_off_by_default(tmp_path):
    cfg = load_tokenizer_config(None, [f"run_dir={tmp_path}", "model.preset=vqvae"])
    assert cfg.train.report_to == [] and Tracking(cfg.train.report_to, tmp_path).accelerator_kwargs() == {}


@pytest.mark.parametrize("value, message", [
    ("[tensorbord]", "train.report_to: 'tensorbord' is not a supported tracker; choose from tensorboard, trackio, wandb"),
    ("[mlflow]", "train.report_to: 'mlflow' is not a supported tracker"),
    ("tensorboard", "train.report_to: expected a list, got 'tensorboard'"),
    ("[tensorboard, tensorboard]", "train.report_to: 'tensorboard' is listed twice"),
])
def test_unknown_tracker_is_refused_at_config_load(value, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_tokenizer_config(None, ["model.preset=vqvae", f"train.report_to={value}"])
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_prior_config(None, [f"train.report_to={value}"])


@pytest.mark.e2e
def test_uninstalled_tracker_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # as if not installed (and so never reaching the network, installed or not)
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    monkeypatch.setattr(accelerate.utils, "is_trackio_available", lambda: False)
    run = tmp_path / "run"
    rc = main(["train-tokenizer", f"run_dir={run}", "model.preset=vqvae", "train.report_to=[wandb]"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "train.report_to: 'wandb' needs the wandb package, which is not installed" in err
    assert len(err.splitlines()) == 1 and not run.exists()
    with pytest.raises(ConfigError, match="train.report_to: 'trackio' needs the trackio package"):
        train_prior(load_prior_config(None, [f"data.codes={tmp_path}", f"run_dir={run}",
                                             "train.report_to=[trackio]"]))
    assert not run.exists()


def test_pipeline_checks_every_stage_tracker_before_the_first(tmp_path, monkeypatch):
    from hqvae.pipeline import check_trackers, load_pipeline_config

    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    cfg = load_pipeline_config("configs/quickstart.yaml", [f"run_dir={tmp_path}",
                                                           "image.prior.train.report_to=[tensorboard, wandb]"])
    with pytest.raises(ConfigError, match=r"image\.prior\.train\.report_to: 'wandb' needs"):
        check_trackers(cfg)


def test_hyperparameters_are_flat_scalars():
    config = {"train": {"lr": 1e-3, "report_to": []}, "model": {"layers": [{"k": 8}, {"k": 16}]},
              "eval": {}, "tokenizer": None, "name": "x"}
    assert hyperparameters(config) == {"train.lr": 1e-3, "train.report_to": None, "model.layers.0.k": 8,
                                       "model.layers.1.k": 16, "eval": None, "tokenizer": None, "name": "x"}


def test_a_restart_in_the_same_second_keeps_the_first_event_file(tmp_path, monkeypatch):
    """TensorBoard names event files by the second and the host; a run resumed within the
    same second used to reopen (and erase) the first run's file."""
    import time

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)  # every file opened "at once"
    for start, steps in ((0, (1, 2)), (2, (3, 4))):
        AcceleratorState._reset_state()
        tracking = Tracking(["tensorboard"], tmp_path)
        tracking.start(Accelerator(**tracking.accelerator_kwargs()), start, {"train": {"lr": 1e-3}})
        for step in steps:
            tracking.log({"step": step, "split": "train", "loss": float(step)})
        tracking.end()
    AcceleratorState._reset_state()
    files = list((tmp_path / "trackers" / "hqvae").glob("events.out.tfevents.*"))
    assert len(files) == 2
    assert scalars(tmp_path / "trackers" / "hqvae")["train/loss"] == {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}
