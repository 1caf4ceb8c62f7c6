"""`hqvae pipeline`: the quickstart config end to end at a tiny scale, resuming, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.config import ConfigError
from hqvae import layout
from hqvae.cli import main
from hqvae.pipeline import check_classifier_runs, load_pipeline_config, run_pipeline
from sampling.sample_reader import media_files, read_labels, read_record

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"

# the quickstart's models and data, cut to seconds
TINY = []
for track, n_train in (("image", 48), ("audio", 48)):
    TINY += [
        f"{track}.tokenizer.train.steps=12", f"{track}.tokenizer.train.ckpt_every=6",
        f"{track}.tokenizer.data.num_train={n_train}", f"{track}.tokenizer.data.num_eval=12",
        f"{track}.tokenizer.eval.max_examples=12", f"{track}.prior.train.steps=6",
        f"{track}.prior.eval.max_examples=12", f"{track}.sample.n=10", f"{track}.sample.batch_size=5",
        f"{track}.score.max_reference=12", f"{track}.score.batch_size=12",
    ]
TINY += ["audio.classifier.train.steps=6", "audio.tokenizer.data.audio.griffin_lim_iters=4",
         "image.classifier.train.steps=6"]


@pytest.fixture(scope="module")
def inception_cache(tmp_path_factory):
    """One converted Inception for the module (the conversion is what takes time)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HQVAE_CACHE", str(tmp_path_factory.mktemp("hqvae-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, inception_cache):
    run = tmp_path_factory.mktemp("pipeline") / "run"
    rc = main(["pipeline", str(QUICKSTART), f"run_dir={run}", *TINY])
    assert rc == 0
    return run


def _summary(run: Path) -> dict:
    return json.loads((run / layout.SUMMARY).read_text())


@pytest.mark.e2e
@pytest.mark.smoke
def test_quickstart_writes_every_artifact(quick_run):
    run = quick_run
    assert (run / layout.CONFIG).is_file() and (run / layout.REPORT).is_file()
    for track in layout.TRACKS:
        for stage in ("tokenizer", "codes", "prior", "samples", "random", "fid"):
            assert layout.is_done(run, track, stage), (track, stage)
        assert (run / track / "tokenizer" / "model.safetensors").is_file()
        assert (run / track / "samples" / "grid.png").is_file()
    for track in layout.TRACKS:  # the image track has one too
        assert layout.is_done(run, track, "classifier")
    assert len(media_files(run / "image" / "samples")) == 10
    assert len(media_files(run / "audio" / "samples")) == 10
    assert len(media_files(run / "image" / "random")) == 10
    image_fid = json.loads((run / "image" / "fid.json").read_text())
    audio_fid = json.loads((run / "audio" / "fid.json").read_text())
    for fid in (image_fid, audio_fid):
        assert fid["samples"]["fid"] >= 0 and fid["random"]["fid"] >= 0
        assert fid["reference"]["split"] == "train" and fid["reference"]["num"] == 12
    for fid in (image_fid, audio_fid):  # class-conditional samples, and real data as the ceiling
        assert 0.0 <= fid["samples"]["accuracy"] <= 1.0 and 0.0 <= fid["real"]["accuracy"] <= 1.0
    assert image_fid["classifier"] == str(run / "image" / "classifier")
    for fid in (image_fid, audio_fid):  # the floor: real held-out examples, as many as samples
        assert fid["real"]["num"] == 10 and fid["real"]["split"] == "test" and fid["real"]["fid"] >= 0
    for name in ("samples", "random", "real"):  # precision / recall beside FID / KID, images only
        assert 0.0 <= image_fid[name]["precision"] <= 1.0 and 0.0 <= image_fid[name]["recall"] <= 1.0
    s = _summary(run)
    for track in layout.TRACKS:
        stages = s["tracks"][track]
        assert all(stages[k]["status"] == "ran" for k in ("tokenizer", "encode", "prior", "samples", "score"))
        fid = json.loads((run / track / "fid.json").read_text())
        assert stages["headline"]["fid"] == pytest.approx(fid["samples"]["fid"])
        assert stages["headline"]["accuracy"] == fid["samples"]["accuracy"]
        assert stages["headline"]["accuracy_real_data"] == fid["real"]["accuracy"]
        assert stages["classifier"]["status"] == "ran"
    from hqvae.pipeline import format_summary

    h = s["tracks"]["image"]["headline"]
    assert "image: PSNR" in format_summary(s) and (
        f"class accuracy {h['accuracy']:.2f} (real {h['accuracy_real_data']:.2f})" in format_summary(s))
    report = (run / layout.REPORT).read_text()
    assert "Classifier (class accuracy of the samples" in report and "FID / class accuracy" in report


