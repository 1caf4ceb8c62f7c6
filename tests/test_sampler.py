"""The sampler: seeding, the KV cache, per-level settings, guidance, decoding and files."""

import io
import json
import os
import re
import zipfile

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from safetensors.torch import load_file

from hqvae.cli import main
from prior.codes import IdentityError
from sampling.outputs import write_samples
from sampling.sample_reader import media_files, read_labels, read_record
from sampling.sampler import Sampler, filter_logits


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


def test_codes_have_the_tokenizer_shapes_and_range(tok, prior):
    codes = Sampler(prior, tok).sample_codes(5, labels=1, seed=0, batch_size=2)
    assert [tuple(c.shape) for c in codes] == [(5, *s) for s in tok.code_shapes]
    for c, k in zip(codes, tok.codebook_sizes):
        assert c.dtype == torch.long and 0 <= int(c.min()) and int(c.max()) < k


def test_same_seed_same_samples_other_seed_other_samples(prior):
    s = Sampler(prior)
    a = s.sample_codes(4, labels=[0, 1, 2, 0], seed=7)
    b = Sampler(prior).sample_codes(4, labels=[0, 1, 2, 0], seed=7)
    c = Sampler(prior).sample_codes(4, labels=[0, 1, 2, 0], seed=8)
    assert same(a, b) and not same(a, c)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("cfg_scale", [1.0, 2.5])
def test_static_dynamic_and_no_cache_give_the_same_tokens(tok, arch, cfg_scale, make_prior):
    extra = ["label_every_position=true"] if arch == "llama" else []  # the per-position label path too
    prior = make_prior(tok, 3, f"model.arch={arch}", "model.order=column", *extra)
    runs = {cache: Sampler(prior, cache=cache, cfg_scale=cfg_scale).sample_codes(
        5, labels=[0, 1, 2, 0, 1], seed=1, batch_size=2) for cache in ("static", "dynamic", "none")}
    assert same(runs["static"], runs["none"]) and same(runs["dynamic"], runs["none"])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cached_sampling_passes_the_cache_by_the_backbone_s_own_keyword(tok, arch, make_prior):
    """transformers 5.25 renamed ``past_key_values`` to ``cache`` and drops the old name in
    5.40: passing the old one warns now and would stop caching then."""
    import warnings

    prior = make_prior(tok, 0, f"model.arch={arch}")
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        for cache in ("static", "dynamic"):
            Sampler(prior, cache=cache).sample_codes(2, seed=0)


def test_static_cache_is_reused_across_batches_and_reset(tok, make_prior):
    """Three batches of two rows (the last one padded) through one sampler: the cache of a
    level is allocated once, and a reused cache holds nothing of the previous batch."""
    prior = make_prior(tok, 0)
    sampler = Sampler(prior, cache="static")
    a = sampler.sample_codes(5, seed=3, batch_size=2)
    assert sorted(sampler._static) == [(0, 2), (1, 2)]  # one batch shape, not 2 and 1
    caches = dict(sampler._static)
    b = sampler.sample_codes(5, seed=3, batch_size=2)
    assert same(a, b) and all(sampler._static[k] is caches[k] for k in caches)
    assert same(a, Sampler(prior, cache="none").sample_codes(5, seed=3, batch_size=2))


def test_static_cache_works_without_early_initialization(tok, monkeypatch, make_prior):
    """``StaticCache.early_initialization`` is not public API in every transformers release;
    without it the cache allocates on its first write and draws the same tokens."""
    import transformers

    calls = []
    original = getattr(transformers.StaticCache, "early_initialization", None)
    if original is not None:
        monkeypatch.setattr(transformers.StaticCache, "early_initialization",
                            lambda self, *a, **k: (calls.append(a), original(self, *a, **k))[1])
    prior = make_prior(tok, 0)
    with_early = Sampler(prior, cache="static").sample_codes(3, seed=4, batch_size=3)
    assert original is None or calls  # the patched method was really the one in use
    monkeypatch.setattr(transformers.StaticCache, "early_initialization", None, raising=False)
    without = Sampler(prior, cache="static").sample_codes(3, seed=4, batch_size=3)
    assert same(with_early, without)
    assert same(without, Sampler(prior, cache="none").sample_codes(3, seed=4, batch_size=3))


