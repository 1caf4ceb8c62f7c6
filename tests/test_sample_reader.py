"""The sample-set reader opens what the writer writes: records, labels, codes, media files
and the ADM batch, for images and audio, labelled or not."""

import json

import numpy as np
import pytest
import torch

from sampling.outputs import write_samples
from sampling.sample_reader import (
    class_names,
    is_unfinished,
    labels_path,
    media_dir,
    media_files,
    media_folder,
    read_codes,
    read_labels,
    read_npz,
    read_record,
)
from sampling.sampler import Sampler


@pytest.fixture
def write_set(tmp_path, make_tokenizer, make_prior):
    """Writes a set of ``n`` samples of tiny untrained models; (folder, codes, labels, record)."""

    def write(audio: bool, labelled: bool, n: int = 5, **kwargs):
        tok = make_tokenizer(audio=audio)
        sampler = Sampler(make_prior(tok), tok)
        labels = torch.arange(n) % 3 if labelled else None
        codes = sampler.sample_codes(n, labels=labels, seed=0)
        out = tmp_path / ("audio" if audio else "images") / ("labelled" if labelled else "plain")
        record = write_samples(out, sampler.decode(codes), codes, labels, tok, grid=4, settings={"seed": 0},
                               **kwargs)
        return out, codes, labels, record

    return write


def test_a_labelled_image_set_reads_back(write_set):
    out, codes, labels, record = write_set(audio=False, labelled=True,
                                        class_names=["red", "green", "blue"], npz=True)
    assert read_record(out) == record and record["modality"] == "image"
    assert not is_unfinished(out)
    (out / "images" / "mine.png").write_bytes(b"")  # a user's file: never a sample
    (out / "images" / "000099.png").write_bytes(b"")  # numbered, but not of this set
    assert media_files(out) == [out / "images" / f"{i:06d}.png" for i in range(5)]
    assert media_dir(out, "image") == media_folder(out, "images", (".png",)) == out / "images"
    assert labels_path(out) == out / "labels.json"
    assert read_labels(out) == {f"{i:06d}.png": i % 3 for i in range(5)}
    assert class_names(out) == ["red", "green", "blue"]
    saved = read_codes(out)
    assert sorted(saved) == ["label", "level_0", "level_1"]
    assert all(torch.equal(saved[f"level_{lv}"], c) for lv, c in enumerate(codes))
    assert torch.equal(saved["label"], labels)
    batch = read_npz(out)
    assert batch.shape == (5, 16, 16, 3) and batch.dtype == np.uint8


def test_an_unlabelled_audio_set_reads_back(write_set):
    out, codes, _, record = write_set(audio=True, labelled=False, n=3)
    assert read_record(out)["modality"] == "audio" and record["sample_rate"] > 0
    assert media_files(out) == [out / "audio" / f"{i:06d}.wav" for i in range(3)]
    assert media_folder(out, "audio", (".wav",)) == out / "audio"
    assert labels_path(out) is None and read_labels(out) is None and class_names(out) is None
    saved = read_codes(out)
    assert sorted(saved) == ["level_0", "level_1"] and torch.equal(saved["level_1"], codes[1])
    with pytest.raises(FileNotFoundError):
        read_npz(out)


def test_a_folder_without_a_record_is_no_set(tmp_path):
    (tmp_path / "images").mkdir()
    for name in ("000001.png", "000000.png", "12.png"):
        (tmp_path / "images" / name).write_bytes(b"")
    (tmp_path / "samples.json").write_text(json.dumps({"seed": 0}))  # not a sample set's record
    assert read_record(tmp_path) is None
    # the numbered files that are there, in order (what a set stopped part way holds)
    assert media_files(tmp_path) == [tmp_path / "images" / "000000.png", tmp_path / "images" / "000001.png"]
    assert media_files(tmp_path, "audio") == []
