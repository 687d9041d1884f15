"""The public API is exactly what ``runbook.__all__`` pins, as httpx's test_exported_members does:
a name added or dropped by accident fails here, and so does one the notebooks or the README
use without it being public."""

from __future__ import annotations

import json
import re
from pathlib import Path

import runbook

ROOT = Path(__file__).resolve().parent.parent

PUBLIC = {
    "__version__", "start", "Run", "Database", "connect", "resolve", "Target", "PRODUCTION_TERMINAL_STATUSES",
    "Options", "options", "InspectReport", "inspect", "PreviewReport", "preview", "BatchResult", "SweepResult",
    "sweep", "UndoResult", "undo", "IndexResult", "create_index", "read_record", "Kind", "StopReason", "Status",
    "errors",
    # the exception tree, whole
    "RunbookError", "ParameterError", "DatabaseConfigError", "TargetNotFoundError", "ReadOnlyError", "PoolerError",
    "BlindHealthError", "LedgerUnavailableError", "SweepInProgressError", "TooManyCandidatesError",
    "PreviewMismatchError", "UnknownRunError", "ArchiveError", "ConnectionLostError", "EmbeddedServerError",
}  # fmt: skip


def test_all_is_pinned() -> None:
    assert len(runbook.__all__) == len(set(runbook.__all__)), "a name is listed twice"
    assert set(runbook.__all__) == PUBLIC


def test_every_exported_name_exists() -> None:
    for name in runbook.__all__:
        assert hasattr(runbook, name), name


def test_every_public_attribute_is_exported() -> None:
    """What the package shows without a leading underscore is public, or a layer folder."""
    layers = {"rules", "sql", "db", "audit", "ops", "notebook", "tools", "version", "logs"}
    shown = {name for name in vars(runbook) if not name.startswith("_")} - {"annotations"}
    assert shown - set(runbook.__all__) - layers == set()


def test_every_exception_of_the_tree_is_exported() -> None:
    tree = {name for name, value in vars(runbook.errors).items() if isinstance(value, type) and issubclass(value, runbook.RunbookError)}
    assert tree <= set(runbook.__all__)
    assert tree == set(runbook.errors.__all__)


def test_what_the_notebooks_and_the_readme_use_is_public() -> None:
    """Every ``rb.X`` a notebook calls and every ``runbook.X`` the README names is exported."""
    used: set[str] = set()
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            source = "".join(cell["source"])
            assert "import runbook as rb" in source or "rb." not in source, f"{path.name} reaches past the public API"
            used.update(re.findall(r"\brb\.([A-Za-z_]+)", source))
    readme = (ROOT / "README.md").read_text()
    used.update(m for m in re.findall(r"`runbook\.([A-Za-z_]+)[(`]", readme))
    assert used, "the scan found nothing: the notebooks' import changed?"
    assert used - set(runbook.__all__) == set()
