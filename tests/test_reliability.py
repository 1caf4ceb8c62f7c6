"""Reliability (docs/reliability.md): crash and resume, atomic checksummed checkpoints, bad
data, mismatches, non-finite losses, writable outputs, safe loading."""

from __future__ import annotations

import ast
import io
import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.checkpoint import (
    CorruptCheckpointError,
    NoUsableCheckpointError,
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from engine.config import ConfigError
from engine.train_config import TrainConfig
from engine.trainer import CheckpointMismatchError, NonFiniteLossError, train
from hqvae.cli import main
from prior.codes import encode_split
from prior.config import load_prior_config
from prior.train import train_prior
from tokenizer.config import DataConfig, load_tokenizer_config
from tokenizer.data import build_dataset
from tokenizer.pretrained import Tokenizer
from tokenizer.train import train_tokenizer

REPO = Path(__file__).resolve().parents[1]

# -- a tiny model for the engine-level tests ------------------------------------------------


class Tiny(nn.Module):
    """Linear regression with a running-mean buffer (updated in forward, like an EMA
    codebook); ``nan_steps`` (0-based optimizer steps) poison the loss and the buffer."""

    def __init__(self, width: int = 4, nan_steps: tuple[int, ...] = ()):
        super().__init__()
        self.lin = nn.Linear(width, 1)
        self.register_buffer("running", torch.zeros(width))
        self.nan_steps = set(nan_steps)

    def forward(self, x: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        bad = step in self.nan_steps
        if self.training:
            with torch.no_grad():
                self.running.mul_(0.9).add_(0.1 * x.mean(0))
                if bad:
                    self.running.add_(float("nan"))
        loss = (self.lin(x).squeeze(-1) - x.sum(-1)).pow(2).mean()
        if bad:
            loss = loss * float("nan")
        return {"loss": loss}


class Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 32, width: int = 4):
        self.x = torch.randn(n, width, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i]}


def tiny_train(run_dir, steps=6, width=4, nan_steps=(), **cfg):
    torch.manual_seed(0)
    model = Tiny(width, nan_steps)
    tc = TrainConfig(steps=steps, batch_size=4, lr=0.05, progress=False,
                     **{"log_every": 1, "ckpt_every": 2, "keep_last": 3, **cfg})
    result = train(model=model, dataset=Points(width=width), cfg=tc, run_dir=run_dir,
                   config={"width": width})
    return model, result


def logged(run_dir, split="train", key="loss"):
    """{step: value} of metrics.jsonl; fails if a step is logged twice."""
    out = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r.get("split") == split and key in r:
            assert r["step"] not in out, f"step {r['step']} logged twice"
            out[r["step"]] = r[key]
    return out


# -- 2. atomic, checksummed checkpoints ------------------------------------------------------


def test_checkpoints_are_checksummed_and_kept_last_n(tmp_path):
    run = tmp_path / "run"
    tiny_train(run, steps=8, keep_last=2)
    ckpts = list_checkpoints(run)
    assert [p.name for p in ckpts] == ["step_00000006", "step_00000008"]  # keep_last=2
    sums = json.loads((ckpts[-1] / "checksums.json").read_text())["files"]
    assert set(sums) == {"model.safetensors", "optimizer.safetensors", "state.json"}
    verify_checkpoint(ckpts[-1])
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path, damage):
    ref = tmp_path / "ref"
    tiny_train(ref, steps=8)
    run = tmp_path / "run"
    tiny_train(run, steps=6)  # checkpoints 2, 4, 6
    target = run / "checkpoints" / "step_00000006" / "optimizer.safetensors"
    data = target.read_bytes()
    if damage == "truncate":
        target.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    else:
        target.unlink()
    with pytest.raises(CorruptCheckpointError, match="step_00000006"):
        load_checkpoint(target.parent)
    # a stale temp folder of a writer killed mid-checkpoint is ignored and removed
    stale = run / "checkpoints" / ".tmp-step_00000007-999"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    with pytest.warns(UserWarning, match=r"step_00000006.*falling back"):
        _, result = tiny_train(run, steps=8)
    assert result.resumed_from == 4 and result.corrupt_checkpoints == [str(target.parent)]
    assert not stale.exists()
    assert (run / "checkpoints" / "step_00000006.corrupt").is_dir()  # kept for inspection
    assert logged(run) == pytest.approx(logged(ref), rel=1e-6)  # steps 5, 6 re-run once
    assert sorted(logged(run)) == list(range(1, 9))


def test_no_readable_checkpoint_stops_and_touches_nothing(tmp_path):
    """With every kept checkpoint damaged, a resume started over from step 0,
    truncating metrics.jsonl and overwriting the run's files."""
    run = tmp_path / "run"
    tiny_train(run, steps=4, keep_last=1)  # one checkpoint: step 4
    ckpt = run / "checkpoints" / "step_00000004"
    target = ckpt / "model.safetensors"
    data = target.read_bytes()
    target.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # one flipped byte
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with pytest.raises(NoUsableCheckpointError, match=r"no checkpoint can be resumed.*nothing was changed"):
        tiny_train(run, steps=8, keep_last=1)
    after = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # metrics, weights and the damaged checkpoint as they were


