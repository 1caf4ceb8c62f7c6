"""Datasets: the procedural built-ins and HF datasets from small generated files (offline)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tokenizer.audio import write_wav
from tokenizer.config import AudioConfig, DataConfig
from tokenizer.data import ShapesDataset, TonesDataset, build_dataset, data_shape, procedural

pytestmark = pytest.mark.usefixtures("hermetic_hf")


def check_item(item, shape, num_classes=None):
    x, label = item["x"], item["label"]
    assert x.dtype == torch.float32 and tuple(x.shape) == tuple(shape)
    assert x.min() >= -1 and x.max() <= 1
    assert isinstance(label, int)
    if num_classes is None:
        assert label == -1
    else:
        assert 0 <= label < num_classes


# ---------------------------------------------------------------------------------------
# built-ins


def test_shapes_are_deterministic_and_seeded():
    cfg = DataConfig(num_train=20, num_eval=10)
    train = build_dataset(cfg, cfg.train_split)
    assert isinstance(train, ShapesDataset) and len(train) == 20
    assert train.modality == "image" and train.num_classes >= 4
    assert data_shape(cfg) == train.shape == (3, 32, 32)
    for i in range(len(train)):
        check_item(train[i], (3, 32, 32), train.num_classes)
    procedural.RENDER_CACHE.clear()  # render again, not read back
    assert torch.equal(train[3]["x"], build_dataset(cfg, "train")[3]["x"])
    other_seed = build_dataset(DataConfig(num_train=20, seed=1), "train")
    assert not torch.equal(train[3]["x"], other_seed[3]["x"])
    test = build_dataset(cfg, cfg.eval_split)
    assert len(test) == 10
    assert not any(torch.equal(train[i]["x"], test[i]["x"]) for i in range(10))
    labels = {train[i]["label"] for i in range(len(train))}
    assert labels == set(range(train.num_classes))
    with pytest.raises(IndexError):
        train[20]


def test_procedural_items_are_rendered_once_per_process(monkeypatch):
    procedural.RENDER_CACHE.clear()
    calls = []
    render = ShapesDataset.render
    monkeypatch.setattr(ShapesDataset, "render", lambda self, rng, label: calls.append(label) or render(self, rng, label))
    first = [ShapesDataset(6, seed=3)[i]["x"] for i in range(6)]
    first[0].add_(1.0)  # a caller editing its batch edits its own copy
    assert len(calls) == 6
    # another set of the same source, settings, seed and split (any size) reads them back
    again = [ShapesDataset(10, seed=3)[i]["x"] for i in range(6)]
    assert len(calls) == 6
    ShapesDataset(6, seed=4)[0], ShapesDataset(6, seed=3, split="test")[0], ShapesDataset(6, 16, seed=3)[0]
    assert len(calls) == 9  # a different seed, split or size is a different image
    procedural.RENDER_CACHE.clear()
    fresh = [ShapesDataset(6, seed=3)[i]["x"] for i in range(6)]
    assert len(calls) == 15
    assert all(torch.equal(a, b) for a, b in zip(again, fresh))
    assert not torch.equal(first[0], fresh[0])

    tones = DataConfig(source="tones", num_train=4, audio=AudioConfig(n_fft=64, hop_length=32, num_frames=16))
    spec = build_dataset(tones, "train")[1]["x"]
    spec.zero_()
    assert build_dataset(tones, "train")[1]["x"].abs().sum() > 0


def test_render_cache_keeps_what_fits_and_no_more():
    cache = procedural.RenderCache(limit_bytes=2 * 3072)
    for i in range(4):
        cache.put(("k",), i, np.zeros((32, 32, 3), np.uint8))
    assert cache.nbytes == 2 * 3072
    assert cache.get(("k",), 1) is not None and cache.get(("k",), 2) is None


def test_shapes_grey_and_size():
    ds = ShapesDataset(4, image_size=48, channels=1, seed=5)
    check_item(ds[0], (1, 48, 48), ds.num_classes)
    # images are not flat: shape and background differ
    assert ds[0]["x"].std() > 0.02


def test_tones_are_deterministic_spectrograms():
    cfg = DataConfig(source="tones", num_train=8, num_eval=4)
    ds = build_dataset(cfg, "train")
    assert isinstance(ds, TonesDataset) and ds.modality == "audio"
    assert ds.num_classes >= 3 and ds.shape == data_shape(cfg) == (1, 128, 128)
    for i in range(len(ds)):
        check_item(ds[i], (1, 128, 128), ds.num_classes)
    assert {ds[i]["label"] for i in range(len(ds))} == set(range(ds.num_classes))
    procedural.RENDER_CACHE.clear()
    assert torch.equal(ds[2]["x"], build_dataset(cfg, "train")[2]["x"])
    other = build_dataset(DataConfig(source="tones", num_train=8, seed=9), "train")
    assert not torch.equal(ds[2]["x"], other[2]["x"])
    wave = ds.waveform(0)
    assert wave.shape == (cfg.audio.num_samples,) and np.abs(wave).max() <= 0.95
    # pickles without its spectrogram module, and rebuilds it on use
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[1]["x"], ds[1]["x"])


def test_tones_mel():
    cfg = DataConfig(source="tones", num_train=2, audio=AudioConfig(mel=True, n_mels=64))
    ds = build_dataset(cfg, "train")
    check_item(ds[0], (1, 64, 128), ds.num_classes)


def test_builtin_modality_mismatch_is_an_error():
    with pytest.raises(ValueError, match="data.modality"):
        build_dataset(DataConfig(source="shapes", modality="audio"), "train")


# ---------------------------------------------------------------------------------------
# parquet: images


def make_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8), "RGB")
    grey = Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8), "L")
    rgba = Image.new("RGBA", (20, 28), (255, 0, 0, 0))  # fully transparent red
    palette = Image.fromarray(rng.integers(0, 256, (50, 30, 3), dtype=np.uint8)).convert("P")
    return [rgb, grey, rgba, palette]


def write_image_parquet(path: Path, images, labels, column="img") -> Path:
    table = datasets.Dataset.from_dict({column: images, "label": labels})
    table = table.cast_column(column, datasets.Image())
    table = table.cast_column("label", datasets.ClassLabel(names=["a", "b", "c"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(str(path))
    return path


@pytest.fixture
def image_dir(tmp_path) -> Path:
    root = tmp_path / "images"
    write_image_parquet(root / "train.parquet", make_images(), [0, 1, 2, 1])
    write_image_parquet(root / "test.parquet", make_images()[:2], [2, 0])
    return root


def test_parquet_folder_by_split(image_dir):
    cfg = DataConfig(source="parquet", path=str(image_dir))
    train = build_dataset(cfg, cfg.train_split)
    test = build_dataset(cfg, cfg.eval_split)
    assert len(train) == 4 and len(test) == 2
    assert train.num_classes == 3 and train.modality == "image" and train.column == "img"
    assert [train[i]["label"] for i in range(4)] == [0, 1, 2, 1]
    for i in range(4):
        check_item(train[i], (3, 32, 32), 3)
    # transparent pixels are composited on white
    assert torch.allclose(train[2]["x"], torch.ones(3, 32, 32))
    # grey images become three equal channels
    grey = train[1]["x"]
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    # batched access (DataLoader's __getitems__) matches item access
    batch = next(iter(DataLoader(train, batch_size=4)))
    assert batch["x"].shape == (4, 3, 32, 32)
    assert torch.equal(batch["x"][0], train[0]["x"])
    assert batch["label"].tolist() == [0, 1, 2, 1]


def test_parquet_grey_and_resize_modes(image_dir):
    grey = build_dataset(DataConfig(source="parquet", path=str(image_dir), channels=1), "train")
    for i in range(4):
        check_item(grey[i], (1, 32, 32), 3)
    for mode in ("resize", "center_crop", "random_crop"):
        cfg = DataConfig(source="parquet", path=str(image_dir), image_size=16, resize=mode)
        ds = build_dataset(cfg, "train", train=True)
        check_item(ds[0], (3, 16, 16), 3)
    # random crops vary when training and never when evaluating
    cfg = DataConfig(source="parquet", path=str(image_dir), image_size=16, resize="random_crop")
    torch.manual_seed(0)
    train_crops = {build_dataset(cfg, "train", train=True)[0]["x"].sum().item() for _ in range(8)}
    eval_crops = {build_dataset(cfg, "train")[0]["x"].sum().item() for _ in range(3)}
    assert len(train_crops) > 1 and len(eval_crops) == 1


def test_parquet_file_as_source_and_split_slices(image_dir):
    ds = build_dataset(DataConfig(source=str(image_dir / "train.parquet")), "train")
    assert len(ds) == 4
    check_item(ds[0], (3, 32, 32), 3)
    # a folder given as the source is read as parquet too; datasets' slices pass through
    head = build_dataset(DataConfig(source=str(image_dir)), "train[:50%]")
    assert len(head) == 2
    with pytest.warns(UserWarning, match="one file serves every split"):
        build_dataset(DataConfig(source=str(image_dir / "train.parquet")), "test")


def test_parquet_shards_and_hub_layout(tmp_path):
    root = tmp_path / "hub"
    write_image_parquet(root / "data" / "train-00000-of-00002.parquet", make_images()[:2], [0, 1])
    write_image_parquet(root / "data" / "train-00001-of-00002.parquet", make_images()[2:], [2, 2])
    ds = build_dataset(DataConfig(source="parquet", path=str(root)), "train")
    assert len(ds) == 4


def test_column_detection_and_errors(tmp_path, image_dir):
    path = write_image_parquet(tmp_path / "other" / "train.parquet", make_images(), [0] * 4, "pic")
    ds = build_dataset(DataConfig(source="parquet", path=str(path.parent)), "train")
    assert ds.column == "pic"
    ds = build_dataset(DataConfig(source="parquet", path=str(path.parent), column="pic"), "train")
    check_item(ds[3], (3, 32, 32), 3)
    with pytest.raises(ValueError, match=r"'photo' not found.*pic"):
        build_dataset(DataConfig(source="parquet", path=str(path.parent), column="photo"), "train")
    with pytest.raises(FileNotFoundError, match=r"'validation'.*train.parquet"):
        build_dataset(DataConfig(source="parquet", path=str(image_dir)), "validation")
    with pytest.raises(FileNotFoundError, match="no such parquet"):
        build_dataset(DataConfig(source="parquet", path=str(tmp_path / "absent")), "train")
    with pytest.raises(ValueError, match="no image column"):
        table = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
        table.to_parquet(str(tmp_path / "text" / "train.parquet"))
        build_dataset(
            DataConfig(source="parquet", path=str(tmp_path / "text"), modality="image"), "train"
        )


def test_unlabelled_data_and_bad_rows(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (8, 8), (0, 0, 255)).save(good, format="PNG")
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": good.getvalue(), "path": None}, {"bytes": b"junk", "path": None}]}
    ).cast_column("image", datasets.Image())
    table.to_parquet(str(tmp_path / "train.parquet"))
    ds = build_dataset(DataConfig(source="parquet", path=str(tmp_path)), "train")
    assert ds.num_classes is None
    check_item(ds[0], (3, 32, 32))
    assert torch.allclose(ds[0]["x"][2], torch.ones(32, 32))  # blue stays blue
    with pytest.raises(ValueError, match=r"parquet .* row 1"):
        ds[1]


def test_hf_datasets_pickle(image_dir):
    ds = build_dataset(DataConfig(source="parquet", path=str(image_dir)), "train")
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0]["x"], ds[0]["x"])


# ---------------------------------------------------------------------------------------
# parquet: audio


@pytest.fixture
def audio_dir(tmp_path, wav_bytes) -> Path:
    clips = [
        wav_bytes(0.3, 8000, 1),  # short: zero-padded
        wav_bytes(2.0, 8000, 2),  # long, stereo: cropped
        wav_bytes(0.5, 16000, 1),  # other rate: resampled
        wav_bytes(1.5, 16000, 2),
    ]
    table = datasets.Dataset.from_dict(
        {"audio": [{"bytes": b, "path": None} for b in clips], "label": [0, 1, 2, 3]}
    ).cast_column("audio", datasets.Audio())
    root = tmp_path / "speech"
    root.mkdir()
    table.to_parquet(str(root / "train.parquet"))
    return root


def test_parquet_audio_clips_become_spectrograms(audio_dir):
    cfg = DataConfig(source="parquet", path=str(audio_dir), modality="audio")
    ds = build_dataset(cfg, "train")
    assert ds.modality == "audio" and ds.shape == (1, 128, 128) and ds.num_classes is None
    items = [ds[i] for i in range(4)]
    for i, item in enumerate(items):
        assert item["label"] == i  # an int label column without ClassLabel
        assert item["x"].shape == (1, 128, 128)
        assert item["x"].min() >= -1 and item["x"].max() <= 1
    # the 440 Hz tone lands in the same bin (440 / 31.25 Hz per bin -> 14) at both rates
    for item in items:
        assert item["x"][0, :, 10].argmax().item() == 14
    # the short clip is padded with silence after 0.3 s (frame 37 of 64-sample hops)
    assert items[0]["x"][0, :, 50].max() == -1
    assert items[1]["x"][0, :, 50].max() > 0
    train_ds = build_dataset(
        DataConfig(
            source="parquet",
            path=str(audio_dir),
            modality="audio",
            audio=AudioConfig(crop="random"),
        ),
        "train",
        train=True,
    )
    assert train_ds[1]["x"].shape == (1, 128, 128)


def test_audio_needs_audio_modality_and_rates_when_resampling_is_off(audio_dir):
    with pytest.raises(ValueError, match="data.modality=audio"):
        build_dataset(DataConfig(source="parquet", path=str(audio_dir)), "train")
    # asked for images explicitly: the message names the audio column and the key to set
    # (not "no image column found; set data.column")
    with pytest.raises(ValueError, match=r"column 'audio' holds audio data but data\.modality is "
                                         r"'image'; set data\.modality=audio"):
        build_dataset(DataConfig(source="parquet", path=str(audio_dir), modality="image"), "train")
    cfg = DataConfig(
        source="parquet",
        path=str(audio_dir),
        modality="audio",
        audio=AudioConfig(resample=False),
    )
    ds = build_dataset(cfg, "train")
    ds[0]  # 8 kHz: fine
    with pytest.raises(ValueError, match=r"row 2.*16000 Hz.*8000 Hz"):
        ds[2]


# ---------------------------------------------------------------------------------------
# imagefolder


def test_imagefolder_offline(tmp_path):
    root = tmp_path / "folder"
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
        (root / cls).mkdir(parents=True)
        for k in range(2):
            Image.new("RGB", (24 + k, 20), colour).save(root / cls / f"{k}.png")
    ds = build_dataset(DataConfig(source="imagefolder", path=str(root), image_size=16), "train")
    assert len(ds) == 4 and ds.num_classes == 2 and ds.class_names == ["cat", "dog"]
    for i in range(4):
        item = ds[i]
        check_item(item, (3, 16, 16), 2)
        red = item["x"][0].mean() > 0.9
        assert red == (item["label"] == 0)
    # no test/ folder: the error says how to get one
    with pytest.raises(ValueError, match=r"cannot load split 'test'.*make a test/ folder, or hold "
                                         r"out a slice such as data\.eval_split='train\[90%:\]'"):
        build_dataset(DataConfig(source="imagefolder", path=str(root), image_size=16), "test")
    # the folder given as a plain path (read as Parquet): the error names the right source
    with pytest.raises(FileNotFoundError, match=r"no parquet files.*it holds image files: read it "
                                                r"as data\.source=imagefolder"):
        build_dataset(DataConfig(source=str(root), image_size=16), "train")


def test_audiofolder_with_split_folders(tmp_path, wav_bytes):
    root = tmp_path / "clips"
    for split in ("train", "test"):
        for cls, freq in (("low", 300.0), ("high", 1000.0)):
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "0.wav").write_bytes(wav_bytes(0.4, 16000, 1, freq))
    cfg = DataConfig(source="audiofolder", path=str(root))
    ds = build_dataset(cfg, "test")
    assert len(ds) == 2 and ds.modality == "audio" and ds.class_names == ["high", "low"]
    for i in range(2):
        item = ds[i]
        check_item(item, (1, 128, 128), 2)
        peak = item["x"][0, :, 10].argmax().item()  # 31.25 Hz bins at 8 kHz
        assert peak == (32 if item["label"] == 0 else 10)
    with pytest.raises(FileNotFoundError, match=r"'validation'.*test, train"):
        build_dataset(cfg, "validation")


def test_modality_detected_from_the_data(audio_dir, tmp_path):
    from tokenizer.data import detect_modality

    assert detect_modality(DataConfig(source="parquet", path=str(audio_dir))) == "audio"
    assert detect_modality(DataConfig(source="shapes")) == "image"
    assert detect_modality(DataConfig(source="parquet", path=str(audio_dir), modality="image")) == "image"


def test_audio_parquet_trains_without_setting_modality(audio_dir, tmp_path):
    """An audio Parquet dataset needs no data.modality: the tokenizer reads it off the column."""
    from tokenizer.config import load_tokenizer_config
    from tokenizer.train import train_tokenizer

    (audio_dir / "test.parquet").write_bytes((audio_dir / "train.parquet").read_bytes())
    cfg = load_tokenizer_config(None, [
        f"run_dir={tmp_path / 'run'}", "model.preset=vqvae", "model.channels=8",
        "model.res_channels=4", "model.res_blocks=0", "model.downsample=8",
        "data.source=parquet", f"data.path={audio_dir}", "data.audio.num_frames=32",
        "train.steps=1", "train.batch_size=2", "train.progress=false",
        "eval.grid_size=2", "eval.num_audio=1", "data.audio.griffin_lim_iters=2",
    ])
    assert cfg.data.modality is None
    metrics = train_tokenizer(cfg)
    assert "lsd_db" in metrics
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "modality: audio" in saved


def test_audiofolder_labels_are_shared_across_splits(tmp_path, wav_bytes):
    # a class missing from the test split must not renumber the classes it has
    root = tmp_path / "clips"
    for split, classes in (("train", ("cat", "dog", "owl")), ("test", ("dog", "owl"))):
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            (root / split / cls / "0.wav").write_bytes(wav_bytes(0.2, 8000, 1, 440.0))
    cfg = DataConfig(source="audiofolder", path=str(root))
    train, test = build_dataset(cfg, "train"), build_dataset(cfg, "test")
    assert train.class_names == test.class_names == ["cat", "dog", "owl"]
    assert sorted(test[i]["label"] for i in range(len(test))) == [1, 2]
    (root / "validation" / "owl").mkdir(parents=True)  # a one-class split keeps its labels
    (root / "validation" / "owl" / "0.wav").write_bytes(wav_bytes(0.2, 8000, 1, 440.0))
    val = build_dataset(cfg, "validation")
    assert val.num_classes == 3 and val[0]["label"] == 2


def test_images_are_turned_upright_by_their_exif_orientation(tmp_path):
    # a camera JPEG stored sideways: white left half in storage, upright it is the top half
    (tmp_path / "a").mkdir()
    arr = np.zeros((16, 32), dtype=np.uint8)
    arr[:, :16] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(arr).save(tmp_path / "a" / "0.jpg", exif=exif, quality=95)
    ds = build_dataset(DataConfig(source="imagefolder", path=str(tmp_path), image_size=16, channels=1,
                                  label_column=None), "train")
    x = ds[0]["x"][0]
    assert x[:4].mean() > 0.8 and x[-4:].mean() < -0.8  # bright top, dark bottom
    # the FID samples side reads the same file upright too (32 tall, 16 wide)
    from sampling.metrics.inputs import ImageFolderSamples

    samples = ImageFolderSamples(tmp_path / "a")
    img = samples[0]
    assert (samples.width, samples.height) == (16, 32) and img.shape == (3, 32, 16)
    assert img[:, :8].float().mean() > 200 and img[:, -8:].float().mean() < 55


def test_a_named_label_column_must_exist(image_dir):
    with pytest.raises(ValueError, match=r"data.label_column 'digit' not found; columns: .*label"):
        build_dataset(DataConfig(source="parquet", path=str(image_dir), label_column="digit"), "train")
    ds = build_dataset(DataConfig(source="parquet", path=str(image_dir), label_column=None), "train")
    assert ds.num_classes is None


@pytest.mark.parametrize("source", ["audiofolder", "imagefolder"])
def test_files_directly_in_split_folders_have_no_labels(tmp_path, source):
    """root/train/*.wav and root/test/*.wav: the folder names are splits, not classes."""
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for i in range(2):
            if source == "audiofolder":
                write_wav(tmp_path / split / f"{i}.wav", torch.zeros(800), 8000)
            else:
                Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / split / f"{i}.png")
    for split in ("train", "test"):
        ds = build_dataset(DataConfig(source=source, path=str(tmp_path), image_size=8), split)
        assert ds.num_classes is None and ds[0]["label"] == -1


@pytest.mark.parametrize("source", ["audiofolder", "imagefolder"])
def test_a_split_is_named_by_its_folder(tmp_path, source):
    """root/val/ is split 'val' (ImageNet's layout), though datasets' imagefolder builder
    files it under 'validation'; a slice of it works too."""
    for split, n in (("train", 2), ("val", 3)):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                if source == "audiofolder":
                    write_wav(tmp_path / split / cls / f"{i}.wav", torch.zeros(800), 8000)
                else:
                    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / split / cls / f"{i}.png")
    ds = build_dataset(DataConfig(source=source, path=str(tmp_path), image_size=8), "val")
    assert len(ds) == 6 and ds.num_classes == 2
    assert len(build_dataset(DataConfig(source=source, path=str(tmp_path), image_size=8), "val[:50%]")) == 3


def test_imagefolder_split_folders_the_datasets_library_cannot_read_apart_are_refused(tmp_path):
    """Its builder knows split folders by keyword only: a holdout/ folder, or val/ beside
    dev/ (both 'validation' to it), is refused naming the folders, not read wrongly."""
    for split in ("train", "holdout", "val", "dev"):
        (tmp_path / split).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / split / "0.png")
    with pytest.raises(ValueError, match=r"holdout/ is none of them: rename it"):
        build_dataset(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8), "holdout")
    with pytest.raises(ValueError, match=r"the folders dev/, val/ are one split \('validation'\)"):
        build_dataset(DataConfig(source="imagefolder", path=str(tmp_path), image_size=8), "val")


def test_procedural_sources_refuse_a_split_they_do_not_have():
    """`--split nosuch` on shapes / tones silently generated a new split."""
    for source in ("shapes", "tones"):
        with pytest.raises(ValueError, match=r"source '\w+' has the splits 'train', 'test', 'validation'; got 'nosuch'"):
            build_dataset(DataConfig(source=source), "nosuch")
        assert len(build_dataset(DataConfig(source=source, num_eval=7), "validation")) == 7


def test_an_unreachable_hub_dataset_is_a_clear_error(monkeypatch):
    """A hub name with no network ended in a raw ConnectionError traceback."""
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'someone/nothing' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"data\.source 'someone/nothing': not a local file or folder.*ConnectionError"):
        build_dataset(DataConfig(source="someone/nothing"), "train")


@pytest.mark.parametrize("source", ["shapes", "tones"])
def test_a_huge_declared_size_of_generated_data_costs_nothing_up_front(source, tmp_path, monkeypatch):
    """`data.num_train=1e9` on shapes / tones took 8 GB within 90 s: items are rendered by
    index, but each epoch's order was a randperm of every row (and the evaluation's spread
    rows, in float32, ran past the last one). An epoch over more rows than randperm is used
    for is ordered index by index, a true permutation all the same."""
    from engine.subsets import spread_indices
    from engine.trainer import MAX_MATERIALISED_PERMUTATION, EpochSampler
    from tokenizer.config import load_tokenizer_config
    from tokenizer.train import train_tokenizer

    real = torch.randperm

    def randperm(n, *args, **kwargs):  # what would be gigabytes for a declared size
        assert n <= MAX_MATERIALISED_PERMUTATION, f"randperm({n}): memory in proportion to the data's size"
        return real(n, *args, **kwargs)

    monkeypatch.setattr(torch, "randperm", randperm)
    rows = spread_indices(10**9, 8)
    assert rows[0] == 0 and rows[-1] == 10**9 - 1 and len(set(rows)) == 8
    assert spread_indices(1000, 7) == [int(i) for i in torch.linspace(0, 999, 7).round().long()]
    extra = ["data.image_size=16"] if source == "shapes" else ["data.audio.num_frames=32",
                                                               "data.audio.griffin_lim_iters=2"]
    cfg = load_tokenizer_config(None, [
        f"run_dir={tmp_path / 'run'}", "model.preset=vqvae", "model.channels=8", "model.res_channels=4",
        "model.res_blocks=0", f"data.source={source}", "data.num_train=1000000000",
        "data.num_eval=1000000000", "train.steps=2", "train.batch_size=2", "train.progress=false",
        "eval.max_examples=4", "eval.grid_size=2", "eval.num_audio=1", *extra])
    assert train_tokenizer(cfg)  # trained and evaluated

    # the order index by index: a permutation, a function of (seed, epoch) whose prefix is
    # the same however much of the epoch is handed out
    monkeypatch.setattr("engine.epoch_order.MAX_MATERIALISED_PERMUTATION", 0)
    sampler = EpochSampler(1000, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000)) and order != list(range(1000))
    sampler.limit = 10
    assert list(sampler) == order[:10]
    sampler.set_epoch(1)
    assert list(sampler) != order[:10]


def test_images_far_smaller_than_image_size_are_warned_about_and_counted(tmp_path):
    """A 1x1 image in an image folder was blown up to 32x32 without a word. Images whose
    sides are both under a quarter of data.image_size are warned about once per row: the
    first five by name, then how many (like skipped bad rows)."""
    import warnings

    folder = tmp_path / "imgs" / "train" / "a"
    folder.mkdir(parents=True)
    sizes = {"big": (32, 32), "tall": (4, 40), "a_seven": (7, 7), "eight": (8, 8)}
    sizes.update({f"tiny{i:02d}": (1, 1) for i in range(16)})
    for name, size in sizes.items():
        Image.new("RGB", size, (200, 30, 30)).save(folder / f"{name}.png")
    ds = build_dataset(DataConfig(source="imagefolder", path=str(tmp_path / "imgs"), image_size=32), "train")
    names = [Path(ds._cell_path(ds.table[i]["image"])).stem for i in range(len(ds))]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _epoch in range(2):  # a row read again is not warned about again
            for i in range(len(ds)):
                assert ds[i]["x"].shape == (3, 32, 32)
    text = [str(w.message) for w in caught]
    named = [t for t in text if "row " in t]
    assert len(named) == 5, text
    tiny = [i for i, n in enumerate(names) if n.startswith(("tiny", "a_seven"))]  # 7x7: both sides under 8
    assert len(tiny) == 17 and names[tiny[0]] == "a_seven"
    assert [int(t.split("row ")[1].split(" ")[0]) for t in named] == tiny[:5]
    assert f"row {tiny[0]} (file {folder / 'a_seven.png'}): a 7x7 image, far smaller than " \
           f"data.image_size=32 (both sides under a quarter of it), is upscaled to 32x32" in named[0]
    assert "a 1x1 image" in named[1] and "further ones are counted, not shown" in named[4]
    counted = [t for t in text if "row " not in t]
    assert counted == [f"imagefolder {tmp_path / 'imgs'} (split 'train'): {k} images so far were far smaller "
                       "than data.image_size=32 (both sides under a quarter of it) and upscaled"
                       for k in (8, 16)], text
    assert not any(n in t for t in text for n in ("big", "tall", "eight"))
