"""Audio classifier + audio FID on tiny procedural `tones` spectrograms (CPU, offline)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from engine.config import ConfigError
from hqvae.cli import main
from sampling.classifier.augment import augment_spectrograms
from sampling.classifier.config import AugmentConfig, load_classifier_config
from sampling.classifier.evaluate import class_accuracy
from sampling.classifier.model import AudioClassifier
from sampling.classifier.train import train_classifier
from sampling.metrics.audio_fid import audio_fid, classifier_accuracy
from sampling.metrics.inputs import WavFolder, load_wav_folder
from sampling.metrics.labels import read_labels
from sampling.metrics.reference import parse_reference
from tokenizer.audio import write_wav
from tokenizer.data import build_dataset

CONFIGS = Path(__file__).parent.parent / "configs"

# 1 x 32 x 32 spectrograms of ~0.12 s clips; 4 classes (note, glide, noise, pair)
TINY = ["data.source=tones", "data.num_train=256", "data.num_eval=64",
        "data.audio.n_fft=64", "data.audio.hop_length=32", "data.audio.num_frames=32",
        "model.widths=[8,16,32]", "model.convs_per_block=1", "model.embedding_dim=32",
        "model.dropout=0.0", "train.batch_size=16", "train.progress=false", "train.log_every=50",
        "train.ckpt_every=0", "eval.batch_size=64"]
CLASSIFIER_STEPS = 150  # the steps of the classifier the `trained` fixture trains on TINY


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # these models are tiny: a second intra-op thread only adds contention on a busy machine
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="module")
def private_cache(tmp_path_factory):
    # `hqvae audio-fid` keeps reference features in the cache: a private one, not the user's
    mp = pytest.MonkeyPatch()
    mp.setenv("HQVAE_CACHE", str(tmp_path_factory.mktemp("hqvae-cache")))
    yield
    mp.undo()


# ---------------------------------------------------------------------------------------
# config


@pytest.mark.parametrize("overrides, match", [
    (["model.widht=3"], r"model\.widht.*did you mean 'widths'"),
    (["augment.time_shfit=3"], r"augment\.time_shfit"),
    (["model.embedding_dim=abc"], r"model\.embedding_dim: expected an integer"),
    (["model.widths=[8,8,8,8,8,8]"], r"model\.widths: 6 blocks halve the input 32x32"),
    # one classifier for both modalities: the other modality's augmentation is refused
    (["augment.flip=true"], r"augment\.flip: image augmentation, but the data is audio"),
    (["augment.time_mask=32"], r"augment\.time_shift / time_mask"),
    (["model.norm=group", "model.groups=3"], r"model\.groups: 3 does not divide"),
    (["model.dropout=1.5"], r"model\.dropout: must be in"),
    (["eval.max_examples=0"], r"eval\.max_examples"),
])
def test_config_errors_name_the_key(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_classifier_config(None, [*TINY, *overrides])


def test_shipped_configs_shapes_match_the_tokenizers():
    from tokenizer.config import load_tokenizer_config

    fsdd = load_classifier_config(CONFIGS / "classifier" / "fsdd.yaml")
    tok = load_tokenizer_config(CONFIGS / "tokenizer" / "fsdd_sqvae2.yaml")
    assert fsdd.data.shape == tok.data.shape == (1, 128, 128)
    assert fsdd.data.audio == tok.data.audio
    tones = load_classifier_config(CONFIGS / "classifier" / "tones.yaml")
    assert tones.data.shape == load_tokenizer_config(CONFIGS / "tokenizer" / "tones_rsqvae.yaml").data.shape


def test_augmentation_keeps_shape_and_range():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 16, 32) * 2 - 1
    assert torch.equal(augment_spectrograms(x, AugmentConfig(), 120.0), x)
    shifted = augment_spectrograms(x, AugmentConfig(time_shift=5), 120.0)
    assert shifted.shape == x.shape
    for row_in, row_out in zip(x, shifted):  # each row is x moved by one offset, gap = -1
        found = [s for s in range(-5, 6) if torch.equal(
            row_out[..., max(s, 0):32 + min(s, 0)], row_in[..., max(-s, 0):32 - max(s, 0)])]
        assert found
    masked = augment_spectrograms(x, AugmentConfig(time_mask=6, freq_mask=4, gain_db=6.0), 120.0)
    assert masked.shape == x.shape and masked.min() >= -1 and masked.max() <= 1
    silent = torch.full((2, 1, 16, 32), -1.0)
    assert torch.equal(augment_spectrograms(silent, AugmentConfig(gain_db=10.0), 120.0), silent)


# ---------------------------------------------------------------------------------------
# training, saving, loading


def test_training_beats_chance_and_writes_the_run(trained):
    run, _, metrics = trained
    for name in ("config.yaml", "metrics.jsonl", "model.safetensors", "eval.json"):
        assert (run / name).exists(), name
    saved = json.loads((run / "eval.json").read_text())
    assert saved["accuracy"] == metrics["accuracy"] and saved["num_examples"] == 64
    assert metrics["accuracy"] > 0.6  # chance is 0.25 (4 classes)
    assert len(saved["confusion"]) == 4 and saved["class_names"] == ["note", "glide", "noise", "pair"]
    assert "num_classes: 4" in (run / "config.yaml").read_text()  # filled in from the data


def test_from_pretrained_gives_identical_outputs(trained, eval_batch):
    run, cfg, metrics = trained
    x, _ = eval_batch
    a = AudioClassifier.from_pretrained(run)
    b = AudioClassifier.from_pretrained(run / "model.safetensors")
    assert not a.training and a.num_classes == 4 and a.class_names == ["note", "glide", "noise", "pair"]
    with torch.no_grad():
        assert torch.equal(a.logits(x), b.logits(x))
        assert torch.equal(a.features(x), b.features(x))
        assert a.features(x).shape == (64, 32)
    assert torch.equal(a.predict(x), a.logits(x).argmax(-1))
    assert a.identity == b.identity == metrics["identity"]
    with pytest.raises(ValueError, match=r"expected spectrograms of shape \(B, 1, 32, 32\)"):
        a.features(torch.zeros(2, 1, 16, 32))


def test_from_pretrained_refuses_other_weights(tmp_path):
    with pytest.raises(FileNotFoundError):
        AudioClassifier.from_pretrained(tmp_path / "nothing")
    from engine.checkpoint import save_weights

    save_weights(tmp_path / "model.safetensors", {"w": torch.zeros(1)}, {"a": 1}, {"kind": "hqvae-tokenizer"})
    with pytest.raises(ValueError, match="not an audio classifier"):
        AudioClassifier.from_pretrained(tmp_path)


# ---------------------------------------------------------------------------------------
# audio FID and accuracy


def test_audio_fid_is_zero_on_itself_and_grows_with_noise(trained, eval_batch):
    run, _, _ = trained
    x, _ = eval_batch
    clf = AudioClassifier.from_pretrained(run)
    same = audio_fid(clf, x, x)
    assert abs(same["fid"]) < 1e-6
    assert same["num_samples"] == same["num_reference"] == 64 and same["feature_dim"] == 32
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x.shape, generator=gen)
    noisy = [audio_fid(clf, (x + s * noise).clamp(-1, 1), x) for s in (0.05, 0.2, 0.6)]
    fids = [r["fid"] for r in noisy]
    assert 0 < fids[0] < fids[1] < fids[2]
    # KID's unbiased estimator is not 0 for a set against itself (the shared samples' own
    # kernel terms are left out on one side only), but it grows with the noise all the same
    assert same["kid_mean"] < noisy[0]["kid_mean"] < noisy[2]["kid_mean"]
    # the torch-fidelity path scores the classifier's penultimate features
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    with torch.no_grad():
        f1 = clf.features((x + 0.6 * noise).clamp(-1, 1)).double()
        f2 = clf.features(x).double()
    direct = fid_statistics_to_metric(fid_features_to_statistics(f1), fid_features_to_statistics(f2), False)
    assert fids[2] == pytest.approx(direct["frechet_inception_distance"], rel=1e-6, abs=1e-9)
    # a dataset of {"x", "label"} items and a run directory work too; the caller's model is untouched
    ref = build_dataset(clf.config.data, "test")
    assert audio_fid(run, ref, x, kid=False)["fid"] == pytest.approx(0.0, abs=1e-6)
    assert all(p.requires_grad for p in clf.parameters())
    with pytest.raises(ValueError, match=r"shape \(1, 16, 32\), but the classifier takes \(1, 32, 32\)"):
        audio_fid(clf, x[:, :, :16], x)


def test_audio_fid_caches_reference_features(trained, eval_batch, tmp_path):
    run, _, _ = trained
    x, _ = eval_batch
    first = audio_fid(run, x[:32], x, kid=False, reference_cache_name="tones-test", cache_root=str(tmp_path))
    cached = sorted(p.name for p in tmp_path.iterdir())
    assert cached and all("tones-test-n64-" in name for name in cached)
    # image FID's cache (safetensors + SHA-256), not torch-fidelity's pickles
    assert [Path(n).suffix for n in cached] == [".safetensors", ".sha256"]
    (path,) = tmp_path.glob("*.safetensors")
    stamp = path.stat().st_mtime_ns
    again = audio_fid(run, x[:32], x, kid=False, reference_cache_name="tones-test", cache_root=str(tmp_path))
    assert again["fid"] == first["fid"] and path.stat().st_mtime_ns == stamp  # read, not rewritten
    path.write_bytes(path.read_bytes()[:-8])  # a truncated cache file is recomputed
    again = audio_fid(run, x[:32], x, kid=False, reference_cache_name="tones-test", cache_root=str(tmp_path))
    assert again["fid"] == first["fid"]
    from sampling.metrics.cache import read_checked

    assert read_checked(path) is not None


def test_a_changed_audio_reference_is_not_scored_against_stale_cached_features(trained, tmp_path):
    """Reference features cached under a name were read back on name, count and classifier
    alone: after the reference's files changed (same names, same count), new scores used the
    old reference's features. The cache key holds a fingerprint of the data and is checked
    on every read, so the changed reference is recomputed."""
    run, cfg, _ = trained
    write_tones(tmp_path / "generated", cfg, n=8)
    reference = tmp_path / "reference"
    reference.mkdir()
    write_tones(reference, cfg, n=16)
    audio = cfg.data.audio
    cache = str(tmp_path / "cache")

    def score(**kwargs):
        return audio_fid(run, WavFolder(tmp_path / "generated", audio), WavFolder(reference, audio),
                         kid=False, **kwargs)["fid"]

    before = score(reference_cache_name="my-ref", cache_root=cache)
    assert score(reference_cache_name="my-ref", cache_root=cache) == before  # read back unchanged
    noise = torch.Generator().manual_seed(0)
    for path in sorted(reference.glob("*.wav")):  # other clips under the same names
        write_wav(path, 0.3 * torch.randn(audio.num_samples, generator=noise), audio.sample_rate)
    after = score(reference_cache_name="my-ref", cache_root=cache)
    assert after == pytest.approx(score(), rel=1e-9)  # what the new reference gives uncached
    assert after != pytest.approx(before, rel=1e-3)
    # the file keeps the key it was computed under, which every read compares
    newest = max(Path(cache).glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
    with safe_open(str(newest), "pt") as f:
        assert json.loads(f.metadata()["key"])["reference"] == {"name": "my-ref"}


def test_8bit_spectrograms_are_mapped_back_to_the_float_range(trained, eval_batch):
    """uint8 spectrogram images (grey, or grey saved as RGB) score like their float values."""
    run, _, _ = trained
    x, y = eval_batch
    u8 = ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    as_float = u8.float() / 127.5 - 1
    for images in (u8, u8.expand(-1, 3, -1, -1)):
        assert audio_fid(run, images, as_float, kid=False)["fid"] == pytest.approx(0.0, abs=1e-6)
        assert classifier_accuracy(run, images, y)["accuracy"] == classifier_accuracy(run, as_float, y)["accuracy"]
        # ... and through class_accuracy, both modalities' scorer: one uint8 mapping, not two
        assert class_accuracy(run, images, y)["accuracy"] == classifier_accuracy(run, as_float, y)["accuracy"]


def test_classifier_accuracy_matches_eval(trained, eval_batch):
    run, _, metrics = trained
    x, y = eval_batch
    acc = classifier_accuracy(run, x, y)
    assert acc["accuracy"] == pytest.approx(metrics["accuracy"]) and acc["num_examples"] == 64
    assert sum(map(sum, acc["confusion"])) == 64
    perfect = classifier_accuracy(run, x, AudioClassifier.from_pretrained(run).predict(x))
    assert perfect["accuracy"] == 1.0
    with pytest.raises(ValueError, match="63 labels for 64 inputs"):
        classifier_accuracy(run, x, y[:63])
    with pytest.raises(ValueError, match="label 7 is out of range"):
        classifier_accuracy(run, x[:1], [7])


def test_a_run_that_saved_no_modality_resumes(tmp_path):
    """Runs from before data.modality was detected saved null there (configs/classifier/
    tones.yaml leaves it unset): null stands for the detected value, as for the tokenizer."""
    args = [f"run_dir={tmp_path / 'run'}", *TINY, "train.ckpt_every=1"]
    train_classifier(load_classifier_config(None, [*args, "train.steps=1"]))
    saved = tmp_path / "run" / "config.yaml"
    text = saved.read_text()
    assert "  modality: audio\n" in text
    saved.write_text(text.replace("  modality: audio\n", "  modality: null\n"))
    assert train_classifier(load_classifier_config(None, [*args, "train.steps=2"]))["train"]["resumed_from"] == 1
    # a saved value other than the detected one is still another run
    saved.write_text(text.replace("  modality: audio\n", "  modality: image\n"))
    with pytest.raises(ConfigError, match=r"different config \(data\.modality\)"):
        train_classifier(load_classifier_config(None, [*args, "train.steps=3"]))


# ---------------------------------------------------------------------------------------
# WAV folders


def write_tones(folder, cfg, n=8, rate=None):
    data = build_dataset(cfg.data, cfg.data.eval_split)
    sr = cfg.data.audio.sample_rate
    for i in range(n):
        wave = torch.from_numpy(data.waveform(i))
        if rate is not None:
            from tokenizer.audio import resample

            wave = resample(wave, sr, rate)
        write_wav(folder / f"{i:06d}.wav", wave, rate or sr)
    return data


def test_wav_folder_round_trip(trained, tmp_path):
    _, cfg, _ = trained
    data = write_tones(tmp_path / "a", cfg)
    x, names = load_wav_folder(tmp_path / "a", cfg.data.audio)
    assert x.shape == (8, 1, 32, 32) and names == [f"{i:06d}.wav" for i in range(8)]
    original = torch.stack([data[i]["x"] for i in range(8)])
    assert (x - original).abs().mean() < 0.02  # 16-bit PCM quantisation only
    # another sample rate is resampled to the classifier's
    write_tones(tmp_path / "b", cfg, n=3, rate=16000)
    y, _ = load_wav_folder(tmp_path / "b", cfg.data.audio)
    assert y.shape == (3, 1, 32, 32)
    assert (y - original[:3]).abs().mean() < 0.05
    with pytest.raises(FileNotFoundError, match="no such folder"):
        WavFolder(tmp_path / "missing", cfg.data.audio)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no audio files"):
        WavFolder(tmp_path / "empty", cfg.data.audio)


def test_read_labels_and_reference_parsing(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"a.wav": 1, "b.wav": "glide", "c.wav": "3"}))
    assert read_labels(path, ["a.wav", "sub/b.wav", "c.wav"], ["note", "glide", "noise", "pair"]) == [1, 1, 3]
    with pytest.raises(ValueError, match="no label for 1 of 2 files"):
        read_labels(path, ["a.wav", "d.wav"])
    with pytest.raises(ValueError, match="'glide' of 'b.wav' is not a class"):
        read_labels(path, ["b.wav"], ["0", "1"])
    with pytest.raises(ValueError, match=r"label 3 of 'c\.wav' is not a class of the classifier \(classes 0\.\.2"):
        read_labels(path, ["c.wav"], num_classes=3)
    assert parse_reference("parquet:test") == ("parquet", "test")
    assert parse_reference("tones", default_split=None) == ("tones", None)
    assert parse_reference("tones") == ("tones", "test")
    assert parse_reference("C:/data/fsdd", default_split=None) == ("C:/data/fsdd", None)
    assert parse_reference("C:/data/fsdd:train") == ("C:/data/fsdd", "train")
    assert parse_reference("runs/a:b/c") == ("runs/a:b/c", "test")  # a slash after the colon: a path


# ---------------------------------------------------------------------------------------
# command line


@pytest.mark.e2e
def test_cli_train_classifier_and_audio_fid(trained, tmp_path, capsys):
    run, cfg, _ = trained
    assert main(["train-classifier", f"run_dir={tmp_path / 'cli'}", *TINY, "train.steps=5"]) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy" in out and (tmp_path / "cli" / "model.safetensors").exists()
    # a `hqvae sample` output folder: audio/*.wav and labels.json keyed by file name
    samples = tmp_path / "samples"
    (samples / "audio").mkdir(parents=True)
    data = write_tones(samples / "audio", cfg)
    (samples / "labels.json").write_text(json.dumps({f"{i:06d}.wav": data[i]["label"] for i in range(8)}))
    report = tmp_path / "fid.json"
    assert main(["audio-fid", str(samples), "--classifier", str(run), "--ref", "tones:test",
                 "--out", str(report)]) == 0
    out = capsys.readouterr().out
    assert "audio FID" in out and "class accuracy" in out
    result = json.loads(report.read_text())
    assert result["num_samples"] == 8 and result["num_reference"] == 64
    assert Path(result["reference_cache"]).is_file()  # kept, as image FID's reference is
    assert result["reference"]["split"] == "test" and result["accuracy"]["num_examples"] == 8
    # `hqvae classify` scores the same clips with the same accuracy report
    accuracy = tmp_path / "accuracy.json"
    assert main(["classify", str(samples), "--classifier", str(run), "--out", str(accuracy)]) == 0
    assert "on 8 labelled audio files" in capsys.readouterr().out
    classified = json.loads(accuracy.read_text())
    assert {k: classified[k] for k in result["accuracy"]} == result["accuracy"]
    # a plain folder, the classifier's own reference data by default, no labels
    assert main(["audio-fid", str(samples / "audio"), "--classifier", str(run), "--max-examples", "16"]) == 0
    out = capsys.readouterr().out
    assert "reference: 16 clips of tones:test" in out and "accuracy" not in out
    # one spelling across commands: --max-examples caps both sides, as `hqvae fid` does
    assert main(["audio-fid", str(samples / "audio"), "--classifier", str(run), "--max-examples", "4"]) == 0
    assert "samples: 4 clips from" in capsys.readouterr().out
    assert main(["audio-fid", str(samples / "audio"), "--classifier", str(run), "--max-ref", "4"]) == 2
    assert "renamed --max-examples" in capsys.readouterr().err
    for bad in ("nosuch", "cuda:7" if torch.cuda.is_available() else "cuda"):
        assert main(["audio-fid", str(samples / "audio"), "--classifier", str(run), "--device", bad]) == 2
        err = capsys.readouterr().err
        assert "--device" in err and err.count("\n") == 1
    # labels of a prior that numbers its classes otherwise than the classifier are refused
    names = AudioClassifier.from_pretrained(run).class_names
    assert names and len(names) > 1
    (samples / "samples.json").write_text(json.dumps({"class_names": names[::-1]}))
    assert main(["audio-fid", str(samples), "--classifier", str(run), "--ref", "tones:test"]) == 2
    assert "are not the classifier's" in capsys.readouterr().err
    (samples / "samples.json").write_text(json.dumps({"class_names": names}))
    assert main(["audio-fid", str(samples), "--classifier", str(run), "--ref", "tones:test"]) == 0


@pytest.mark.parametrize("args, match", [
    (["audio-fid", "{tmp}/nowhere", "--classifier", "{run}"], "no such folder"),
    (["audio-fid", "{tmp}", "--classifier", "{tmp}/no_run"], "no weights file"),
    (["train-classifier", "model.widht=3"], "unknown key 'model.widht'"),
])
def test_cli_bad_input_exits_2_with_one_line(trained, tmp_path, capsys, args, match):
    run, cfg, _ = trained
    write_tones(tmp_path, cfg, n=2)
    args = [a.format(tmp=tmp_path, run=run) for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1 and err.startswith(f"hqvae {args[0]}: error:")


def test_fid_numbers_are_finite_floats(trained, eval_batch):
    run, _, _ = trained
    x, _ = eval_batch
    result = audio_fid(run, x[:16], x[16:])
    assert all(np.isfinite(result[k]) for k in ("fid", "kid_mean", "kid_std"))
