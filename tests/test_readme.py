"""The README's two commands are the ones CI runs, and the configs and commands it names exist."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
CI = (ROOT / ".ci" / "run").read_text()


def _commands() -> tuple[str, str]:
    lines = [ln.strip() for ln in README.splitlines() if ln.strip().startswith(("python3 -m venv", "apt-get"))]
    quick = next(ln for ln in lines if "hqvae pipeline" in ln)
    test = next(ln for ln in lines if "pytest" in ln)
    return quick, test


def _steps(command: str) -> list[str]:
    return [" ".join(shlex.split(part)) for part in command.split("&&")]


def _ci_steps() -> list[str]:
    out = []
    for ln in CI.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith(("#", "set ", "cd ", "if ", "fi")):
            continue
        ln = re.sub(r"^DEBIAN_FRONTEND=\S+ ", "", ln).replace(" || true", "")
        ln = ln.replace(" -qq", "").replace(". .venv/bin/activate", ". .venv/bin/activate")
        out.append(" ".join(shlex.split(ln)))
    return out


def test_ci_runs_the_readme_test_command():
    _, test = _commands()
    ci = _ci_steps()
    for step in _steps(test):
        step = step.replace("python -m pip", "pip")
        assert any(step == c.replace("python -m pip", "pip") for c in ci), f"CI does not run {step!r}"


def test_the_quickstart_installs_like_the_tests_and_runs_the_pipeline():
    quick, test = _commands()
    install = [s for s in _steps(test) if s.startswith(("python3 -m venv", ". .venv", "pip install"))]
    assert _steps(quick)[: len(install)] == install
    assert _steps(quick)[-1] == "hqvae pipeline configs/quickstart.yaml"


def test_every_config_the_readme_names_exists():
    for name in set(re.findall(r"configs/[\w/{},.-]+\.yaml", README)):
        m = re.match(r"(.*)\{(.*)\}(.*)", name)
        names = [m.group(1) + part + m.group(3) for part in m.group(2).split(",")] if m else [name]
        for n in names:
            assert (ROOT / n).is_file(), n


def test_every_cli_command_is_in_the_readme_table():
    from hqvae.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in sub.choices:
        assert f"`hqvae {command}" in README, command


def test_version_flag_reports_the_installed_distribution(capsys):
    from importlib.metadata import version

    from hqvae.cli import main

    try:
        main(["--version"])
    except SystemExit as e:  # argparse's version action exits 0
        assert e.code == 0
    assert capsys.readouterr().out.strip() == f"hqvae {version('hqvae')}"


def test_overrides_may_follow_flags_and_other_stray_words_are_errors(capsys):
    import pytest

    from hqvae.cli import parse_cli

    # the README's own form: flags first, then overrides
    args = parse_cli(["train-prior", "configs/prior/shapes.yaml", "a.b=1", "--level", "1", "train.steps=3000"])
    assert args.config == "configs/prior/shapes.yaml" and args.level == [1]
    assert args.overrides == ["a.b=1", "train.steps=3000"]
    args = parse_cli(["train-prior", "--level", "0", "data.codes=x", "train.steps=2"])
    assert args.config is None and args.overrides == ["data.codes=x", "train.steps=2"]
    for argv in (["train-prior", "cfg.yaml", "--level", "1", "oops"],  # not key=value
                 ["sample", "runs/p", "--out", "o", "train.steps=1"]):  # sample takes no overrides
        with pytest.raises(SystemExit) as e:
            parse_cli(argv)
        assert e.value.code == 2
        assert "unrecognized arguments" in capsys.readouterr().err


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch):
    section = README.split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert blocks, "no python block in the README's Python API section"
    monkeypatch.chdir(tmp_path)  # its runs/ folder lands here
    monkeypatch.setenv("HQVAE_CACHE", str(tmp_path / "cache"))
    for code in blocks:
        exec(compile(code, "README.md (Python API)", "exec"), {"__name__": "readme"})
    assert (tmp_path / "runs" / "api" / "prior").is_dir()


def test_license_matches_pyproject_and_citation_names_the_papers():
    import yaml

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    licence = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    assert (ROOT / "LICENSE").read_text().startswith(f"{licence} License")
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["license"] == licence and cff["version"] == tomllib.loads(
        (ROOT / "pyproject.toml").read_text())["project"]["version"]
    titles = " | ".join(r["title"] for r in cff["references"])
    for paper in ("HQ-VAE", "SQ-VAE", "Neural Discrete Representation Learning", "VQ-VAE-2",
                  "Residual Quantization"):
        assert paper in titles, paper
