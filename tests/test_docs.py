"""Docs that cannot drift (issue 24): the README's and docs/*.md's examples run, and the lists of rules,
methods, models and layer types written in them are the registries'.

**Running the examples.** Each page's code blocks run in order, in a fresh temporary folder holding a
copy of ``examples/``, through `Sybil <https://sybil.readthedocs.io>`_'s Markdown parsers:

- ``python`` blocks share one namespace per page (as a reader types them into one session); one whose
  first line is ``# PATH.py`` is that file (a module a later command imports): written, not run;
- ``bash``/``sh``/``console`` blocks run each command line in that folder: ``prealign ...`` through the
  CLI's own entry point (:func:`prealign.cli.main`, what the console script calls; exit status 0
  required), anything else (a pipe, ``make``, ``jq``) in ``bash``; ``export NAME=VALUE`` sets it for
  the page's later commands. In ``console`` blocks only the ``$ `` lines run (the rest is output);
- a ``toml`` block whose first line is ``# PATH.toml`` is that file: written there for the commands
  that follow, or, when it names a file of the repository (``examples/grid.toml``), holding its keys
  and values; other ``toml`` blocks must parse;
- ``<!-- skip: next "reason" -->`` before a block skips it, and must say why (a block that starts a
  Ray cluster, needs a GPU or optional data, or trains for minutes); ``<!-- invisible-code-block:
  python -->`` sets up names a fragment uses without showing them. Untagged blocks (output,
  synopses) are not run, but every ``prealign`` line in any block must name real options.

Why Sybil (installed with the ``test`` extra) and not pytest-markdown-docs or pytest-codeblocks: a
page's blocks share one namespace (the docs build an example up over several blocks), its skip
directive carries a reason, invisible setup blocks keep fragments honest without cluttering the page,
and one parse takes custom evaluators for shell, console and TOML blocks next to Python's, which lets
the shell examples run in a temporary folder. pytest-markdown-docs runs only Python fences (each alone
unless marked as a continuation); pytest-codeblocks runs each Python block in a fresh namespace and
shell blocks with ``shell=True`` in the current directory, with no ``$``-prompt blocks; both collect
only behind a command-line flag, so ``make test`` would not run the docs.
"""
from __future__ import annotations

import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import unittest
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport, a dependency there (pyproject.toml)
    import tomli as tomllib

from sybil import Sybil  # the `test` extra (pyproject.toml)
from sybil.evaluators.python import PythonEvaluator
from sybil.parsers.markdown import CodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_OPERATORS = re.compile(r"[|<>;&$`*?]")


# ------------------------------------------------------------------------------ evaluators
def _command_lines(source: str, console: bool) -> list[str]:
    """The commands of a shell block: ``\\`` continuations joined, comments and blank lines dropped; in a
    ``console`` block only the lines after a ``$ `` prompt (the rest is output)."""
    lines, current = [], None
    for raw in source.splitlines():
        if current is None:
            if console:
                if not raw.startswith("$ "):
                    continue
                raw = raw[2:]
            current = ""
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        if shlex.split(current, comments=True):
            lines.append(current.strip())
        current = None
    return lines


def _run_command(line: str) -> None:
    """One command line of a shell example, in the current folder; raises with its output unless it exits 0."""
    words = shlex.split(line, comments=True)
    code_part = line.split(" #")[0]
    if words[0] == "export" and len(words) == 2 and "=" in words[1]:
        name, value = words[1].split("=", 1)
        os.environ[name] = os.path.expandvars(value)
        if name == "PYTHONPATH":  # a new process would start with it on sys.path; this one gets it now
            sys.path[:0] = [p for p in os.environ[name].split(os.pathsep) if p]
        return
    if words[0] == "prealign" and not SHELL_OPERATORS.search(code_part):
        from prealign.cli import main

        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            status = main(words[1:])
        output = out.getvalue() + err.getvalue()
    else:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
        done = subprocess.run(["bash", "-c", line], env=env, capture_output=True, text=True, timeout=300)
        status, output = done.returncode, done.stdout + done.stderr
    if status != 0:
        raise AssertionError(f"`{line}` exited {status}:\n{output[-3000:]}")


def _shell(console: bool):
    def evaluate(example) -> None:
        for line in _command_lines(example.parsed, console):
            _run_command(line)
    return evaluate


def _toml(example) -> None:
    """A ``# PATH.toml`` block is that file: written for the commands after it, or, where the repository
    has a file of that name (``examples/grid.toml``), holding the same keys and values (comments may
    differ); any other block must be valid TOML."""
    source = str(example.parsed)
    values = tomllib.loads(source)
    first = source.splitlines()[0] if source.strip() else ""
    named = re.match(r"#\s*(\S+\.toml)\b", first)
    if not named:
        return
    path = Path(named.group(1))
    if (ROOT / path).is_file():
        assert values == tomllib.loads((ROOT / path).read_text()), f"the block shown as {path} is not that file"
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)


