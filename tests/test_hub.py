"""Saving, loading and sharing the three kinds of weights (engine.pretrained):
run folders, the Hugging Face Hub cache read offline, model cards and the push path."""

import hashlib
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub import HfApi, constants

from engine.checkpoint import load_weights, save_weights
from engine.config import save_yaml, to_dict
from prior.pretrained import INFO, Prior
from sampling.classifier.config import load_classifier_config
from sampling.classifier.model import AudioClassifier
from tokenizer.pretrained import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
REVISION = "0123456789abcdef0123456789abcdef01234567"
CLASSIFIER = ["data.source=tones", "data.audio.n_fft=64", "data.audio.hop_length=32",
              "data.audio.num_frames=32", "model.widths=[8,16]", "model.embedding_dim=16",
              "model.num_classes=3"]


def make_classifier() -> AudioClassifier:
    torch.manual_seed(2)
    return AudioClassifier(load_classifier_config(None, CLASSIFIER), ["low", "mid", "high"]).eval()


def fingerprint(model) -> str:
    """What must survive a round trip: the identity a kind is checked by, or for a prior its
    tokenizer's identity and the weights of every level."""
    if isinstance(model, Prior):
        h = hashlib.sha256(model.tokenizer_identity.encode())
        for level, m in sorted(model.levels.items()):
            for name, t in sorted(m.state_dict().items()):
                h.update(f"{level}.{name}".encode() + t.numpy().tobytes())
        return h.hexdigest()
    return model.identity


@pytest.fixture(scope="module")
def models(make_tokenizer, make_prior):
    tok = make_tokenizer()
    return {"tokenizer": tok, "prior": make_prior(tok, 3, seed=1, class_names=["a", "b", "c"]),
            "classifier": make_classifier()}


KINDS = {"tokenizer": Tokenizer, "prior": Prior, "classifier": AudioClassifier}
EVAL = {"tokenizer": ("eval/eval.json", {"rmse": 0.125, "psnr": 24.5, "layers": [{"perplexity": 7.5}]}),
        "prior": ("eval.json", {"levels": {"0": {"bits_per_token": 3.25, "uniform_bits": 4.0}}}),
        "classifier": ("eval.json", {"accuracy": 0.875, "per_class_accuracy": [1.0, 0.75, 0.875]})}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache: huggingface_hub reads both settings at import, so the
    module's copies are set too."""
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache: Path, repo_id: str, folder: Path, revision: str = REVISION) -> Path:
    """Lay ``folder`` out as huggingface_hub caches a downloaded model repository:
    models--org--name/{blobs/<hash>, snapshots/<revision>/<path> -> blob, refs/main}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / revision
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / f.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * len(link.relative_to(repo).parts[:-1]), "blobs", blob.name))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def fake_upload(monkeypatch, hub):
    """The Hub's upload end stubbed: ``create_repo`` answers, ``upload_folder`` records what it
    was asked to upload and puts that folder into the offline cache as the Hub would serve it."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, **kwargs):
        folder = Path(folder_path)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        calls.append(("upload_folder", repo_id, {"repo_type": repo_type, "files": files,
                                                 "card": (folder / "README.md").read_text()}))
        put_in_cache(hub, repo_id, folder)
        return f"https://huggingface.co/{repo_id}/commit/{REVISION}"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def saved_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# -- round trips ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_save_pretrained_then_load_from_a_hub_id_offline(models, kind, tmp_path, hub):
    model = models[kind]
    out = model.save_pretrained(tmp_path / "saved")
    assert out == tmp_path / "saved"
    files = saved_files(out)
    assert {"README.md", "config.yaml"} <= set(files)
    assert all(f.endswith((".safetensors", ".md", ".yaml", ".json")) for f in files)
    snapshot = put_in_cache(hub, f"org/{kind}", out)
    loaded = KINDS[kind].from_pretrained(f"org/{kind}")
    assert fingerprint(loaded) == fingerprint(model)
    assert loaded.source == snapshot
    assert KINDS[kind].from_pretrained(out).config == model.config  # and the local folder
    # a revision other than main, by commit: the cache's snapshots/<commit>
    other = "f" * 40
    put_in_cache(hub, f"org/{kind}", out, revision=other)
    assert KINDS[kind].from_pretrained(f"org/{kind}", revision=other).source.name == other


