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
