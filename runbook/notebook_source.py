"""The committed notebooks' parameters cells, generated from the one parameter list.

Each notebook's cell tagged ``parameters`` is exactly ``params.parameters_cell(kind)``:
``python -m runbook notebooks --write`` rewrites the cells that differ, and a test fails
while any differs, so a parameter cannot be documented in one place and missing in
another. Everything else in a notebook is written by hand.
"""

from __future__ import annotations

from pathlib import Path

from .params import parameters_cell

__all__ = ["NOTEBOOK_DIR", "NOTEBOOKS", "OWN_ID", "stale_cells", "write_cells"]

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = {"inspect": "01_inspect", "preview": "02_preview", "sweep": "03_sweep", "undo": "04_undo", "index": "05_create_index"}
# The parameter that names the run itself: in the undo notebook, run_id names the run to undo.
OWN_ID = {"undo": "undo_run_id"}


def _parameters_cell(nb: object) -> object:
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]  # type: ignore[attr-defined]
    if len(tagged) != 1:
        raise ValueError(f"{len(tagged)} cells tagged 'parameters'; a notebook has exactly one")
    return tagged[0]


def stale_cells(directory: Path = NOTEBOOK_DIR) -> list[str]:
    """The notebooks (file names) whose parameters cell differs from the declaration."""
    import nbformat

    stale = []
    for kind, stem in NOTEBOOKS.items():
        nb = nbformat.read(directory / f"{stem}.ipynb", as_version=4)
        if _parameters_cell(nb).source != parameters_cell(kind):  # type: ignore[attr-defined]
            stale.append(f"{stem}.ipynb")
    return stale


def write_cells(directory: Path = NOTEBOOK_DIR) -> list[str]:
    """Rewrite the parameters cell of every notebook that differs; return their names.
    Writes those notebook files only."""
    import nbformat

    changed = []
    for kind, stem in NOTEBOOKS.items():
        path = directory / f"{stem}.ipynb"
        nb = nbformat.read(path, as_version=4)
        cell = _parameters_cell(nb)
        if cell.source != parameters_cell(kind):  # type: ignore[attr-defined]
            cell.source = parameters_cell(kind)  # type: ignore[attr-defined]
            nbformat.write(nb, path)
            changed.append(path.name)
    return changed
