"""`hqvae train-prior` under `accelerate launch --multi_gpu --num_processes 2` on a CPU (gloo): really two
processes, one checkpoint writer, the same optimisation as one process with the same global
batch, and a resumed run that continues each process's random draws."""

import json
import subprocess

import pytest
import torch
from launchers import launch_command, launch_env, launch_failure  # tests/launchers.py

from engine.checkpoint import list_checkpoints
from prior.codes import encode_split
from prior.pretrained import Prior
from tokenizer.config import load_tokenizer_config
from tokenizer.data import build_dataset
from tokenizer.train import train_tokenizer

pytestmark = pytest.mark.e2e

TINY_TOK = ["model.preset=vqvae2", "model.channels=16", "model.res_channels=8", "model.res_blocks=1",
            "data.num_train=64", "data.num_eval=16", "train.batch_size=8", "train.progress=false",
            "train.steps=2", "eval.max_examples=16", "eval.batch_size=8", "eval.grid_size=4"]
# no dropout of any kind, so two processes and one see exactly the same computation
TINY_PRIOR = ["model.n_layer=1", "model.n_embd=32", "model.n_head=2", "model.cond_channels=8",
              "model.cond_blocks=1", "model.dropout=0.0", "class_cond=true", "label_dropout=0.0",
              "train.batch_size=8", "train.steps=3", "train.log_every=1", "train.warmup_steps=1",
              "train.progress=false", "eval.max_examples=16"]


@pytest.fixture(scope="module")
def codes(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    cfg = load_tokenizer_config(None, [f"run_dir={root / 'tok'}", *TINY_TOK])
    train_tokenizer(cfg)
    from tokenizer.pretrained import Tokenizer

    tok = Tokenizer.from_pretrained(root / "tok")
    for split in ("train", "test"):
        encode_split(tok, build_dataset(tok.config.data, split), root / "codes", split, progress=False)
    return root / "codes"


def _losses(level_dir):
    lines = [json.loads(s) for s in (level_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["split"] == "train"]


def _cli(args, processes):
    launch = launch_command("accelerate", processes)
    env = launch_env()
    return subprocess.run([*launch, *args], capture_output=True, text=True, timeout=300, env=env)


def test_two_processes_match_one_with_the_same_global_batch(codes, tmp_path):
    runs = {}
    for n in (1, 2):
        run = tmp_path / f"p{n}"
        out = _cli(["train-prior", f"data.codes={codes}", f"run_dir={run}", *TINY_PRIOR], n)
        assert out.returncode == 0, launch_failure(out)
        # one process reports; one process writes one final checkpoint per level
        assert out.stdout.count("level 1 (") == 1, out.stdout
        assert (", 2 processes" in out.stdout) == (n == 2), out.stdout
        assert json.loads((run / "level_1" / "eval.json").read_text())["processes"] == n
        for level in (0, 1):
            assert [p.name for p in list_checkpoints(run / f"level_{level}")] == ["step_00000003"]
        runs[n] = run
    for level in (0, 1):
        one, two = _losses(runs[1] / f"level_{level}"), _losses(runs[2] / f"level_{level}")
        assert len(one) == len(two) == 3
        # gradients averaged over 2 x 4 examples == the gradient of the same 8 examples
        assert two == pytest.approx(one, rel=1e-4, abs=1e-5)
    a, b = Prior.from_pretrained(runs[1]), Prior.from_pretrained(runs[2])
    for level in (0, 1):
        for (name, pa), pb in zip(a.levels[level].state_dict().items(), b.levels[level].state_dict().values()):
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=name)


def test_a_resumed_two_process_run_continues_every_process_s_random_draws(codes, tmp_path):
    """Dropout and label dropout draw from each process's own generator; a run stopped at
    step 2 and resumed must continue those draws (not rank 0's everywhere) to match the
    uninterrupted run."""
    noisy = [*TINY_PRIOR, "model.dropout=0.2", "label_dropout=0.3", "train.schedule=constant",
             "--level", "0"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    for run, steps in ((whole, [4]), (split, [2, 4])):
        for n_steps in steps:
            out = _cli(["train-prior", f"data.codes={codes}", f"run_dir={run}", *noisy,
                        f"train.steps={n_steps}"], 2)
            assert out.returncode == 0, launch_failure(out)
    one, two = _losses(whole / "level_0"), _losses(split / "level_0")
    assert len(one) == 4 and len(two) == 4
    assert two == one  # steps 3 and 4 after the resume too, to the last bit
    a, b = (Prior.from_pretrained(r, levels=[0]).levels[0] for r in (whole, split))
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(pa, pb), name
