"""The house rules of the package (issues 16, 23): the layer contracts of pyproject.toml hold and
catch what they forbid, no import cycle between modules, short CLI modules, one statistics module
behind every error bar."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = SRC / "prealign"

KNOWN_CYCLES: list[set] = []
LONG_CLI_EXCEPTIONS: set[str] = set()  # none: every CLI module parses and prints only
CLI_MAX_LINES = 150
MAX_LINES = 600  # a room a newcomer reads in one sitting (issue 23); aim for ~500
# Modules allowed over MAX_LINES (one algorithm that reads best whole), each with the reason; none today.
# An entry whose file is no longer long fails the test, so this list can only shrink.
LONG_FILE_EXCEPTIONS: dict[str, str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, modules) -> set[str]:
    """Every prealign module ``path`` imports, anywhere in the file (module level, functions,
    ``from . import x`` where ``x`` is a submodule), as module names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import prealign.a.b.func`-like: the longest module prefix
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_import_walker_sees_function_level_and_relative_imports():
    graph = import_graph()
    assert "prealign.reports.registry" in graph["prealign.cli.analyze"]  # imported inside a function
    assert "prealign.reports.analyze" in graph["prealign.reports.registry"]  # `from . import analyze`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]


def test_no_import_cycle_between_modules():
    found = [c for c in cycles(import_graph()) if c not in KNOWN_CYCLES]
    assert not found, f"import cycles (module-level or inside functions): {found}"


def test_no_module_is_over_600_lines():
    lengths = {str(p.relative_to(SRC)): len(p.read_text().splitlines()) for p in sorted(PACKAGE.rglob("*.py"))}
    long = {f: n for f, n in lengths.items() if n > MAX_LINES}
    unexpected = {f: n for f, n in long.items() if f not in LONG_FILE_EXCEPTIONS}
    stale = sorted(set(LONG_FILE_EXCEPTIONS) - set(long))
    assert not unexpected, f"modules over {MAX_LINES} lines (split them by concept): {unexpected}"
    assert not stale, f"no longer over {MAX_LINES} lines: delete {stale} from LONG_FILE_EXCEPTIONS"


def test_every_cli_module_is_short():
    long = {p.name: n for p in (PACKAGE / "cli").glob("*.py")
            if (n := len(p.read_text().splitlines())) > CLI_MAX_LINES and p.name not in LONG_CLI_EXCEPTIONS}
    assert not long, f"CLI modules over {CLI_MAX_LINES} lines (parse and print only; move the work to the library): {long}"


def test_error_bars_are_the_sample_std_of_the_stats_module():
    """Figures, tables and claims take ± from prealign.stats (ddof = 1); a lone value draws no bar."""
    from types import SimpleNamespace

    from prealign.stats import mean_std_each
    from prealign.experiments.outputs import _points

    means, stds = mean_std_each([[1.0, 2.0, 3.0], [5.0], [float("nan"), 4.0, 6.0]], 0.0)
    assert means.tolist() == [2.0, 5.0, 5.0] and stds.tolist() == pytest.approx([1.0, 0.0, 2 ** 0.5])
    runs = [SimpleNamespace(row={"x": 1, "y": v}) for v in (1.0, 2.0, 3.0)]
    assert _points(runs, "x", "y") == ([1], [2.0], [1.0])  # was the population std, 0.816


# ------------------------------------------------------------------ the layer contracts (issue 23)
def _contracts() -> list[dict]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def lint_imports(src: Path) -> tuple[int, dict[str, str]]:
    """``lint-imports`` (the command's own entry point, in this interpreter) on the package under
    ``src`` with this repository's contracts: (exit status, ``{contract name: "KEPT" | "BROKEN"}``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]),
           "COLUMNS": "400"}  # one contract per line
    out = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command as c; c()",
                          "--no-cache", "--no-logo", str(ROOT / "pyproject.toml")],
                         cwd=src, env=env, capture_output=True, text=True, timeout=120)
    status = {}
    for line in out.stdout.splitlines():
        name, _, word = line.rpartition(" ")
        if word in ("KEPT", "BROKEN"):
            status[name] = word
    return out.returncode, status


def test_the_layer_contracts_hold():
    """`make test` and CI run lint-imports: every contract of pyproject.toml is kept by this tree."""
    rc, status = lint_imports(SRC)
    names = [c["name"] for c in _contracts()]
    assert status == {n: "KEPT" for n in names} and rc == 0, status


# One forbidden import per contract, each inside a function (or under TYPE_CHECKING), where a
# module-level scan would miss it; `models -> methods` crosses independent siblings of a layer.
VIOLATIONS = {
    "layers": ("models/classic.py", "def _broken():\n    from ..methods import get_method\n"),
    "analysis-viz": ("analysis/hessian.py", "def _broken():\n    from ..viz import plots\n"),
    "viz-draws": ("viz/plots.py", "def _broken():\n    from ..run.store import Store\n"),
    "run-trains": ("run/callbacks.py", "def _broken():\n    import prealign.analysis.calibration\n"),
    "below-run": ("data/loading.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..run.config import RunConfig\n"),
}


def test_each_contract_catches_a_forbidden_import(tmp_path):
    """A copy of the package with one forbidden import per contract: lint-imports fails and names
    every contract broken — so a contract that could not fail, or a function-level import that
    slipped past the linter, fails this test."""
    copy = tmp_path / "src"
    shutil.copytree(PACKAGE, copy / "prealign", ignore=shutil.ignore_patterns("__pycache__"))
    contracts = {c["id"]: c["name"] for c in _contracts()}
    assert set(VIOLATIONS) == set(contracts), "give every contract a violation here"
    for file, code in VIOLATIONS.values():
        path = copy / "prealign" / file
        path.write_text(path.read_text() + "\n\n" + code)
    rc, status = lint_imports(copy)
    assert rc != 0 and status == {name: "BROKEN" for name in contracts.values()}, status


def test_no_dynamic_import_of_a_prealign_module():
    """lint-imports (and the cycle check above) see import statements only: no
    ``importlib.import_module("prealign...")`` or ``(".x", __name__)`` hides an edge between modules."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
                    and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr))):
                first = node.args[0].value if isinstance(node.args[0], ast.Constant) else ""
                if isinstance(node.args[0], ast.JoinedStr) or str(first).startswith(("prealign", ".")):
                    found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert not found, f"dynamic imports of prealign modules (use an import statement): {found}"


def test_the_architecture_doc_shows_the_contracts():
    """docs/architecture.md draws the layers in pyproject.toml's order and names every contract."""
    contracts = _contracts()
    layers = next(c for c in contracts if c["type"] == "layers")["layers"]
    lines = (ROOT / "docs" / "architecture.md").read_text().splitlines()
    drawn = [next((i for i, line in enumerate(lines) if line.split("  ")[0].strip() == layer), None) for layer in layers]
    assert None not in drawn and drawn == sorted(drawn), dict(zip(layers, drawn))
    text = "\n".join(lines)
    assert all(f"| `{c['id']}` |" in text for c in contracts), [c["id"] for c in contracts]
