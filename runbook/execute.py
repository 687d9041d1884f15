"""Headless execution of the runbook's notebooks into a run folder (papermill).

Each executed notebook lands as ``<run_dir>/<UTC time>_<notebook>_<run_id>.ipynb``, is
made read-only, and gets a ``.sha256`` beside it, whether the run succeeded or failed.
Parameters are checked for credentials *before* papermill writes them anywhere.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .errors import ParameterError
from .params import refuse_secrets
from .record import check_run_id, read_record

__all__ = ["NOTEBOOKS", "NOTEBOOK_DIR", "Executed", "execute", "default_run_dir"]

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = {"inspect": "01_inspect", "preview": "02_preview", "sweep": "03_sweep", "undo": "04_undo", "index": "05_create_index"}
# The parameter that names the run itself: in the undo notebook, run_id names the run to undo.
OWN_ID = {"undo": "undo_run_id"}


def default_run_dir() -> Path:
    return Path(os.environ.get("RUNBOOK_RUN_DIR", NOTEBOOK_DIR.parent / "runs"))


@dataclass(frozen=True)
class Executed:
    path: Path
    sha256: str
    ok: bool
    record: dict[str, Any] | None
    error: str | None


def execute(name: str, parameters: dict[str, Any], run_dir: Path | None = None, env: dict[str, str] | None = None) -> Executed:
    """Execute notebook ``name`` with ``parameters``; return where its record is.

    Writes the executed notebook and its checksum into ``run_dir``. Raises ParameterError
    for an unknown notebook or a credential-bearing parameter (before anything is written).
    """
    # jsonschema (imported by nbformat, by papermill) builds rfc3987_syntax's IRI grammar at
    # import when that package is installed (jupyterlab pulls it in): 0.9 s of every run,
    # for a format check no notebook schema uses. Absent, jsonschema skips that check.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import papermill

    if name not in NOTEBOOKS:
        raise ParameterError("notebook", name, f"one of {sorted(NOTEBOOKS)}")
    refuse_secrets(parameters)
    own = OWN_ID.get(name, "run_id")
    run_id = check_run_id(parameters.get(own, ""))
    parameters = {**parameters, own: run_id}
    run_dir = run_dir or default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = NOTEBOOKS[name]
    out = run_dir / f"{stamp}_{stem}_{run_id}.ipynb"
    error: str | None = None
    saved_env = dict(os.environ)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    try:
        papermill.execute_notebook(
            str(NOTEBOOK_DIR / f"{stem}.ipynb"),
            str(out),
            parameters=parameters,
            kernel_name="python3",
            progress_bar=False,
            cwd=str(NOTEBOOK_DIR),
        )
    except papermill.PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    finally:
        if env is not None:
            os.environ.clear()
            os.environ.update(saved_env)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    (run_dir / (out.name + ".sha256")).write_text(f"{digest}  {out.name}\n")
    out.chmod(0o444)
    return Executed(out, digest, error is None, read_record(out), error)