@pytest.mark.e2e
def test_audio_scoring_loads_its_classifier_once_and_skips_accuracy_on_unlabelled_data(quick_run, monkeypatch):
    # four loads of one classifier; label -1 failed the score stage
    from hqvae.pipeline import stage_configs, stages
    from sampling.classifier.model import Classifier

    cfg = load_pipeline_config(QUICKSTART, [f"run_dir={quick_run}", *TINY])
    sc = stage_configs(cfg, "audio")
    loads = []
    load = Classifier._load_pretrained.__func__
    monkeypatch.setattr(Classifier, "_load_pretrained",
                        classmethod(lambda cls, *a, **k: loads.append(a[0]) or load(cls, *a, **k)))
    real_examples = stages.real_examples

    def unlabelled(data, n):
        real = real_examples(data, n)
        return real._replace(labels=[-1] * len(real.labels))

    monkeypatch.setattr(stages, "real_examples", unlabelled)
    lines = []
    out = stages.run_score(cfg.audio, sc["tokenizer"], sc["root"], "audio", "cpu", lines.append)
    assert len(loads) == 1
    assert "accuracy" in out["samples"] and "accuracy" not in out["real"] and out["real"]["fid"] >= 0
    assert lines == ["   no class accuracy on real held-out data: the held-out data has no labels"]


@pytest.mark.e2e
@pytest.mark.parametrize("which, message", [
    ("audio", r"image\.score\.classifier_run: classifier: it classifies audio \(spectrograms\), not image"),
    ("missing", r"image\.score\.classifier_run: no weights file at .*missing"),
    ("shape", r"image\.score\.classifier_run: it classifies inputs of shape \[3, 32, 32\], the image "
              r"track's data has \[3, 16, 16\]"),
])
def test_a_wrong_classifier_run_is_refused_before_any_stage(quick_run, tmp_path, which, message):
    path = {"audio": quick_run / "audio" / "classifier", "shape": quick_run / "image" / "classifier",
            "missing": tmp_path / "missing"}[which]
    other = ["image.tokenizer.data.image_size=16"] if which == "shape" else []
    cfg = load_pipeline_config(QUICKSTART, [f"run_dir={tmp_path / 'run'}", *TINY, "audio=null", *other,
                                            f"image.score.classifier_run={path}"])
    with pytest.raises(ConfigError, match=message):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "image").exists()  # nothing trained


@pytest.mark.e2e
def test_a_classifier_run_of_other_classes_is_refused_before_any_stage(quick_run, tmp_path):
    from PIL import Image

    folder = tmp_path / "pets"
    for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 255, 0))):
        (folder / "train" / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32), colour).save(folder / "train" / cls / "0.png")
    data = ["image.tokenizer.data.source=imagefolder", f"image.tokenizer.data.path={folder}",
            "image.tokenizer.data.eval_split=train",
            f"image.score.classifier_run={quick_run / 'image' / 'classifier'}"]  # shapes' classes
    cfg = load_pipeline_config(QUICKSTART, [f"run_dir={tmp_path / 'run'}", *TINY, "audio=null", *data])
    with pytest.raises(ConfigError, match=r"image\.score\.classifier_run: it classifies \['circle', "
                                          r"'square', .*, the image track's data has classes \['cat', 'dog'\]"):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "image").exists()  # nothing trained
    # an unconditional prior's samples carry no labels: nothing to compare
    check_classifier_runs(load_pipeline_config(QUICKSTART, [f"run_dir={tmp_path / 'run'}", *TINY, "audio=null",
                                                            *data, "image.prior.class_cond=false",
                                                            "image.sample.cfg_scale=1.0"]))


