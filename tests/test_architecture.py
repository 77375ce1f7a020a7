"""The package's shape: no import cycle, no private name used across modules, all public names.

The imports are read from the source (every ``import`` anywhere in a module,
in functions too, except those under ``if TYPE_CHECKING:``, which never run).
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "binfmt"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__main__")


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node, except what sits under ``if TYPE_CHECKING:``."""
    found: list[ast.AST] = []
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def _imports(module: str) -> dict[str, set[str]]:
    """Modules of the package that ``module`` imports at run time → the names it takes from them."""
    out: dict[str, set[str]] = {}
    for node in _runtime_nodes(_tree(module)):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module is None:  # from . import x
                for alias in node.names:
                    out.setdefault(alias.name, set())
            else:
                out.setdefault(node.module, set()).update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("binfmt."):
            out.setdefault(node.module.split(".")[1], set()).update(a.name for a in node.names)
    return out


GRAPH = {m: {d for d in _imports(m) if d in MODULES and d != m} for m in MODULES}


def test_the_graph_is_read() -> None:
    """The reader finds imports (a broken reader would pass the next tests vacuously)."""
    assert "entry" in GRAPH["procfs"] and "prediction" in GRAPH["scan"]
    assert len(MODULES) > 20


def test_no_import_cycle() -> None:
    """No module reaches itself through run-time imports (functions' imports included)."""
    cycles = []
    for start in MODULES:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for dep in GRAPH[node]:
                if dep == start:
                    cycles.append(" → ".join([*path, dep]))
                elif dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
    assert cycles == []


def test_output_is_the_bottom_floor() -> None:
    """The output layer imports nothing of the package; the text layer only output."""
    assert GRAPH["output"] == set()
    assert GRAPH["text"] == set()


def test_no_private_name_crosses_a_module() -> None:
    """No ``from .x import _y``, and no ``x._y`` on an imported module of the package."""
    offences = []
    for module in MODULES:
        tree = _tree(module)
        for source, names in _imports(module).items():
            offences += [f"{module}: from .{source} import {n}" for n in names if n.startswith("_")]
        imported_modules = {
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module is None
            for alias in node.names
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules
                and node.attr.startswith("_")
            ):
                offences.append(f"{module}: {node.value.id}.{node.attr}")
    assert offences == []


@pytest.mark.parametrize("module", MODULES)
def test_public_names_are_listed(module: str) -> None:
    """``__all__`` exists and names only what the module has (ruff's RUF022 keeps it sorted)."""
    name = "binfmt" if module == "__init__" else f"binfmt.{module}"
    mod = importlib.import_module(name)
    names = getattr(mod, "__all__", None)
    assert names is not None, f"{name} has no __all__"
    assert [n for n in names if not hasattr(mod, n) and n not in getattr(mod, "_LAZY", {})] == []


def test_import_does_no_work_and_no_pyelftools() -> None:
    """``import binfmt`` (and every module) imports no pyelftools and starts nothing."""
    code = (
        "import sys, binfmt, binfmt.cli, binfmt.report, binfmt.scan, binfmt.prediction\n"
        "assert not [m for m in sys.modules if m.startswith('elftools')], 'pyelftools'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
