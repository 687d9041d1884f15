"""The folder tree is the architecture: every import goes down the layer order, none in a circle.

Read from the code itself (every ``import`` and ``from ... import``, inside functions and
under ``TYPE_CHECKING`` too), not from what happens to be imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import runbook

PACKAGE = Path(runbook.__file__).parent

# Lowest first. A module may import its own layer and the layers before it, never after.
LAYERS = ("base", "rules", "sql", "db", "audit", "ops", "notebook", "tools", "api")
BASE = {"runbook.errors", "runbook.version", "runbook.logs"}
API = {"runbook", "runbook.__main__"}


def module_name(path: Path) -> str:
    parts = ["runbook", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str:
    if module in BASE:
        return "base"
    if module in API:
        return "api"
    name = module.split(".")[1]
    assert name in LAYERS, f"{module} is in no layer: put it in one of the folders {LAYERS[1:-1]}"
    return name


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The runbook modules ``module`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "runbook")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if origin.split(".")[0] != "runbook":
                continue
            for alias in node.names:  # `from . import errors` imports a module, not a name
                sub = f"{origin}.{alias.name}"
                found.add(sub if sub in known else origin)
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {m: imports(m, p, set(found)) for m, p in found.items()}


def test_every_module_is_in_a_layer() -> None:
    for module in modules():
        layer(module)


def test_imports_go_down_the_layers() -> None:
    wrong = [
        f"{m} ({layer(m)}) imports {i} ({layer(i)})"
        for m, targets in graph().items()
        for i in sorted(targets)
        if LAYERS.index(layer(i)) > LAYERS.index(layer(m))
    ]
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                cycles.append(path[path.index(n) :] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert cycles == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from ..ops.sweep import sweep", {"runbook.ops.sweep"}),
        ("from .. import errors", {"runbook.errors"}),
        ("def f():\n    from ..notebook import render", {"runbook.notebook.render"}),
        ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..tools.cli import main", {"runbook.tools.cli"}),
        ("import runbook.ops.undo", {"runbook.ops.undo"}),
    ],
)
def test_the_walk_sees_every_kind_of_import(tmp_path: Path, source: str, expected: set[str]) -> None:
    """The checker itself: imports in functions and under TYPE_CHECKING count as much as any,
    and one against the order is caught (db may not import ops, notebook or tools)."""
    fake = tmp_path / "health.py"  # read as if it were runbook/db/health.py
    fake.write_text(source)
    found = imports("runbook.db.health", fake, set(modules()))
    assert found == expected
    against = {i for i in found if LAYERS.index(layer(i)) > LAYERS.index("db")}
    assert against == (expected if next(iter(expected)).split(".")[1] in ("ops", "notebook", "tools") else set())


def test_the_readme_layout_lists_every_module_and_only_those() -> None:
    """The README's folder tree is the package's: a module added, moved or removed without
    the tree following fails here."""
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme.split("## Layout", 1)[1].split("```", 2)[1]
    listed: set[str] = set()
    folder = ""
    for line in section.splitlines():
        name = line.strip().split(" ", 1)[0]
        if line.startswith("  ") and not line.startswith("    ") and name.endswith("/"):
            folder = name
        elif line.startswith("    ") and name.endswith(".py"):
            listed.add(folder + name)
        elif line.startswith("  ") and name.endswith(".py"):
            listed.add(name)
    present = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    assert listed == present
