"""data.streaming: splits read as streams from local Parquet (and WebDataset)
shards, decoded by the map-style code, with seeded shuffling, disjoint shares per process
and per DataLoader worker, and an exact resume from the position in the checkpoint."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from launchers import launch_command, launch_env, launch_failure  # tests/launchers.py
from PIL import Image
from torch.utils.data import DataLoader

from engine.checkpoint import list_checkpoints, load_checkpoint
from engine.config import ConfigError
from prior.codes import CodesDataset, encode_splits
from tokenizer.config import DataConfig, load_tokenizer_config
from tokenizer.data import build_dataset, build_stream
from tokenizer.pretrained import Tokenizer
from tokenizer.train import train_tokenizer

pytestmark = pytest.mark.usefixtures("hermetic_hf")

ROWS, SHARDS = 48, 4


def png(value: int) -> bytes:
    """An 8x8 image whose pixels all hold ``value``: the row's id, read back from x."""
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def row_id(x: torch.Tensor) -> int:
    return int(round((float(x[0, 0, 0]) + 1) * 127.5))


def write_split(root: Path, split: str, ids: list[int], shards: int) -> None:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=4)})
    for s, part in enumerate(np.array_split(np.array(ids), shards)):
        rows = [{"image": {"bytes": png(int(i)), "path": None}, "label": int(i) % 4} for i in part]
        datasets.Dataset.from_list(rows, features=features).to_parquet(
            str(root / f"{split}-{s:05d}-of-{shards:05d}.parquet"))


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("stream")
    write_split(root, "train", list(range(ROWS)), SHARDS)
    write_split(root, "test", list(range(200, 208)), 1)
    return root


def stream_cfg(root: Path, **kw) -> DataConfig:
    return DataConfig(source="parquet", path=str(root), image_size=8, streaming=True, **kw)


def ids_of(items) -> list[int]:
    return [row_id(item["x"]) for item in items]


def test_a_stream_decodes_rows_exactly_as_the_map_style_dataset(shards):
    mapped = build_dataset(DataConfig(source="parquet", path=str(shards), image_size=8), "train")
    stream = build_stream(stream_cfg(shards), "train")
    assert stream.num_rows == ROWS and stream.num_shards == SHARDS
    stream.layout(seed=0, cycle=False)
    items = list(stream)
    assert len(items) == ROWS
    for i, item in enumerate(items):  # file order without training's shuffle
        assert torch.equal(item["x"], mapped[i]["x"]) and item["label"] == mapped[i]["label"]
        assert (item["stream_reader"], item["stream_epoch"], item["stream_row"]) == (0, 0, i)


def epoch_ids(stream, epochs: int) -> list[list[int]]:
    """Each epoch's row ids of one reader that cycles."""
    out: list[list[int]] = [[] for _ in range(epochs)]
    for item in stream:
        if item["stream_epoch"] >= epochs:
            return out
        out[item["stream_epoch"]].append(row_id(item["x"]))
    return out


def test_the_shuffled_order_is_a_function_of_seed_and_epoch(shards):
    stream = build_stream(stream_cfg(shards, shuffle_buffer=8), "train", train=True)
    stream.layout(seed=3)
    first, second = epoch_ids(stream, 2)
    assert sorted(first) == sorted(second) == list(range(ROWS))  # every row once per epoch
    assert first != second and first != list(range(ROWS))
    assert epoch_ids(stream, 2) == [first, second]  # the same seed: the same order
    stream.layout(seed=4)
    assert epoch_ids(stream, 1)[0] != first
    stream.layout(seed=3)
    stream.start_at([(1, 5)], 0)  # a resumed reader continues epoch 1 at its row 5
    assert ids_of(x for _, x in zip(range(3), stream)) == second[5:8]