def test_outputs_survive_the_hub_round_trip(models, tmp_path, hub):
    tok, prior = models["tokenizer"], models["prior"]
    put_in_cache(hub, "org/tok", tok.save_pretrained(tmp_path / "tok"))
    put_in_cache(hub, "org/prior", prior.save_pretrained(tmp_path / "prior"))
    tok2, prior2 = Tokenizer.from_pretrained("org/tok"), Prior.from_pretrained("org/prior")
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    codes = tok.encode(x)
    assert all(torch.equal(a, b) for a, b in zip(codes, tok2.encode(x)))
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(prior.levels[1].logits(codes[1], codes[:1], labels),
                           prior2.levels[1].logits(codes[1], codes[:1], labels))
    prior2.check_tokenizer(tok2)
    assert Prior.from_pretrained("org/prior", levels=[1]).levels.keys() == {1}


def test_run_folders_written_before_the_mixin_still_load(models, tmp_path):
    """The files the earlier per-kind savers wrote, byte for byte in content: weights with the
    config and kind tag in the metadata and config.yaml (no card, no eval record)."""
    tok, prior, clf = models["tokenizer"], models["prior"], models["classifier"]
    save_weights(tmp_path / "tok" / "model.safetensors", tok.model.state_dict(),
                 to_dict(tok.config), {"kind": "hqvae-tokenizer"})
    save_yaml(tok.config, tmp_path / "tok" / "config.yaml")
    run = tmp_path / "prior"
    run.mkdir()
    (run / INFO).write_text(json.dumps(prior.info))
    for level, m in prior.levels.items():
        save_weights(run / f"level_{level}" / "model.safetensors", m.state_dict(), to_dict(prior.config),
                     {"kind": "hqvae-prior", "level": str(level), "info": json.dumps(prior.info)})
    save_weights(tmp_path / "clf" / "model.safetensors", clf.state_dict(), to_dict(clf.config),
                 {"kind": "hqvae-audio-classifier", "class_names": json.dumps(clf.class_names)})
    assert Tokenizer.from_pretrained(tmp_path / "tok").identity == tok.identity
    assert Tokenizer.from_pretrained(str(tmp_path / "tok" / "model.safetensors")).identity == tok.identity
    assert fingerprint(Prior.from_pretrained(run)) == fingerprint(prior)
    loaded = AudioClassifier.from_pretrained(tmp_path / "clf")
    assert loaded.identity == clf.identity and loaded.class_names == clf.class_names
    # untagged weights (a checkpoint's model.safetensors) load as a tokenizer, as before
    save_weights(tmp_path / "ckpt" / "model.safetensors", tok.model.state_dict(), to_dict(tok.config))
    assert Tokenizer.from_pretrained(tmp_path / "ckpt").identity == tok.identity
    # and saving again writes the same tensors and metadata, plus the card
    again = Tokenizer.from_pretrained(tmp_path / "tok").save_pretrained(tmp_path / "again")
    (a, meta_a), (b, meta_b) = (load_weights(p / "model.safetensors") for p in (tmp_path / "tok", again))
    assert meta_a == meta_b and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (again / "config.yaml").read_text() == (tmp_path / "tok" / "config.yaml").read_text()


# -- model cards ---------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_the_card_says_what_it_is_its_numbers_and_how_to_load_it(models, kind, tmp_path):
    model = models[kind]
    run = model.save_pretrained(tmp_path / "run")
    card = (run / "README.md").read_text()
    assert "No evaluation record" in card  # none in memory, none beside it
    record_name, record = EVAL[kind]
    (run / record_name).parent.mkdir(parents=True, exist_ok=True)
    (run / record_name).write_text(json.dumps(record))
    loaded = KINDS[kind].from_pretrained(run)
    out = loaded.save_pretrained(tmp_path / "export")
    assert json.loads((out / record_name).read_text()) == record  # the record travels along
    card = (out / "README.md").read_text()
    header = card.split("---\n")[1]
    assert "library_name: hqvae" in header and "license: mit" in header
    assert f"from {type(model).__module__} import {type(model).__name__}" in card
    assert f"{type(model).__name__}.from_pretrained({str(tmp_path / 'export')!r})" in card
    identity = model.tokenizer_identity if kind == "prior" else model.identity
    assert f"`{identity}`" in card
    if kind == "prior":
        assert re.search(rf"tokenizer identity \| `{identity}`", card)
        assert "| levels.0.bits_per_token | 3.25 |" in card
    elif kind == "tokenizer":
        assert "| rmse | 0.125 |" in card and "| layers.0.perplexity | 7.5 |" in card
    else:
        assert "| accuracy | 0.875 |" in card and "per_class_accuracy" not in card
    assert "```yaml\nrun_dir:" in card  # the config