@pytest.mark.parametrize("damage", ["empty_state", "step_not_a_number", "checksums_not_records"])
def test_checkpoints_damaged_past_the_checksums_count_as_corrupt(tmp_path, damage):
    run = tmp_path / "run"
    tiny_train(run, steps=4)  # checkpoints 2, 4
    newest = run / "checkpoints" / "step_00000004"
    state = json.loads((newest / "state.json").read_text())
    if damage == "empty_state":
        (newest / "state.json").write_text("{}")
    elif damage == "step_not_a_number":
        (newest / "state.json").write_text(json.dumps({**state, "step": "four"}))
    else:
        (newest / "checksums.json").write_text(json.dumps({"files": {"state.json": 3}}))
    if damage != "checksums_not_records":  # the checksums would catch these edits: drop them
        (newest / "checksums.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="step_00000004"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="falling back"):
        _, result = tiny_train(run, steps=6)
    assert result.resumed_from == 2


def test_a_failed_checkpoint_write_says_what_failed_and_that_the_last_one_is_intact(tmp_path, monkeypatch):
    import engine.trainer as trainer

    real = trainer.save_checkpoint

    def disk_full_at_step_4(run_dir, step, *args, **kwargs):
        if step == 4:
            tmp = Path(run_dir) / "checkpoints" / ".tmp-step_00000004-1"
            tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(b"half")
            raise OSError(28, "No space left on device")
        return real(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_checkpoint", disk_full_at_step_4)
    run = tmp_path / "run"
    with pytest.raises(trainer.CheckpointWriteError,
                       match=r"step 4 could not be written .*No space left on device.*step_00000002 is intact"):
        tiny_train(run, steps=6)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000002"]
    load_checkpoint(run / "checkpoints" / "step_00000002")


def test_resume_in_a_later_epoch_keeps_the_data_order(tmp_path):
    """Regression: the skipping loader of a resumed run restarted accelerate's epoch count
    at 0, replaying epoch 0's order in the middle of epoch 2."""
    def run(path, steps):
        torch.manual_seed(0)
        tc = TrainConfig(steps=steps, batch_size=4, lr=0.05, progress=False, log_every=1, ckpt_every=10)
        train(model=Tiny(), dataset=Points(n=16), cfg=tc, run_dir=path, config={})

    run(tmp_path / "ref", 14)
    run(tmp_path / "run", 10)  # 4 steps per epoch: the checkpoint is 2 steps into epoch 2
    run(tmp_path / "run", 14)
    assert logged(tmp_path / "run") == pytest.approx(logged(tmp_path / "ref"), rel=1e-6)


def test_save_checkpoint_publishes_by_rename(tmp_path, monkeypatch):
    """A crash inside save_checkpoint leaves only a .tmp-* folder, never a step_* one."""
    model = nn.Linear(2, 1)
    opt = torch.optim.AdamW(model.parameters())
    import engine.checkpoint as ck

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 1, model.state_dict(), opt, None, {})
    assert list_checkpoints(tmp_path) == []


# -- 6. non-finite losses ---------------------------------------------------------------------


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    # the NaN enters at optimizer step 5 (1-based); log lines every 3 steps, checkpoints every 2
    with pytest.raises(NonFiniteLossError, match=r"at step 5\b.*step_00000004"):
        tiny_train(run, steps=10, nan_steps=(4,), log_every=3)
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000004"]
    ckpt = load_checkpoint(list_checkpoints(run)[-1])  # verifies checksums
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert sorted(logged(run)) == [3]  # nothing poisoned was logged
    # the CLI reports ValueErrors as an error line (exit 2), not a traceback
    assert issubclass(NonFiniteLossError, ValueError)


class TinyVQ(nn.Module):
    """A linear map into a data-initialised EMA VQ layer; the loss is NaN at `nan_steps`."""

    def __init__(self, nan_steps=(), kind="vq"):
        super().__init__()
        from tokenizer.config import QuantizerConfig
        from tokenizer.quantizers import StochasticQuantizer, VectorQuantizer

        self.lin = nn.Linear(4, 4)
        if kind == "vq":
            self.q = VectorQuantizer(dim=4, codebook_size=8, cfg=QuantizerConfig(kind="vq", ema=True, data_init=True))
        else:  # an SQ layer seeding its codebook and sigma^2 from the first batch
            self.q = StochasticQuantizer(dim=4, codebook_size=8, cfg=QuantizerConfig(
                kind="sq", data_init=True, var_init_from_data=5.0, variance="bounded"))
        self.nan_steps = set(nan_steps)

    def forward(self, x: torch.Tensor, step: int = 0) -> dict[str, torch.Tensor]:
        out = self.q(self.lin(x)[:, :, None, None])
        loss = (out.z_q[:, :, 0, 0] - x).pow(2).mean() + sum(out.losses.values())
        return {"loss": loss * float("nan") if step in self.nan_steps else loss}


@pytest.mark.parametrize("kind", ["vq", "sq"])
def test_skipped_first_step_does_not_lose_the_data_init(tmp_path, kind):
    """The first step seeds the codebook from its batch; when that step is withheld its
    buffers are put back (codebook not initialised), so the next step must seed it again."""
    torch.manual_seed(0)
    model = TinyVQ(nan_steps=(0,), kind=kind)
    random_init = model.q.codebook.clone()
    tc = TrainConfig(steps=3, batch_size=4, lr=0.05, progress=False, log_every=1, ckpt_every=0,
                     nan_policy="skip")
    result = train(model=model, dataset=Points(), cfg=tc, run_dir=tmp_path / "run", config={})
    assert result.nonfinite_steps_skipped == 1
    assert bool(model.q.initialised)
    assert not torch.allclose(model.q.codebook, random_init)
    if kind == "sq":
        assert float(model.q.var_start) != pytest.approx(1.0)  # seeded, not var_init


def test_nan_loss_skip_policy_withholds_the_update_and_counts(tmp_path):
    model, result = tiny_train(tmp_path / "run", steps=8, nan_steps=(2, 5), nan_policy="skip")
    assert result.nonfinite_steps_skipped == 2 and result.step == 8
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())  # buffer restored
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "run")[-1])
    assert int(ckpt["optimizer"]["state"][0]["step"]) == 6  # two AdamW steps withheld
    assert ckpt["counters"]["nonfinite_steps_skipped"] == 2
    losses = logged(tmp_path / "run")
    assert sorted(losses) == [1, 2, 4, 5, 7, 8] and all(np.isfinite(list(losses.values())))
    assert logged(tmp_path / "run", key="nonfinite_steps_skipped")[8] == 2