def test_uneven_n_is_drawn_in_equal_batches_whose_padding_is_dropped(tok, make_prior):
    """n = 7 at batch_size 4 runs two batches of 4 (not 4 + 3): the 7 samples are the first 7
    of n = 8, and the padding row of the last batch repeats the last label."""
    prior = make_prior(tok, 3)
    labels = [0, 1, 2, 0, 1, 2, 2]
    seven = Sampler(prior).sample_codes(7, labels=labels, seed=5, batch_size=4)
    eight = Sampler(prior).sample_codes(8, labels=[*labels, 2], seed=5, batch_size=4)
    assert [tuple(c.shape[:1]) for c in seven] == [(7,)] * len(seven)
    assert same(seven, [c[:7] for c in eight])
    # fewer rows than batch_size: one batch of exactly n rows (no padding up to batch_size)
    sampler = Sampler(prior)
    sampler.sample_codes(3, labels=1, seed=0, batch_size=64)
    assert sorted(sampler._static) == [(0, 3), (1, 3)]


def test_sampler_cache_options_are_checked(tok, make_prior):
    prior = make_prior(tok, 0)
    with pytest.raises(ValueError, match="cache: expected"):
        Sampler(prior, cache="paged")
    with pytest.raises(ValueError, match="compile: needs cache='static'"):
        Sampler(prior, cache="dynamic", compile=True)
    with pytest.raises(ValueError, match="compile_mode.*needs compile=True"):
        Sampler(prior, compile_mode="reduce-overhead")
    assert Sampler(prior, compile=True).compile_mode == "default"  # CUDA graphs only on a GPU


def test_compiled_static_step_gives_the_same_tokens(tok, monkeypatch, make_prior):
    """The compiled one-token step (dynamo with a counting eager backend: the graph capture,
    not the code generation, is what could change behaviour) draws the same codes, with one
    compilation per level and batch size however many steps and batches."""
    import torch._dynamo
    from torch._dynamo.testing import CompileCounter

    counter = CompileCounter()
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, mode="default": real(fn, backend=counter))
    prior = make_prior(tok, 3)
    torch._dynamo.reset()
    sampler = Sampler(prior, compile=True, cfg_scale=2.0)
    labels = [0, 1, 2, 0, 1, 2, 0]
    a = sampler.sample_codes(7, labels=labels, seed=4, batch_size=3)  # 3 batches of 3, the last padded
    assert counter.frame_count == 2  # levels 0 and 1, at one batch size
    b = Sampler(prior, cache="none", cfg_scale=2.0).sample_codes(7, labels=labels, seed=4, batch_size=3)
    assert same(a, b)


def test_unconditional_prior_samples_with_and_without_cache(tok, make_prior):
    prior = make_prior(tok, 0)
    a = Sampler(prior).sample_codes(3, seed=2)
    b = Sampler(prior, cache="none").sample_codes(3, seed=2)
    assert same(a, b) and a[0].shape[0] == 3
    with pytest.raises(ValueError, match="not class-conditional"):
        Sampler(prior).sample_codes(2, labels=1)
    with pytest.raises(ValueError, match="class-conditional"):
        Sampler(prior, cfg_scale=2.0)


def test_top_k_1_is_greedy(prior):
    greedy = Sampler(prior, temperature=0).sample_codes(3, labels=1, seed=0)
    top1 = Sampler(prior, top_k=1).sample_codes(3, labels=1, seed=123)
    assert same(greedy, top1)
    # greedy ignores the seed; sampling does not
    assert same(greedy, Sampler(prior, temperature=0).sample_codes(3, labels=1, seed=9))


def test_a_tiny_temperature_samples_greedily_instead_of_failing(prior):
    greedy = Sampler(prior, temperature=0).sample_codes(3, labels=1, seed=0)
    assert same(greedy, Sampler(prior, temperature=1e-45).sample_codes(3, labels=1, seed=0))


def test_greedy_follows_the_teacher_forced_argmax(prior):
    codes = Sampler(prior, temperature=0).sample_codes(2, labels=2, seed=0)
    labels = torch.full((2,), 2)
    for level, model in prior.levels.items():
        logits = model.logits(codes[level], codes[:level], labels)
        assert torch.equal(logits.argmax(-1), model.to_sequence(codes[level].flatten(1)))


def test_cfg_scale_0_is_unconditional_and_1_is_conditional(prior):
    uncond = Sampler(prior).sample_codes(4, labels=None, seed=3)
    zero = Sampler(prior, cfg_scale=0.0).sample_codes(4, labels=2, seed=3)
    assert same(uncond, zero)
    cond = Sampler(prior).sample_codes(4, labels=2, seed=3)
    guided = Sampler(prior, cfg_scale=4.0).sample_codes(4, labels=2, seed=3)
    assert not same(cond, uncond) and not same(guided, cond)


