"""What is generated from the one parameter list: the notebooks' parameters cells and the
README's table of every parameter.

Each notebook's cell tagged ``parameters`` is exactly ``params.parameters_cell(kind)``, and
the cells tagged ``health`` and ``tuning`` above it (sweep and undo) ``params.cell_source``; the
README's table between ``TABLE_BEGIN`` and ``TABLE_END`` is ``parameters_table()``.
``python -m runbook notebooks --write`` rewrites whatever differs, and a test fails while
anything differs, so a parameter cannot be documented in one place and missing in
another. Everything else in a notebook, and in the README, is written by hand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..rules.params import CELLS, PARAMETERS, cell_source
from ..rules.states import Kind
from ..version import PROJECT_DIR

__all__ = ["NOTEBOOK_DIR", "NOTEBOOKS", "OWN_ID", "README", "parameters_table", "stale_cells", "write_cells"]

NOTEBOOK_DIR = PROJECT_DIR / "notebooks"
README = PROJECT_DIR / "README.md"
TABLE_BEGIN = "<!-- parameters table: generated from runbook/rules/params.py by python -m runbook notebooks --write -->"
TABLE_END = "<!-- end of the parameters table -->"
NOTEBOOKS = {
    Kind.HISTORY: "00_history", Kind.INSPECT: "01_inspect", Kind.PREVIEW: "02_preview", Kind.SWEEP: "03_sweep", Kind.UNDO: "04_undo",
    Kind.INDEX: "05_create_index",
}  # fmt: skip
# The parameter that names the run itself: in the undo notebook run_id names the run to undo,
# in the history notebook the run to show.
OWN_ID = {Kind.UNDO: "undo_run_id", Kind.HISTORY: "history_run_id"}


def _tagged(nb: Any, tag: str) -> list[Any]:
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def _sync(nb: Any, kind: str) -> bool:
    """Make ``nb``'s generated cells (``params.CELLS``, in that order, the parameters cell
    last) what the declaration says; True when anything changed."""
    import nbformat

    if len(_tagged(nb, "parameters")) != 1:
        raise ValueError("a notebook has exactly one cell tagged 'parameters'")
    changed = False
    above = None  # the generated cell each next one goes below
    for tag in CELLS:
        wanted = cell_source(kind, tag)
        present = _tagged(nb, tag)
        cell = present[0] if present else None
        if cell is not None and not wanted and tag != "parameters":
            nb.cells.remove(cell)
            changed = True
            continue
        if cell is None:
            if not wanted:
                continue
            cell = nbformat.v4.new_code_cell(wanted, metadata={"tags": [tag]})
            at = nb.cells.index(_tagged(nb, "parameters")[0]) if above is None else nb.cells.index(above) + 1
            nb.cells.insert(at, cell)
            changed = True
        elif cell.source != wanted:
            cell.source, changed = wanted, True
        above = cell
    return changed


def parameters_table() -> str:
    """Every declared parameter as a Markdown table: name, notebooks, type, default, what
    is allowed (in the words of its ParameterError) and what it does."""
    rows = ["| parameter | notebooks | type | default | allowed | what it does |", "|---|---|---|---|---|---|"]
    for p in PARAMETERS:
        kinds = ", ".join(str(k) for k in NOTEBOOKS if k in p.notebooks)
        default = json.dumps(p.default) if isinstance(p.default, str) else repr(p.default)
        cells = [f"`{p.name}`", kinds, p.type.__name__, f"`{default}`", p.allowed, p.help]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows)


def _readme_with_table(text: str) -> str:
    """``text`` (the README) with its generated table replaced by ``parameters_table()``."""
    head, begin, rest = text.partition(TABLE_BEGIN)
    _, end, tail = rest.partition(TABLE_END)
    if not begin or not end:
        raise ValueError(f"README.md lacks the markers of the parameters table: {TABLE_BEGIN} ... {TABLE_END}")
    return f"{head}{TABLE_BEGIN}\n{parameters_table()}\n{TABLE_END}{tail}"


def stale_cells(directory: Path = NOTEBOOK_DIR, readme: Path = README) -> list[str]:
    """The files whose generated part differs from the declaration: notebooks whose
    parameters or tuning cell does, and the README when its parameters table does."""
    import nbformat

    stale = [
        f"{stem}.ipynb" for kind, stem in NOTEBOOKS.items()
        if _sync(nbformat.read(directory / f"{stem}.ipynb", as_version=4), kind)
    ]  # fmt: skip
    text = readme.read_text()
    return stale + ([readme.name] if _readme_with_table(text) != text else [])


def write_cells(directory: Path = NOTEBOOK_DIR, readme: Path = README) -> list[str]:
    """Rewrite the parameters and tuning cells of every notebook that differs, and the
    README's parameters table when it differs; return the files' names. Writes those files only."""
    import nbformat

    changed = []
    for kind, stem in NOTEBOOKS.items():
        path = directory / f"{stem}.ipynb"
        nb = nbformat.read(path, as_version=4)
        if _sync(nb, kind):
            nbformat.write(nb, path)
            changed.append(path.name)
    text = readme.read_text()
    if _readme_with_table(text) != text:
        readme.write_text(_readme_with_table(text))
        changed.append(readme.name)
    return changed