@pytest.mark.parametrize("override, key", [
    ("train.nan_policy=ignore", "train.nan_policy"),
    ("model.quantizer.tau_init=-1", "model.quantizer.tau_init"),
    ("model.quantizer.tau_min=-0.1", "model.quantizer.tau_min"),
    ("model.quantizer.tau_decay=-1", "model.quantizer.tau_decay"),
    ("train.lr=.nan", "train.lr"),
    ("train.beta2=1.0", "train.beta2"),
])
def test_numeric_settings_are_validated(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_tokenizer_config(None, ["model.preset=sqvae", override])


# -- 5. mismatches ----------------------------------------------------------------------------


def test_checkpoint_of_another_shape_is_named(tmp_path):
    tiny_train(tmp_path / "run", steps=2)
    with pytest.raises(CheckpointMismatchError, match=r"step_00000002.*lin\.weight \(1, 4\).*\(1, 5\)"):
        tiny_train(tmp_path / "run", steps=4, width=5)


def test_tokenizer_resume_with_incompatible_checkpoint(tmp_path):
    args = [f"run_dir={tmp_path / 'run'}", "model.preset=vqvae", *TINY_TOK, "train.steps=1"]
    train_tokenizer(load_tokenizer_config(None, args))
    (tmp_path / "run" / "config.yaml").unlink()  # the run-dir config check cannot see it
    with pytest.raises(CheckpointMismatchError, match=r"checkpoint .*step_00000001.*codebook"):
        train_tokenizer(load_tokenizer_config(None, [*args, "model.layers.0.codebook_size=8",
                                                     "train.steps=2"]))


def test_a_run_that_failed_before_any_work_takes_the_corrected_config(bad_images, tmp_path):
    """A bad row met in the first step stops a run before its first checkpoint: its run_dir
    holds only config.yaml, so the corrected command is not refused as "another run"."""
    run = tmp_path / "run"
    args = [f"run_dir={run}", *TINY_TOK, "model.preset=vqvae", "data.source=parquet",
            f"data.path={bad_images}", "data.image_size=8", "model.downsample=2",
            "train.batch_size=16", "train.steps=1", "eval.max_examples=4"]
    with pytest.raises(ValueError, match=r"row [39] \(file img[39]\.png\): cannot decode"):
        train_tokenizer(load_tokenizer_config(None, args))
    assert (run / "config.yaml").is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = train_tokenizer(load_tokenizer_config(None, [*args, "data.skip_bad_examples=true"]))
    assert fixed["train"]["steps"] == 1
    # once the run has weights, another config is another run
    with pytest.raises(ConfigError, match=r"already holds a run with a different config \(model\.channels"):
        train_tokenizer(load_tokenizer_config(None, [*args, "data.skip_bad_examples=true",
                                                     "model.channels=8"]))


def test_a_pipeline_stage_that_produced_nothing_takes_corrected_settings(tmp_path):
    from engine.config import save_yaml
    from hqvae.pipeline import check_run_dir, load_pipeline_config

    base = [f"run_dir={tmp_path / 'pipe'}", "audio=null"]
    typo = load_pipeline_config(Path("configs/quickstart.yaml"), [*base, "image.tokenizer.data.column=img"])
    from engine.run_dir import write_marker

    (tmp_path / "pipe").mkdir()
    write_marker(tmp_path / "pipe", "pipeline")  # as the failed run left it: marked first,
    save_yaml(typo, tmp_path / "pipe" / "pipeline.yaml")  # then its config
    fixed = load_pipeline_config(Path("configs/quickstart.yaml"), base)
    check_run_dir(fixed)  # the tokenizer stage holds no work: accepted
    weights = tmp_path / "pipe" / "image" / "tokenizer" / "model.safetensors"
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    with pytest.raises(ConfigError, match=r"image\.tokenizer\.data\.column"):
        check_run_dir(fixed)


def test_runs_from_before_a_new_option_still_resume(tmp_path):
    """A config.yaml written before an option existed lacks its key: not another run."""
    from engine.run_dir import config_diff

    assert config_diff({"data": {"a": 1}}, {"data": {"a": 1, "skip_bad_examples": False}}) == []
    assert config_diff({"data": {"a": 1}}, {"data": {"a": 2}}) == ["data.a"]
    # ... inside per-layer / per-level lists too
    assert config_diff({"levels": [{"a": 1}, {}]}, {"levels": [{"a": 1, "new": 2}, {}]}) == []
    assert config_diff({"levels": [{"a": 1}, {}]}, {"levels": [{"a": 2}, {}]}) == ["levels.0.a"]
    assert config_diff({"levels": [{}]}, {"levels": [{}, {}]}) == ["levels"]
    args = [f"run_dir={tmp_path / 'run'}", "model.preset=vqvae", *TINY_TOK, "train.steps=1"]
    train_tokenizer(load_tokenizer_config(None, args))
    saved = tmp_path / "run" / "config.yaml"
    text = saved.read_text()
    # ... and a run from before data.modality was detected and saved (it saved null there)
    assert "  modality: image\n" in text
    saved.write_text(text.replace("  skip_bad_examples: false\n", "").replace("  nan_policy: stop\n", "")
                     .replace("  modality: image\n", "  modality: null\n"))
    assert saved.read_text() != text
    metrics = train_tokenizer(load_tokenizer_config(None, [*args, "train.steps=2"]))
    assert metrics["train"]["resumed_from"] == 1


@pytest.fixture
def unwritable(tmp_path):
    """Paths no one can write: below a regular file (fails for root too) and, when not
    root (root ignores permission bits), inside a read-only folder."""
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    paths = [blocker / "out"]
    if os.geteuid() != 0:
        ro = tmp_path / "readonly"
        ro.mkdir()
        ro.chmod(0o500)
        paths.append(ro / "out")
    yield paths
    for p in tmp_path.iterdir():
        p.chmod(0o700)


@pytest.mark.parametrize("command", ["train-tokenizer", "train-prior", "train-classifier",
                                     "encode", "sample"])
def test_unwritable_output_fails_before_work(unwritable, command, capsys):
    for path in unwritable:
        argv = {
            "train-tokenizer": ["train-tokenizer", f"run_dir={path}", "model.preset=vqvae"],
            "train-prior": ["train-prior", f"run_dir={path}", "data.codes=/nonexistent"],
            "train-classifier": ["train-classifier", f"run_dir={path}"],
            "encode": ["encode", "/nonexistent", "--out", str(path)],
            "sample": ["sample", "/nonexistent", "--out", str(path)],
        }[command]
        assert main(argv) == 2
        err = capsys.readouterr().err
        key = "--out" if command in ("encode", "sample") else "run_dir"
        assert f"{key}: cannot write to {str(path)!r}" in err, err
        assert not path.exists()


def test_only_the_first_process_of_a_machine_probes_the_output(unwritable, monkeypatch):
    # the probe creates and removes folders: several processes doing it at once would fail
    # each other's probes, so the other processes of a launch leave it to local rank 0
    from engine.run_dir import check_writable

    monkeypatch.setenv("LOCAL_RANK", "1")
    check_writable(unwritable[0], "run_dir")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ConfigError, match="run_dir: cannot write"):
        check_writable(unwritable[0], "run_dir")


# -- 3. bad data ------------------------------------------------------------------------------