def test_guided_logits_are_the_cfg_combination(prior, monkeypatch):
    """The guided path (conditional and null rows in one batch) computes u + s (c - u)."""
    import sampling.sampler as sampler_mod

    seen = []
    real = sampler_mod.draw
    monkeypatch.setattr(sampler_mod, "draw", lambda logits, s, g: seen.append(logits) or real(logits, s, g))
    codes = Sampler(prior, cfg_scale=3.0, temperature=0).sample_codes(2, labels=1, seed=0)
    model = prior.levels[0]
    c = model.logits(codes[0], [], torch.full((2,), 1))
    u = model.logits(codes[0], [], torch.full((2,), model.null_label))
    expected = u + 3.0 * (c - u)
    got = torch.stack(seen[: model.length], dim=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # nucleus 0.7: 0.5 < 0.7 so the 0.3 code is needed too; the rest is dropped
    assert torch.isinf(filter_logits(logits, top_p=0.7)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert not torch.isinf(filter_logits(logits, top_p=1.0)).any()
    shuffled = logits[:, [2, 0, 3, 1]]
    assert torch.isinf(filter_logits(shuffled, top_p=0.7)).tolist() == [[True, False, True, False]]


def test_top_k_keeps_exactly_k_codes_even_among_ties():
    logits = torch.tensor([[2.0, 2.0, 2.0, 1.0, 0.0]])
    assert torch.isfinite(filter_logits(logits, top_k=1)).sum() == 1  # top_k=1 is greedy
    assert torch.isfinite(filter_logits(logits, top_k=2)).sum() == 2
    kept = filter_logits(logits, top_k=4)
    assert torch.isfinite(kept).tolist() == [[True, True, True, True, False]]
    torch.testing.assert_close(kept[torch.isfinite(kept)], logits[0, :4])


def test_a_prior_without_label_dropout_has_no_unconditional_model(tok, make_prior):
    prior = make_prior(tok, 3, "label_dropout=0.0")
    with pytest.raises(ValueError, match=r"cfg_scale: guidance needs .* levels \[0, 1\] never trained"):
        Sampler(prior, tok, cfg_scale=2.0)
    sampler = Sampler(prior, tok)
    with pytest.raises(ValueError, match=r"labels: sampling without labels needs .*label_dropout=0"):
        sampler.sample_codes(2, seed=0)
    assert sampler.sample_codes(2, labels=1, seed=0)[0].shape[0] == 2


def test_per_level_settings(prior):
    s = Sampler(prior, temperature=[1.0, 0.0], top_k={1: 5}, top_p=0.9)
    assert [x.temperature for x in s.settings] == [1.0, 0.0]
    assert [x.top_k for x in s.settings] == [0, 5]
    assert [x.top_p for x in s.settings] == [0.9, 0.9]


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=-0.5), "temperature for level 0: must be >= 0"),
    (dict(temperature=[1.0, 1.0, 1.0]), "3 values for a prior with 2 levels"),
    (dict(top_k={2: 5}), "unknown level 2"),
    (dict(top_p=0.0), "top_p for level 0"),
    (dict(top_k=-1), "top_k for level 0"),
    (dict(cfg_scale=float("nan")), "cfg_scale"),
])
def test_bad_settings_fail_clearly(prior, kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampler(prior, **kwargs)


@pytest.mark.parametrize("labels, match", [(3, "label 3 is out of range"), (-1, "label -1"),
                                           ([0, 1], "2 labels for 3 samples")])
def test_bad_labels_fail_clearly(prior, labels, match):
    with pytest.raises(ValueError, match=match):
        Sampler(prior).sample_codes(3, labels=labels)


def test_sampler_refuses_another_tokenizer(prior, make_tokenizer):
    other = make_tokenizer(seed=1)
    with pytest.raises(IdentityError, match=r"the tokenizer given is \w+, but these priors were trained on codes of tokenizer \w+"):
        Sampler(prior, other)


def test_images_are_written_as_pngs_grid_codes_and_labels(tok, prior, tmp_path):
    s = Sampler(prior, tok)
    labels = torch.tensor([0, 1, 2, 0, 1])
    codes = s.sample_codes(5, labels=labels, seed=0)
    decoded = s.decode(codes, batch_size=2)
    assert decoded.shape == (5, 3, 16, 16)
    write_samples(tmp_path, decoded, codes, labels, tok, grid=4, settings={"seed": 0})
    files = sorted((tmp_path / "images").glob("*.png"))
    assert len(files) == 5
    img = np.asarray(Image.open(files[0]))
    assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    assert Image.open(tmp_path / "grid.png").size[0] > 16
    saved = load_file(str(tmp_path / "codes.safetensors"))
    assert torch.equal(saved["level_1"], codes[1]) and torch.equal(saved["label"], labels)
    assert read_labels(tmp_path)["000001.png"] == 1
    assert read_record(tmp_path)["tokenizer_identity"] == tok.identity
    # a second, smaller unconditional set replaces the first: no extra files or stale labels
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "images" / "mine.png").write_bytes(b"")
    codes = s.sample_codes(2, seed=1)
    write_samples(tmp_path, s.decode(codes), codes, None, tok)
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000000.png", "000001.png", "mine.png"]
    assert not (tmp_path / "labels.json").exists() and (tmp_path / "notes.txt").read_text() == "mine"
    assert "label" not in load_file(str(tmp_path / "codes.safetensors"))