def _python_file_or_code(evaluate_code):
    """A ``python`` block whose first line is ``# PATH.py`` is that file (a module a later command imports):
    written, not run; every other block runs in the page's namespace."""
    def evaluate(example):
        source = str(example.parsed)
        named = re.match(r"#\s*(\S+\.py)\s*$", source.splitlines()[0]) if source.strip() else None
        if named:
            Path(named.group(1)).parent.mkdir(parents=True, exist_ok=True)
            Path(named.group(1)).write_text(source)
            return None
        return evaluate_code(example)
    return evaluate


SYBIL = Sybil(parsers=[CodeBlockParser("python", _python_file_or_code(PythonEvaluator())),
                       CodeBlockParser("bash", _shell(False)), CodeBlockParser("sh", _shell(False)),
                       CodeBlockParser("console", _shell(True)), CodeBlockParser("toml", _toml), SkipParser()])


# ------------------------------------------------------------------------------ the examples run
@pytest.fixture
def page_folder(tmp_path, monkeypatch):
    """A fresh folder as the working directory, with ``examples/``, and an empty HOME and user cache; the
    environment, ``sys.path`` and the registries are restored after the page (a page may export a variable,
    register a model, extend the path)."""
    from prealign.feedback.rules import RULES
    from prealign.methods import METHODS
    from prealign.models import MODELS

    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    environ = dict(os.environ)
    for name in ("PREALIGN_RUNS", "PREALIGN_DATA", "PYTHONPATH"):
        os.environ.pop(name, None)
    # a new user's machine: an empty home and cache (data found only where a fresh machine has it)
    os.environ.update(PREALIGN_QUIET="1", MPLBACKEND="Agg", PWD=str(tmp_path), HOME=str(tmp_path / "home"),
                      XDG_CACHE_HOME=str(tmp_path / "home" / ".cache"))
    saved = [(registry, dict(registry)) for registry in (RULES, METHODS, MODELS)]
    yield tmp_path
    os.environ.clear()
    os.environ.update(environ)
    for registry, before in saved:
        registry.clear()
        registry.update(before)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_examples_of_a_page_run(page, page_folder):
    """Every example of the page runs, in order, or is skipped by a directive that says why."""
    from sybil.evaluators.skip import Skipper

    ran, skipped = 0, []
    for example in SYBIL.parse(page).examples():
        if isinstance(example.region.evaluator, Skipper):
            example.evaluate()  # the directive itself
            continue
        try:
            example.evaluate()
        except unittest.SkipTest as reason:
            skipped.append((example.line, str(reason)))
            continue
        except Exception as exc:
            raise AssertionError(f"{page.relative_to(ROOT)}, the example at line {example.line}: "
                                 f"{type(exc).__name__}: {exc}") from exc
        ran += 1
    if skipped:
        print(f"{page.relative_to(ROOT)}: skipped " + "; ".join(f"line {line}: {why}" for line, why in skipped))
    assert ran or not skipped, f"every example of {page.relative_to(ROOT)} is skipped"


# ------------------------------------------------------------------------------ the lists are the registries
MARKED = re.compile(r"<!--\s*(rules|methods|models|layers)\s*-->(.*?)<!--\s*/\1\s*-->", re.S)


def _names(text: str) -> set[str]:
    """The names a marked list holds: backticked words (of a table, its first column's), ``nn.`` dropped
    and ``Conv1d/2d/3d`` spelled out."""
    rows = [line for line in text.splitlines() if line.startswith("|") and not line.startswith("|---")]
    cells = [row.split("|")[1] for row in rows[1:]] if rows else [text]
    names = set()
    for token in re.findall(r"`([^`]+)`", " ".join(cells)):
        token = token.removeprefix("nn.")
        spelled = re.fullmatch(r"(\w+?)1d/2d/3d", token)
        names |= {f"{spelled.group(1)}{d}d" for d in (1, 2, 3)} if spelled else {token}
    return names


def _registries() -> dict[str, set[str]]:
    from prealign.feedback.convert import CONVERTIBLE_TYPES
    from prealign.feedback.rules import RULES
    from prealign.methods import METHODS
    from prealign.models import MODELS

    # torch's NonDynamicallyQuantizableLinear is MultiheadAttention's out_proj class: converted with it, not a
    # layer a user writes
    layers = {t.__name__ for t in CONVERTIBLE_TYPES} - {"NonDynamicallyQuantizableLinear"}
    return {"rules": set(RULES), "methods": set(METHODS), "models": set(MODELS), "layers": layers}