def png_bytes(seed: int, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def bad_images(tmp_path):
    """train.parquet: 16 rows, row 3 is not an image, row 9 a truncated PNG (grey, RGBA and
    palette images among the good ones)."""
    modes = ["RGB", "L", "RGBA", "P"]
    cells = [{"bytes": png_bytes(i, modes[i % 4]), "path": f"img{i}.png"} for i in range(16)]
    cells[3] = {"bytes": b"not an image", "path": "img3.png"}
    cells[9] = {"bytes": png_bytes(9)[:60], "path": "img9.png"}
    table = datasets.Dataset.from_dict({"image": cells, "label": [i % 2 for i in range(16)]})
    table = table.cast_column("image", datasets.Image())
    for split in ("train", "test"):
        table.to_parquet(str(tmp_path / f"{split}.parquet"))
    return tmp_path


def test_bad_image_rows_fail_naming_split_row_and_file(bad_images):
    ds = build_dataset(DataConfig(source="parquet", path=str(bad_images), image_size=8), "train")
    ds[2]
    with pytest.raises(ValueError, match=r"split 'train'\) row 3 \(file img3\.png\): cannot decode"):
        ds[3]
    with pytest.raises(ValueError, match=r"(?i)row 9 \(file img9\.png\).*truncated"):
        ds.__getitems__([8, 9, 10])


def test_a_bad_row_in_the_eval_split_stops_the_run_before_training(tmp_path):
    """A bad eval row was found only at the first evaluation, after the whole training."""
    good = [{"bytes": png_bytes(i), "path": f"img{i}.png"} for i in range(16)]
    bad = list(good)
    bad[5] = {"bytes": b"not an image", "path": "img5.png"}
    for split, cells in (("train", good), ("test", bad)):
        table = datasets.Dataset.from_dict({"image": cells, "label": [0] * 16})
        table.cast_column("image", datasets.Image()).to_parquet(str(tmp_path / f"{split}.parquet"))
    run = tmp_path / "run"
    cfg = load_tokenizer_config(None, [
        *TINY_TOK, f"run_dir={run}", "model.preset=vqvae", "data.source=parquet",
        f"data.path={tmp_path}", "data.image_size=8", "model.downsample=2", "train.steps=3"])
    with pytest.raises(ValueError, match=r"split 'test'\) row 5 \(file img5\.png\)"):
        train_tokenizer(cfg)
    assert not (run / "metrics.jsonl").exists() and not (run / "checkpoints").exists()


def test_a_bad_row_in_a_batch_the_run_never_trains_on_is_never_read(tmp_path):
    """The micro-batch after an epoch's last optimizer step was fetched anyway,
    and a bad row in it killed a run that never needed it."""
    seed = 0
    perm = torch.randperm(18, generator=torch.Generator().manual_seed(seed * 1_000_003))
    unused = {int(perm[16]), int(perm[17])}  # 9 micro-batches of 2, 4 steps of 2 use 8

    class BadTail(Points):
        def __getitem__(self, i):
            if i in unused:
                raise ValueError(f"row {i} is bad")
            return super().__getitem__(i)

    torch.manual_seed(0)
    tc = TrainConfig(steps=4, batch_size=4, grad_accum=2, lr=0.05, progress=False, log_every=1,
                     ckpt_every=0, seed=seed)
    result = train(model=Tiny(), dataset=BadTail(n=18), cfg=tc, run_dir=tmp_path / "run", config={})
    assert result.step == 4


def test_skip_bad_examples_counts_them_in_the_summary(bad_images, tmp_path):
    cfg = load_tokenizer_config(None, [
        *TINY_TOK, f"run_dir={tmp_path / 'run'}", "model.preset=vqvae", "data.source=parquet",
        f"data.path={bad_images}", "data.image_size=8", "data.skip_bad_examples=true",
        "model.downsample=2", "train.batch_size=16", "train.steps=2", "eval.max_examples=4"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        metrics = train_tokenizer(cfg)
    # one epoch = all 16 rows per step, two of them bad: 2 per step, 2 steps
    assert metrics["train"]["bad_examples_skipped"] == 4
    assert logged(tmp_path / "run", key="bad_examples_skipped") == {1: 2, 2: 4}
    final = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()][-1]
    assert final["final"] and final["bad_examples_skipped"] == 4
    text = "\n".join(str(w.message) for w in caught)
    assert "row 3 (file img3.png)" in text and "row 9 (file img9.png)" in text
    assert "4 bad examples were skipped" in text


def test_encoding_drops_the_stand_ins_of_bad_rows_and_counts_them(bad_images, tmp_path):
    """Encoded codes hold every good row once: the row standing in for a bad one (a copy of
    the next good row, which is encoded at its own index) is not written twice."""
    from tokenizer.pretrained import Tokenizer

    cfg = load_tokenizer_config(None, [
        *TINY_TOK, "model.preset=vqvae", "data.source=parquet", f"data.path={bad_images}",
        "data.image_size=8", "data.skip_bad_examples=true", "model.downsample=2"])
    tok = Tokenizer.from_config(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entry = encode_split(tok, build_dataset(cfg.data, "train"), tmp_path / "codes", "train",
                             batch_size=5, progress=False)
    assert entry["num_examples"] == 14 and entry["bad_examples_skipped"] == 2
    table = datasets.load_from_disk(str(tmp_path / "codes" / "train"))
    good = [i for i in range(16) if i not in (3, 9)]
    assert table["label"] == [i % 2 for i in good]
    expected = tok.encode(torch.stack([build_dataset(cfg.data, "train")[i]["x"] for i in good]))[0]
    assert torch.equal(torch.tensor(table["level_0"]).long(), expected.flatten(1))


def test_skip_gives_up_on_all_bad_data(tmp_path):
    table = datasets.Dataset.from_dict({"image": [{"bytes": b"junk", "path": None}] * 4})
    table.cast_column("image", datasets.Image()).to_parquet(str(tmp_path / "train.parquet"))
    ds = build_dataset(DataConfig(source="parquet", path=str(tmp_path), skip_bad_examples=True), "train")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="4 consecutive rows from row 0"):
        ds[0]


def test_adjacent_bad_rows_count_once_each_and_64_in_a_row_give_up(tmp_path):
    from tokenizer.data import MAX_CONSECUTIVE_BAD

    good = {"bytes": png_bytes(0), "path": None}
    junk = {"bytes": b"junk", "path": None}
    cells = [good] * 3 + [junk] * 2 + [good] * 3  # rows 3 and 4 bad, side by side
    table = datasets.Dataset.from_dict({"image": cells}).cast_column("image", datasets.Image())
    table.to_parquet(str(tmp_path / "train.parquet"))
    ds = build_dataset(DataConfig(source="parquet", path=str(tmp_path), image_size=8,
                                  skip_bad_examples=True), "train")
    with pytest.warns(UserWarning):
        counts = [ds[i]["bad_examples"] for i in range(len(ds))]  # one epoch
    assert counts == [0, 0, 0, 1, 1, 0, 0, 0]  # two bad rows: 2, not 2 + 1
    n = MAX_CONSECUTIVE_BAD
    cells = [junk] * n + [good] * 2
    table = datasets.Dataset.from_dict({"image": cells}).cast_column("image", datasets.Image())
    (tmp_path / "many").mkdir()
    table.to_parquet(str(tmp_path / "many" / "train.parquet"))
    ds = build_dataset(DataConfig(source="parquet", path=str(tmp_path / "many"), image_size=8,
                                  skip_bad_examples=True), "train")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=f"{n} consecutive rows from row 0"):
        ds[0]
    with pytest.warns(UserWarning):
        assert ds[1]["bad_examples"] == 1  # 63 in a row from row 1: skipped


def test_truncated_wav_is_an_error_naming_the_file_or_skipped(tmp_path, wav_bytes):
    root = tmp_path / "clips"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            (root / label / f"{i}.wav").write_bytes(wav_bytes(0.2 + 0.1 * i))
    bad = root / "b" / "1.wav"
    bad.write_bytes(bad.read_bytes()[:900])  # header intact, samples cut
    cfg = DataConfig(source="audiofolder", path=str(root))
    ds = build_dataset(cfg, "train")
    assert ds[0]["x"].shape == cfg.shape  # short clips are padded to the window
    with pytest.raises(ValueError, match=rf"row 4 \(file {re.escape(str(bad))}\).*truncated WAV"):
        ds[4]
    cfg.skip_bad_examples = True
    ds = build_dataset(cfg, "train")
    with pytest.warns(UserWarning, match="truncated WAV"):
        item = ds[4]
    assert item["bad_examples"] == 1 and item["label"] == 1  # row 5 stood in
    assert ds[0]["bad_examples"] == 0


def test_empty_dataset_is_an_error(tmp_path):
    table = datasets.Dataset.from_dict({"image": [png_bytes(0)]}).cast_column("image", datasets.Image())
    table.select([]).to_parquet(str(tmp_path / "train.parquet"))
    with pytest.raises(ValueError, match=r"split 'train'.*(no rows|no data)"):
        build_dataset(DataConfig(source="parquet", path=str(tmp_path)), "train")
    with pytest.raises(ValueError, match="the training dataset is empty"):
        train(model=Tiny(), dataset=Points(n=0), cfg=TrainConfig(progress=False),
              run_dir=tmp_path / "run", config={})


# -- 7. safe loading --------------------------------------------------------------------------


class Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickles_are_never_loaded(tmp_path):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps({"weight": Payload(marker)})
    # a pickle under the weights name of every loader
    from prior.pretrained import Prior
    from sampling.classifier.model import AudioClassifier

    for loader in (Tokenizer.from_pretrained, AudioClassifier.from_pretrained):
        d = tmp_path / loader.__self__.__name__  # the class: both share the mixin's loader
        d.mkdir()
        (d / "model.safetensors").write_bytes(evil)
        with pytest.raises(ValueError, match="not a readable safetensors file"):
            loader(d)
        torch.save({"weight": Payload(marker)}, d / "model.pt")  # a torch .pt handed over
        with pytest.raises(ValueError, match=r"model\.pt: not a readable safetensors file"):
            loader(d / "model.pt")
    prior = tmp_path / "prior"
    (prior / "level_0").mkdir(parents=True)
    (prior / "prior.json").write_text(json.dumps({"codebook_sizes": [4], "tokenizer_identity": "x"}))
    (prior / "level_0" / "model.safetensors").write_bytes(evil)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        Prior.from_pretrained(prior)
    # a checkpoint whose optimizer file is a torch pickle: refused by checksum, and without one
    run = tmp_path / "run"
    tiny_train(run, steps=2)
    ckpt = list_checkpoints(run)[-1]
    torch.save({"state": Payload(marker)}, ckpt / "optimizer.safetensors")
    with pytest.raises(CorruptCheckpointError):
        load_checkpoint(ckpt)
    (ckpt / "checksums.json").unlink()
    with pytest.raises(CorruptCheckpointError, match="unreadable"):
        load_checkpoint(ckpt)
    # the reference-features cache of image and audio FID: a pickle under a cache file's name,
    # even with a matching checksum, is recomputed, never unpickled
    from sampling.metrics.cache import cached_tensors, write_checked

    cached = tmp_path / "fid_ref" / "ref-n4-abc.safetensors"
    buf = io.BytesIO()
    torch.save({"features": Payload(marker)}, buf)
    write_checked(cached, buf.getvalue())
    def features(value):
        return cached_tensors(cached, lambda: {"features": torch.full((4, 2), value)},
                              lambda t: t["features"].shape == (4, 2), {"ref": "a"})["features"]

    assert torch.equal(features(1.0), torch.ones(4, 2))
    assert torch.equal(features(0.0), torch.ones(4, 2))  # the file written just now, read back
    # YAML configs cannot construct objects
    (tmp_path / "evil.yaml").write_text(f"run_dir: !!python/object/apply:pathlib.Path.touch [{marker}]\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_tokenizer_config(tmp_path / "evil.yaml")
    assert not marker.exists()


def _unsafe_calls(path: Path) -> list[str]:
    """Calls in ``path`` that could unpickle: torch.load without weights_only=True,
    pickle.load(s), yaml.load without our SafeLoader subclass, yaml.unsafe_load /
    full_load, numpy loads with allow_pickle=True."""
    def kw(call: ast.Call, name: str):
        found = [k.value for k in call.keywords if k.arg == name]
        return found[0] if found else None

    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name)):
            continue
        mod, fn = node.func.value.id, node.func.attr
        where = f"{path.relative_to(REPO)}:{node.lineno}: {mod}.{fn}"
        if mod == "torch" and fn == "load":
            w = kw(node, "weights_only")
            if not (isinstance(w, ast.Constant) and w.value is True):
                out.append(where)
        elif mod in ("pickle", "cPickle", "dill") and fn in ("load", "loads"):
            out.append(where)
        elif mod == "yaml" and fn in ("unsafe_load", "full_load", "load_all", "unsafe_load_all"):
            out.append(where)
        elif mod == "yaml" and fn == "load":
            loader = kw(node, "Loader")
            if not (isinstance(loader, ast.Name) and loader.id in ("_Loader", "SafeLoader")):
                out.append(where)
        elif mod in ("np", "numpy") and fn == "load":
            a = kw(node, "allow_pickle")
            if isinstance(a, ast.Constant) and a.value:
                out.append(where)
    return out


