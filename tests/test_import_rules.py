"""The dependency direction of qsep's packages, checked on the source (docs: README "Layout").

    qsep_core  <-  sed  <-  separator  <-  (separator.cli, recipes/, benchmarks/, tests/)

* ``qsep_core`` imports neither ``sed`` nor ``separator`` (nor typer: it has no command line);
* ``sed`` never imports ``separator`` (nor typer);
* ``separator`` may import ``sed`` (its audio query encoder is an HTS-AT); only ``separator.cli``
  imports typer;
* no package imports ``recipes``, ``benchmarks`` or ``tests`` (they run from the checkout).

Every import counts: module level, inside functions (lazy imports), relative imports,
``importlib.import_module("...")`` with a literal name, and registry strings of the form
``"package.module:callable"`` (builder tables resolve them at run time, so they are edges too).
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("qsep_core", "sed", "separator")
CHECKOUT_ONLY = ("recipes", "benchmarks", "tests")
#: package -> top-level modules it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "qsep_core": ("sed", "separator", "typer", *CHECKOUT_ONLY),
    "sed": ("separator", "typer", *CHECKOUT_ONLY),
    "separator": CHECKOUT_ONLY,
}
#: modules allowed to import typer (the command line)
TYPER_ALLOWED = ("separator.cli",)
_REGISTRY = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_]\w*)*):[A-Za-z_][\w.]*$")


@dataclass(frozen=True)
class Edge:
    path: str
    line: int
    source: str  # importing module, dotted
    target: str  # imported module, dotted
    how: str  # "import", "from-import", "import_module", "registry string"

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} -> {self.target} ({self.how})"


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[Edge]:
    """Every import edge in one source file, wherever it stands in the file."""
    source = module_name(path, root)
    is_package = path.name == "__init__.py"
    rel = str(path.relative_to(root))
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
    edges: list[Edge] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges += [Edge(rel, node.lineno, source, a.name, "import") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = source.split(".") if is_package else source.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            edges.append(Edge(rel, node.lineno, source, target, "from-import"))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                edges.append(Edge(rel, node.lineno, source, node.args[0].value, "import_module"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            m = _REGISTRY.match(node.value)
            if m and m.group(1).split(".")[0] in PACKAGES + CHECKOUT_ONLY:
                edges.append(Edge(rel, node.lineno, source, m.group(1), "registry string"))
    return edges


def violations(root: Path) -> list[Edge]:
    """Import edges under ``root`` that break the rule (empty when the tree follows it)."""
    bad = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            for edge in imports_of(path, root):
                top = edge.target.split(".")[0]
                if top in FORBIDDEN[package] and not (top == "typer" and edge.source in TYPER_ALLOWED):
                    bad.append(edge)
                elif top == "typer" and edge.source not in TYPER_ALLOWED:
                    bad.append(edge)
    return bad


def test_the_tree_follows_the_import_rule():
    bad = violations(ROOT)
    assert not bad, "forbidden import edges:\n" + "\n".join(str(e) for e in bad)


def test_every_package_is_checked():
    for package in PACKAGES:
        assert sorted((ROOT / package).rglob("*.py")), f"no source found for {package}"
    # the walk sees lazy imports too: sed imports the foundation inside functions
    lazy = [e for e in imports_of(ROOT / "sed" / "__init__.py", ROOT) if e.target == "qsep_core.checkpoint"]
    assert lazy, "the lazy import in sed.load_detector was not seen"


def test_known_bad_tree_is_reported(tmp_path):
    """A synthetic tree with one forbidden edge of every kind: each is found, named by file, line and edge."""
    files = {
        "qsep_core/__init__.py": "",
        "qsep_core/io.py": (
            "import os\n"
            "BUILDERS = {'unet': 'separator.models:build_from_config'}\n"  # registry string, line 2
            "import typer\n"  # line 3
        ),
        "sed/__init__.py": "",
        "sed/model.py": (
            "from qsep_core import io\n"  # allowed
            "def load():\n"
            "    from separator.api import Separator\n"  # lazy, line 3
            "    return Separator\n"
        ),
        "sed/sub/__init__.py": "",
        "sed/sub/deep.py": (
            "import importlib\n"
            "def f():\n"
            "    return importlib.import_module('separator.cli')\n"  # line 3
            "from ...separator import api\n"  # relative reaching up and over, line 4 (resolves to separator.api)
        ),
        "separator/__init__.py": "",
        "separator/api.py": "import sed\nfrom recipes.x import y\nimport typer\n",  # lines 2 and 3 bad
        "separator/cli.py": "import typer\nimport sed\n",  # allowed
    }
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    found = {str(e) for e in violations(tmp_path)}
    assert found == {
        "qsep_core/io.py:2: qsep_core.io -> separator.models (registry string)",
        "qsep_core/io.py:3: qsep_core.io -> typer (import)",
        "sed/model.py:3: sed.model -> separator.api (from-import)",
        "sed/sub/deep.py:3: sed.sub.deep -> separator.cli (import_module)",
        "sed/sub/deep.py:4: sed.sub.deep -> separator (from-import)",
        "separator/api.py:2: separator.api -> recipes.x (from-import)",
        "separator/api.py:3: separator.api -> typer (import)",
    }


def test_readme_spelling_of_audio_io_still_works():
    from qsep_core.audio import load as core_load
    from separator.audio import load

    assert load is core_load
