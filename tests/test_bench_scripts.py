"""The bench scripts' own checks (the measurements themselves are not run here)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_tokenizer_peers_refuses_a_missing_peer_folder(tmp_path):
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tokenizer_peers.py"),
                           "--peers-dir", str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for folder in ("taming", "llamagen"):
        assert str(tmp_path / folder) in lines[0]
    assert "git clone https://github.com/CompVis/taming-transformers" in lines[0]
    assert "git clone https://github.com/FoundationVision/LlamaGen" in lines[0]
    assert proc.stdout == "" and not out.exists()  # nothing ran, nothing written


def _budget_result(name: str, epochs: int, rmse: float, sq: bool, layers: int) -> dict:
    layer = {"codes_used": 100 + epochs, "perplexity": 50.0 + epochs}
    if sq:
        layer["posterior_entropy"] = 3.0 - 0.1 * epochs
    return {"name": name, "epochs": epochs, "seed": 0, "rmse": rmse, "psnr": 20 + epochs,
            "train": {"steps": 390 * epochs}, "device": "CPU (2 cores)",
            "layers": [dict(layer) for _ in range(layers)],
            "variances": [1.0 + 0.1 * epochs] * layers if sq else []}


def test_budget_curve_report_from_results(tmp_path):
    """--report-only writes the table (with each Bayesian row's gap to its twin at the same
    budget) and both charts from the results file, training nothing."""
    import json

    runs = tmp_path / "runs"
    runs.mkdir()
    rows = [_budget_result("rsqvae", 2, 19.5, True, 4), _budget_result("rqvae", 2, 14.25, False, 4),
            _budget_result("rsqvae", 4, 16.0, True, 4), _budget_result("rqvae", 4, 11.0, False, 4)]
    (runs / "results_cpu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the longest rsqvae run's training log: σ² of every layer through training
    log = runs / "e4" / "cifar10_rsqvae" / "metrics.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text("".join(json.dumps({"step": s, "split": "train", "l0/var": 1 + s / 1000, "l1/var": 1.0}) + "\n"
                           for s in (50, 100, 150)))
    out, assets = tmp_path / "benchmarks.md", tmp_path / "assets"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "budget_curve.py"), "--report-only",
                           "--epochs", "2", "4", "--presets", "rsqvae", "rqvae", "--runs", str(runs),
                           "--out", str(out), "--assets", str(assets)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "<!-- budget-curve-cpu:begin -->" in text
    # the section names the command that measured, not the one that rewrote it
    assert "Command: `python bench/budget_curve.py --epochs 2 4 --presets rsqvae rqvae" in text
    assert "| rsqvae | 2 | 780 | 19.50 | 22.00 | +5.25 |" in text
    assert "| rsqvae | 4 | 1560 | 16.00 | 24.00 | +5.00 |" in text
    assert "| rqvae (restart) | 4 | 1560 | 11.00 | 24.00 | – |" in text
    assert "1.40 · 1.40 · 1.40 · 1.40 | 2.60 · 2.60 · 2.60 · 2.60 |" in text  # σ², entropy at 4 epochs
    curve = (assets / "budget_curve_cpu.svg").read_text()
    assert curve.count("<polyline") == 2 and "rqvae (restart)" in curve
    variance = (assets / "budget_curve_cpu_variance.svg").read_text()
    assert variance.count("<polyline") == 2 and "rsqvae l0" in variance and "rsqvae l1" in variance
    assert "assets/budget_curve_cpu.svg" in text and "assets/budget_curve_cpu_variance.svg" in text


def test_budget_curve_refuses_a_missing_dataset_folder(tmp_path):
    missing = tmp_path / "no_cifar"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "budget_curve.py"), "--cifar", str(missing),
                           "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "b.md")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "b.md").exists()


def _quality_result(dataset: str, name: str, arm: str, seed: int, rmse: float, rfid: float) -> dict:
    m = {"dataset": dataset, "name": name, "arm": arm, "seed": seed, "preset": f"{name} ({arm})",
         "rmse": rmse, "psnr": 30 - rmse, "ssim": 0.5, "rfid": rfid, "device": "CPU (2 cores)",
         "train": {"parameters": 300_000, "examples_per_s": 100.0, "steps": 3120}, "peak_mem_mb": 900.0,
         "variances": [], "overrides": [],
         "layers": [{"kind": "residual", "grid": [8, 8], "codebook_size": 512, "perplexity": 100.0,
                     "codes_used": 300, "rmse_depth": rmse, "rmse_substituted": rmse + 1}] * 2}
    if arm != "conv":
        m["overrides"] = ["model.net=vqgan", "model.net_options.base_channels=12",
                          "model.net_options.channel_mult=[1,1,2]", "model.net_options.num_res_blocks=2"]
        m["net_params_ratio"], m["flops_ratio"] = 0.92, 1.59
    return m


def test_tokenizer_quality_report_pairs_seeds(tmp_path):
    """--report-only writes the rows and the per-seed paired differences (vqgan − conv,
    vqgan-adv − vqgan) from the results file, with the network each run recorded."""
    import json

    runs = tmp_path / "runs"
    runs.mkdir()
    rows = [_quality_result("cifar10", "rsqvae", "conv", 0, 14.0, 40.0),
            _quality_result("cifar10", "rsqvae", "conv", 1, 15.0, 42.0),
            _quality_result("cifar10", "rsqvae", "vqgan", 0, 12.0, 35.0),
            _quality_result("cifar10", "rsqvae", "vqgan", 1, 12.0, 36.0),
            _quality_result("cifar10", "rsqvae", "vqgan-adv", 0, 13.0, 30.0)]
    rows[0]["source"] = "runs/budget/e8/cifar10_rsqvae"
    rows.append(_quality_result("fsdd", "sqvae2", "vqgan", 0, 0.08, 0.0))  # not among --datasets
    rows[-1]["source"] = "runs/elsewhere"
    del rows[-1]["ssim"], rows[-1]["rfid"]  # an audio run records LSD instead
    rows[-1]["lsd_db"] = 3.5
    (runs / "results_cpu.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "benchmarks.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tokenizer_quality.py"), "--report-only",
                           "--datasets", "cifar10", "--presets", "rsqvae", "--seeds", "0", "1",
                           "--runs", str(runs), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "<!-- tokenizer-quality-cpu:begin -->" in text
    assert "Command: `python bench/tokenizer_quality.py --datasets cifar10 --presets rsqvae" in text
    assert "cifar10 rsqvae: base 12 × [1,1,2], 2 blocks (0.92× the parameters, 1.6× the FLOPs)" in text
    # vqgan − conv over seeds 0 and 1: RMSE −2 and −3, rFID −5 and −6; vqgan-adv − vqgan: seed 0 only
    assert "| rsqvae | vqgan − conv | 0,1 | 2 of 2 | -2.50 ± 0.71 | +2.50 ± 0.71 | +0.0000 ± 0.0000 | -5.50 ± 0.71 |" in text
    assert "| rsqvae | vqgan-adv − vqgan | 0 | 0 of 1 | +1.00 | -1.00 | +0.0000 | -5.00 |" in text
    assert "| rsqvae (vqgan) | 0,1 |" in text and "| rsqvae (conv) | 0,1 |" in text
    assert "cifar10 rsqvae conv seed 0 (`runs/budget/e8/cifar10_rsqvae`)" in text
    assert "fsdd" not in text and "runs/elsewhere" not in text
    assert "rFID over 2000 test images" in text
    # an audio-only report has no rFID to describe
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "tokenizer_quality.py"), "--report-only",
                           "--datasets", "fsdd", "--presets", "sqvae2", "--seeds", "0",
                           "--runs", str(runs), "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    assert "| sqvae2 (vqgan) | 0 |" in text and "rFID" not in text and "cifar10" not in text


def test_tokenizer_quality_arm_overrides():
    """The conv arm keeps the benchmark's network (twins add restarts); the vqgan arms add the
    matched network and channels-last; the adversarial arm starts its game at half the steps."""
    import argparse

    sys.path.insert(0, str(ROOT / "bench"))
    import tokenizer_quality as tq

    net = ["model.net=vqgan", "model.net_options.base_channels=12"]
    matched = {("cifar10", "rqvae"): (net, 1.0, 2.0), ("fsdd", "sqvae2"): (net, 1.0, 2.0)}
    args = argparse.Namespace(epochs={"cifar10": 8, "fsdd": 4}, adv_weight=0.5)
    assert tq.arm_overrides("cifar10", "rqvae", "conv", args, matched) == [tq.RESTART]
    assert tq.arm_overrides("cifar10", "rqvae", "vqgan", args, matched) == [tq.RESTART, *net, tq.CHANNELS_LAST]
    adv = tq.arm_overrides("fsdd", "sqvae2", "vqgan-adv", args, matched)
    assert adv[:3] == [*net, tq.CHANNELS_LAST]
    half = 4 * tq.steps_per_epoch("fsdd") // 2
    assert f"loss.adversarial.start_step={half}" in adv and "loss.adversarial.weight=0.5" in adv
    assert "loss.adversarial.layers=3" in adv and f"loss.adversarial.channels={tq.ADV_CHANNELS}" in adv


def test_tokenizer_peers_ratios_are_taken_within_each_round():
    """A peer's step-time ratio to ours is computed per round (both ran under the same load)
    and reported as the median and range over the rounds, not as a ratio of medians."""
    sys.path.insert(0, str(ROOT / "bench"))
    import tokenizer_peers

    def run(step, peak=1000.0):
        return {"params": 72e6, "disc_params": 0.0, "step_s": step, "peak_mb": peak}

    ours = [run(10.0), run(20.0), run(40.0)]  # the machine's load rose between rounds
    peer = [run(12.0, 1200.0), run(22.0, 1200.0), run(52.0, 1250.0)]
    row = tokenizer_peers.aggregate("peer", "recon", peer, ours)
    assert row["step_s"] == 22.0 and (row["min_s"], row["max_s"]) == (12.0, 52.0)
    assert row["ratio"] == 1.2 and (row["ratio_lo"], row["ratio_hi"]) == (1.1, 1.3)
    assert row["mem_ratio"] == 1.25
    base = tokenizer_peers.aggregate("ours", "recon", ours, None)
    lines = tokenizer_peers.table([base, row])
    assert "| peer | 72.0 M | 0.00 M | recon | 22.00 | 12.00–52.00 | 1.20 | 1.10–1.30 | 1250 | 1.25 |" in lines
    failed = tokenizer_peers.aggregate("peer", "recon", [run(1.0), {"error": "out of memory"}], ours)
    assert "failed: out of memory" in tokenizer_peers.table([failed])[-1]


def test_run_pool_appends_each_result_as_it_finishes_and_reports_failures(tmp_path):
    """The multi-run benchmarks' runner: every finished child's JSON is annotated, kept and
    appended to the results file at once; a failed child is named and its result left out."""
    import json

    sys.path.insert(0, str(ROOT / "bench"))
    from pool import Job, run_pool

    def job(name: str, code: str) -> Job:
        out = tmp_path / f"{name}.json"
        return Job(key=(name,), title=name, out=out, log=tmp_path / "logs" / f"{name}.log",
                   command=[sys.executable, "-c", code.replace("OUT", repr(str(out)))])

    write = "import json, pathlib; pathlib.Path(OUT).write_text(json.dumps({'rmse': 1.5}))"
    jobs = [job("a", write), job("b", "import sys; print('boom'); sys.exit(3)"), job("c", write)]
    results, done = tmp_path / "results.jsonl", {}
    failed = run_pool(jobs, 2, results, done, 1, lambda j, m: m.update(name=j.title))
    assert failed == ["b (exit code 3)"]
    assert set(done) == {("a",), ("c",)}
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    assert sorted(m["name"] for m in lines) == ["a", "c"] and all(m["rmse"] == 1.5 for m in lines)
    assert not (tmp_path / "a.json").exists()  # the per-run file is gone once recorded
    assert "boom" in (tmp_path / "logs" / "b.log").read_text()
