"""Every registered prior backbone and data source, walked from its registry: a new entry is
picked up here without editing this file (a file-based source also needs a maker of tiny
data in MAKERS, which the test asks for by name)."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from engine.config import ConfigError, validate
from prior.backbones import BACKBONES, get_backbone
from prior.config import load_prior_config
from prior.pretrained import Prior, build_level
from prior.stock import stock_causal_lm
from tokenizer.config import AudioConfig, DataConfig
from tokenizer.data import build_dataset, build_stream, detect_modality
from tokenizer.data.registry import HUB, LOCAL_PARQUET, SOURCES, data_location, source_entry

pytestmark = pytest.mark.usefixtures("hermetic_hf")

# -- prior backbones -------------------------------------------------------------------------

# two levels (2x2 codes over 4x4), so the lower one carries the conditioning network
INFO = {"tokenizer_identity": "tok-0", "code_shapes": [[2, 2], [4, 4]], "codebook_sizes": [16, 32],
        "num_classes": 3, "class_names": None, "layer_kinds": ["injected", "injected"],
        "modality": "image", "tokenizer_run": None}


@pytest.mark.parametrize("arch", sorted(BACKBONES))
def test_every_backbone_builds_runs_and_round_trips(arch, tmp_path):
    cfg = load_prior_config(None, [
        "data.codes=unused", "class_cond=true", f"model.arch={arch}", "model.n_layer=1",
        "model.n_embd=32", "model.n_head=2", "model.cond_channels=8", "model.cond_blocks=1"])
    torch.manual_seed(0)
    levels = {lvl: build_level(cfg, INFO, lvl).eval() for lvl in range(2)}
    g = torch.Generator().manual_seed(0)
    batch = {"level_0": torch.randint(16, (2, 4), generator=g),
             "level_1": torch.randint(32, (2, 16), generator=g), "label": torch.tensor([0, 2])}
    for model in levels.values():
        out = model(batch)
        assert torch.isfinite(out["loss"]) and out["loss"].requires_grad
        table = getattr(model.backbone, get_backbone(arch).token_table)
        assert not table.weight.requires_grad  # the prior's own token table is used instead

    # the top level as the backbone's stock causal LM: the same next-token logits
    top = levels[0]
    start, _ = top.condition([], batch["label"], 2)
    seq = top.to_sequence(batch["level_0"])
    lm = stock_causal_lm(top)
    embeds = torch.cat([start, lm.get_input_embeddings()(seq[:, :-1])], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(lm(inputs_embeds=embeds).logits, top.logits(batch["level_0"], [], batch["label"]))

    # saved and loaded through the prior's own files: the same arch, keys and outputs
    Prior(cfg, INFO, levels).save_pretrained(tmp_path / "prior")
    loaded = Prior.from_pretrained(tmp_path / "prior")
    assert loaded.config.model.arch == arch
    for lvl, model in levels.items():
        again = loaded.levels[lvl].eval()
        assert again.state_dict().keys() == model.state_dict().keys()
        with torch.no_grad():
            torch.testing.assert_close(again(batch)["loss"], model(batch)["loss"])


def test_an_unknown_backbone_is_a_one_line_config_error_listing_the_registered_ones():
    with pytest.raises(ConfigError) as err:
        load_prior_config(None, ["data.codes=unused", "levels=[{}, {arch: mamba}]"])
    assert str(err.value) == f"levels.1.arch: unknown backbone 'mamba'; choose from {', '.join(BACKBONES)}"


# -- data sources ----------------------------------------------------------------------------

TINY_AUDIO = AudioConfig(num_frames=16, griffin_lim_iters=0)


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((10, 12, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def wav(freq: float) -> bytes:
    t = np.arange(2000) / 8000
    buf = io.BytesIO()
    sf.write(buf, 0.5 * np.sin(2 * np.pi * freq * t), 8000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def image_table() -> datasets.Dataset:
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": png(40 * i), "path": None} for i in range(4)], "label": [0, 1, 0, 1]})
    return table.cast_column("image", datasets.Image())


def write_parquet(tmp_path: Path) -> Path:
    root = tmp_path / "pq"
    root.mkdir()
    image_table().to_parquet(str(root / "train.parquet"))
    return root


def make_parquet(tmp_path, monkeypatch) -> DataConfig:
    return DataConfig(source="parquet", path=str(write_parquet(tmp_path)), image_size=8)


def make_local_parquet(tmp_path, monkeypatch) -> DataConfig:
    return DataConfig(source=str(write_parquet(tmp_path) / "train.parquet"), image_size=8)


def make_webdataset(tmp_path, monkeypatch) -> DataConfig:
    root = tmp_path / "tars"
    root.mkdir()
    with tarfile.open(root / "train-00000.tar", "w") as tar:
        for i in range(4):
            for ext, data in (("png", png(40 * i)), ("cls", str(i % 2).encode())):
                info = tarfile.TarInfo(f"{i:04d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return DataConfig(source="webdataset", path=str(root), image_size=8, label_column="cls")


def make_imagefolder(tmp_path, monkeypatch) -> DataConfig:
    root = tmp_path / "images"
    for cls, value in (("cat", 0), ("dog", 200)):
        (root / cls).mkdir(parents=True)
        for k in range(2):
            (root / cls / f"{k}.png").write_bytes(png(value + k))
    return DataConfig(source="imagefolder", path=str(root), image_size=8)


def make_audiofolder(tmp_path, monkeypatch) -> DataConfig:
    root = tmp_path / "clips"
    for cls, freq in (("low", 300.0), ("high", 1000.0)):
        (root / cls).mkdir(parents=True)
        (root / cls / "0.wav").write_bytes(wav(freq))
    return DataConfig(source="audiofolder", path=str(root), audio=TINY_AUDIO)


def make_hub(tmp_path, monkeypatch) -> DataConfig:
    """A hub dataset served from memory in place of the Hub (the test has no network)."""
    real = datasets.load_dataset

    def load_dataset(path, *args, split=None, streaming=False, **kwargs):
        if path != "someone/tiny":
            return real(path, *args, split=split, streaming=streaming, **kwargs)
        table = image_table()
        return table.to_iterable_dataset() if streaming else table

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return DataConfig(source="someone/tiny", image_size=8)


# tiny data of each source that reads files (or the Hub), by registry name
MAKERS = {
    "parquet": make_parquet,
    "webdataset": make_webdataset,
    "imagefolder": make_imagefolder,
    "audiofolder": make_audiofolder,
    LOCAL_PARQUET.name: make_local_parquet,
    HUB.name: make_hub,
}


def tiny_config(entry, tmp_path, monkeypatch) -> DataConfig:
    if entry.procedural:  # generated: the name is all it needs
        return DataConfig(source=entry.name, image_size=8, num_train=3, num_eval=2, audio=TINY_AUDIO)
    assert entry.name in MAKERS, f"source {entry.name!r} is registered but MAKERS has no tiny data for it"
    return MAKERS[entry.name](tmp_path, monkeypatch)


def check_items(items, cfg: DataConfig) -> None:
    for item in items:
        assert tuple(item["x"].shape) == cfg.shape and item["x"].dtype == torch.float32
        assert float(item["x"].min()) >= -1.0 and float(item["x"].max()) <= 1.0


@pytest.mark.parametrize("entry", [*SOURCES.values(), LOCAL_PARQUET, HUB], ids=lambda e: e.name)
def test_every_data_source_loads_a_tiny_split(entry, tmp_path, monkeypatch):
    cfg = tiny_config(entry, tmp_path, monkeypatch)
    validate(cfg)
    assert source_entry(cfg.source) is entry
    if entry.modality is not None:
        assert cfg.resolved_modality == entry.modality

    dataset = build_dataset(cfg, "train")
    assert len(dataset) >= 2 and dataset.modality == detect_modality(cfg)
    check_items([dataset[0], dataset[len(dataset) - 1]], cfg)

    # a stream where the source can be read as one, a one-line refusal where not
    stream_cfg = dataclasses.replace(cfg, streaming=True)
    if entry.streamable:
        stream = build_stream(stream_cfg, "train")
        stream.layout(seed=0, cycle=False)
        check_items(list(stream), cfg)
    else:
        with pytest.raises(ConfigError, match=rf"streaming: source '{entry.name}' is not read as a stream"):
            validate(stream_cfg)

    # where a local source reads, and the files behind the split
    where = data_location(cfg)
    assert (where is not None) == entry.local
    if entry.files is not None:
        files = entry.files(cfg, "train")
        assert files and all(Path(f).is_file() for f in files)
        assert all(Path(f).resolve().is_relative_to(Path(where).resolve()) for f in files)


def test_a_source_name_is_registered_once():
    from tokenizer.data.registry import register

    with pytest.raises(ValueError, match=r"'shapes' is already registered"):
        register(SOURCES["shapes"])