def test_no_unsafe_deserialisation_in_the_source():
    """Every torch.load passes weights_only=True; YAML goes through SafeLoader; no pickle."""
    offenders = []
    for package in ("engine", "tokenizer", "prior", "sampling", "hqvae"):
        for path in sorted((REPO / package).rglob("*.py")):
            offenders += _unsafe_calls(path)
    assert not offenders, offenders
    # the checker itself catches what it should
    probe = REPO / "tests" / "_probe_unsafe.py"
    try:
        probe.write_text("import torch, pickle, yaml\ntorch.load('x')\ntorch.load('x', weights_only=False)\n"
                         "pickle.loads(b'')\nyaml.load('a')\ntorch.load('x', weights_only=True)\n")
        assert len(_unsafe_calls(probe)) == 4
    finally:
        probe.unlink()


# -- 1. crash and resume: SIGKILL ------------------------------------------------------------

TINY_TOK = ["data.image_size=16", "model.channels=16", "model.res_channels=8",
            "model.res_blocks=1", "data.num_train=64", "data.num_eval=16", "train.batch_size=8",
            "train.progress=false", "train.log_every=1", "eval.max_examples=16",
            "eval.batch_size=8", "eval.grid_size=4", "model.layers.0.codebook_size=16"]
KILL_TOK = ["model.preset=vqvae2", *TINY_TOK, "model.layers.1.codebook_size=16",
            "train.steps=120", "train.ckpt_every=10"]


def hqvae(*args: str, dying_at: str | None = None) -> subprocess.Popen:
    """``hqvae ARGS`` in a subprocess; ``dying_at``: SIGKILL itself right after writing the
    optimizer file of that checkpoint, i.e. in the middle of a checkpoint write."""
    code = "import sys\n"
    if dying_at:
        code += (
            "import os, signal\nimport engine.checkpoint as ck\nreal = ck.save_file\n"
            "def save_file(tensors, path, *a, **k):\n"
            "    real(tensors, path, *a, **k)\n"
            f"    if path.endswith('optimizer.safetensors') and {dying_at!r} in path:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "ck.save_file = save_file\n"
        )
    code += "from hqvae.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_after_checkpoint(proc: subprocess.Popen, run_dir: Path, seed: int, after: int = 0) -> None:
    """SIGKILL ``proc`` at a random moment after it has written a checkpoint past step
    ``after``."""
    def newest() -> int:
        ckpts = list_checkpoints(run_dir)
        return int(ckpts[-1].name.split("_")[1]) if ckpts else 0

    deadline = time.time() + 120
    while newest() <= after:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    time.sleep(random.Random(seed).uniform(0.0, 0.3))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"


def finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


@pytest.fixture(scope="module")
def tok_reference(tmp_path_factory):
    run = tmp_path_factory.mktemp("tokref") / "run"
    train_tokenizer(load_tokenizer_config(None, [f"run_dir={run}", *KILL_TOK]))
    return logged(run)