def test_audio_is_written_as_wavs_at_the_dataset_rate(tmp_path, make_prior, make_tokenizer):
    tok = make_tokenizer(audio=True)
    prior = make_prior(tok, 4)
    s = Sampler(prior, tok)
    codes = s.sample_codes(2, labels=[3, 1], seed=0)
    decoded = s.decode(codes)
    assert decoded.shape[1:] == tok.input_shape
    write_samples(tmp_path, decoded, codes, torch.tensor([3, 1]), tok)
    wavs = sorted((tmp_path / "audio").glob("*.wav"))
    assert len(wavs) == 2
    data, rate = sf.read(wavs[0])
    audio = tok.config.data.audio
    assert rate == audio.sample_rate and data.ndim == 1 and len(data) == audio.num_samples
    assert read_record(tmp_path)["sample_rate"] == audio.sample_rate


def save_prior_run(tmp_path, tok, prior, **info):
    """A prior run on disk (each level saved the way train-prior does) beside its tokenizer."""
    from prior.pretrained import INFO, save_level

    run = tmp_path / "prior"
    info = dict(prior.info, tokenizer_run=str(tmp_path / "tok"), **info)
    run.mkdir()
    (run / INFO).write_text(json.dumps(info))
    for model in prior.levels.values():
        save_level(model, prior.config, info, run)
    tok.save_pretrained(tmp_path / "tok")
    return run


@pytest.mark.e2e
def test_sample_names_the_recorded_tokenizer_when_it_is_gone(tmp_path, capsys, tok, prior):
    import shutil

    run = save_prior_run(tmp_path, tok, prior)
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "tok", moved)  # the priors copied to another machine, say
    assert main(["sample", str(run), "--out", str(tmp_path / "a"), "--n", "2"]) != 0
    err = capsys.readouterr().err
    assert f"the tokenizer recorded with the priors ({tmp_path / 'tok'}) is not on this machine" in err
    assert f"pass --tokenizer RUN: the tokenizer of identity {tok.identity}" in err
    assert not (tmp_path / "a" / "samples.json").exists()  # refused before any sampling
    assert main(["sample", str(run), "--out", str(tmp_path / "b"), "--n", "2", "--tokenizer", str(moved)]) == 0
    assert len(list((tmp_path / "b" / "images").glob("*.png"))) == 2


@pytest.mark.e2e
def test_cli_sample(tmp_path, capsys, tok, prior):
    run = save_prior_run(tmp_path, tok, prior, class_names=["red", "green", "blue"])
    out = tmp_path / "samples"
    assert main(["sample", str(run), "--out", str(out), "--n", "4", "--label", "cycle",
                 "--temperature", "1.0,0.8", "--cfg-scale", "2", "--batch-size", "3"]) == 0
    assert "sampled 4 images" in capsys.readouterr().out
    assert len(media_files(out)) == 4
    assert read_labels(out) == {
        "000000.png": 0, "000001.png": 1, "000002.png": 2, "000003.png": 0}
    # guidance 0 samples unconditionally whatever --label says: no labels to score against
    assert main(["sample", str(run), "--out", str(tmp_path / "uncond"), "--n", "2", "--label", "1",
                 "--cfg-scale", "0"]) == 0
    assert not (tmp_path / "uncond" / "labels.json").exists()
    assert "labels.json" not in capsys.readouterr().out
    # a class given by its name
    assert main(["sample", str(run), "--out", str(tmp_path / "blue"), "--n", "2", "--label", "blue"]) == 0
    assert set(read_labels(tmp_path / "blue").values()) == {2}
    for bad, match in [(["--label", "9"], "label 9 is out of range"),
                       (["--label", "purple"], "or a class name: red, green, blue; got 'purple'"),
                       (["--temperature", "-1"], "--temperature: must be >= 0, got -1.0"),
                       (["--temperature", "1,-1"], "--temperature for level 1: must be >= 0, got -1.0"),
                       (["--top-k", "1,2,3"], "3 values for a prior with 2 levels"),
                       (["--temperature", "hot"], "--temperature")]:
        assert main(["sample", str(run), "--out", str(tmp_path / "x"), "--n", "2", *bad]) == 2
        assert match in capsys.readouterr().err


