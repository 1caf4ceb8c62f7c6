"""One classifier for images and spectrograms: an image classifier on tiny
procedural `shapes`, `hqvae classify` on a labelled folder, and audio classifier run folders
written before images were supported (CPU, offline)."""

import json
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_weights, save_weights
from engine.config import ConfigError, save_yaml, to_dict
from hqvae.cli import main
from sampling.classifier import (  # the package names, as model cards import them
    AudioClassifier,
    AugmentConfig,
    Classifier,
    augment_images,
    class_accuracy,
    load_classifier_config,
)
from tokenizer.data import build_dataset
from tokenizer.media import save_png, to_uint8

CONFIGS = Path(__file__).parent.parent / "configs"
SHAPES = ["circle", "square", "triangle", "ring", "cross"]

# 3 x 32 x 32 shapes (at 16 pixels the small ones are hard to tell apart), 5 classes;
# data.modality left unset: training detects it
TINY = ["data.source=shapes", "data.num_train=500", "data.num_eval=60",
        "model.widths=[8,16,32,32]", "model.embedding_dim=32", "model.dropout=0.0",
        "augment.crop_padding=2", "augment.flip=true", "train.batch_size=32", "train.lr=3e-3",
        "train.progress=false", "train.log_every=50", "train.ckpt_every=0", "eval.batch_size=64"]
CLASSIFIER_STEPS = 250  # the steps of the classifier the `trained` fixture trains on TINY


def write_sample_folder(folder: Path, x: torch.Tensor, labels, class_names=SHAPES) -> None:
    """The layout `hqvae sample --label cycle` writes: images/, labels.json, samples.json."""
    (folder / "images").mkdir(parents=True)
    images = to_uint8(x)
    for i in range(len(x)):
        save_png(images[i], folder / "images" / f"{i:06d}.png")
    (folder / "labels.json").write_text(json.dumps({f"{i:06d}.png": int(y) for i, y in enumerate(labels)}))
    (folder / "samples.json").write_text(json.dumps({"num_samples": len(x), "class_names": class_names}))


# ---------------------------------------------------------------------------------------
# the image classifier


def test_image_classifier_trains_on_shapes_and_beats_chance(trained, eval_batch):
    run, _, metrics = trained
    assert metrics["accuracy"] > 0.6  # chance is 0.2 (5 classes)
    assert metrics["class_names"] == SHAPES and metrics["num_examples"] == 60
    saved = (run / "config.yaml").read_text()
    assert "modality: image" in saved and "num_classes: 5" in saved  # detected from the data
    _, meta = load_weights(run / "model.safetensors")
    assert meta["kind"] == "hqvae-image-classifier"
    clf = Classifier.from_pretrained(run)
    assert clf.modality == "image" and clf.input_shape == (3, 32, 32) and clf.identity == metrics["identity"]
    x, y = eval_batch
    assert class_accuracy(clf, x, y)["accuracy"] == pytest.approx(metrics["accuracy"])
    # a tokenizer.data dataset ({"x", "label"} items) is an input too
    held_out = build_dataset(clf.config.data, clf.config.data.eval_split)
    assert class_accuracy(clf, held_out, y)["accuracy"] == pytest.approx(metrics["accuracy"])
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 32, 32\)"):
        clf.features(x[:, :, :8])
    # audio FID takes spectrograms: an image classifier is refused by name
    with pytest.raises(ValueError, match=r"not an audio classifier \(weights of kind 'hqvae-image-classifier'\)"):
        AudioClassifier.from_pretrained(run)
    card = (run / "README.md").read_text()
    assert "Image classifier (5 classes)" in card and "from sampling.classifier import Classifier" in card


def test_image_augmentation_crops_and_flips():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    assert torch.equal(augment_images(x, AugmentConfig()), x)
    flipped = augment_images(x, AugmentConfig(flip=True))
    kinds = [torch.equal(a, b) or torch.equal(a, b.flip(-1)) for a, b in zip(flipped, x)]
    assert all(kinds) and not torch.equal(flipped, x)
    cropped = augment_images(x, AugmentConfig(crop_padding=2))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="replicate")
    for a, p in zip(cropped, padded):  # each is one 8x8 window of its edge-padded image
        assert any(torch.equal(a, p[:, i:i + 8, j:j + 8]) for i in range(5) for j in range(5))


