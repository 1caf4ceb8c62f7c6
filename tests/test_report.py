"""`hqvae report`: the static HTML run report, checked in headless Chromium (every image
decodes, every audio player loads its WAV, every plot is drawn), partial runs, escaping and
the command line."""

import json
import re
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from hqvae import layout
from hqvae.report import Series, count_media, svg_plot, write_report

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
INSTALL = ("install with: apt-get update && apt-get install -y chromium chromium-driver "
           "(Debian; the Python side: pip install -e '.[dev]', which brings selenium)")
EVIL = "<script>alert('x')</script>"


# ---------------------------------------------------------------------------------------------
# a small pipeline run, written by hand in the layout of hqvae.layout


def _png(path: Path, w: int, h: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def _wav(path: Path, freq: float = 440.0, rate: int = 8000, seconds: float = 0.5) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    sf.write(path, 0.3 * np.sin(2 * np.pi * freq * t), rate, subtype="PCM_16")


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _tokenizer(tdir: Path, audio: bool) -> None:
    tok = tdir / "tokenizer"
    tok.mkdir(parents=True)
    (tok / "config.yaml").write_text(f"run_dir: {tok}\nmodel:\n  preset: sqvae2\n  note: \"{EVIL}\"\n")
    _jsonl(tok / "metrics.jsonl",
           [{"step": s, "epoch": 0, "split": "train", "loss": 100.0 / s, "mse": 1.0 / s} for s in (10, 20, 30, 40)]
           + [{"step": 40, "split": "eval", "final": True, "rmse": 0.1, "psnr": 26.0}])
    layers = [{"layer": i, "kind": "injected", "grid": [g, g], "codebook_size": 16, "perplexity": 3.5 + i,
               "codes_used": 5 + i, "rmse_substituted": 0.2, "substitution_gain": 2.0} for i, g in enumerate((2, 4))]
    ev = {"examples": 10, "rmse": 0.1, "psnr": 26.0, "layers": layers, "variances": [1.0, 1.0],
          "train": {"steps": 40, "seconds": 1.5, "parameters": 1234}}
    if audio:
        ev["lsd_db"] = 3.2
        for i in range(2):
            _wav(tok / "eval" / f"clip{i}_original.wav", 300 + 100 * i)
            _wav(tok / "eval" / f"clip{i}_reconstructed.wav", 310 + 100 * i)
    _png(tok / "eval" / "reconstructions.png", 64, 34)
    _json(tok / "eval" / "eval.json", ev)


def _codes(tdir: Path, audio: bool) -> None:
    import datasets

    codes = tdir / "codes"
    rng = np.random.default_rng(0)
    n = 50
    data = {"level_0": rng.zipf(1.5, (n, 4)).clip(1, 16).astype(np.int16) - 1,
            "level_1": rng.integers(0, 16, (n, 16), dtype=np.int16),
            "label": rng.integers(0, 3, n)}
    datasets.Dataset.from_dict({k: v.tolist() for k, v in data.items()}).save_to_disk(str(codes / "train"))
    _json(codes / "codes.json", {
        "tokenizer_identity": "abc123", "code_shapes": [[2, 2], [4, 4]], "codebook_sizes": [16, 16],
        "layer_kinds": ["injected", "injected"], "modality": "audio" if audio else "image",
        "input_shape": [1, 16, 16] if audio else [3, 8, 8], "num_classes": 3,
        "class_names": ["zero", "one", "two"],
        "splits": {"train": {"num_examples": n, "has_label": True, "seconds": 0.1,
                             "source": {"source": "tones", "path": None}}},
    })


def _prior(tdir: Path) -> None:
    prior = tdir / "prior"
    (prior).mkdir(parents=True)
    (prior / "config.yaml").write_text("run_dir: prior\nclass_cond: true\n")
    levels = {}
    for lv in range(2):
        _jsonl(prior / f"level_{lv}" / "metrics.jsonl",
               [{"step": s, "split": "train", "loss": 2.0 / s, "bits_per_token": 3.0 / s} for s in (5, 10, 15)]
               + [{"step": 15, "split": "eval", "final": True, "bits_per_token": 0.25, "uniform_bits": 4.0}])
        levels[str(lv)] = {"level": lv, "shape": [2 * (lv + 1)] * 2, "codebook_size": 16,
                           "bits_per_token": 0.25, "uniform_bits": 4.0, "steps": 15, "seconds": 1.0}
    _json(prior / "eval.json", {"levels": levels, "tokenizer_identity": "abc123"})
    _json(prior / "prior.json", {"tokenizer_identity": "abc123", "codebook_sizes": [16, 16]})


def _samples(tdir: Path, stage: str, audio: bool, n: int = 3) -> None:
    out = tdir / stage
    names = []
    for i in range(n):
        if audio:
            _wav(out / "audio" / f"{i:06d}.wav", 200 + 50 * i)
            names.append(f"audio/{i:06d}.wav")
        else:
            _png(out / "images" / f"{i:06d}.png", 8, 8, seed=i)
            names.append(f"images/{i:06d}.png")
    _png(out / "grid.png", 20, 10)
    _json(out / "labels.json", {Path(name).name: i % 3 for i, name in enumerate(names)})
    _json(out / "samples.json", {"num_samples": n, "modality": "audio" if audio else "image",
                                 "files": names, "seed": 0,
                                 "class_names": ["zero", "one", f"two{EVIL}"]})


def make_run(root: Path) -> Path:
    run = root / "run"
    run.mkdir()
    (run / layout.CONFIG).write_text(f"run_dir: {run}\nimage:\n  data: shapes  # {EVIL}\naudio:\n  data: tones\n")
    _json(run / layout.SUMMARY, {  # as hqvae.pipeline writes it
        "tracks": {"image": {"tokenizer": {"status": "ran", "seconds": 1.5},
                             "score": {"status": "ran", "seconds": 2.0, "samples": {"fid": 12.5}},
                             "headline": {"psnr": 26.0, "fid": 12.5, "fid_random_codes": 250.0}},
                   "audio": {"prior": {"status": "skipped"}, "headline": {"bits_per_token": [0.25, 0.25]}}},
        "seconds": 3.5})
    for track in layout.TRACKS:
        audio = track == "audio"
        tdir = run / track
        _tokenizer(tdir, audio)
        _codes(tdir, audio)
        _prior(tdir)
        _samples(tdir, "samples", audio)
        _samples(tdir, "random", audio)
    _json(run / "image" / "fid.json", {
        "metric": "FID (Inception pool3)", "reference": {"source": "shapes", "split": "train", "num": 64},
        "samples": {"fid": 12.5, "kid": 0.01, "kid_std": 0.002, "precision": 0.75, "recall": 0.5, "num": 3},
        "random": {"fid": 250.0, "kid": 0.3, "kid_std": 0.01, "num": 3},
        "ratio_random_to_samples": 20.0, "settings": {"sample": {"n": 3}, "score": {"enabled": True}}})
    clf = run / "audio" / "classifier"
    (clf).mkdir()
    (clf / "config.yaml").write_text("run_dir: classifier\n")
    _jsonl(clf / "metrics.jsonl", [{"step": s, "split": "train", "loss": 1.0 / s, "accuracy": 0.5} for s in (1, 2)]
           + [{"step": 2, "split": "eval", "final": True, "accuracy": 0.9, "loss": 0.3}])
    _json(clf / "eval.json", {"accuracy": 0.9, "loss": 0.3, "per_class_accuracy": [1.0, 0.8, 0.9]})
    _json(run / "audio" / "fid.json", {"samples": {"fid": 3.0, "accuracy": 0.7, "num": 3},
                                       "random": {"fid": 40.0, "num": 3}})
    return run


# ---------------------------------------------------------------------------------------------
# headless Chromium


@pytest.fixture(scope="module")
def browser():
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.is_file()]
    if missing:
        pytest.fail(f"the report's browser test needs {' and '.join(missing)}; {INSTALL}", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail(f"the report's browser test needs the selenium package; {INSTALL}", pytrace=False)
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,1000",
                 "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    # an explicit driver path: Selenium Manager (which would download a driver) never runs
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    yield driver
    driver.quit()


def _wait(driver, script: str, timeout: float = 15.0):
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(script)
        if value or time.monotonic() > end:
            return value
        time.sleep(0.1)


def test_report_in_headless_chromium(tmp_path, browser):
    run = make_run(tmp_path)
    path = write_report(run)
    assert path == run / layout.REPORT
    text = path.read_text()
    counts = count_media(text)
    # image: 2 grids + reconstructions; audio: 2 grids + reconstructions
    assert counts["images"] == 6
    # audio: 3 samples + 3 random + 2 × (original, reconstruction)
    assert counts["audio"] == 10
    assert counts["plots"] >= 2 * 5 + 2  # per track: usage bars, code frequencies, 2 tokenizer, 2 prior

    browser.get(path.as_uri())
    assert _wait(browser, "return document.readyState === 'complete'")
    assert browser.title.startswith("HQ-VAE run report")
    images = _wait(browser, "const i = [...document.images]; "
                            "return i.every(x => x.complete) ? i.map(x => [x.src, x.naturalWidth]) : null")
    assert len(images) == counts["images"]
    assert all(width > 0 for _, width in images), images
    audio = _wait(browser, "const a = [...document.querySelectorAll('audio')]; "
                           "return a.every(x => x.readyState >= 1 || x.error) ? "
                           "a.map(x => [x.src, x.readyState, x.duration, x.error && x.error.code]) : null")
    assert audio is not None, "audio players did not load their metadata in time"
    assert len(audio) == counts["audio"]
    for src, state, duration, error in audio:
        assert error is None and state >= 1 and duration == pytest.approx(0.5, abs=0.01), (src, state, error)
    plots = browser.execute_script(
        "return [...document.querySelectorAll('svg.plot')].map(s => "
        "[s.getBoundingClientRect().width, s.querySelectorAll('polyline, circle').length "
        "+ s.querySelectorAll('rect').length - 2])")  # data marks (2 rects: background, frame)
    assert len(plots) == counts["plots"]
    assert all(w > 100 and marks > 0 for w, marks in plots), plots
    # the escaped config text is shown as text, and no script from it ever ran
    assert browser.execute_script("return document.querySelectorAll('script').length") == 0
    assert EVIL in browser.execute_script("return document.body.innerText")

    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(height + 40, 8000))
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height > 1000
        lo, hi = im.convert("L").getextrema()
        assert hi - lo > 100
    assert shot.stat().st_size > 20_000