@pytest.mark.e2e
def test_sigkill_tokenizer_resumes_with_identical_losses(tok_reference, tmp_path):
    """Killed inside a checkpoint write, then killed at a random moment, then finished: the
    losses are the uninterrupted run's, step by step."""
    run = tmp_path / "run"
    args = ["train-tokenizer", f"run_dir={run}", *KILL_TOK]
    # 1. SIGKILL in the middle of writing checkpoint 20: no half checkpoint is published
    proc = hqvae(*args, dying_at="step_00000020")
    proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert [p.name for p in list_checkpoints(run)] == ["step_00000010"]
    assert [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    # 2. resumed from 10 (the temp folder ignored, then removed), SIGKILLed at random later
    kill_after_checkpoint(hqvae(*args), run, seed=1, after=10)
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-step_00000020")]
    # 3. resumed again, to the end
    finish(hqvae(*args))
    ev = json.loads((run / "eval" / "eval.json").read_text())
    assert ev["train"]["resumed_from"] >= 20 and ev["train"]["steps"] == 120
    losses = logged(run)  # each step once: every resumed run cut metrics.jsonl back
    assert sorted(losses) == list(range(1, 121))
    for step in range(1, 121):
        assert losses[step] == pytest.approx(tok_reference[step], rel=1e-5, abs=1e-7), step


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_says_how_to_resume(tok_reference, tmp_path, sig):
    """Ctrl-C printed a 24-frame traceback and lost the steps since the last
    checkpoint. Now the last finished step is checkpointed, one line says how to resume, and
    the resumed run has the uninterrupted run's losses."""
    run = tmp_path / "run"
    args = ["train-tokenizer", f"run_dir={run}", *KILL_TOK, "train.ckpt_every=1000"]
    proc = hqvae(*args)
    deadline = time.time() + 120
    while not (run / "metrics.jsonl").is_file() or len(logged(run)) < 15:  # mid-run, no checkpoint
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{signal.Signals(sig).name}: stopped after step" in lines[0] and "again to resume" in lines[0]
    stopped = int(re.search(r"after step (\d+)", lines[0]).group(1))
    assert stopped >= 15 and [p.name for p in list_checkpoints(run)] == [f"step_{stopped:08d}"]
    finish(hqvae(*args))
    losses = logged(run)
    assert sorted(losses) == list(range(1, 121))
    for step in range(1, 121):
        assert losses[step] == pytest.approx(tok_reference[step], rel=1e-5, abs=1e-7), step


KILL_PRIOR = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.cond_channels=16",
              "model.cond_blocks=1", "model.dropout=0.1", "train.batch_size=8", "train.log_every=1",
              "train.lr=1e-3", "train.schedule=constant", "train.warmup_steps=2",
              "train.progress=false", "data.eval_split=null", "train.steps=60",
              "train.ckpt_every=10"]


@pytest.fixture(scope="module")
def prior_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("priorref")
    train_tokenizer(load_tokenizer_config(None, [f"run_dir={root / 'tok'}", "model.preset=vqvae2",
                                                 *TINY_TOK, "train.steps=2"]))
    tok = Tokenizer.from_pretrained(root / "tok")
    encode_split(tok, build_dataset(tok.config.data, "train"), root / "codes", "train",
                 batch_size=32, progress=False)
    # level 1 (conditioned on level 0) resumes through the same loop; one level keeps it short
    train_prior(load_prior_config(None, [f"data.codes={root / 'codes'}", f"run_dir={root / 'ref'}",
                                         *KILL_PRIOR]), levels=[0])
    return root / "codes", {0: logged(root / "ref" / "level_0")}