@pytest.mark.e2e
def test_cli_sample_never_deletes_files_it_did_not_write(tmp_path, capsys, tok, prior):
    # sampling into any folder deleted images/NNNNNN.png, labels.json, grid.png ...
    run = save_prior_run(tmp_path, tok, prior)
    victim = tmp_path / "photos"
    (victim / "images").mkdir(parents=True)
    for name in ("images/000000.png", "labels.json", "grid.png"):
        (victim / name).write_bytes(b"precious")
    assert main(["sample", str(run), "--out", str(victim), "--n", "2"]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err and "holds no samples output written by hqvae" in err
    for name in ("images/000000.png", "labels.json", "grid.png"):
        assert (victim / name).read_bytes() == b"precious"
    assert sorted(p.name for p in victim.iterdir()) == ["grid.png", "images", "labels.json"]
    # a set of its own it replaces, and says so
    out = tmp_path / "mine"
    assert main(["sample", str(run), "--out", str(out), "--n", "3"]) == 0
    assert "replacing" not in capsys.readouterr().out
    assert main(["sample", str(run), "--out", str(out), "--n", "2"]) == 0
    assert "replacing the sample set that was there" in capsys.readouterr().out
    assert len(list((out / "images").glob("*.png"))) == 2
    # --npz: the uint8 (N, H, W, 3) arr_0 batch of the ADM evaluator, replaced with the set
    assert main(["sample", str(run), "--out", str(out), "--n", "3", "--npz"]) == 0
    with np.load(out / "samples.npz") as f:
        assert list(f.keys()) == ["arr_0"] and f["arr_0"].dtype == np.uint8
        assert f["arr_0"].shape == (3, *tok.input_shape[1:], 3)
        first = np.asarray(Image.open(out / "images" / "000000.png"))
        assert np.array_equal(f["arr_0"][0], first)  # the same pixels as the PNG
    assert main(["sample", str(run), "--out", str(out), "--n", "2"]) == 0
    assert not (out / "samples.npz").exists()  # no stale batch beside a new set
    # a folder of ours whose files no record describes (an older hqvae killed before its
    # samples.json): which files it wrote cannot be told, so none is overwritten or deleted
    (out / "samples.json").unlink()
    assert main(["sample", str(run), "--out", str(out), "--n", "1"]) == 2
    assert "is no file of a sample set recorded there" in capsys.readouterr().err
    assert len(list((out / "images").glob("*.png"))) == 2


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_own_decode_loop_matches_stock_generate(tok, arch, make_prior):
    """Cross-check against transformers' own generate() on the same weights: greedy top-level
    codes are identical (for class-conditional and unconditional priors)."""
    from prior.stock import stock_causal_lm, stock_generate

    for classes in (3, 0):
        prior = make_prior(tok, classes, f"model.arch={arch}")
        model = prior.levels[0].eval()
        labels = torch.tensor([0, 1, 2, 1]) if classes else None
        ours = Sampler(prior, temperature=0.0).sample_level(0, [], labels, torch.Generator(), 4)
        stock = stock_generate(stock_causal_lm(model), model, 4, labels, greedy=True)
        assert torch.equal(model.to_sequence(ours), stock)
    with pytest.raises(ValueError, match="only the top level"):
        stock_causal_lm(prior.levels[1])


# -- streaming, resuming, replacing, bounds -------------------------------------------------


def set_contents(out):
    """Every file of a sample set by relative path -> bytes (samples.npz: its arr_0; samples.json:
    its record without the timings, which differ between any two runs)."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = str(path.relative_to(out))
        if not path.is_file() or rel.startswith(".hqvae"):
            continue
        if path.name == "samples.json":
            record = json.loads(path.read_text())
            files[rel] = {k: v for k, v in record.items() if k not in ("sampling_seconds", "tokens_per_s")}
        elif path.name == "samples.npz":
            with np.load(path) as f:
                files[rel] = (list(f.keys()), f["arr_0"].tobytes(), f["arr_0"].shape)
        else:
            files[rel] = path.read_bytes()
    return files


SET = ["--n", "10", "--batch-size", "3", "--label", "cycle", "--npz", "--grid", "5"]  # batches 0-3, 3-6, 6-9, 9-10


@pytest.mark.e2e
def test_sampling_draws_decodes_and_writes_one_batch_at_a_time(tmp_path, tok, prior, monkeypatch):
    """Memory is flat in n: the decoded samples alive at once never exceed one batch, and a
    batch's files are on disk before the next batch is drawn (all n used to be drawn, then
    decoded, then written)."""
    import weakref

    run = save_prior_run(tmp_path, tok, prior)
    out = tmp_path / "s"
    alive, most, drawn_after = weakref.WeakSet(), [0], []
    real_decode, real_level = Sampler.decode, Sampler.sample_level

    def decode(self, codes, batch_size=64):
        x = real_decode(self, codes, batch_size)
        alive.add(x)
        most[0] = max(most[0], sum(t.shape[0] for t in alive))
        return x

    def sample_level(self, level, upper, labels, generator, batch):
        if level == 0:  # a new batch: what is written by now
            drawn_after.append(len(list((out / "images").glob("*.png"))) if (out / "images").is_dir() else 0)
        return real_level(self, level, upper, labels, generator, batch)

    monkeypatch.setattr(Sampler, "decode", decode)
    monkeypatch.setattr(Sampler, "sample_level", sample_level)
    assert main(["sample", str(run), "--out", str(out), "--n", "12", "--batch-size", "3", "--npz"]) == 0
    assert most[0] <= 3  # one batch of decoded samples at a time, whatever n
    assert drawn_after == [0, 3, 6, 9]  # each batch written before the next is drawn
    assert len(list((out / "images").glob("*.png"))) == 12
    with np.load(out / "samples.npz") as f:
        assert f["arr_0"].shape == (12, 16, 16, 3)


def test_streamed_files_are_the_formats_readers_expect(tmp_path):
    """codes.safetensors is byte for byte safetensors' own file; samples.npz is np.savez's
    layout (arr_0.npy in an uncompressed zip); labels.json is json.dumps(indent=1)."""
    from safetensors.torch import save

    from sampling.streamed_files import StreamedNpy, StreamedSafetensors, labels_json, npz_from_npy

    tensors = {"level_0": torch.randint(0, 9, (7, 2, 2)), "level_1": torch.randint(0, 9, (7, 4, 4)),
               "label": torch.arange(7) % 3}
    st = StreamedSafetensors({k: tuple(v.shape) for k, v in tensors.items()})
    st.create(tmp_path / "c.safetensors")
    fd = os.open(tmp_path / "c.safetensors", os.O_RDWR)
    for lo in (4, 0):  # rows land at their offsets in any order
        for k, v in tensors.items():
            st.write_rows(fd, k, lo, v[lo : lo + 4])
    os.close(fd)
    assert (tmp_path / "c.safetensors").read_bytes() == save(tensors)
    arr = np.random.default_rng(0).integers(0, 255, (5, 3, 2, 3), dtype=np.uint8)
    npy = StreamedNpy(arr.shape)
    npy.create(tmp_path / "a.npy")
    fd = os.open(tmp_path / "a.npy", os.O_RDWR)
    npy.write_rows(fd, 2, arr[2:])
    npy.write_rows(fd, 0, arr[:2])
    os.close(fd)
    buf = io.BytesIO()
    np.save(buf, arr)
    assert (tmp_path / "a.npy").read_bytes() == buf.getvalue()
    npz_from_npy(tmp_path / "a.npy", tmp_path / "a.npz")
    with np.load(tmp_path / "a.npz") as f:
        assert list(f.keys()) == ["arr_0"] and np.array_equal(f["arr_0"], arr)
    with zipfile.ZipFile(tmp_path / "a.npz") as z:
        assert [i.compress_type for i in z.infolist()] == [zipfile.ZIP_STORED]
    mapping = {"000000.png": 2, "000001.png": 0}
    labels_json(iter(mapping.items()))(tmp_path / "l.json")
    assert (tmp_path / "l.json").read_text() == json.dumps(mapping, indent=1)


def test_random_codes_are_drawn_in_batches_as_they_were_drawn_whole(prior):
    """The pipeline's baseline: level after level from one generator, drawn batch by batch."""
    from sampling.sample_set import random_code_batches

    g = torch.Generator().manual_seed(5)
    whole = [torch.randint(0, k, (10, h, w), generator=g) for k, (h, w) in zip(prior.codebook_sizes, prior.code_shapes)]
    for first in (0, 2):  # from the start, and continued after two batches of 3
        parts = list(random_code_batches(prior, 10, 5, 3, first))
        assert [b.start for b in parts] == [0, 3, 6, 9][first:]
        assert same([torch.cat([b.codes[lv] for b in parts]) for lv in range(2)], [c[3 * first :] for c in whole])


