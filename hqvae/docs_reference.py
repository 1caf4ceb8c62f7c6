"""The reference pages of the documentation, generated from the code so they cannot drift.

* **Config keys** come from the config dataclasses. A key's doc is, in this order, the
  ``doc`` or ``help`` entry of its ``field(metadata=...)``, else the comment block directly
  above the field joined with the comment at the end of its line(s). Every key of every
  config, walked recursively from :data:`TOP_LEVEL` and every registered network's options,
  must have one (``tests/test_docs.py``).
* **Commands** come from the argument parser of ``hqvae`` (:func:`hqvae.cli.build_parser`).
* **Python API** pages come from ``hqvae._EXPORTS``: one page per module that defines a
  public name, rendered from docstrings by mkdocstrings.

``docs/hooks.py`` adds these pages to the site at build time; nothing here is written to
disk. Importing this module does not import torch; building the pages imports the config
modules (the network registry imports torch).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import io
import json
import textwrap
import tokenize
import typing
from collections.abc import Iterator
from dataclasses import dataclass

from hqvae import _EXPORTS
from hqvae.cli import build_parser

# (title, module, class, anchor) of the configs a user writes, in the order the page lists them
TOP_LEVEL = (
    ("Tokenizer", "tokenizer.config", "TokenizerConfig", "tokenizer"),
    ("Prior", "prior.config", "PriorConfig", "prior"),
    ("Classifier", "sampling.classifier", "ClassifierConfig", "classifier"),
    ("Pipeline", "hqvae.pipeline.config", "PipelineConfig", "pipeline"),
    ("Sampling settings", "sampling.settings", "SamplingSettings", "sampling-settings"),
)


@dataclass(frozen=True)
class Key:
    """One config key: its dotted path, the dataclass that declares it, type, default, doc."""

    path: str
    owner: type
    name: str
    type: str
    default: str
    doc: str
    section: bool  # a nested dataclass (its keys follow) rather than a value


# --- docs of dataclass fields ------------------------------------------------------------------


def _comment_text(lines: list[str]) -> str:
    out = []
    for ln in lines:
        ln = ln.strip().lstrip("#").strip()
        if ln.startswith("---") and ln.endswith("---"):  # a divider line heading a group of keys
            continue
        out.append(ln)
    return " ".join(x for x in out if x)


def _source_docs(cls: type) -> dict[str, str]:
    """The comment docs of the fields declared in ``cls``'s own source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):  # a dataclass made at run time has no source
        return {}
    import ast

    comments: dict[int, str] = {}  # line -> comment on it
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENDMARKER):
            code_lines.add(tok.start[0])
    tree = ast.parse(source)
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        ln = node.lineno - 1
        while ln >= 1 and ln in comments and ln not in code_lines:
            above.insert(0, comments[ln])
            ln -= 1
        trailing = [comments[i] for i in range(node.lineno, (node.end_lineno or node.lineno) + 1)
                    if i in comments]
        text = " ".join(t for t in (_comment_text(above), _comment_text(trailing)) if t)
        if text:
            docs[node.target.id] = text
    return docs


def field_docs(cls: type) -> dict[str, str]:
    """``{field name: doc}`` of a config dataclass, inherited fields included."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_source_docs(klass))
    for f in dataclasses.fields(cls):
        text = f.metadata.get("doc") or f.metadata.get("help")
        if text:
            docs[f.name] = str(text)
    return docs


# --- walking the configs -------------------------------------------------------------------------


def _nested(tp: typing.Any) -> tuple[type | None, str]:
    """The dataclass inside a field type (``X``, ``Optional[X]``, ``list[X]``) and the path
    part that indexes it (``""`` or ``".<i>"`` for a list)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return tp, ""
    if origin is typing.Union:
        for a in args:
            inner, part = _nested(a)
            if inner is not None:
                return inner, part
    if origin in (list, tuple) and args and dataclasses.is_dataclass(args[0]):
        return args[0], ".<i>"
    return None, ""


def _type_text(f: dataclasses.Field) -> str:
    tp = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", repr(f.type))
    return tp.replace("typing.", "")