# -- the push path -------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_push_to_hub_uploads_the_saved_folder_through_the_library(models, kind, tmp_path, fake_upload):
    model = models[kind]
    record_name, record = EVAL[kind]
    run = model.save_pretrained(tmp_path / "run")
    (run / record_name).parent.mkdir(parents=True, exist_ok=True)
    (run / record_name).write_text(json.dumps(record))
    url = KINDS[kind].from_pretrained(run).push_to_hub(f"org/{kind}-pushed", private=True)
    assert url.startswith(f"https://huggingface.co/org/{kind}-pushed/")
    (_, repo, create), (_, repo2, upload) = fake_upload
    assert repo == repo2 == f"org/{kind}-pushed" and create["private"] is True
    assert upload["repo_type"] == "model"
    assert upload["files"] == saved_files(run)  # weights, config.yaml, eval record, card
    assert f"from_pretrained('org/{kind}-pushed')" in upload["card"]
    assert "No evaluation record" not in upload["card"]
    # what was uploaded loads back from the (offline) cache
    assert fingerprint(KINDS[kind].from_pretrained(f"org/{kind}-pushed")) == fingerprint(model)


@pytest.mark.docs
def test_the_hub_guide_example_runs_offline(models, tmp_path, monkeypatch, fake_upload):
    """The Hub guide's example (docs/guides/hub.md), as written, with the upload stubbed
    (fake_upload serves what it was given from the offline cache)."""
    guide = (ROOT / "docs" / "guides" / "hub.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", guide, re.S)
    assert blocks
    monkeypatch.chdir(tmp_path)
    models["tokenizer"].save_pretrained("runs/api/tokenizer")
    models["prior"].save_pretrained("runs/api/prior")
    scope = {"__name__": "readme"}
    for code in blocks:
        exec(compile(code, "docs/guides/hub.md", "exec"), scope)
    assert scope["tok"].identity == models["tokenizer"].identity
    assert [c[1] for c in fake_upload if c[0] == "upload_folder"] == [
        "my-org/shapes-rsqvae", "my-org/shapes-rsqvae-prior"]


# -- errors --------------------------------------------------------------------------------

def test_a_hub_id_that_is_not_cached_offline_is_one_line(hub, tmp_path):
    for cls in KINDS.values():
        with pytest.raises(FileNotFoundError, match=r"^org/nothing: no such run folder or file, "
                                                    r"and no Hub model of that id \(.+\)$"):
            cls.from_pretrained("org/nothing")
    # a missing path that is no Hub id is a missing path, as before (no Hub lookup)
    with pytest.raises(FileNotFoundError, match="no weights file at"):
        Tokenizer.from_pretrained(tmp_path / "org" / "nothing")
    with pytest.raises(FileNotFoundError, match="no weights file at"):
        Tokenizer.from_pretrained("nothing")
    assert not hub.exists()  # nothing was downloaded or created


def test_weights_of_another_kind_are_refused_naming_the_file(models, tmp_path):
    models["classifier"].save_pretrained(tmp_path / "clf")
    with pytest.raises(ValueError, match=r"clf/model\.safetensors: not a tokenizer \(weights of kind "
                                         r"'hqvae-audio-classifier'\)"):
        Tokenizer.from_pretrained(tmp_path / "clf")
    models["tokenizer"].save_pretrained(tmp_path / "tok")
    with pytest.raises(ValueError, match=r"not an audio classifier \(weights of kind 'hqvae-tokenizer'\)"):
        AudioClassifier.from_pretrained(tmp_path / "tok")
    # a prior level without its kind tag is refused, as it always was
    run = models["prior"].save_pretrained(tmp_path / "prior")
    state, meta = load_weights(run / "level_0" / "model.safetensors")
    save_weights(run / "level_0" / "model.safetensors", state, json.loads(meta["config"]),
                 {k: v for k, v in meta.items() if k not in ("kind", "config", "format")})
    with pytest.raises(ValueError, match=r"level_0/model\.safetensors: not a prior level \(weights without a kind tag\)"):
        Prior.from_pretrained(run)


def test_save_pretrained_refuses_what_it_cannot_save_faithfully(models, tmp_path):
    with pytest.raises(ValueError, match="config: the config is stored in the weights' metadata"):
        models["tokenizer"].save_pretrained(tmp_path / "x", config={"a": 1})
    run = models["prior"].save_pretrained(tmp_path / "prior")
    part = Prior.from_pretrained(run, levels=[1])
    with pytest.raises(ValueError, match=r"levels \[0\] were not loaded"):
        part.save_pretrained(tmp_path / "part")
    (run / "eval.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"prior/eval\.json: damaged \(JSONDecodeError"):
        Prior.from_pretrained(run).save_pretrained(tmp_path / "copy")