@pytest.mark.e2e
def test_rerun_skips_finished_stages_and_redoes_only_changed_sampling(quick_run, capsys):
    run = quick_run
    weights = run / "image" / "tokenizer" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    # another encoding batch size changes no code: still the same run, nothing redone
    assert main(["pipeline", str(QUICKSTART), f"run_dir={run}", *TINY, "image.encode.batch_size=7"]) == 0
    s = _summary(run)
    for track in layout.TRACKS:
        assert {v["status"] for k, v in s["tracks"][track].items() if k != "headline"} == {"skipped"}
    assert weights.stat().st_mtime_ns == before
    out = capsys.readouterr().out
    assert "finished earlier, skipped" in out and "ran: -" in out

    # more samples (drawn with the compiled one-token step) for images: only the image
    # samples, baseline and score run again
    assert main(["pipeline", str(QUICKSTART), f"run_dir={run}", *TINY, "image.sample.n=12",
                 "image.sample.compile=true"]) == 0
    image = _summary(run)["tracks"]["image"]
    assert {k for k, v in image.items() if k != "headline" and v["status"] == "ran"} == {
        "samples", "random", "score"}
    assert len(list((run / "image" / "samples" / "images").glob("*.png"))) == 12  # no stale files
    assert json.loads((run / "image" / "fid.json").read_text())["samples"]["num"] == 12

    # another temperature redraws the samples but not the random-codes baseline; with scoring
    # off the old scores (of samples now gone) are dropped; the run directory spelled another
    # way and the audio track left out are still this run
    assert main(["pipeline", str(QUICKSTART), f"run_dir={run}/.", *TINY, "image.sample.n=12",
                 "image.sample.compile=true", "image.sample.temperature=0.5",
                 "image.score.enabled=false", "audio=null"]) == 0
    tracks = _summary(run)["tracks"]
    assert list(tracks) == ["image"]
    assert {k for k, v in tracks["image"].items() if k != "headline" and v["status"] == "ran"} == {"samples"}
    assert not (run / "image" / "fid.json").exists()


@pytest.mark.e2e
def test_a_track_left_out_and_brought_back_with_other_settings_is_refused(quick_run):
    # the last run left audio out: pipeline.yaml keeps audio's earlier section all the same
    cfg = load_pipeline_config(QUICKSTART, [f"run_dir={quick_run}", *TINY, "audio.tokenizer.model.channels=64"])
    with pytest.raises(ConfigError, match=r"audio\.tokenizer\.model\.channels"):
        run_pipeline(cfg)


@pytest.mark.e2e
def test_codes_and_priors_of_an_earlier_tokenizer_are_redone(quick_run, capsys):
    # as after re-training the tokenizer: the codes on disk name another tokenizer identity
    manifest = quick_run / "image" / "codes" / "codes.json"
    record = json.loads(manifest.read_text())
    record["tokenizer_identity"] = "0" * 16
    manifest.write_text(json.dumps(record))
    assert main(["pipeline", str(QUICKSTART), f"run_dir={quick_run}", *TINY, "image.sample.n=12",
                 "image.sample.compile=true", "image.sample.temperature=0.5",
                 "image.score.enabled=false", "audio=null"]) == 0
    image = _summary(quick_run)["tracks"]["image"]
    assert {k for k, v in image.items() if k != "headline" and v["status"] == "ran"} == {
        "encode", "samples", "random"}  # the prior's identity still matches the tokenizer
    assert "made with an earlier tokenizer of this run; redoing it" in capsys.readouterr().out
    tok_id = json.loads(manifest.read_text())["tokenizer_identity"]
    assert tok_id != "0" * 16
    # and a prior of another tokenizer is retrained from scratch
    info = quick_run / "image" / "prior" / "prior.json"
    record = json.loads(info.read_text())
    info.write_text(json.dumps(dict(record, tokenizer_identity="1" * 16)))
    assert main(["pipeline", str(QUICKSTART), f"run_dir={quick_run}", *TINY, "image.sample.n=12",
                 "image.sample.compile=true", "image.sample.temperature=0.5",
                 "image.score.enabled=false", "audio=null"]) == 0
    image = _summary(quick_run)["tracks"]["image"]
    assert {k for k, v in image.items() if k != "headline" and v["status"] == "ran"} == {
        "prior", "samples"}
    assert json.loads(info.read_text())["tokenizer_identity"] == tok_id