@pytest.mark.parametrize("world", [2, 3])  # 4 shards: whole shards per process, then rows
@pytest.mark.parametrize("workers", [0, 2])
def test_processes_and_workers_read_disjoint_shares(shards, world, workers):
    stream = build_stream(stream_cfg(shards, shuffle_buffer=4), "train", train=True)
    seen = []
    for rank in range(world):
        if workers > SHARDS // world and SHARDS % world == 0:
            continue
        stream.layout(seed=0, rank=rank, world=world, workers=workers, cycle=False)
        loader = DataLoader(stream, batch_size=None, num_workers=workers)
        seen.append(ids_of(loader))
    flat = [i for share in seen for i in share]
    assert sorted(flat) == list(range(ROWS))  # every row once, no row twice
    if world == 2 and workers == 0:
        assert len(seen[0]) == len(seen[1]) == ROWS // 2


def test_more_workers_than_shards_is_refused_naming_the_key(shards):
    stream = build_stream(stream_cfg(shards), "train", train=True)
    with pytest.raises(ValueError, match=r"train.num_workers=3: each process reads 2 of the 4"):
        stream.layout(seed=0, rank=0, world=2, workers=3)


def test_config_refuses_what_a_stream_cannot_do(shards):
    with pytest.raises(ConfigError, match=r"data.train_split: a slice .* random access"):
        load_tokenizer_config(None, ["model.preset=vqvae", f"data.path={shards}", "data.source=parquet",
                                     "data.streaming=true", "data.train_split=train[:90%]"])
    with pytest.raises(ConfigError, match="data.streaming: source 'shapes'"):
        load_tokenizer_config(None, ["model.preset=vqvae", "data.streaming=true"])
    with pytest.raises(ConfigError, match="data.shuffle_buffer: applies to data.streaming=true only"):
        load_tokenizer_config(None, ["model.preset=vqvae", "data.shuffle_buffer=10"])
    with pytest.raises(ValueError, match="data.streaming: split 'train' is needed here with random access"):
        build_dataset(stream_cfg(shards), "train")
    # `hqvae train-classifier` refuses a stream when its config loads, not when its data is built
    from sampling.classifier.config import load_classifier_config

    with pytest.raises(ConfigError, match="data.streaming: a classifier trains and evaluates on random-access"):
        load_classifier_config(None, [f"data.path={shards}", "data.source=parquet", "data.streaming=true"])


TINY = ["model.preset=vqvae2", "model.channels=16", "model.res_channels=8", "model.res_blocks=1",
        "data.source=parquet", "data.image_size=8", "data.streaming=true", "data.shuffle_buffer=8",
        "train.batch_size=8", "train.progress=false", "train.log_every=1", "eval.max_examples=8",
        "eval.batch_size=8", "eval.grid_size=2"]


def losses(run: Path) -> dict[int, float]:
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_resumed_stream_run_sees_the_batches_of_the_uninterrupted_one(shards, tmp_path, workers):
    """6 steps make an epoch of the 48 rows: the runs cross into epoch 1 (another order)."""
    def run(name, steps):
        cfg = load_tokenizer_config(None, [f"run_dir={tmp_path / name}", f"data.path={shards}", *TINY,
                                           f"train.steps={steps}", f"train.num_workers={workers}"])
        return train_tokenizer(cfg)

    run("whole", 9)
    run("split", 4)
    ckpt = load_checkpoint(list_checkpoints(tmp_path / "split")[-1])
    readers = max(1, workers)
    assert ckpt["stream"]["processes"] == 1 and len(ckpt["stream"]["positions"][0]) == readers
    # 4 steps of 8 rows, shared by the readers, all still in epoch 0
    assert sum(row for _, row in ckpt["stream"]["positions"][0]) == 32
    resumed = run("split", 9)
    assert resumed["train"]["resumed_from"] == 4
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")  # to the last bit
    with pytest.raises(ValueError, match=r"train.num_workers=\d; this run has 1 with train.num_workers=\d\. "
                                         r".*use the same layout"):
        cfg = load_tokenizer_config(None, [f"run_dir={tmp_path / 'split'}", f"data.path={shards}", *TINY,
                                           "train.steps=12", f"train.num_workers={1 if workers != 1 else 0}"])
        train_tokenizer(cfg)


