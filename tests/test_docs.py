"""Executable documentation: every `qsep` command in README.md and the recipe / benchmark READMEs must parse.

The fenced code blocks are read; each `qsep ...` command must name an existing (sub)command and only options that
command has (hidden aliases count), every `python -m MODULE` must name an importable module, and the cheap
commands (`qsep models ...`, `qsep --version`) are run. The toy recipe's commands run for real in
tests/recipes/test_toy_recipe.py.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from separator.cli import app

REPO = Path(__file__).resolve().parents[1]
DOCS = sorted([REPO / "README.md", *REPO.glob("recipes/**/README.md"), *REPO.glob("benchmarks/README.md")])
CHEAP = {("models",), ("--version",), ("--help",)}


def fenced_lines(path: Path) -> list[str]:
    """The lines of the fenced code blocks of a markdown file, with `\\` continuations joined."""
    lines, inside, out = path.read_text(encoding="utf-8").splitlines(), False, []
    buf = ""
    for line in lines:
        if line.strip().startswith("```"):
            inside = not inside
            continue
        if not inside:
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    return out


def qsep_commands(path: Path) -> list[list[str]]:
    """Token lists (after the program name) of the `qsep` invocations in ``path``'s code blocks."""
    commands = []
    for line in fenced_lines(path):
        line = re.split(r"\s#", line, maxsplit=1)[0]  # a shell comment
        m = re.search(r"(?:^|[\s│|`])(?:\S*/)?qsep\s+(.*)$", line)
        if not m or "import" in line.split("qsep")[0]:
            continue
        text = m.group(1).split("->")[0]
        try:
            tokens = shlex.split(text, comments=True)
        except ValueError:  # an unbalanced quote in a diagram: take the plain words
            tokens = text.split()
        commands.append(tokens)
    return commands


def option_names(cmd) -> set[str]:
    """Every spelling of every option of a (typer's click) command, hidden aliases included."""
    names = {"--help"}
    for p in cmd.params:
        if getattr(p, "param_type_name", "") == "option":
            names.update(p.opts)
            names.update(p.secondary_opts)
    return names


def resolve(tokens: list[str]):
    """The command the tokens name (typer's click command object), the subcommand path, the remaining tokens."""
    cmd = typer.main.get_command(app)
    path: list[str] = []
    rest = list(tokens)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        sub = cmd.commands.get(rest[0])
        if sub is None:
            raise AssertionError(f"unknown command `qsep {' '.join(path + [rest[0]])}`")
        path.append(rest.pop(0))
        cmd = sub
    return cmd, path, rest


def test_docs_exist_and_have_commands():
    assert REPO / "README.md" in DOCS and len(DOCS) >= 4
    assert sum(len(qsep_commands(d)) for d in DOCS) >= 25


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_documented_qsep_option_exists(doc):
    problems = []
    for tokens in qsep_commands(doc):
        try:
            cmd, path, rest = resolve(tokens)
        except AssertionError as exc:
            problems.append(str(exc))
            continue
        known = option_names(cmd)
        for tok in rest:
            if not tok.startswith("-") or re.fullmatch(r"-[\d.]+", tok) or tok in ("-", "--"):
                continue
            name = tok.split("=", 1)[0].rstrip(")`,")
            if name not in known:
                problems.append(f"`qsep {' '.join(path)}` has no option {name} (doc line: qsep {' '.join(tokens)})")
    assert not problems, f"{doc.relative_to(REPO)}:\n" + "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_documented_python_module_exists(doc):
    missing = []
    for line in fenced_lines(doc):
        for module in re.findall(r"python\S*\s+-m\s+([\w.]+)", line):
            if importlib.util.find_spec(module) is None:
                missing.append(module)
    assert not missing, f"{doc.relative_to(REPO)} runs modules that do not exist: {missing}"


def test_cheap_documented_commands_run():
    runner = CliRunner()
    ran = 0
    for doc in DOCS:
        for tokens in qsep_commands(doc):
            if tuple(tokens[:1]) in CHEAP and all(not t.startswith("<") for t in tokens):
                res = runner.invoke(app, tokens)
                assert res.exit_code == 0, f"`qsep {' '.join(tokens)}` ({doc.name}) failed: {res.output}"
                ran += 1
    assert ran >= 1
