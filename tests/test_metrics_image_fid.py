"""Image FID / KID / precision-recall offline: the converted Inception, its cache,
reference caching, the CLI.

Inception-v3 runs at 299x299 whatever the input size, which is slow on CPU: every test here
shares one converted network (module fixture, temporary cache) and uses 8 images a side.
"""

import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hqvae.cli import main
from sampling.metrics import cache as C
from sampling.metrics import distances as M
from sampling.metrics import image_fid as F
from sampling.metrics import inception as I
from sampling.metrics import reference as R
from sampling.metrics.features import FeatureSpace, reference_set_features
from tokenizer.config import DataConfig, load_tokenizer_config
from tokenizer.data import ShapesDataset
from tokenizer.pretrained import Tokenizer

N = 8  # images per side


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private HQVAE_CACHE holding the converted Inception for the whole module."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("hqvae-cache")
    mp.setenv("HQVAE_CACHE", str(d))
    # one intra-op thread: on a busy 2-core machine two threads run Inception 2x slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    I.load_fid_inception_weights()  # the one real conversion of this module
    yield d
    torch.set_num_threads(threads)
    mp.undo()


@pytest.fixture(scope="module")
def extractor(cache):
    return I.fid_feature_extractor("cpu", fresh=True)


@pytest.fixture(scope="module")
def shapes_ref():
    # a test split of exactly N images: the reference is the same images as shapes_images()
    return F.Reference(DataConfig(source="shapes", image_size=32, num_eval=N), "test", N)


@pytest.fixture(scope="module")
def ref_features(cache, extractor, shapes_ref):
    feats, path = F.reference_features(shapes_ref)
    return feats, path


def shapes_images(n=N, split="test"):
    ds = ShapesDataset(n, 32, split=split)
    return torch.stack([ds[i]["x"] for i in range(n)])


# ---------------------------------------------------------------------------------------
# the feature-level API shared with audio FID