def _stop_at(monkeypatch, index, how):
    """Stop a run while it writes sample ``index``: a SIGINT (as Ctrl-C sends) or SIGKILL."""
    import signal

    real = Image.Image.save

    def save(self, fp, *args, **kwargs):
        if f"{index:06d}.png" in str(fp):
            signal.raise_signal(how)
        return real(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)


def _main_130(argv):
    try:
        return main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C ended `hqvae sample` with a KeyboardInterrupt traceback")


@pytest.mark.e2e
def test_ctrl_c_stops_after_the_batch_and_the_same_command_continues_the_set(tmp_path, tok, prior, capsys,
                                                                             monkeypatch):
    import signal

    run = save_prior_run(tmp_path, tok, prior)
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert main(["sample", str(run), "--out", str(whole), *SET]) == 0
    capsys.readouterr()
    with monkeypatch.context() as m:
        _stop_at(m, 4, signal.SIGINT)  # in the second batch (samples 3-5): it is finished first
        assert _main_130(["sample", str(run), "--out", str(out), *SET]) == 130
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("hqvae sample")]
    assert said == [f"hqvae sample: SIGINT: stopped after 6 of 10 samples (written to {out}). "
                    "Run the same command again to continue"]
    assert "Traceback" not in err and not (out / "samples.json").exists()
    assert len(list((out / "images").glob("*.png"))) == 6
    batches = []
    real = Sampler.sample_level
    monkeypatch.setattr(Sampler, "sample_level", lambda self, level, *a: (
        batches.append(level) if level == 0 else None) or real(self, level, *a))
    assert main(["sample", str(run), "--out", str(out), *SET]) == 0
    said = capsys.readouterr().out
    assert f"{out}: continuing the unfinished sample set there (6 of 10 samples written)" in said
    assert "replacing" not in said
    assert len(batches) == 2  # only the batches that were missing (6-9, 9-10) are drawn
    assert set_contents(out) == set_contents(whole)
    assert not (out / ".hqvae-partial").exists()
    record = read_record(out)
    assert record["sampling_seconds"] > 0 and record["num_samples"] == 10