def test_damaged_prior_json_and_codes_are_named(prior_reference, tmp_path):
    """A prior.json of the wrong shape and a truncated codes .arrow file gave raw
    tracebacks."""
    import shutil

    from prior.codes import CodesDataset
    from prior.pretrained import INFO, Prior

    codes_src, _ = prior_reference
    run = codes_src.parent / "ref"
    Prior.from_pretrained(run, levels=[0])  # as trained
    broken = tmp_path / "prior"
    shutil.copytree(run, broken)
    for text in ("[]", "{}", "{\"codebook_sizes\": 3}"):
        (broken / INFO).write_text(text)
        with pytest.raises(ValueError, match=r"prior\.json: damaged"):
            Prior.from_pretrained(broken, levels=[0])
    codes = tmp_path / "codes"
    shutil.copytree(codes_src, codes)
    arrow = next((codes / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"the encoded split is damaged.*--overwrite"):
        CodesDataset(codes, "train")


@pytest.mark.e2e
def test_sigkill_prior_resumes_with_identical_losses(prior_reference, tmp_path):
    codes, ref = prior_reference
    run = tmp_path / "run"
    args = ["train-prior", f"data.codes={codes}", f"run_dir={run}", *KILL_PRIOR, "--level", "0"]
    kill_after_checkpoint(hqvae(*args), run / "level_0", seed=2)
    finish(hqvae(*args))
    for level in (0,):
        losses = logged(run / f"level_{level}")
        assert sorted(losses) == list(range(1, 61)), level
        for step in range(1, 61):
            assert losses[step] == pytest.approx(ref[level][step], rel=1e-5, abs=1e-7), (level, step)


def test_reliability_doc_names_existing_tests():
    """docs/reliability.md cites a test for every guarantee: each one must exist."""
    doc = (REPO / "docs" / "reliability.md").read_text()
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", doc)
    cited += [("test_fuzz_config.py", n) for n in re.findall(r"`::(test_\w+)`", doc)]
    assert len(cited) > 30
    missing = [f"{f}::{n}" for f, n in cited
               if f"def {n}(" not in (REPO / "tests" / f).read_text()]
    assert not missing, missing


def test_a_bf16_run_hands_back_a_float32_model(tmp_path):
    # evaluations after training (eval.json, prior bits/token) must not run under the
    # autocast wrapper that mixed precision puts on the model's forward
    model, _ = tiny_train(tmp_path / "bf16", steps=2, mixed_precision="bf16")
    assert "_original_forward" not in model.__dict__
    seen = []
    model.lin.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    model(torch.randn(4, 4))
    assert seen == [torch.float32]  # under the wrapper this matmul would be bfloat16


# -- one writer per folder ------------------------------------------------------------------

HOLD = """
import sys, time
from engine.run_dir import run_lock
with run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.e2e
def test_a_second_process_on_a_run_dir_is_refused_and_a_dead_holder_frees_it(tmp_path, capsys):
    """Two train-tokenizer runs on one run_dir both 'succeeded', interleaving steps."""
    run = tmp_path / "run"
    cfg = load_tokenizer_config(None, [f"run_dir={run}", "model.preset=vqvae", "model.channels=8",
                                       "model.res_channels=4", "model.res_blocks=1", "data.num_train=16",
                                       "data.num_eval=8", "train.batch_size=8", "train.steps=2",
                                       "train.progress=false", "eval.max_examples=8"])
    holder = _holder(run)
    try:
        with pytest.raises(ConfigError, match=r"run_dir: .* is in use by hqvae process \d+"):
            train_tokenizer(cfg)
        assert not (run / "metrics.jsonl").exists()
        # the commands that write other folders hold them too
        out = tmp_path / "samples"
        holder2 = _holder(out)
        try:
            assert main(["sample", str(tmp_path / "no-prior"), "--out", str(out), "--n", "2"]) == 2
            assert "is in use by" in capsys.readouterr().err
        finally:
            holder2.kill()
            holder2.wait()
    finally:
        holder.kill()  # SIGKILL: no chance to clean up; the kernel drops the lock
        holder.wait()
    assert (run / ".hqvae.lock").is_file()  # left behind, and locks nothing
    assert train_tokenizer(cfg)["train"]["steps"] == 2


@pytest.mark.parametrize("run_dir, match", [("", "run_dir: empty"), ("/", "filesystem root")])
def test_an_empty_or_root_run_dir_is_refused(run_dir, match, capsys):
    assert main(["train-tokenizer", "model.preset=vqvae", f"run_dir={run_dir}"]) == 2
    assert match in capsys.readouterr().err


@pytest.mark.e2e
def test_a_damaged_config_yaml_is_reported_by_path_and_config_is_written_atomically(tmp_path, capsys, monkeypatch):
    import engine.files

    run = tmp_path / "run"
    args = ["train-tokenizer", "model.preset=vqvae", "model.channels=8", "model.res_channels=4",
            "model.res_blocks=1", "data.num_train=16", "data.num_eval=8", "train.batch_size=8",
            "train.steps=2", "train.progress=false", "eval.max_examples=8", f"run_dir={run}"]
    assert main(args) == 0
    capsys.readouterr()
    (run / "config.yaml").write_text("model:\n  preset: [vqvae\n")  # truncated mid-write
    assert main(args) == 2
    err = capsys.readouterr().err
    assert str(run / "config.yaml") in err and "damaged" in err and err.count("\n") == 1
    # a write that dies midway leaves the old file whole (write to a temporary, then rename)
    (run / "config.yaml").write_text("old: true\n")

    def dying_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(engine.files.os, "replace", dying_replace)
    from engine.config import save_yaml

    with pytest.raises(OSError):
        save_yaml({"new": True}, run / "config.yaml")
    assert (run / "config.yaml").read_text() == "old: true\n"
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]


@pytest.mark.e2e
@pytest.mark.parametrize("argv, message", [
    (["eval-tokenizer", "x", "--max-examples", "0"], "--max-examples: must be >= 1"),  # was 'default'
    (["encode", "x", "--out", "y", "--num-workers", "-1"], "--num-workers: must be >= 0"),
    (["fid", "x", "--ref", "shapes", "--batch-size", "0"], "--batch-size: must be >= 1"),
])
def test_nonsense_counts_on_the_command_line_are_refused(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_nonsense_sample_count_is_one_line_naming_the_flag(tmp_path, capsys):
    # the sampling settings are checked together (SamplingSettings), before the folder is touched
    assert main(["sample", "x", "--out", str(tmp_path / "y"), "--grid", "0"]) == 2
    assert capsys.readouterr().err == "hqvae sample: error: --grid: must be in [1, 1,024], got 0\n"
    assert not (tmp_path / "y").exists()


def test_an_absurd_guidance_scale_is_a_clear_error():
    from sampling.sampler import Sampler

    class FakePrior:
        codebook_sizes, levels, num_classes = [4], {0: None}, 3

    with pytest.raises(ValueError, match=r"cfg_scale: must be a number in \[-1000, 1000\], got 1e\+308"):
        Sampler(FakePrior(), cfg_scale=1e308)


def test_weights_whose_stored_config_does_not_fit_them_are_named(tmp_path):
    """A stored config that does not match the tensors gave a raw 'size mismatch'."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    run = tmp_path / "run"
    cfg = load_tokenizer_config(None, [f"run_dir={run}", "model.preset=vqvae", *TINY_TOK, "train.steps=1"])
    train_tokenizer(cfg)
    path = run / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    stored = json.loads(meta["config"])
    stored["model"]["channels"] = 24  # a config edited after the weights were written
    meta["config"] = json.dumps(stored)
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(ValueError, match=r"model\.safetensors: weights do not match the stored config \(size mismatch"):
        Tokenizer.from_pretrained(run)


# -- whose folder is it -----------------------------------------------------------------------

def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` with its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


# every command that writes a folder, pointed at FOLDER; models that do not exist: the
# folder is checked before anything is loaded, trained or written
FOLDER_COMMANDS = {
    "train-tokenizer": ["train-tokenizer", "model.preset=vqvae", "run_dir=FOLDER"],
    "train-classifier": ["train-classifier", "run_dir=FOLDER"],
    "train-prior": ["train-prior", "data.codes=no-codes", "run_dir=FOLDER"],
    "pipeline": ["pipeline", "configs/quickstart.yaml", "run_dir=FOLDER"],
    "encode": ["encode", "no-tokenizer", "--out", "FOLDER"],
    "sample": ["sample", "no-prior", "--out", "FOLDER", "--n", "2"],
    "eval-tokenizer": ["eval-tokenizer", "no-tokenizer", "--out", "FOLDER"],
}
USERS_FILES = {
    # the user's notes and their own config (a file named config.yaml proves nothing)
    "notes": {"README.md": "notes\n", "config.yaml": "foo: 1\n", "metrics.jsonl": "{}\n"},
    # a folder named checkpoints/ was refused, yet config.yaml and the lock were written into it
    "checkpoints": {"checkpoints/mine.txt": "mine\n"},
    # a file named pipeline.yaml was taken for a pipeline run and overwritten with report.html
    "pipeline.yaml": {"pipeline.yaml": "image: {}\n", "report.html": "<p>mine</p>\n", "summary.json": "{}\n"},
    # a foreign eval.json made train-prior fail after its first level, and on every rerun
    "eval.json": {"eval.json": '{"accuracy": 1}\n', "prior.json": "{}\n"},
}


@pytest.mark.parametrize("files", list(USERS_FILES))
@pytest.mark.parametrize("command", list(FOLDER_COMMANDS))
def test_a_folder_of_someone_elses_files_is_refused_and_left_as_it_was(command, files, tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.chdir(REPO)  # the pipeline's config path
    folder = tmp_path / "mine"
    for name, text in USERS_FILES[files].items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = _snapshot(folder)
    argv = [str(folder) if a == "FOLDER" else a.replace("FOLDER", str(folder)) for a in FOLDER_COMMANDS[command]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(folder) in err and "nothing was written" in err, err
    assert next(iter(USERS_FILES[files])).split("/")[0] in err  # says what is in it
    assert _snapshot(folder) == before  # no lock, no marker, no config


@pytest.mark.parametrize("command", ["train-tokenizer", "train-prior", "pipeline", "sample", "encode"])
def test_the_home_folder_and_roots_are_never_a_run_folder(command, tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(REPO)
    for target in (str(home), "~", "/"):  # as the shell expands `run_dir=~`, quoted, the root
        argv = [target if a == "FOLDER" else a.replace("FOLDER", target) for a in FOLDER_COMMANDS[command]]
        assert main(argv) == 2
        err = capsys.readouterr().err
        if target == "~" and "run_dir=FOLDER" in FOLDER_COMMANDS[command]:
            # in a key=value override YAML reads a bare ~ as null: said as such, nothing written
            assert "'~'" in err and err.count("\n") == 1, err
        else:
            assert ("home folder" if target != "/" else "filesystem root") in err, err
    assert list(home.iterdir()) == []


@pytest.mark.e2e
def test_a_quoted_tilde_is_the_home_folder_for_run_dirs_and_out(tmp_path, capsys, monkeypatch):
    """`run_dir='~/x'` went to a literal ./~/x while its lock went to $HOME/x; `encode --out
    '~/x'` failed midway and left $HOME/x/.cache-train behind."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    tok = ["train-tokenizer", "model.preset=vqvae", *TINY_TOK, "train.steps=1", "run_dir=~/tok"]
    assert main(tok) == 0
    assert (home / "tok" / "model.safetensors").is_file() and (home / "tok" / ".hqvae.lock").is_file()
    assert main(["encode", "~/tok", "--out", "~/codes", "--max-examples", "8"]) == 0
    assert (home / "codes" / "codes.json").is_file()
    assert not (cwd / "~").exists()


@pytest.mark.e2e
def test_a_folder_of_another_kind_of_output_is_refused_naming_it(tmp_path, capsys):
    run = tmp_path / "tok"
    assert main(["train-tokenizer", "model.preset=vqvae", *TINY_TOK, "train.steps=1", f"run_dir={run}"]) == 0
    assert json.loads((run / ".hqvae-run.json").read_text())["kind"] == "tokenizer"
    capsys.readouterr()
    before = _snapshot(run)
    for argv in (["train-prior", "data.codes=no-codes", f"run_dir={run}"],
                 ["sample", "no-prior", "--out", str(run)], ["encode", str(run), "--out", str(run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "holds tokenizer output (written by hqvae train-tokenizer)" in err, err
    assert _snapshot(run) == before


def test_run_folders_from_before_the_marker_are_still_ours(tmp_path):
    """A run written before folders were marked is recognised by what only this tool
    writes there (hqvae-tagged weights, checksummed checkpoints): it resumes, and is marked."""
    from engine.run_dir import MARKER, check_folder

    args = [f"run_dir={tmp_path / 'run'}", "model.preset=vqvae", *TINY_TOK, "train.steps=1"]
    train_tokenizer(load_tokenizer_config(None, args))
    (tmp_path / "run" / MARKER).unlink()
    assert check_folder(tmp_path / "run", "tokenizer")
    assert train_tokenizer(load_tokenizer_config(None, [*args, "train.steps=2"]))["train"]["resumed_from"] == 1
    assert (tmp_path / "run" / MARKER).is_file()
    # weights without the hqvae kind tag, beside a config.yaml, prove nothing
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "config.yaml").write_text("model: {}\n")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(fake / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"holds no tokenizer output written by hqvae"):
        check_folder(fake, "tokenizer")


@pytest.mark.e2e
def test_report_replaces_only_a_report_it_wrote(tmp_path, capsys):
    run = tmp_path / "pipe"
    (run / "image" / "codes").mkdir(parents=True)  # a stage folder: a pipeline run to report on
    mine = tmp_path / "notes.html"
    mine.write_text("<p>my notes</p>\n")
    assert main(["report", str(run), "--out", str(mine)]) == 2
    assert "not a report written by hqvae" in capsys.readouterr().err
    assert mine.read_text() == "<p>my notes</p>\n"
    (run / "report.html").write_text("<p>mine too</p>\n")
    assert main(["report", str(run)]) == 2
    assert (run / "report.html").read_text() == "<p>mine too</p>\n"
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0 and main(["report", str(run)]) == 0  # its own: replaced


@pytest.mark.e2e
@pytest.mark.parametrize("sig, ignored", [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
                         ids=["sigint", "sigint-started-in-the-background", "sigterm"])
def test_ctrl_c_during_encode_says_what_is_kept_and_a_rerun_continues(tmp_path, sig, ignored):
    """Ctrl-C during `hqvae encode` printed a KeyboardInterrupt traceback. Now one line says
    which splits finished (kept) and that running the same command again continues: it keeps
    them and encodes the interrupted split from its start (a split is written whole or not
    at all), exit status 130. The same for SIGTERM, and for a process started in the
    background by a shell, which inherits SIGINT ignored (it encoded to the end)."""
    Tokenizer.from_config(load_tokenizer_config(None, ["model.preset=vqvae", *TINY_TOK])).save_pretrained(
        tmp_path / "tok")
    codes = tmp_path / "codes"
    marker = tmp_path / "encoding-test"
    # the test split is encoded slowly, and says when it has begun
    slow = (
        "import time, prior.codes as pc\nreal = pc.encode_split\n"
        "def encode_split(tok, dataset, codes_dir, split, **kw):\n"
        "    if split == 'test':\n"
        "        encode = tok.encode\n"
        "        def slow(x):\n"
        f"            open({str(marker)!r}, 'w').close(); time.sleep(0.5)\n"
        "            return encode(x)\n"
        "        tok.encode = slow\n"
        "    return real(tok, dataset, codes_dir, split, **kw)\n"
        "pc.encode_split = encode_split\n"
        "from hqvae.cli import main\nsys.exit(main(sys.argv[1:]))\n")
    args = ["encode", str(tmp_path / "tok"), "--out", str(codes), "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    # SIGINT as a shell's background job gets it, or as the terminal's default
    disposition = signal.SIG_IGN if ignored else signal.SIG_DFL
    proc = subprocess.Popen([sys.executable, "-c", "import sys\n" + slow, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, disposition))
    deadline = time.time() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"hqvae encode: {sig.name}: stopped while encoding split 'test'"), err
    assert "'train' finished and kept" in line and "same command again to continue" in line, err
    assert json.loads((codes / "codes.json").read_text())["splits"].keys() == {"train"}
    assert not [p for p in codes.iterdir() if p.name.startswith((".tmp-", ".cache-", "test"))]
    train_files = {p.name: p.stat().st_ino for p in (codes / "train").iterdir()}
    # the same command again keeps train (the same files) and encodes test
    proc = subprocess.run([sys.executable, "-m", "hqvae.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_ino for p in (codes / "train").iterdir()} == train_files
    manifest = json.loads((codes / "codes.json").read_text())
    assert manifest["splits"]["train"]["num_examples"] == 64 and manifest["splits"]["test"]["num_examples"] == 16


def test_ctrl_c_anywhere_in_a_command_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    """Outside the loops that stop cleanly (training, encoding, sampling), a Ctrl-C while a
    command loads or scores gave a KeyboardInterrupt traceback."""
    import sampling.metrics.image_fid

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sampling.metrics.image_fid, "score_folder", interrupted)
    assert main(["fid", str(tmp_path), "--ref", "shapes"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("hqvae fid: stopped by Ctrl-C") and err.count("\n") == 1


def test_only_the_first_process_judges_whose_folder_it_is(tmp_path, monkeypatch):
    """In a data-parallel launch the first process locks, marks and writes the run folder;
    another process checking it meanwhile saw the marker under its temporary name and
    refused its own run ("is not empty")."""
    from engine.run_dir import check_folder

    run = tmp_path / "run"
    run.mkdir()
    (run / ".hqvae.lock").write_text("")
    (run / ".hqvae-run.json.tmp-123").write_text("{")  # the first process, half-way through
    with pytest.raises(ConfigError, match="is not empty"):
        check_folder(run, "tokenizer")
    monkeypatch.setenv("RANK", "1")
    assert check_folder(run, "tokenizer") is False