def test_frechet_distance_matches_closed_form():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.eye(3), 4 * np.eye(3)
    # |mu1-mu2|^2 + tr(s1 + s2 - 2 sqrt(s1 s2)) = 5 + (3 + 12 - 2 * 6) = 8
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(8.0, abs=1e-9)
    a = torch.randn(50, 4, generator=torch.Generator().manual_seed(0))
    m = M.metrics_from_features(a, a + 1, kid=True, kid_subsets=10)
    assert m["fid"] == pytest.approx(4.0, abs=1e-6)  # a pure shift: |1|^2 per dimension
    assert m["kid_mean"] > 0 and m["kid_std"] >= 0
    assert M.metrics_from_features(a, a)["fid"] == pytest.approx(0.0, abs=1e-6)
    # the exact small-N shortcut (N < D) agrees with the D x D route of torch-fidelity
    g = torch.Generator().manual_seed(1)
    b, c = torch.randn(10, 16, generator=g) * 2, torch.randn(12, 16, generator=g) + 0.3
    stats = M.frechet_distance(*M.feature_statistics(b), *M.feature_statistics(c))
    assert M.fid_from_features(b, c) == pytest.approx(stats, rel=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        M.feature_statistics(torch.zeros(1, 4))


def numpy_precision_recall(fake, real, k=3):
    """Kynkäänniemi et al. 2019 written out: a point lies in a set's manifold when it is
    within the distance from one of the set's points to that point's k-th nearest neighbour."""
    def radii(x):
        return np.sort(np.linalg.norm(x[:, None] - x[None], axis=-1), axis=1)[:, k]  # [:, 0]: itself

    d = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    return (d <= radii(real)[None]).any(1).mean(), (d.T <= radii(fake)[None]).any(1).mean()


def test_precision_and_recall_are_kynkaanniemi_s():
    g = torch.Generator().manual_seed(3)
    real = torch.randn(40, 8, generator=g, dtype=torch.float64)
    # half the samples on the real data, half far off: precision 1/2; the near half is
    # squeezed into the core of the real data, so most real points are missed: low recall
    fake = torch.cat([torch.randn(20, 8, generator=g, dtype=torch.float64) * 0.5,
                      torch.randn(20, 8, generator=g, dtype=torch.float64) * 3 + 8])
    p, r = M.precision_recall_from_features(fake, real)
    assert (p, r) == pytest.approx(numpy_precision_recall(fake.numpy(), real.numpy()), abs=1e-12)
    assert p == 0.5 and r < 0.5
    m = M.metrics_from_features(fake, real, prc=True)
    assert (m["precision"], m["recall"]) == (p, r) and "kid_mean" not in m
    # the k-th neighbour needs k + 1 points a side: undefined below, and said so when asked directly
    small = M.metrics_from_features(fake[:3], real, prc=True)
    assert small["precision"] is None and small["recall"] is None and small["fid"] > 0
    with pytest.raises(ValueError, match="more than 3 examples a side"):
        M.precision_recall_from_features(fake[:3], real)


def test_damaged_reference_features_are_recomputed(tmp_path):
    path = tmp_path / "fid_ref" / "ref.safetensors"
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(8.0).reshape(4, 2)

    def cached(shape, key=None):
        return C.cached_tensors(path, lambda: {"features": compute()},
                                lambda t: tuple(t["features"].shape) == shape, key or {"ref": "a"})["features"]

    first = cached((4, 2))
    assert torch.equal(cached((4, 2)), first) and calls == [1]
    path.write_bytes(path.read_bytes()[:-5])  # truncated
    assert torch.equal(cached((4, 2)), first) and calls == [1, 1]
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # a flipped byte inside the tensor data
    path.write_bytes(bytes(raw))
    assert torch.equal(cached((4, 2)), first) and calls == [1, 1, 1]
    assert C.read_checked(path) is not None  # rewritten whole
    cached((5, 2))  # another count than the file holds: recomputed
    assert calls == [1, 1, 1, 1]


# ---------------------------------------------------------------------------------------
# the converted Inception


def test_converted_features_match_torchscript(extractor):
    g = torch.Generator().manual_seed(1)
    noise = torch.randint(0, 256, (1, 3, 299, 299), generator=g, dtype=torch.uint8)
    shape = F.inception_uint8(torch.stack([ShapesDataset(1, 299)[0]["x"]]))
    report = I.verify_conversion(torch.cat([noise, shape]), extractor)
    assert report["max_abs_feature"] > 0.1  # real features, not zeros
    assert report["max_rel_diff"] < 1e-4, report


def test_extractor_layout_and_registration(extractor):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    assert FEATURE_EXTRACTORS_REGISTRY[I.EXTRACTOR_NAME] is I.FIDInceptionV3
    assert len(I._layer_map()) == 94
    assert not hasattr(extractor, "fc")  # the TorchScript has no classifier: no logits
    assert "logits" not in I.FIDInceptionV3.get_provided_features_list()
    # channels-last on the CPU (faster, same features: test_converted_features_match_torchscript)
    assert extractor.Mixed_7c.branch_pool.conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_weights_cache_is_reused(cache, monkeypatch):
    def no_conversion(*a, **k):
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(I, "convert_torchscript", no_conversion)
    state = I.load_fid_inception_weights()
    assert len([k for k in state if k.endswith("conv.weight")]) == 94
    assert I.converted_weights_path().is_file()
    assert I.checksum_path(I.converted_weights_path()).is_file()


def test_corrupt_weights_cache_is_detected_and_rebuilt(tmp_path, monkeypatch):
    # the cache logic with a stand-in conversion (the real one is covered above)
    monkeypatch.setenv("HQVAE_CACHE", str(tmp_path))
    calls = []

    def fake_convert(*a, **k):
        calls.append(1)
        return {"w": torch.arange(1000, dtype=torch.float32)}

    monkeypatch.setattr(I, "convert_torchscript", fake_convert)
    first = I.load_fid_inception_weights()
    path = I.converted_weights_path()
    assert calls == [1] and path.is_file() and str(path).startswith(str(tmp_path))
    assert torch.equal(I.load_fid_inception_weights()["w"], first["w"]) and calls == [1]

    raw = bytearray(path.read_bytes())
    raw[-7] ^= 0xFF  # flip bits inside the tensor data: still a valid safetensors file
    path.write_bytes(bytes(raw))
    again = I.load_fid_inception_weights()
    assert calls == [1, 1], "a corrupted cache file must be rebuilt, not used"
    assert torch.equal(again["w"], first["w"])
    assert C.read_checked(path) is not None  # the rebuilt file passes its checksum

    C.checksum_path(path).unlink()  # a file without its checksum is not trusted either
    I.load_fid_inception_weights()
    assert calls == [1, 1, 1]

    # a checksum that matches a file that is not safetensors at all (both written
    # by something else) failed on every later run; it is rebuilt like a corrupt one
    C.write_checked(path, b"definitely not safetensors")
    assert torch.equal(I.load_fid_inception_weights()["w"], first["w"]) and calls == [1, 1, 1, 1]


# ---------------------------------------------------------------------------------------
# FID / KID


def test_reference_features_are_cached_per_dataset_and_split(ref_features, shapes_ref, monkeypatch):
    feats, path = ref_features
    assert feats.shape == (N, 2048) and path is not None and path.is_file()
    assert "shapes-test-32px-n8" in path.name

    def no_extraction(*a, **k):
        raise AssertionError("recomputed although the reference is cached")

    monkeypatch.setattr(FeatureSpace, "features", no_extraction)
    again, path2 = F.reference_features(shapes_ref)
    assert path2 == path and torch.equal(again, feats)
    # other split / size / count / seed / data / feature network -> another cache file
    data = shapes_ref.data
    fp = R.fingerprint(ShapesDataset(N, 32, split="test"), data, "test")
    features = f"{I.EXTRACTOR_NAME}/2048@{I.weights_identity()}"

    def where(d=data, split="test", n=N, fingerprint=fp, net=features):
        key = R.reference_key(net, R.data_settings(d, split), n, fingerprint)
        return R.reference_cache_path(key, f"shapes-{split}-{d.image_size}px")

    assert where() == path
    others = {where(split="train"), where(n=N + 1), where(DataConfig(source="shapes", image_size=64)),
              where(DataConfig(source="shapes", image_size=32, seed=1)), where(fingerprint="another"),
              where(net="another-network")}
    assert path not in others and len(others) == 6


def test_image_reference_cache_is_used_only_under_its_own_key(ref_features, shapes_ref, monkeypatch):
    """The key a reference file was written under is checked on every read: a file holding
    another reference's features under this reference's name is recomputed, not scored."""
    feats, path = ref_features
    stored = path.read_bytes()
    try:
        other = torch.zeros_like(feats)
        key = {"version": R.REFERENCE_CACHE_VERSION, "reference": "another"}
        path.unlink()
        C.cached_tensors(path, lambda: {"features": other, "bad_examples_skipped": torch.tensor([0])},
                         lambda t: True, key)  # same file name, other key inside
        again, path2 = F.reference_features(shapes_ref)
        assert path2 == path and torch.allclose(again, feats, atol=1e-4)
        assert not torch.equal(again, other)
    finally:
        C.write_checked(path, stored)


LEVELS = [0.05, 0.2, 0.5]  # Gaussian noise std, in [-1, 1] image units


@pytest.fixture(scope="module")
def noisy(extractor):
    x = shapes_images()
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    images = [(x + s * noise).clamp(-1, 1) for s in LEVELS]
    feats = F.extract_features(torch.cat(images), batch_size=len(LEVELS) * N).split(N)
    return images, feats


def test_fid_is_zero_on_itself_grows_with_noise_and_reports_kid(ref_features, shapes_ref, noisy):
    feats, _ = ref_features
    same = F.compute_fid(shapes_images(), shapes_ref, kid=True)  # tensor path vs cached dataset
    assert same["num_samples"] == same["num_reference"] == N
    assert abs(same["fid"]) < 1e-2, same
    results = [F.metrics_from_features(f, feats, kid=True) for f in noisy[1]]
    fids = [same["fid"]] + [r["fid"] for r in results]
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    kids = [same["kid_mean"]] + [r["kid_mean"] for r in results]
    assert all(math.isfinite(k) for k in kids) and kids[-1] > kids[0], kids
    assert all(r["kid_std"] >= 0 for r in results)


# image features moved from a loop of our own onto torch-fidelity's, which audio
# FID uses too. These numbers are what the earlier loop gave on the same images (the test
# split against itself plus noise of std 0.2); rel 1e-4 leaves room for CPUs whose float32
# convolutions round differently.
PINNED = {"fid": 260.49428635248483, "kid_mean": 0.06549120508911507, "kid_std": 0.03185736392035324}


def numpy_fid(f1, f2):
    """The Fréchet distance written out in numpy, by another route than ours: the nonzero
    eigenvalues of sigma1 @ sigma2 are those of the small symmetric matrix C @ C.T, with
    C = A1 @ A2.T / sqrt((N1-1)(N2-1)) of the centred features A1, A2."""
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    n1, n2 = len(f1), len(f2)
    c = a1 @ a2.T / np.sqrt((n1 - 1) * (n2 - 1))
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(c @ c.T), 0, None)).sum()
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + (a1**2).sum() / (n1 - 1) + (a2**2).sum() / (n2 - 1) - 2 * tr_covmean)