def test_every_marked_list_in_the_docs_is_its_registry():
    """``<!-- rules -->`bp`, `fa`, ...<!-- /rules -->`` (likewise methods, models, layers) in README.md and
    docs/*.md name exactly the registry's entries (feedback RULES, METHODS, MODELS, the layer classes
    ``convert`` handles). usage.md listed 3 models and no wm; layers.md's rules lacked wm."""
    registries = _registries()
    found = {}
    for page in PAGES:
        for kind, text in MARKED.findall(page.read_text()):
            where = f"{page.relative_to(ROOT)} <!-- {kind} -->"
            assert _names(text) == registries[kind], (where, _names(text) ^ registries[kind])
            found.setdefault(kind, []).append(where)
    # the lists this test guards are still marked (a rewrite that drops a marker drops the check)
    assert {k: len(v) for k, v in found.items()} == {"rules": 2, "methods": 2, "models": 4, "layers": 2}, found


def test_the_layer_table_is_what_convert_does():
    """docs/layers.md's table: each ``nn.X`` row becomes exactly the feedback class ``convert`` uses for it,
    and every convertible class has its row."""
    from prealign.feedback.convert import _FEEDBACK_CLASS

    expected = {t.__name__: f.__name__ for t, f in _FEEDBACK_CLASS.items()
                if t.__name__ != "NonDynamicallyQuantizableLinear"}
    table = {}
    for row in (ROOT / "docs" / "layers.md").read_text().splitlines():
        cells = [c.strip() for c in row.split("|")[1:-1]]
        plain = re.fullmatch(r"`nn\.(\w+?)(1d/2d/3d)?`", cells[0]) if cells else None
        becomes = re.fullmatch(r"`(Feedback\w+?)(1d/2d/3d)?`", cells[1]) if plain and len(cells) > 1 else None
        if becomes:
            dims = ("1d", "2d", "3d") if plain.group(2) else ("",)
            table.update({plain.group(1) + d: becomes.group(1) + d for d in dims})
    assert table == expected


def test_the_models_table_counts_the_parameters_of_the_models():
    """docs/models.md's "parameters (3×32×32, 10 classes)" column is what the built models hold."""
    from prealign.models import build_model

    rows = {}
    for row in (ROOT / "docs" / "models.md").read_text().splitlines():
        cells = [c.strip() for c in row.split("|")[1:-1]]
        if len(cells) == 4 and re.fullmatch(r"`\w+`", cells[0]) and re.search(r"\d{1,3}(,\d{3})+", cells[2]):
            rows[cells[0].strip("`")] = int(re.search(r"\d{1,3}(,\d{3})+", cells[2]).group().replace(",", ""))
    assert set(rows) == _registries()["models"]
    for name, count in rows.items():
        model = build_model(name, (3, 32, 32), 10, rule="fa", generator=torch.Generator().manual_seed(0))
        assert sum(p.numel() for p in model.parameters()) == count, name


# ------------------------------------------------------------------------------ skips and synopses
def test_skips_are_few_and_each_says_why():
    """A skipped example is explicit (``<!-- skip: next "reason" -->``, never a bare skip, which Sybil would
    pass over silently) and rare: at most a third of the runnable blocks."""
    directives, blocks = [], 0
    for page in PAGES:
        text = page.read_text()
        blocks += len(re.findall(r"^```(?:python|bash|sh|console|toml)\s*$", text, re.M))
        for action, reason in re.findall(r"<!--\s*skip:\s*(\w+)(.*?)-->", text, re.S):
            directives.append((page.name, action, reason.strip()))
    assert directives, "no skip directive found: the pattern is out of date"
    for name, action, reason in directives:
        assert action == "next" and re.fullmatch(r'"[^"]{15,}"', reason), (name, action, reason)
    assert len(directives) <= blocks / 3, (len(directives), blocks)


def _subcommands(parser) -> dict:
    import argparse

    return {name: sub for a in parser._actions if isinstance(a, argparse._SubParsersAction)
            for name, sub in a.choices.items()}


def test_every_prealign_command_in_the_docs_names_real_options():
    """Every ``prealign ...`` line in any code block of the docs — run, skipped, or a synopsis such as
    ``prealign analyze hessian RUN... [--samples 1000]`` — names existing subcommands and options."""
    from prealign.cli import build_parser

    root = build_parser()
    checked = 0
    for page in PAGES:
        for block in re.findall(r"^```[^\n]*\n(.*?)^```", page.read_text(), re.M | re.S):
            for line in block.splitlines():
                line = re.sub(r"^\$ ", "", line.strip())
                if not line.startswith("prealign "):
                    continue
                words = line.split("#")[0].replace("[", " ").replace("]", " ").replace("|", " ").split()
                parser = root
                for word in words[1:]:
                    if word in _subcommands(parser):
                        parser = _subcommands(parser)[word]
                    elif word.startswith("--"):
                        option = word.split("=")[0]
                        assert option in parser._option_string_actions, f"{page.name}: `{line}`: no {option}"
                        checked += 1
    assert checked > 50, checked


def test_every_docs_page_is_in_the_readme_s_table():
    """Discoverable: README.md's Documentation table links every page of docs/ (models.md, cluster.md,
    uncertainty.md, claims-quick.md and architecture.md were missing from it)."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Documentation"):].split("\n\n")[1]
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", table))
    assert linked == {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
