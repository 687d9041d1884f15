"""The committed notebooks' parameters cells, generated from the one parameter list.

Each notebook's cell tagged ``parameters`` is exactly ``params.parameters_cell(kind)``, and
the cell tagged ``tuning`` just above it (sweep and undo) ``params.tuning_cell(kind)``:
``python -m runbook notebooks --write`` rewrites the cells that differ, and a test fails
while any differs, so a parameter cannot be documented in one place and missing in
another. Everything else in a notebook is written by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..rules.params import parameters_cell, tuning_cell
from ..rules.states import Kind
from ..version import PROJECT_DIR

__all__ = ["NOTEBOOK_DIR", "NOTEBOOKS", "OWN_ID", "stale_cells", "write_cells"]

NOTEBOOK_DIR = PROJECT_DIR / "notebooks"
NOTEBOOKS = {
    Kind.INSPECT: "01_inspect", Kind.PREVIEW: "02_preview", Kind.SWEEP: "03_sweep", Kind.UNDO: "04_undo",
    Kind.INDEX: "05_create_index",
}  # fmt: skip
# The parameter that names the run itself: in the undo notebook, run_id names the run to undo.
OWN_ID = {Kind.UNDO: "undo_run_id"}


def _tagged(nb: Any, tag: str) -> list[Any]:
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def _sync(nb: Any, kind: str) -> bool:
    """Make ``nb``'s parameters cell, and its tuning cell right above it, what the
    declaration says; True when anything changed."""
    import nbformat

    (params,) = _tagged(nb, "parameters") or [None]
    if params is None or len(_tagged(nb, "parameters")) != 1:
        raise ValueError("a notebook has exactly one cell tagged 'parameters'")
    changed = False
    if params.source != parameters_cell(kind):
        params.source, changed = parameters_cell(kind), True
    tuning = _tagged(nb, "tuning")
    wanted = tuning_cell(kind)
    if wanted and not tuning:
        cell = nbformat.v4.new_code_cell(wanted, metadata={"tags": ["tuning"]})
        nb.cells.insert(nb.cells.index(params), cell)
        changed = True
    elif tuning and not wanted:
        nb.cells.remove(tuning[0])
        changed = True
    elif tuning and tuning[0].source != wanted:
        tuning[0].source, changed = wanted, True
    return changed


def stale_cells(directory: Path = NOTEBOOK_DIR) -> list[str]:
    """The notebooks (file names) whose parameters or tuning cell differs from the declaration."""
    import nbformat

    return [
        f"{stem}.ipynb" for kind, stem in NOTEBOOKS.items()
        if _sync(nbformat.read(directory / f"{stem}.ipynb", as_version=4), kind)
    ]  # fmt: skip


def write_cells(directory: Path = NOTEBOOK_DIR) -> list[str]:
    """Rewrite the parameters and tuning cells of every notebook that differs; return their
    names. Writes those notebook files only."""
    import nbformat

    changed = []
    for kind, stem in NOTEBOOKS.items():
        path = directory / f"{stem}.ipynb"
        nb = nbformat.read(path, as_version=4)
        if _sync(nb, kind):
            nbformat.write(nb, path)
            changed.append(path.name)
    return changed