def test_image_fid_keeps_its_numbers(ref_features, noisy):
    real, fake = ref_features[0], noisy[1][1]
    m = M.metrics_from_features(fake, real, kid=True)
    assert {k: m[k] for k in PINNED} == pytest.approx(PINNED, rel=1e-4)
    assert m["fid"] == pytest.approx(numpy_fid(fake.double().numpy(), real.double().numpy()), rel=1e-9)


def test_torch_fidelity_calculate_metrics_with_registered_extractor(ref_features, noisy, tmp_path):
    # torch-fidelity's own pipeline (its folder loader and feature extraction) with our
    # registered extractor, offline, agrees with ours on the same images. KID only: its FID
    # eigen-decomposes 2048 x 2048 (~20-50 s on this CPU); the statistics-to-FID step is the
    # very function frechet_distance calls.
    import torch_fidelity

    a = write_pngs(tmp_path / "a", shapes_images())
    b = write_pngs(tmp_path / "b", noisy[0][1])
    m = torch_fidelity.calculate_metrics(
        input1=str(a), input2=str(b), cuda=False, kid=True, kid_subset_size=N, prc=True,
        feature_extractor=I.EXTRACTOR_NAME, cache=False, verbose=False, save_cpu_ram=True)
    ours = M.metrics_from_features(ref_features[0], noisy[1][1], kid=True, kid_subset_size=N, prc=True)
    assert m["kernel_inception_distance_mean"] == pytest.approx(ours["kid_mean"], rel=1e-3, abs=1e-5)
    assert (m["precision"], m["recall"]) == (ours["precision"], ours["recall"])