@pytest.mark.e2e
def test_a_run_dir_of_another_pipeline_is_refused(quick_run):
    cfg = load_pipeline_config(QUICKSTART, [f"run_dir={quick_run}", *TINY, "image.tokenizer.model.channels=16"])
    with pytest.raises(ConfigError, match=r"image\.tokenizer\.model\.channels"):
        run_pipeline(cfg)


@pytest.mark.e2e
def test_samples_and_codes_record_what_hqvae_sample_and_encode_record(quick_run, tmp_path):
    # one encoding and one sampling step behind the CLI and the pipeline; a class
    # name is a label (the pipeline refused it), and the records carry the same keys
    assert main(["pipeline", str(QUICKSTART), f"run_dir={quick_run}", *TINY, "image.sample.n=12",
                 "image.sample.compile=true", "image.sample.temperature=0.5",
                 "image.score.enabled=false", "audio=null", "image.sample.label=square"]) == 0
    image = _summary(quick_run)["tracks"]["image"]
    assert image["samples"]["status"] == "ran" and image["prior"]["status"] == "skipped"
    samples = quick_run / "image" / "samples"
    assert set(read_labels(samples).values()) == {1}
    out = tmp_path / "cli"
    assert main(["sample", str(quick_run / "image" / "prior"), "--out", str(out), "--n", "2",
                 "--label", "square"]) == 0
    record = read_record(samples)
    assert set(record) == set(read_record(out)) | {"pipeline_sample"}
    assert record["label"] == "square" and record["cfg_scale"] == 1.0
    manifest = json.loads((quick_run / "image" / "codes" / "codes.json").read_text())
    tok = manifest["tokenizer_run"]
    assert main(["encode", tok, "--out", str(tmp_path / "codes"), "--max-examples", "4"]) == 0
    cli = json.loads((tmp_path / "codes" / "codes.json").read_text())
    for split in ("train", "test"):
        assert manifest["splits"][split]["source"] == cli["splits"][split]["source"]
        assert "column" in manifest["splits"][split]["source"]


@pytest.mark.e2e
def test_a_non_empty_folder_that_is_no_pipeline_run_is_refused(tmp_path):
    (tmp_path / "something.txt").write_text("mine")
    cfg = load_pipeline_config(QUICKSTART, [f"run_dir={tmp_path}", *TINY])
    with pytest.raises(ConfigError, match="not empty"):
        run_pipeline(cfg)