class _Page(HTMLParser):
    """The parts of a report the tests read: tables (rows of cell texts, with each cell's
    tag and classes), <summary> texts, <pre> texts and every tag seen."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[tuple[str, str, str]]]] = []
        self.summaries: list[str] = []
        self.pres: list[str] = []
        self.tags: list[str] = []
        self._cell = self._text = None
        self._bold: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = (tag, dict(attrs).get("class") or "", [])
        elif tag in ("summary", "pre"):
            self._text = (tag, [])
        elif tag == "b" and self._cell is not None:
            self._cell[2].append("<b>")

    def handle_endtag(self, tag):
        if tag == "b" and self._cell is not None:
            self._cell[2].append("</b>")
        elif tag in ("td", "th") and self._cell is not None:
            kind, cls, parts = self._cell
            self.tables[-1][-1].append((kind, cls, "".join(parts)))
            self._cell = None
        elif tag in ("summary", "pre") and self._text is not None:
            (self.summaries if tag == "summary" else self.pres).append("".join(self._text[1]))
            self._text = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[2].append(data)
        if self._text is not None:
            self._text[1].append(data)

    def rows(self) -> list[list[str]]:
        """Every table row as its cell texts."""
        return [[c[2] for c in row] for table in self.tables for row in table]

    def row(self, first: str) -> list[tuple[str, str, str]]:
        """The (first) row whose first cell reads ``first``."""
        return next(row for table in self.tables for row in table if row and row[0][2] == first)


def test_report_links_are_relative_and_survive_a_move(tmp_path):
    run = make_run(tmp_path)
    text = write_report(run).read_text()
    refs = re.findall(r'(?:src|href)="([^"]*)"', text)
    assert refs and not any(re.match(r"[a-z]+:|//", r) for r in refs), refs
    assert "<link" not in text and "@import" not in text and "url(" not in text
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run, moved)
    for ref in refs:
        if not ref.startswith("#"):
            assert (moved / ref).is_file(), ref


def test_report_escapes_everything(tmp_path):
    run = make_run(tmp_path)
    text = write_report(run).read_text()
    page = _Page(text)
    assert "script" not in page.tags
    # the config's script is text on the page (escaped in the source), never markup
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    # pipeline.yaml verbatim, every stage config in a <details>
    assert any("image:\n  data: shapes  # <script>" in pre for pre in page.pres)
    assert page.summaries.count("image/tokenizer/config.yaml") == 1
    assert "audio/classifier/config.yaml" in page.summaries


def test_report_tables(tmp_path):
    page = _Page(write_report(make_run(tmp_path)).read_text())
    rows = page.rows()
    # fid.json: one column per result, the ratio beside it
    header = rows.index(["metric", "samples", "random"])
    assert rows[header + 1][0] == "fid"
    assert page.row("ratio_random_to_samples")[1] == ("td", "num", "20")
    order = [next(i for i, r in enumerate(rows) if r and r[0] == k) for k in ("kid_std", "precision", "recall", "num")]
    assert order == sorted(order)  # precision / recall beside FID / KID, before the counts
    # summary.json: one row per stage, the headline numbers
    assert page.row("tokenizer")[:3] == [("td", "", "tokenizer"), ("td", "", "ran"), ("td", "num", "1.5")]
    assert page.row("fid_random_codes")[1] == ("td", "num", "250")
    # a stage's details are named values, not raw JSON
    cells = [c[2] for table in page.tables for row in table for c in row]
    assert "samples fid <b>12.5</b>" in cells and not any(c.startswith('{"fid"') for c in cells)
    # per-layer codebook usage, prior bits per token
    assert ("td", "num", "31.25") in [c for table in page.tables for row in table for c in row]  # 5 of 16 codes used
    assert "bits/token (held out)" in [c[2] for table in page.tables for row in table for c in row if c[0] == "th"]


def test_report_of_a_partial_run(tmp_path):
    run = tmp_path / "run"
    _tokenizer(run / "image", audio=False)
    (run / "image" / "tokenizer" / "eval" / "reconstructions.png").unlink()
    path = write_report(run, tmp_path / "out" / "page.html")
    assert path == tmp_path / "out" / "page.html"
    text = path.read_text()
    assert 'id="image"' in text and 'id="audio"' not in text
    assert "priors: not run" in text and "FID: not run" in text and "samples from the priors: not run" in text
    assert count_media(text) == {"images": 0, "audio": 0, "plots": 3}
    assert "no summary.json" in text and "no pipeline.yaml" in text
    # a file cut short (a run still writing it) is reported on the page, not raised
    (run / "image" / "codes").mkdir(parents=True)
    (run / "image" / "codes" / "codes.json").write_text("{not json")
    (run / "image" / "prior").mkdir()
    (run / "image" / "prior" / "eval.json").write_text("{")
    text = write_report(run).read_text()
    assert "Problems reading the run" in text and "prior/eval.json" in text
    assert "prior: started, not finished" not in text  # eval.json exists: the stage counts as done


def test_report_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        write_report(tmp_path / "nowhere")
    (tmp_path / "empty" / "image").mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / "empty"))):
        write_report(tmp_path / "empty")


@pytest.mark.e2e
def test_report_command(tmp_path, capsys):
    from hqvae.cli import main

    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / layout.REPORT} (6 images, 10 audio players," in out
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file()


@pytest.mark.e2e
def test_report_through_the_hqvae_cli(tmp_path, capsys):
    from hqvae.cli import main

    run = make_run(tmp_path)
    assert main(["report", str(run)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "missing: no such run directory" in capsys.readouterr().err


def test_svg_plot_edge_cases():
    empty = svg_plot([], title="t")
    assert empty.startswith('<svg class="plot"') and "no data" in empty
    one = svg_plot([Series("a", [1], [2.0])], title="one point")
    assert "<circle" in one
    log = svg_plot([Series("a", [1, 2, 3], [0.0, float("nan"), 10.0]), Series("b", [1, 2], [5, 5])],
                   title="<b>", logy=True)
    assert "&lt;b&gt;" in log and "<polyline" in log
