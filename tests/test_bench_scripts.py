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