@pytest.mark.parametrize("override, message", [
    ("image.tokenizer.run_dir=x", r"image\.tokenizer\.run_dir: set by the pipeline"),
    ("audio.prior.data.codes=x", r"audio\.prior\.data\.codes: set by the pipeline"),
    ("image.sample.n=1", r"image\.sample\.n: must be >= 2"),
    ("image.sample.temperature=-1", r"temperature: must be >= 0"),
    ("image.sample.top_p=0", r"image\.sample\.top_p: must be in \(0, 1\]"),
    ("audio.sample.top_k=-2", r"audio\.sample\.top_k: must be >= 0"),
    ("audio.classifier=null", r"audio\.classifier: audio FID needs a classifier"),
    ("image.tokenizer.data.source=tones", r"image\.tokenizer\.data: the image track has audio data"),
    ("image.prior.class_cond=false image.sample.label=3", r"image\.sample\.label: the prior is not class-conditional"),
    ("image.sample.label=-1", r"label: expected 'cycle', a class id, a class name or null"),
    # as `hqvae sample`, a class name is a label and guidance needs a
    # class-conditional prior (the pipeline reset cfg_scale to 1 without a word)
    ("image.prior.class_cond=false image.sample.label=square",
     r"image\.sample\.label: the prior is not class-conditional"),
    ("image.prior.class_cond=false image.sample.cfg_scale=2",
     r"image\.sample\.cfg_scale: classifier-free guidance needs a class-conditional prior"),
    # streams reach the tokenizer, encode and prior stages; the classifier and the scores
    # need random access and said so only minutes into a run
    ("image.tokenizer.data.source=parquet image.tokenizer.data.path=/nowhere image.tokenizer.data.streaming=true",
     r"image\.classifier\.data\.streaming: a classifier trains and evaluates on random-access data"),
    ("image.tokenizer.data.source=parquet image.tokenizer.data.path=/nowhere image.tokenizer.data.streaming=true "
     "image.classifier=null",
     r"image\.tokenizer\.data\.streaming: the score stage reads the data with random access"),
    # a prior trained without label dropout has no unconditional model to guide with
    ("audio.prior.label_dropout=0 audio.sample.cfg_scale=2",
     r"audio\.sample\.cfg_scale: guidance needs the unconditional model"),
    ("image.smaple.n=3", r"unknown key 'image\.smaple' \(did you mean 'sample'\?\)"),
    ("image.prior.levels=5", r"quickstart\.yaml: image\.prior\.levels: expected a list"),
    ("audio.prior.levels=[{},3]", r"quickstart\.yaml: audio\.prior\.levels\.1: expected a mapping"),
    ("image.tokenizer.model.preset=nope", r"quickstart\.yaml: image\.tokenizer\.model\.preset: unknown preset"),
    # these failed only after tokenizer, prior and sampling had run
    ("image.score.batch_size=0", r"image\.score\.batch_size: must be >= 1"),
    ("image.encode.batch_size=0", r"image\.encode\.batch_size: must be >= 1"),
    ("audio.encode.max_examples=0", r"audio\.encode\.max_examples: must be >= 1"),
    # the bounds `hqvae sample` checks, here before the first stage
    ("image.sample.n=2000000000", r"image\.sample\.n: must be in \[2, 1,000,000,000\]"),
    ("image.sample.seed=-1", r"image\.sample\.seed: must be in \[0, 4,294,967,295\]"),
    ("audio.sample.griffin_lim_iters=-1", r"audio\.sample\.griffin_lim_iters: must be in \[0, 10,000\]"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_pipeline_config(QUICKSTART, override.split())


@pytest.mark.e2e
@pytest.mark.parametrize("label, message", [
    ("5", r"image\.sample\.label: 5 is out of range: the image data has classes 0\.\.4"),
    ("seven", r"image\.sample\.label: expected a class id, 'cycle', or a class name: circle, square, "
              r"triangle, ring, cross; got 'seven'"),
])
def test_a_class_id_beyond_the_data_is_refused_before_any_stage(tmp_path, label, message):
    cfg = load_pipeline_config(QUICKSTART, [f"run_dir={tmp_path / 'run'}", *TINY, "audio=null",
                                            f"image.sample.label={label}"])
    with pytest.raises(ConfigError, match=message):
        run_pipeline(cfg)
    assert not (tmp_path / "run" / "image").exists()  # nothing trained


def test_no_track_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="at least one track"):
        load_pipeline_config(None, [f"run_dir={tmp_path}"])


def test_cli_reports_config_errors_cleanly(capsys):
    assert main(["pipeline", str(QUICKSTART), "image.sample.n=1"]) == 2
    assert "image.sample.n" in capsys.readouterr().err


def test_classifier_data_follows_the_tokenizer():
    cfg = load_pipeline_config(QUICKSTART)
    tok, clf = cfg.audio.tokenizer.data, cfg.audio.classifier.data
    assert (clf.source, clf.audio, clf.num_train) == (tok.source, tok.audio, tok.num_train)
    assert clf.shape == tok.shape


def test_stage_config_files_as_base(monkeypatch):
    monkeypatch.chdir(QUICKSTART.parent.parent)  # `base:` paths are relative to the repository
    cfg = load_pipeline_config("configs/pipeline/fsdd_sqvae2.yaml",
                               ["audio.tokenizer.data.path=/data/fsdd", "audio.prior.train.steps=7",
                                "audio.prior.train.epochs=null"])
    a = cfg.audio
    assert a.tokenizer.model.layers[0].kind == "injected" and a.tokenizer.data.path == "/data/fsdd"
    assert a.classifier.data.path == "/data/fsdd"  # follows the tokenizer, not the base file
    assert a.prior.model.order == "column" and a.prior.train.steps == 7
    assert a.prior.data.codes is None and a.prior.tokenizer is None  # the base file's paths are dropped
    with pytest.raises(ConfigError, match=r"audio\.prior\.base: .*not found"):
        load_pipeline_config("configs/pipeline/fsdd_sqvae2.yaml", ["audio.prior.base=nope.yaml"])


def test_indexed_overrides_reach_list_items_of_a_base_file(tmp_path):
    # `...layers.1.codebook_size=64` is read before the base file that holds the list: it
    # must change that one item, not replace the list
    base = tmp_path / "tok.yaml"
    base.write_text("model:\n  layers:\n    - {kind: residual, factor: 4, codebook_size: 128}\n"
                    "    - {kind: residual, factor: 4, codebook_size: 128}\n")
    cfg = load_pipeline_config(QUICKSTART, [f"image.tokenizer.base={base}", "audio=null",
                                            "image.tokenizer.model.layers.1.codebook_size=64"])
    assert [la.codebook_size for la in cfg.image.tokenizer.model.layers] == [128, 64]


@pytest.mark.e2e
def test_scores_follow_the_classifier(quick_run):
    # the image track's classifier removed, fid.json kept its accuracies
    same = [*TINY, "image.sample.n=12", "image.sample.compile=true", "image.sample.temperature=0.5",
            "audio=null", "image.sample.label=square"]  # the samples the tests above left
    fid_json = quick_run / "image" / "fid.json"
    assert main(["pipeline", str(QUICKSTART), f"run_dir={quick_run}", *same]) == 0
    fid = json.loads(fid_json.read_text())
    assert fid["settings"]["classifier"] == fid["classifier"] == str(quick_run / "image" / "classifier")
    # scores written before the settings named the classifier are still these settings' scores
    del fid["settings"]["classifier"]
    fid_json.write_text(json.dumps(fid))
    assert main(["pipeline", str(QUICKSTART), f"run_dir={quick_run}", *same]) == 0
    assert _summary(quick_run)["tracks"]["image"]["score"]["status"] == "skipped"
    import shutil

    shutil.rmtree(quick_run / "image" / "classifier")
    assert main(["pipeline", str(QUICKSTART), f"run_dir={quick_run}", *same, "image.classifier=null"]) == 0
    image = _summary(quick_run)["tracks"]["image"]
    assert image["score"]["status"] == "ran" and "accuracy" not in image["headline"]
    fid = json.loads(fid_json.read_text())
    assert "classifier" not in fid and "accuracy" not in fid["samples"] and "accuracy" not in fid["real"]


@pytest.mark.bench
@pytest.mark.e2e
def test_quickstart_sweep_decoder_noise_scores_a_pipeline_run(quick_run, monkeypatch):
    """bench/quickstart_sweep.py --decoder-noise: noise-free row = the plain round trip, σ =
    the held-out RMSE, one row per scale and the oracle, each a valid accuracy."""
    import importlib.util

    import torch

    from sampling.classifier.evaluate import class_accuracy
    from sampling.classifier.model import Classifier
    from tokenizer.data.build import build_dataset
    from tokenizer.pretrained import Tokenizer

    bench = Path(__file__).resolve().parent.parent / "bench"
    monkeypatch.syspath_prepend(str(bench))
    spec = importlib.util.spec_from_file_location("quickstart_sweep", bench / "quickstart_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    threads = torch.get_num_threads()
    rows = sweep.decoder_noise(quick_run, "audio", threads)
    torch.set_num_threads(threads)
    assert [r["noise"] for r in rows] == [f"{s:g} σ" for s in sweep.DECODER_NOISE_SCALES] + ["oracle local σ"]
    tok = Tokenizer.from_pretrained(quick_run / "audio" / "tokenizer")
    clf = Classifier.from_pretrained(quick_run / "audio" / "classifier")
    data = build_dataset(tok.config.data, tok.config.data.eval_split)
    x = torch.stack([data[i]["x"] for i in range(len(data))])
    y = torch.tensor([data[i]["label"] for i in range(len(data))])
    with torch.no_grad():
        recon = tok.decode_codes(tok.encode(x))
    assert rows[0]["sigma"] == pytest.approx(float((recon - x).pow(2).mean().sqrt()), rel=1e-5)
    assert rows[0]["accuracy"] == class_accuracy(clf, recon.clamp(-1, 1), y)["accuracy"]
    assert all(0 <= r["accuracy"] <= 1 and list(r["per_class"]) == clf.class_names for r in rows)
    text = sweep.decoder_noise_table("audio", "shipped", rows)
    assert "| 0 σ |" in text and "| oracle local σ |" in text and "--decoder-noise shipped" in text