# ---------------------------------------------------------------------------------------
# CLI


def write_pngs(folder, x):
    folder.mkdir(parents=True, exist_ok=True)
    u = F.inception_uint8(x).permute(0, 2, 3, 1).numpy()
    for i, img in enumerate(u):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(folder / f"{i:05d}.png")
    return folder


@pytest.mark.e2e
def test_cli_fid_on_png_folder(ref_features, tmp_path, capsys):
    from engine.subsets import spread_indices

    # `--max-examples N` takes N images spread over the whole test split: write exactly those
    ds = F.build_reference_dataset(DataConfig(source="shapes", image_size=32, modality="image"), "test")
    folder = write_pngs(tmp_path / "samples",
                        torch.stack([ds[i]["x"] for i in spread_indices(len(ds), N)]))
    out = tmp_path / "fid.json"
    rc = main(["fid", str(folder), "--ref", "shapes:test", "--max-examples", str(N), "--kid",
               "--prc", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "FID" in text and "KID" in text and "precision 1.0000  recall 1.0000" in text
    assert f"{N} images" in text
    result = json.loads(out.read_text())
    assert abs(result["fid"]) < 1e-2  # the PNGs are the reference images, losslessly
    assert result["precision"] == result["recall"] == 1.0
    assert result["num_samples"] == result["num_reference"] == N
    assert Path(result["reference_cache"]).is_file()
    assert {"kid_mean", "kid_std"} <= set(result)


def test_cli_fid_errors_are_one_line_with_exit_2(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert main(["fid", str(missing), "--ref", "shapes:test"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and len(err.strip().splitlines()) == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["fid", str(empty), "--ref", "shapes:test"]) == 2
    assert "no images" in capsys.readouterr().err

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (32, 32)).save(mixed / "a.png")
    Image.new("RGB", (16, 16)).save(mixed / "b.png")
    assert main(["fid", str(mixed), "--ref", "shapes:test"]) == 2
    assert "mixed sizes" in capsys.readouterr().err

    ok = write_pngs(tmp_path / "ok", shapes_images(2))
    bad = tmp_path / "missing.parquet"
    assert main(["fid", str(ok), "--ref", f"{bad}:test"]) == 2
    assert str(bad) in capsys.readouterr().err
    assert main(["fid", str(ok), "--ref", "tones:test"]) == 2
    assert "not images" in capsys.readouterr().err


@pytest.mark.e2e
def test_eval_tokenizer_rfid(ref_features, tmp_path, capsys):
    cfg = load_tokenizer_config(None, [
        f"run_dir={tmp_path / 'tok'}", "model.preset=vqvae", "model.channels=16",
        "model.res_channels=8", "model.res_blocks=1", "eval.batch_size=8", "eval.grid_size=2",
    ])
    torch.manual_seed(0)
    Tokenizer.from_config(cfg).save_pretrained(tmp_path / "tok")  # untrained: a poor rFID
    rc = main(["eval-tokenizer", str(tmp_path / "tok"), "--max-examples", str(N), "--rfid",
               "--device", "cpu", "--out", str(tmp_path / "eval")])
    assert rc == 0
    assert "rfid" in capsys.readouterr().out
    metrics = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert metrics["rfid_examples"] == N
    assert metrics["rfid"] > 1.0  # reconstructions of an untrained tokenizer are far off


def test_kid_subsets_are_smaller_than_the_sets_so_its_std_means_something():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(60, 16, generator=g), torch.randn(60, 16, generator=g) + 0.3
    assert M.default_kid_subset_size(60, 60) == 30 and M.default_kid_subset_size(5000, 20000) == 1000
    assert M.default_kid_subset_size(1000, 50000) == 500
    _, std = M.kid_from_features(a, b)
    assert std > 1e-6  # subsets equal to the whole set would all give the same value


def test_a_capped_reference_spans_the_whole_split():
    from engine.subsets import spread_indices

    assert spread_indices(10, None) == list(range(10)) and spread_indices(10, 0) == []
    assert spread_indices(9, 3) == [0, 4, 8]
    rows = [torch.full((3, 2, 2), float(i) / 10 - 1) for i in range(10)]
    data = F.ImageRows(torch.stack(rows), 3)
    assert [int(data[i][0, 0, 0]) for i in range(3)] == [int(F.inception_uint8(rows[j][None])[0, 0, 0, 0])
                                                          for j in (0, 4, 9)]


def test_fid_of_a_sample_folder_reads_the_reference_like_its_tokenizer(cache, extractor, tmp_path):
    from engine.subsets import spread_indices

    # a grey tokenizer's samples: the reference must be read grey too (not the RGB default)
    cfg = load_tokenizer_config(None, ["model.preset=vqvae", "model.channels=16", "model.res_channels=8",
                                       "model.res_blocks=1", "data.source=shapes", "data.channels=1"])
    Tokenizer.from_config(cfg).save_pretrained(tmp_path / "tok")
    grey = DataConfig(source="shapes", image_size=32, channels=1, modality="image")
    ds = F.build_reference_dataset(grey, "test")
    folder = write_pngs(tmp_path / "samples" / "images",
                        torch.stack([ds[i]["x"] for i in spread_indices(len(ds), N)]))
    (folder.parent / "samples.json").write_text(json.dumps({"tokenizer_run": str(tmp_path / "tok"), "num_samples": N, "tokenizer_identity": "tok"}))
    result = F.score_folder(folder.parent, "shapes:test", max_examples=N)
    assert result["reference"]["channels"] == 1
    assert abs(result["fid"]) < 1e-2  # the grey samples are the grey reference images
    # a sample folder whose tokenizer run has moved: scored with the defaults, and said so
    (folder.parent / "samples.json").write_text(json.dumps({"tokenizer_run": str(tmp_path / "moved"), "num_samples": N, "tokenizer_identity": "tok"}))
    with pytest.warns(UserWarning, match="tokenizer run .*moved.* is not found from here"):
        assert F.score_folder(folder.parent, "shapes:test", max_examples=N)["reference"]["channels"] == 3


def test_the_tokenizer_s_own_parquet_folder_is_recognised_however_it_is_spelled(tmp_path, monkeypatch):
    """`--ref DIR:test` for a tokenizer trained with `source: parquet, path: DIR` (relative
    or absolute) is its own dataset, so every data setting of the tokenizer applies."""
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    own = R.location("parquet", "data")
    assert R.location("data", None) == own
    assert R.location(str(tmp_path / "data"), None) == own
    assert R.location("parquet", str(tmp_path / "data/../data")) == own
    assert R.location("imagefolder", "data") != own and R.location("shapes", None) != own


@pytest.mark.e2e
def test_cli_fid_fails_on_a_bad_reference_row_unless_told_to_skip(extractor, tmp_path, capsys):
    import io

    import datasets

    def png(seed):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    cells = [{"bytes": png(i), "path": f"img{i}.png"} for i in range(6)]
    cells[2] = {"bytes": b"not an image", "path": "img2.png"}
    table = datasets.Dataset.from_dict({"image": cells}).cast_column("image", datasets.Image())
    table.to_parquet(str(tmp_path / "test.parquet"))
    folder = write_pngs(tmp_path / "samples", torch.rand(4, 3, 16, 16) * 2 - 1)
    args = ["fid", str(folder), "--ref", "parquet:test", "--path", str(tmp_path), "--no-cache"]
    assert main(args) == 2
    assert "row 2 (file img2.png): cannot decode" in capsys.readouterr().err
    with pytest.warns(UserWarning, match=r"skipped a bad example.*row 2"):
        assert main([*args, "--skip-bad-examples"]) == 0
    assert "FID" in capsys.readouterr().out


def test_cli_scoring_output_paths_are_checked_before_any_work(tmp_path, capsys, monkeypatch):
    """An unwritable --out was found only after the whole score was computed."""
    import sampling.metrics.audio_fid
    import sampling.metrics.class_accuracy
    import sampling.metrics.image_fid

    def must_not_run(*args, **kwargs):
        raise AssertionError("scoring ran before the output path was checked")

    monkeypatch.setattr(sampling.metrics.image_fid, "score_folder", must_not_run)
    monkeypatch.setattr(sampling.metrics.audio_fid, "score_folder", must_not_run)
    monkeypatch.setattr(sampling.metrics.class_accuracy, "score_folder", must_not_run)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    for cmd in (["fid", str(tmp_path), "--ref", "shapes:test"],
                ["audio-fid", str(tmp_path), "--classifier", str(tmp_path)],
                ["classify", str(tmp_path), "--classifier", str(tmp_path)]):
        assert main([*cmd, "--out", str(blocker / "result.json")]) == 2
        err = capsys.readouterr().err
        assert "--out" in err and "a-file" in err and err.count("\n") == 1
        assert main([*cmd, "--out", str(tmp_path)]) == 2
        assert "is a folder" in capsys.readouterr().err
    assert main(["eval-tokenizer", str(tmp_path / "no-run"), "--out", str(blocker / "eval")]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_truncated_or_unscored_image_among_samples_is_named(tmp_path):
    """A truncated JPEG gave a traceback naming no file; a GIF was left out silently."""
    from sampling.metrics.inputs import ImageFolderSamples

    folder = write_pngs(tmp_path / "s", shapes_images(3))
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 10, 10)).save(buf, format="JPEG")
    (folder / "broken.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ValueError, match=r"broken\.jpg: not a readable image"):
        samples = ImageFolderSamples(folder)  # at the size check, or else when decoded
        for i in range(len(samples)):
            samples[i]
    (folder / "broken.jpg").unlink()
    Image.new("RGB", (32, 32)).save(folder / "extra.gif")
    with pytest.raises(ValueError, match=r"extra\.gif not scored"):
        ImageFolderSamples(folder)


@pytest.mark.parametrize("kind", ["file", "under-a-file", "read-only"])
def test_an_unusable_hqvae_cache_is_one_line_naming_it_before_any_work(kind, tmp_path, capsys, monkeypatch):
    """HQVAE_CACHE pointing at a file or a read-only folder gave NotADirectoryError /
    PermissionError tracebacks (after the features they were to keep were computed); now one
    line names the variable, its value, the path and the fix, before any network runs."""
    import os
    import tempfile

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o500)
    if os.geteuid() == 0:  # root ignores permission bits: the folder refuses new files here
        real = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and str(dir).startswith(str(readonly)):
                raise PermissionError(13, "Permission denied")
            return real(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    value = {"file": blocker, "under-a-file": blocker / "cache", "read-only": readonly}[kind]
    monkeypatch.setenv("HQVAE_CACHE", str(value))

    def must_not_run(*args, **kwargs):
        raise AssertionError("work began before the cache was checked")

    monkeypatch.setattr(FeatureSpace, "features", must_not_run)
    monkeypatch.setattr(I, "convert_torchscript", must_not_run)
    folder = write_pngs(tmp_path / "samples", shapes_images(2))
    try:
        assert main(["fid", str(folder), "--ref", "shapes:test", "--max-examples", "2"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"hqvae fid: error: HQVAE_CACHE={value}: "), err
        problem = (f"cannot write {readonly / 'fid_ref'} (Permission denied)" if kind == "read-only"
                   else f"{blocker} is a file, not a folder")
        assert problem in err and "set HQVAE_CACHE to a folder you can write" in err, err
        # the Inception weights, cached on first use, are checked the same way
        with pytest.raises(C.CacheError, match=r"HQVAE_CACHE=.*set HQVAE_CACHE to a folder you can write"):
            I.load_fid_inception_weights()
    finally:
        readonly.chmod(0o700)


@pytest.mark.e2e
def test_skipped_bad_reference_rows_are_not_scored_and_are_counted(extractor, tmp_path, capsys, monkeypatch):
    """`hqvae fid --skip-bad-examples` reported 49 reference images when 3 of them were
    stand-ins for bad rows (copies of the next good row, scored twice); now the stand-ins are
    left out of the reference, and the summary and result give the good images scored and
    the bad rows skipped, also when the reference comes from the cache."""
    import datasets

    def png(seed):
        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()

    cells = [{"bytes": png(i), "path": f"img{i}.png"} for i in range(8)]
    for i in (2, 5):
        cells[i] = {"bytes": b"not an image", "path": f"img{i}.png"}
    table = datasets.Dataset.from_dict({"image": cells}).cast_column("image", datasets.Image())
    table.to_parquet(str(tmp_path / "test.parquet"))
    folder = write_pngs(tmp_path / "samples", torch.rand(4, 3, 16, 16) * 2 - 1)
    out = tmp_path / "fid.json"
    args = ["fid", str(folder), "--ref", "parquet:test", "--path", str(tmp_path), "--skip-bad-examples",
            "--out", str(out)]
    with pytest.warns(UserWarning, match=r"skipped a bad example.*row 2"):
        assert main(args) == 0
    text = capsys.readouterr().out
    assert f"reference: 6 images of parquet:test ({tmp_path}) at 16px (2 bad rows skipped, not scored)" in text, text
    result = json.loads(out.read_text())
    assert result["num_reference"] == 6 and result["reference_bad_examples_skipped"] == 2
    data = DataConfig(source="parquet", path=str(tmp_path), image_size=16, modality="image",
                      skip_bad_examples=True)
    good = F.build_reference_dataset(data, "test")
    good_feats = F.extract_features(torch.stack([good[i]["x"] for i in (0, 1, 3, 4, 6, 7)]))
    with pytest.warns(UserWarning, match="skipped a bad example"):
        ref_feats, skipped = reference_set_features(F.image_space(), F.Reference(data, "test").reference_set())
    assert skipped == 2 and torch.allclose(ref_feats, good_feats, atol=1e-4)
    assert Path(result["reference_cache"]).is_file()

    real, read = FeatureSpace.features, []

    def spy(space, data):
        read.append(type(data.source).__name__)
        return real(space, data)

    monkeypatch.setattr(FeatureSpace, "features", spy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no row is read, so none is named again
        assert main(args) == 0  # the reference from its cache: the same counts
    assert "(2 bad rows skipped, not scored)" in capsys.readouterr().out
    assert read == ["ImageFolderSamples"]  # only the samples were run through the network


def test_samples_too_small_to_score_are_named(tmp_path, capsys):
    """`hqvae fid` on 1-pixel images reported "ShapesDataset: need ... image_size >= 4", an
    error about a dataset the user never named; it says the samples are too small."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (1, 1), (80 * i, 0, 0)).save(folder / f"{i}.png")
    assert main(["fid", str(folder), "--ref", "shapes:test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ShapesDataset" not in err, err
    assert f"{folder}: the samples are 1x1 images, too small to score (FID needs at least 4x4)" in err
    ok = write_pngs(tmp_path / "ok", shapes_images(2))
    assert main(["fid", str(ok), "--ref", "shapes:test", "--image-size", "2"]) == 2
    assert "--image-size 2: too small to score" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# the pieces every scorer shares


def test_one_report_for_every_scorer():
    """`hqvae fid`, `hqvae audio-fid` and `hqvae classify` print through one formatter."""
    from sampling.metrics.scorer import format_report

    image = {"fid": 12.34567, "kid_mean": 0.01, "kid_std": 0.002, "precision": None, "recall": None,
             "num_samples": 8, "num_reference": 8, "folder": "s/images", "modality": "image",
             "reference": {"source": "shapes", "path": None, "split": "test", "image_size": 32},
             "reference_bad_examples_skipped": 1, "feature_dim": 2048}
    assert format_report(image).splitlines() == [
        "FID 12.3457", "KID 0.01000 ± 0.00200",
        "precision / recall: undefined for 3 or fewer images a side",
        "samples: 8 images from s/images; reference: 8 images of shapes:test at 32px "
        "(1 bad row skipped, not scored)",
        "note: fewer than 2048 images on a side: the covariance is rank-deficient and FID is biased "
        "upwards; compare only numbers taken with the same counts",
    ]
    accuracy = {"accuracy": 0.5, "num_examples": 2, "per_class_accuracy": [1.0, 0.0, None],
                "class_names": ["a", "b", "c"]}
    audio = {"fid": -1e-7, "num_samples": 8, "num_reference": 9, "folder": "s/audio", "modality": "audio",
             "reference": {"source": "parquet", "path": "data", "split": "test"}, "feature_dim": 4,
             "classifier": "abc", "accuracy": accuracy, "labels": "l.json"}
    classified = ["class accuracy 0.5000 on 2 labelled audio files in s/audio (labels: l.json)",
                  "  per class: a:1.00  b:0.00",
                  "  classifier abc (accuracies compare under the same classifier only)"]
    assert format_report(audio).splitlines() == [
        "audio FID 0.0000",  # a rounding-level negative distance is not printed as -0.0000
        "samples: 8 clips from s/audio; reference: 9 clips of parquet:test (data)",
        "features: 4-d penultimate layer of classifier abc (not Inception: comparable only under the "
        "same classifier)",
        *classified,
    ]
    classify = {**accuracy, "folder": "s/audio", "labels": "l.json", "modality": "audio", "classifier": "abc"}
    assert format_report(classify).splitlines() == classified


def test_reference_fingerprints_follow_the_data(tmp_path):
    """What keys cached reference features besides their settings: a tensor's contents, a
    generator's settings, a folder's files; reading a set does not change it."""
    from sampling.metrics.inputs import ImageFolderSamples

    t = torch.arange(12.0).reshape(3, 4)
    assert R.fingerprint(t) == R.fingerprint(t.clone()) != R.fingerprint(t + 1)
    shapes = ShapesDataset(N, 32, split="test")
    shapes[0]
    assert R.fingerprint(shapes) == R.fingerprint(ShapesDataset(N, 32, split="test"))
    assert R.fingerprint(shapes) != R.fingerprint(ShapesDataset(N, 32, split="test", seed=1))
    folder = write_pngs(tmp_path / "f", shapes_images(2))
    samples = ImageFolderSamples(folder)
    before = R.fingerprint(samples)
    samples[0]  # decoding builds nothing the fingerprint reads
    assert R.fingerprint(samples) == before
    write_pngs(folder, -shapes_images(2))  # other images under the same names
    assert R.fingerprint(ImageFolderSamples(folder)) != before


def test_the_reference_parser_is_one_for_every_command():
    assert R.parse_reference("shapes") == ("shapes", "test")
    assert R.parse_reference("shapes", default_split=None) == ("shapes", None)
    assert R.parse_reference("parquet:validation") == ("parquet", "validation")
    assert R.parse_reference("C:/data/cifar") == ("C:/data/cifar", "test")  # a drive letter
    assert R.parse_reference("../d:x/y") == ("../d:x/y", "test")  # a colon inside a path
    assert R.parse_reference("data:") == ("data:", "test")