@pytest.mark.e2e
def test_a_killed_sample_run_is_continued_to_the_uninterrupted_set(tmp_path, tok, prior):
    """SIGKILL in the middle of a batch (one of its files written, its progress not): the
    same command draws that batch again and ends with the uninterrupted run's files."""
    import subprocess
    import sys
    from pathlib import Path

    run = save_prior_run(tmp_path, tok, prior)
    whole, out = tmp_path / "whole", tmp_path / "out"
    assert main(["sample", str(run), "--out", str(whole), *SET]) == 0
    script = (
        "import os, signal, sys\n"
        "from PIL import Image\n"
        "real = Image.Image.save\n"
        "def save(self, fp, *args, **kwargs):\n"
        "    if '000007.png' in str(fp):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, fp, *args, **kwargs)\n"
        "Image.Image.save = save\n"
        "from hqvae.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, "-c", script, "sample", str(run), "--out", str(out), *SET],
                          cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    state = json.loads((out / ".hqvae-partial" / "state.json").read_text())
    assert state["done"] == 6 and (out / "images" / "000006.png").is_file()  # a batch half written
    assert main(["sample", str(run), "--out", str(out), *SET]) == 0
    assert set_contents(out) == set_contents(whole)


@pytest.mark.e2e
def test_a_run_stopped_while_finishing_its_set_is_finished_by_the_same_command(tmp_path, tok, prior, monkeypatch):
    """Every sample written but the set's own files not (yet) in place: the rerun draws
    nothing and puts them in place, whether the stop came before or after the codes moved."""
    import sampling.outputs as outputs
    from sampling.outputs import SampleSetWriter

    run = save_prior_run(tmp_path, tok, prior)
    whole = tmp_path / "whole"
    assert main(["sample", str(run), "--out", str(whole), *SET]) == 0
    real_write = outputs.write_text_atomic

    def crash_on_record(path, text):
        if path.name == "samples.json":
            raise RuntimeError("crash")
        real_write(path, text)

    stops = [lambda m: m.setattr(SampleSetWriter, "finish", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash"))),
             lambda m: m.setattr(outputs, "write_text_atomic", crash_on_record)]
    for i, stop in enumerate(stops):
        out = tmp_path / f"out{i}"
        with monkeypatch.context() as m:
            stop(m)
            with pytest.raises(RuntimeError):
                main(["sample", str(run), "--out", str(out), *SET])
        assert not (out / "samples.json").exists()
        assert (out / "codes.safetensors").is_file() == (i == 1)  # moved into place before the record
        with monkeypatch.context() as m:
            m.setattr(Sampler, "sample_level", lambda *a: pytest.fail("a finished batch drawn again"))
            assert main(["sample", str(run), "--out", str(out), *SET]) == 0
        assert set_contents(out) == set_contents(whole)


@pytest.mark.e2e
def test_replacing_a_set_deletes_exactly_the_files_it_wrote(tmp_path, tok, prior, capsys, monkeypatch):
    import signal

    run = save_prior_run(tmp_path, tok, prior)
    out = tmp_path / "s"
    assert main(["sample", str(run), "--out", str(out), "--n", "4"]) == 0
    mine = ["images/000099.png", "images/000004.png", "audio/000000.wav", "notes.txt", "images/mine.png"]
    (out / "audio").mkdir()
    for name in mine:
        (out / name).write_bytes(b"precious")
    # a smaller set replaces the set of 4: its 4 images and files go, the user's stay
    assert main(["sample", str(run), "--out", str(out), "--n", "2", "--seed", "1"]) == 0
    assert "replacing the sample set that was there" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "000000.png", "000001.png", "000004.png", "000099.png", "mine.png"]
    assert all((out / name).read_bytes() == b"precious" for name in mine)
    # a set that would overwrite a file no set wrote is refused before sampling
    before = set_contents(out)
    assert main(["sample", str(run), "--out", str(out), "--n", "6"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'images' / '000004.png'} is no file of a sample set recorded there" in err
    assert set_contents(out) == before
    # an unfinished set drawn with other settings: replaced (its files, as far as it got), saying so
    (out / "images" / "000004.png").unlink()
    with monkeypatch.context() as m:
        _stop_at(m, 4, signal.SIGINT)
        assert _main_130(["sample", str(run), "--out", str(out), "--n", "9", "--batch-size", "3"]) == 130
    assert len(list((out / "images").glob("0000[0-8][0-9].png"))) == 6
    assert main(["sample", str(run), "--out", str(out), "--n", "3", "--batch-size", "3"]) == 0
    said = capsys.readouterr().out
    assert f"{out}: replacing the unfinished sample set there (6 of 9 samples written, drawn with other " \
           "settings: n)" in said
    assert sorted(p.name for p in (out / "images").iterdir()) == ["000000.png", "000001.png", "000002.png",
                                                                  "000099.png", "mine.png"]
    assert (out / "audio" / "000000.wav").read_bytes() == b"precious"
    assert read_record(out)["num_samples"] == 3


@pytest.mark.e2e
def test_absurd_counts_are_refused_before_sampling(tmp_path, tok, prior, capsys, monkeypatch):
    import shutil

    import sampling.outputs as outputs

    run = save_prior_run(tmp_path, tok, prior)
    out = tmp_path / "s"

    def never(*args, **kwargs):
        raise AssertionError("sampling started")

    monkeypatch.setattr(Sampler, "sample_level", never)
    # one batch of ten million: the memory it needs is named, nothing is allocated or written
    assert main(["sample", str(run), "--out", str(out), "--n", "1e7", "--batch-size", "1e7"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hqvae sample: error: --batch-size 10000000: one batch of 10,000,000 samples "
                          "would need about") and "of memory" in err and "\n" not in err
    # ten million samples at the default batch size: more files than the disk holds
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(outputs.shutil, "disk_usage", lambda path: usage._replace(free=10**9))
    assert main(["sample", str(run), "--out", str(out), "--n", "1e7"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.fullmatch(r"hqvae sample: error: --n 10000000: the sample set needs about [\d.]+ GB of files on "
                        rf"the file system of {re.escape(str(out))} \([\d.]+ kB a sample\), which has 1.0 GB "
                        r"free; lower --n or choose another --out", err), err
    assert not list(out.rglob("*.png")) and not (out / "samples.json").exists()
    for bad, message in [(["--grid", "5000"], "--grid: must be in [1, 1,024], got 5,000"),
                         (["--seed", "-1"], "--seed: must be in [0, 4,294,967,295], got -1"),
                         (["--griffin-lim-iters", "-2"], "--griffin-lim-iters: must be in [0, 10,000], got -2"),
                         (["--n", "2e9"], "--n: must be in [1, 1,000,000,000], got 2,000,000,000")]:
        assert main(["sample", str(run), "--out", str(out), *bad]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", str(run), "--out", str(out), "--n", "2.5"])  # not a whole number
    assert "--n: expected a whole number, got '2.5'" in capsys.readouterr().err


@pytest.mark.e2e
def test_a_large_set_says_how_much_it_will_write(tmp_path, tok, prior, capsys, monkeypatch):
    import sampling.outputs as outputs

    run = save_prior_run(tmp_path, tok, prior)
    monkeypatch.setattr(outputs, "LARGE_SET_BYTES", 0)
    assert main(["sample", str(run), "--out", str(tmp_path / "s"), "--n", "2"]) == 0
    said = capsys.readouterr().out
    assert re.search(rf"--n 2: about [\d.]+ kB of files to write in {re.escape(str(tmp_path / 's'))} "
                     r"\([\d.]+ [kMGT]B free there\)", said)
