"""The shape of the code base: no module over 500 lines, no import cycle among the
project's modules, every import done inside a function saying why, and every test the
documentation cites by ``file::name`` there to run."""

from __future__ import annotations

import ast
import re
import sys
import tokenize
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "tokenizer", "prior", "sampling", "hqvae")
MAX_LINES = 500
# the documents that cite tests as tests/test_x.py::test_name
CITING = ("README.md", "docs/reliability.md")


def _sources() -> dict[str, Path]:
    """module name -> file, for every module of the project's packages."""
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


SOURCES = _sources()


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute name a ``from`` import of ``module`` names (relative ones resolved)."""
    if not node.level:
        return node.module or ""
    is_package = SOURCES[module].name == "__init__.py"
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(module: str, node: ast.stmt) -> list[str]:
    """The project modules an import statement imports (a name imported from a package is
    its submodule when there is one, else the package)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        base = _absolute(module, node)
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in SOURCES else base for a in node.names]
    return sorted({n for n in names if n in SOURCES})


def _is_type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _module_level_imports(body: list[ast.stmt]):
    """The import statements run when the module is imported: its body, also inside
    if / try / with / class blocks, but not in functions or ``if TYPE_CHECKING:``."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) or _is_type_checking(node):
            continue
        else:
            for name in ("body", "orelse", "finalbody", "handlers"):
                yield from _module_level_imports(getattr(node, name, None) or [])


def import_graph() -> dict[str, set[str]]:
    """module -> the project modules it imports when it is imported."""
    graph = {}
    for module, path in SOURCES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        graph[module] = {t for node in _module_level_imports(tree.body) for t in _targets(module, node)} - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle of ``graph`` as [a, b, ..., a] (empty: there is none)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return []

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph) + 100))
    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(REPO)): n for p in SOURCES.values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them by what they do): {long}"


def test_the_project_s_modules_import_each_other_without_a_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_names_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []


def _comment_lines(path: Path) -> set[int]:
    """The numbers of the lines that hold a comment."""
    with path.open("rb") as f:
        return {tok.start[0] for tok in tokenize.tokenize(f.readline) if tok.type == tokenize.COMMENT}


def _undocumented_imports(path: Path, module: str) -> list[str]:
    """In-function imports of project modules with no comment saying why: on their line,
    on the line above, or above the run of import statements they are part of."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    comments = _comment_lines(path)
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for block in ast.walk(fn):
            for name in ("body", "orelse", "finalbody"):
                stmts = getattr(block, name, None)
                if not isinstance(stmts, list):
                    continue
                said = False  # a comment above the run of imports this one is part of
                for i, node in enumerate(stmts):
                    if not isinstance(node, (ast.Import, ast.ImportFrom)):
                        said = False
                        continue
                    own = any(n in comments for n in range(node.lineno - 1, node.end_lineno + 1))
                    said = own or (said and i > 0 and isinstance(stmts[i - 1], (ast.Import, ast.ImportFrom)))
                    if not said and _targets(module, node):
                        found.append(f"{path.relative_to(REPO)}:{node.lineno}")
    return sorted(set(found))


def test_every_import_inside_a_function_says_why():
    """Imports of the project's modules belong at the top of a module; one inside a function
    is there to keep the command line's start fast (torch and the like loaded on use) or to
    break a cycle, and says so in a comment on its line or the line above (a comment above
    a run of imports covers the run)."""
    bad = [where for module, path in SOURCES.items() for where in _undocumented_imports(path, module)]
    assert not bad, "in-function imports without a comment saying why: " + ", ".join(bad)


def _test_names() -> dict[str, set[str]]:
    """test file (relative to tests/) -> the names of the tests and classes it defines."""
    out = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
        out[path.relative_to(REPO / "tests").as_posix()] = names
    return out


CITED = re.compile(r"(?:tests/)?((?:[\w-]+/)*test_\w+\.py)::(\w+)")


@pytest.mark.docs
def test_every_test_cited_in_the_docs_exists():
    """reliability.md and the README point at tests as the evidence of what they say: each
    cited ``test_x.py::name`` (parametrised ids cut at ``[``) names a test that is there."""
    names = _test_names()
    missing, cited = [], 0
    for doc in CITING:
        for file, name in CITED.findall((REPO / doc).read_text(encoding="utf-8")):
            cited += 1
            matches = [f for f in names if f == file or f.endswith("/" + file)]
            if not any(name in names[f] for f in matches):
                missing.append(f"{doc}: {file}::{name}")
    assert cited, "no test cited: the pattern no longer matches how the docs cite tests"
    assert not missing, "cited tests that do not exist: " + ", ".join(missing)


@pytest.mark.parametrize("module", ["hqvae.cli"])
def test_the_command_line_starts_without_torch_or_numpy(module):
    """`hqvae --help` and a config error come back at once: the command modules load torch,
    numpy and the like only in the command that needs them."""
    import subprocess

    code = (f"import sys, {module}; heavy = [m for m in ('torch', 'numpy') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "", f"import {module} loaded {out.stdout.strip()}"
