"""What a pipeline run tells its user: the headline numbers of a track, read back from its
files, and the few lines `hqvae pipeline` prints at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hqvae import layout
from hqvae.pipeline.resume import read_json


def headline(root: Path) -> dict:
    """The numbers a user looks at first, from the files of a track."""
    out: dict[str, Any] = {}
    ev = read_json(root / "tokenizer" / "eval" / "eval.json")
    if ev:
        out.update({k: ev[k] for k in ("rmse", "psnr", "ssim", "lsd_db", "rfid") if k in ev})
    pr = read_json(root / "prior" / "eval.json")
    if pr:
        out["bits_per_token"] = [pr["levels"][k].get("bits_per_token") for k in sorted(pr["levels"])]
    fid = read_json(root / "fid.json")
    if fid:
        out["fid"] = fid["samples"]["fid"]
        out["fid_random_codes"] = fid["random"]["fid"]
        if "real" in fid:
            out["fid_real_data"] = fid["real"]["fid"]
        if "accuracy" in fid["samples"]:
            out["accuracy"] = fid["samples"]["accuracy"]
        if "accuracy" in fid.get("real", {}):
            out["accuracy_real_data"] = fid["real"]["accuracy"]
    return out


def format_summary(summary: dict) -> str:
    lines = []
    for name, stages in summary["tracks"].items():
        ran = [k for k, v in stages.items() if isinstance(v, dict) and v.get("status") == "ran"]
        skipped = [k for k, v in stages.items() if isinstance(v, dict) and v.get("status") == "skipped"]
        h = stages.get("headline", {})
        parts = []
        if "psnr" in h:
            parts.append(f"PSNR {h['psnr']:.2f}")
        if "bits_per_token" in h:
            parts.append("bits/token " + " · ".join(f"{b:.2f}" for b in h["bits_per_token"] if b is not None))
        if "fid" in h:
            kind = "audio FID" if name == "audio" else "FID"
            # 3 significant digits: audio FIDs of real data are ~1e-3, image FIDs ~10-300
            real = f", real {h['fid_real_data']:.3g}" if "fid_real_data" in h else ""
            parts.append(f"{kind} {h['fid']:.3g} (random codes {h['fid_random_codes']:.3g}{real})")
        if "accuracy" in h:
            real = f" (real {h['accuracy_real_data']:.2f})" if "accuracy_real_data" in h else ""
            kind = "digit/class accuracy" if name == "audio" else "class accuracy"
            parts.append(f"{kind} {h['accuracy']:.2f}{real}")
        lines.append(f"{name}: {'; '.join(parts) or 'no metrics'}")
        lines.append(f"  ran: {', '.join(ran) or '-'}; skipped (finished earlier): {', '.join(skipped) or '-'}")
    lines.append(f"wrote {summary['run_dir']} ({layout.SUMMARY}"
                 + (", report.html" if summary.get("report") else "") + f") in {summary['seconds']:.0f}s")
    return "\n".join(lines)