def test_epochs_count_parquet_rows_and_need_a_known_length(shards, tmp_path):
    cfg = load_tokenizer_config(None, [f"run_dir={tmp_path / 'e'}", f"data.path={shards}", *TINY,
                                       "train.epochs=1"])
    assert train_tokenizer(cfg)["train"]["steps"] == ROWS // 8
    tars = tmp_path / "tars"
    tars.mkdir()
    for s in range(2):
        with tarfile.open(tars / f"train-{s:05d}.tar", "w") as tar:
            for i in range(8):
                for ext, data in (("png", png(s * 8 + i)), ("cls", str(i % 4).encode())):
                    info = tarfile.TarInfo(f"{s}_{i:04d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    wds = DataConfig(source="webdataset", path=str(tars), image_size=8, streaming=True, label_column="cls")
    stream = build_stream(wds, "train")
    assert stream.num_rows is None and stream.column == "png" and stream.label_column == "cls"
    stream.layout(seed=0, cycle=False)
    assert sorted(ids_of(stream)) == list(range(16))
    cfg = load_tokenizer_config(None, [f"run_dir={tmp_path / 'w'}", *TINY, "data.source=webdataset",
                                       f"data.path={tars}", "data.eval_split=train",
                                       "data.label_column=cls", "train.epochs=1"])
    with pytest.raises(ValueError, match=r"train.epochs: the stream's row count is unknown"):
        train_tokenizer(cfg)


def test_encode_reads_a_stream_once_in_file_order(shards, tmp_path):
    cfg = load_tokenizer_config(None, [f"run_dir={tmp_path / 'tok'}", f"data.path={shards}", *TINY,
                                       "train.steps=1"])
    train_tokenizer(cfg)
    tok = Tokenizer.from_pretrained(tmp_path / "tok")
    entries = encode_splits(tok, tok.config.data, tmp_path / "codes", ["train"], batch_size=16,
                            max_examples=20)
    assert entries["train"]["num_examples"] == 20
    mapped = build_dataset(DataConfig(source="parquet", path=str(shards), image_size=8), "train")
    x = torch.stack([mapped[i]["x"] for i in range(20)])
    codes = CodesDataset(tmp_path / "codes", "train")
    expected = [torch.cat(parts) for parts in zip(tok.encode(x[:16]), tok.encode(x[16:]))]  # the same batches
    for i in (0, 7, 19):
        assert torch.equal(codes[i]["level_0"], expected[0][i].flatten().long())
        assert int(codes[i]["label"]) == i % 4


@pytest.mark.e2e
def test_two_processes_read_disjoint_rows_and_resume(shards, tmp_path):
    """`accelerate launch` with 2 CPU processes: each reads 2 of the 4 shards; the checkpoint
    holds both processes' positions, and a resumed run matches the uninterrupted one."""
    def cli(name, steps):
        args = ["train-tokenizer", f"run_dir={tmp_path / name}", f"data.path={shards}", *TINY,
                f"train.steps={steps}"]
        out = subprocess.run([*launch_command("accelerate", 2), *args], capture_output=True, text=True,
                             timeout=300, env=launch_env())
        assert out.returncode == 0, launch_failure(out)

    cli("whole", 5)
    cli("split", 2)
    stream = load_checkpoint(list_checkpoints(tmp_path / "split")[-1])["stream"]
    assert stream["processes"] == 2 and stream["positions"] == [[[0, 8]], [[0, 8]]]  # 2 x 4 rows each
    cli("split", 5)
    assert losses(tmp_path / "split") == losses(tmp_path / "whole")
    # what each process read: the rows the trainer's layout gives rank 0 and rank 1
    data = stream_cfg(shards, shuffle_buffer=8)
    shares = []
    for rank in range(2):
        ds = build_stream(data, "train", train=True)
        ds.layout(seed=0, rank=rank, world=2)
        shares.append(set(epoch_ids(ds, 1)[0]))
    assert not shares[0] & shares[1] and len(shares[0] | shares[1]) == ROWS