@pytest.mark.parametrize("overrides, match", [
    (["augment.time_mask=2"], r"augment\.time_mask: spectrogram augmentation, but the data is images"),
    (["augment.crop_padding=32"], r"augment\.crop_padding: must be below the image size 32x32"),
    (["model.widths=[8,8,8,8,8,8]"], r"model\.widths: 6 blocks halve the input 32x32.*data\.image_size"),
])
def test_image_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_classifier_config(None, [*TINY, *overrides])


def test_shipped_shapes_config_matches_the_quickstart_data():
    from hqvae.pipeline import load_pipeline_config

    shapes = load_classifier_config(CONFIGS / "classifier" / "shapes.yaml")
    quick = load_pipeline_config(CONFIGS / "quickstart.yaml").image
    assert shapes.data.shape == quick.tokenizer.data.shape == quick.classifier.data.shape == (3, 32, 32)
    assert quick.classifier.data.source == "shapes" and quick.classifier.data.modality == "image"


# ---------------------------------------------------------------------------------------
# hqvae classify


@pytest.mark.e2e
def test_classify_a_sample_folder(trained, eval_batch, tmp_path, capsys):
    run, _, _ = trained
    x, y = eval_batch
    write_sample_folder(tmp_path / "s", x, y.tolist())
    out = tmp_path / "acc.json"
    assert main(["classify", str(tmp_path / "s"), "--classifier", str(run), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    result = json.loads(out.read_text())
    # PNGs of uint8-made images read back exactly: the same accuracy as on the tensors
    assert result["accuracy"] == pytest.approx(class_accuracy(run, x, y)["accuracy"])
    assert result["num_examples"] == 60 and result["class_names"] == SHAPES
    assert result["modality"] == "image" and result["folder"] == str(tmp_path / "s" / "images")
    assert sum(map(sum, result["confusion"])) == 60
    assert f"class accuracy {result['accuracy']:.4f} on 60 labelled images" in text
    assert "per class: circle:" in text
    # a plain folder of images with its labels file named, labels by class name
    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(5):
        (tmp_path / "s" / "images" / f"{i:06d}.png").rename(plain / f"{i:06d}.png")
    (tmp_path / "names.json").write_text(json.dumps({f"{i:06d}.png": SHAPES[int(y[i])] for i in range(5)}))
    assert main(["classify", str(plain), "--classifier", str(run), "--labels", str(tmp_path / "names.json")]) == 0
    assert "on 5 labelled images" in capsys.readouterr().out


def test_a_sample_folder_is_read_from_its_images_folder(trained, eval_batch, tmp_path):
    """One rule for FID and class accuracy: a sample set's grid.png is not one of its
    samples, with or without samples.json; the folder read is the one reported."""
    from sampling.metrics.class_accuracy import score_folder
    from sampling.metrics.inputs import ImageFolderSamples
    from tokenizer.media import save_grid

    run, _, _ = trained
    x, y = eval_batch
    folder = tmp_path / "s"
    write_sample_folder(folder, x[:6], y[:6].tolist())
    save_grid(x[:6], folder / "grid.png")
    (folder / "samples.json").unlink()
    assert ImageFolderSamples(folder).root == folder / "images"
    result = score_folder(folder, run)
    assert result["folder"] == str(folder / "images") and result["num_examples"] == 6
    # images of another size: the error names the folder read
    (folder / "images").rename(tmp_path / "kept")
    write_sample_folder(tmp_path / "small", x[:2, :, :8, :8], y[:2].tolist())
    (tmp_path / "small" / "images").rename(folder / "images")
    with pytest.raises(ValueError, match=rf"^{folder / 'images'}: 8x8 images"):
        score_folder(folder, run)


@pytest.mark.parametrize("setup, match", [
    ("no labels", r"no labels\.json .*pass --labels FILE"),
    ("label 7", r"labels\.json: label 7 of '000001\.png' is not a class of the classifier \(classes 0\.\.4: circle"),
    ("label hexagon", r"label 'hexagon' of '000001\.png' is not a class of the classifier"),
    ("other classes", r"the samples' classes \['a', 'b'\] are not the classifier's"),
    ("other size", r"8x8 images, but the classifier takes 32x32"),
    ("missing", r"no such folder"),
])
def test_classify_bad_input_is_one_line(trained, eval_batch, tmp_path, capsys, setup, match):
    run, _, _ = trained
    x, y = eval_batch
    folder = tmp_path / "s"
    if setup == "other size":
        write_sample_folder(folder, x[:3, :, :8, :8], y[:3].tolist())
    elif setup != "missing":
        write_sample_folder(folder, x[:3], y[:3].tolist(), ["a", "b"] if setup == "other classes" else SHAPES)
    if setup == "no labels":
        (folder / "labels.json").unlink()
    elif setup.startswith("label "):
        table = json.loads((folder / "labels.json").read_text())
        value = setup.split()[1]
        table["000001.png"] = int(value) if value.isdigit() else value
        (folder / "labels.json").write_text(json.dumps(table))
    assert main(["classify", str(folder), "--classifier", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("hqvae classify: error:")
    assert __import__("re").search(match, err), err


# ---------------------------------------------------------------------------------------
# audio classifier run folders written before images were supported


AUDIO = ["data.source=tones", "data.audio.n_fft=64", "data.audio.hop_length=32",
         "data.audio.num_frames=32", "model.widths=[8,16]", "model.embedding_dim=16",
         "model.num_classes=3", "augment.time_shift=2", "augment.gain_db=3.0"]
# the identity the audio classifier module gave these weights before images were supported
OLD_IDENTITY = "8e293bab7c12667b"


def test_audio_classifier_run_folders_from_before_still_load(tmp_path, capsys):
    cfg = load_classifier_config(None, [f"run_dir={tmp_path}", *AUDIO])
    model = Classifier(cfg, ["low", "mid", "high"])
    with torch.no_grad():  # fixed weights, independent of torch's random initialisation
        for i, (name, t) in enumerate(sorted(model.state_dict().items())):
            if t.is_floating_point():
                low = 0.5 if name.endswith("running_var") else -1.0
                t.copy_(torch.linspace(low, 1, t.numel()).reshape(t.shape) * (0.5 + 0.01 * i))
    # the files the audio classifier wrote: its config had no image augmentation keys
    old = to_dict(cfg)
    for key in ("crop_padding", "flip"):
        del old["augment"][key]
    save_weights(tmp_path / "model.safetensors", model.state_dict(), old,
                 {"kind": "hqvae-audio-classifier", "class_names": json.dumps(["low", "mid", "high"])})
    save_yaml(cfg, tmp_path / "config.yaml")
    from sampling.audio_classifier import AudioClassifier as FormerName  # model cards import this

    for cls in (Classifier, AudioClassifier, FormerName):
        loaded = cls.from_pretrained(tmp_path)
        assert loaded.identity == OLD_IDENTITY and loaded.modality == "audio"
        assert loaded.class_names == ["low", "mid", "high"] and loaded.kind == "hqvae-audio-classifier"
    # saved again, it keeps its kind tag: older code still reads it as an audio classifier
    again = Classifier.from_pretrained(tmp_path).save_pretrained(tmp_path / "again")
    assert load_weights(again / "model.safetensors")[1]["kind"] == "hqvae-audio-classifier"
    # and the hub export names it, as `hqvae.AudioClassifier` does
    import hqvae

    assert hqvae.AudioClassifier is AudioClassifier and hqvae.Classifier is Classifier


# ---------------------------------------------------------------------------------------
# the pipeline's class accuracy


def test_real_accuracy_only_where_the_data_has_the_classifiers_classes(trained):
    from hqvae.pipeline.stages import RealExamples, real_data_mismatch

    run, _, _ = trained
    clf = Classifier.from_pretrained(run)
    x = torch.zeros(3, 3, 32, 32)
    assert real_data_mismatch(clf, RealExamples(x, [0, 1, 4], SHAPES)) is None
    assert real_data_mismatch(clf, RealExamples(x, [0, 1, 4], None)) is None  # names not stored
    # unlabelled data (label -1) is not scored against class 0..4
    assert real_data_mismatch(clf, RealExamples(x, [0, -1, 4], SHAPES)) == "the held-out data has no labels"
    # a classifier of other data, or of the same classes in another order
    for names in (["a", "b", "c", "d", "e"], SHAPES[::-1]):
        assert "are not the classifier's" in real_data_mismatch(clf, RealExamples(x, [0, 1, 4], names))
    assert "beyond the classifier's 5 classes" in real_data_mismatch(clf, RealExamples(x, [0, 7, 4], None))


@pytest.mark.bench
def test_quickstart_bench_reads_the_real_accuracy_from_fid_json(tmp_path, monkeypatch):
    """The real data's accuracy is fid.json's (audio: after the samples' round trip); no
    classifier/ folder is needed (score.classifier_run)."""
    import importlib.util

    bench = Path(__file__).resolve().parent.parent / "bench"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("quickstart_bench", bench / "quickstart.py")
    quickstart = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quickstart)
    track = tmp_path / "audio"
    for path, record in [
        ("fid.json", {"samples": {"fid": 1.0, "accuracy": 0.5}, "real": {"fid": 0.5, "accuracy": 0.75},
                      "classifier": "elsewhere", "classes": 4}),
        ("tokenizer/eval/eval.json", {"psnr": 20.0, "layers": [{"perplexity": 3.0, "codes_used": 5,
                                                                 "codebook_size": 8}]}),
        ("prior/eval.json", {"levels": {"0": {"bits_per_token": 2.0, "uniform_bits": 3.0}}}),
    ]:
        (track / path).parent.mkdir(parents=True, exist_ok=True)
        (track / path).write_text(json.dumps(record))
    line = quickstart.track_line(tmp_path, "audio")
    assert ("samples 0.50 (chance 0.25; on real held-out clips through the same Griffin-Lim round trip "
            "0.75)") in line


@pytest.mark.bench
def test_quickstart_sweep_variants_are_valid_pipeline_settings(monkeypatch):
    """Every variant of bench/quickstart_sweep.py (with its base's settings) loads as a
    pipeline config: a misspelt key would otherwise fail minutes into a sweep."""
    import importlib.util

    from hqvae.pipeline.config import load_pipeline_config

    bench = Path(__file__).resolve().parent.parent / "bench"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("quickstart_sweep", bench / "quickstart_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    assert sweep.track_overrides("image", ["data.num_train=5", "prior.train.steps=3"]) == [
        "image.tokenizer.data.num_train=5", "image.prior.train.steps=3"]
    quickstart = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"
    for track, variants in sweep.VARIANTS.items():
        for name, (base, _, overrides) in variants.items():
            assert base is None or variants[base][0] is None, name  # one level of bases
            settings = (variants[base][2] if base else []) + overrides
            cfg = load_pipeline_config(quickstart, [f"{sweep.OTHER[track]}=null",
                                                    *sweep.track_overrides(track, settings)])
            assert getattr(cfg, sweep.OTHER[track]) is None and getattr(cfg, track) is not None


def test_classify_names_what_it_needs_of_images_of_mixed_sizes(tmp_path, capsys):
    """`hqvae classify` on images of mixed sizes said "FID needs one size"; it says what the
    classifier takes."""
    from PIL import Image

    cfg = load_classifier_config(None, [f"run_dir={tmp_path / 'clf'}", *TINY, "data.modality=image",
                                        "model.num_classes=5"])
    Classifier(cfg, SHAPES).save_pretrained(tmp_path / "clf")
    folder = tmp_path / "s"
    folder.mkdir()
    Image.new("RGB", (32, 32)).save(folder / "a.png")
    Image.new("RGB", (16, 16)).save(folder / "b.png")
    (folder / "labels.json").write_text(json.dumps({"a.png": 0, "b.png": 1}))
    assert main(["classify", str(folder), "--classifier", str(tmp_path / "clf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "FID" not in err, err
    assert (f"{folder}: images of mixed sizes (a.png is 32x32, b.png is 16x16); the classifier takes "
            "32x32 images (its data.image_size)") in err, err