def _value_text(value: typing.Any) -> str:
    if dataclasses.is_dataclass(value):
        return "(section)"
    try:
        return json.dumps(value, ensure_ascii=False)
    except TypeError:
        return repr(value)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return _value_text(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return _value_text(f.default_factory())  # type: ignore[misc]
    return "required"


def _class_doc(cls: type) -> str:
    """The first paragraph of a section's own docstring (not the signature dataclasses make up)."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(f"{cls.__name__}("):
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def walk(cls: type, prefix: str = "", seen: tuple[type, ...] = ()) -> Iterator[Key]:
    """Every key of config dataclass ``cls``, nested sections recursively, depth first."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        inner, part = _nested(hints.get(f.name))
        path = f"{prefix}{f.name}"
        doc = docs.get(f.name, "") or (_class_doc(inner) if inner is not None else "")
        yield Key(path, cls, f.name, _type_text(f), _default_text(f), doc, inner is not None)
        if inner is not None and inner not in seen:
            yield from walk(inner, f"{path}{part}.", seen + (cls,))


def top_level_configs() -> list[tuple[str, type, str]]:
    return [(title, getattr(importlib.import_module(mod), name), anchor)
            for title, mod, name, anchor in TOP_LEVEL]


def network_options() -> list[tuple[str, str, type]]:
    """``(name, summary, options dataclass)`` of every registered tokenizer network."""
    import tokenizer.nets  # noqa: F401 -- registers the networks
    from tokenizer.nets.registry import NETS

    return [(name, NETS[name].summary, NETS[name].options) for name in sorted(NETS)]


def all_keys() -> Iterator[Key]:
    """Every key the reference documents: the top-level configs and the networks' options."""
    for _, cls, _ in top_level_configs():
        yield from walk(cls, f"{cls.__name__}:")
    for name, _, options in network_options():
        yield from walk(options, f"net_options[{name}]:")


# --- pages ---------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _table(keys: list[Key], skip: tuple[str, ...] = ()) -> list[str]:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for k in keys:
        if any(k.path == s or k.path.startswith(s + ".") for s in skip):
            continue
        default = "" if k.section else f"`{_cell(k.default)}`"
        rows.append(f"| `{k.path}` | `{_cell(k.type)}` | {default} | {_cell(k.doc)} |")
    return rows


def config_page() -> str:
    out = [
        "# Config keys",
        "",
        "Every key of every config, generated from the config dataclasses when the site is "
        "built: its type, its default and what it means. A key is set in a YAML file or as a "
        "`key=value` override on the command line (`train.lr=3e-4`, "
        "`model.layers.1.codebook_size=256`); `hqvae config PRESET_OR_FILE` prints a resolved "
        "config with every value. `<i>` stands for a list index. Sections (rows without a "
        "default) hold the keys listed after them.",
        "",
    ]
    pipeline_skip = ("image.tokenizer", "image.prior", "image.classifier",
                     "audio.tokenizer", "audio.prior", "audio.classifier")
    for title, cls, anchor in top_level_configs():
        out += [f"## {title} {{ #{anchor} }}", "", f"`{cls.__module__}.{cls.__name__}`", ""]
        doc = _class_doc(cls)
        if doc:
            out += [doc, ""]
        skip = pipeline_skip if cls.__name__ == "PipelineConfig" else ()
        if skip:
            out += ["A track's `tokenizer`, `prior` and `classifier` sections take the keys of "
                    "the [tokenizer](#tokenizer), [prior](#prior) and [classifier](#classifier) "
                    "configs (with `base:` naming a stage config file to start from); the "
                    "paths that connect the stages are the pipeline's.", ""]
        out += _table(list(walk(cls)), skip) + [""]
    out += ["## Tokenizer networks {: #networks }", "",
            "`model.net` picks the encoder / decoder; its own keys go under `model.net_options`.", ""]
    for name, summary, options in network_options():
        out += [f"### `{name}`", "", summary, ""]
        keys = list(walk(options, "model.net_options."))
        out += (_table(keys) if keys else ["No options."]) + [""]
    return "\n".join(out)


def _subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _action_row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if action.option_strings:
        name = ", ".join(action.option_strings)
        if action.nargs != 0:
            name += " " + (action.metavar or action.dest.upper())
    else:
        name = action.metavar or action.dest
        if action.nargs in ("?", "*"):
            name = f"[{name}{' ...' if action.nargs == '*' else ''}]"
    help_text = parser._get_formatter()._expand_help(action) if action.help else ""
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        help_text += f" (one of: {', '.join(map(str, action.choices))})"
    return f"| `{_cell(name)}` | {_cell(help_text)} |"


def cli_page() -> str:
    parser = build_parser()
    sub = _subparsers(parser)
    helps = {a.dest: a.help for a in sub._choices_actions}
    out = ["# Commands", "",
           "Every `hqvae` command with its arguments, generated from the command line's parser "
           "when the site is built (`hqvae COMMAND --help` prints the same).", "",
           "| command | what it does |", "|---|---|"]
    for name in sub.choices:
        out.append(f"| [`hqvae {name}`](#{name}) | {_cell(helps.get(name) or '')} |")
    out += ["", "`hqvae --version` prints the installed version.", ""]
    for name, p in sub.choices.items():
        usage = " ".join(p.format_usage().split())
        usage = usage.removeprefix("usage: ")
        out += [f"## `{name}` {{ #{name} }}", "", helps.get(name) or "", "",
                "```text", textwrap.fill(usage, 96, subsequent_indent="    "), "```", ""]
        if p.description:
            out += [p.description, ""]
        rows = [_action_row(p, a) for a in p._actions
                if not isinstance(a, argparse._HelpAction) and a.help != argparse.SUPPRESS]
        if rows:
            out += ["| argument | meaning |", "|---|---|", *rows, ""]
    return "\n".join(out)


def api_modules() -> dict[str, list[str]]:
    """``{module: [public names it defines]}`` from ``hqvae._EXPORTS``, sorted."""
    modules: dict[str, list[str]] = {}
    for name, module in sorted(_EXPORTS.items()):
        modules.setdefault(module, []).append(name)
    return dict(sorted(modules.items()))


def api_pages() -> dict[str, str]:
    """``{file name under reference/api/: markdown}``: an index and one page per module."""
    modules = api_modules()
    index = ["# Python API", "",
             "`from hqvae import NAME` loads each of these names on first use; each page "
             "documents the module that defines them, from its docstrings.", "",
             "| name | module |", "|---|---|"]
    pages = {}
    for module, names in modules.items():
        for name in names:
            index.append(f"| [`{name}`]({module}.md#{module}.{name}) | `{module}` |")
        members = "\n".join(f"        - {n}" for n in names)
        pages[f"{module}.md"] = (
            f"# `{module}`\n\n"
            f"Public names: {', '.join(f'`{n}`' for n in names)}.\n\n"
            f"::: {module}\n"
            f"    options:\n"
            f"      members:\n{members}\n")
    pages["index.md"] = "\n".join(index) + "\n"
    return pages


def pages() -> dict[str, str]:
    """Every generated page: ``{path under docs/: markdown}``."""
    out = {"reference/config.md": config_page(), "reference/cli.md": cli_page()}
    out.update({f"reference/api/{k}": v for k, v in api_pages().items()})
    return out


# --- mkdocs hooks (mkdocs.yml: hooks) ------------------------------------------------------------

_API_INDEX = "reference/api/index.md"


def _expand_api_nav(nav: list) -> bool:
    """Replace the nav entry of the API index by the index and one entry per module page."""
    for i, item in enumerate(nav):
        if isinstance(item, dict):
            (title, value), = item.items()
            if value == _API_INDEX:
                entries = [{"Overview": _API_INDEX}]
                entries += [{m: f"reference/api/{m}.md"} for m in api_modules()]
                nav[i] = {title: entries}
                return True
            if isinstance(value, list) and _expand_api_nav(value):
                return True
    return False


def on_config(config):
    """mkdocs hook: make the repository importable and list the generated API pages."""
    import sys
    from pathlib import Path

    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    if config.nav:
        _expand_api_nav(config.nav)
    return config


def on_files(files, config):
    """mkdocs hook: add the generated reference pages to the site."""
    from mkdocs.structure.files import File

    for path, text in pages().items():
        files.append(File.generated(config, path, content=text))
    return files


def archive_section(text: str, mark: str) -> str:
    """The section ``mark`` of the experiment archive (between its bench markers), with its
    headings one level deeper so that it sits under a page's own headings."""
    begin, end = f"<!-- {mark}:begin -->", f"<!-- {mark}:end -->"
    if begin not in text or end not in text:
        raise ValueError(f"docs/benchmarks.md has no section {mark!r}")
    body = text.split(begin, 1)[1].split(end, 1)[0]
    return "\n".join("#" + ln if ln.startswith("#") else ln for ln in body.splitlines())


def include_results(markdown: str, archive: str) -> str:
    """Replace every ``<!-- results:include NAME -->`` by that section of the archive."""
    import re

    return re.sub(r"<!-- results:include ([\w.-]+) -->",
                  lambda m: archive_section(archive, m.group(1)), markdown)


def on_page_markdown(markdown, page, config, files):
    """mkdocs hook: the results page shows the archive's latest run of each headline benchmark."""
    if page.file.src_uri != "results.md":
        return markdown
    from pathlib import Path

    archive = (Path(config.docs_dir) / "benchmarks.md").read_text()
    return include_results(markdown, archive)
