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
from .params import check_parameters, check_path, declared
from .record import check_run_id, read_record

__all__ = ["NOTEBOOKS", "NOTEBOOK_DIR", "Executed", "execute", "default_run_dir"]

from .notebook_source import NOTEBOOK_DIR, NOTEBOOKS, OWN_ID


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
    for an unknown notebook, a name that is not one of its parameters, a bad value or a
    credential-bearing parameter, before anything is written.
    """
    # jsonschema (imported by nbformat, by papermill) builds rfc3987_syntax's IRI grammar at
    # import when that package is installed (jupyterlab pulls it in): 0.9 s of every run,
    # for a format check no notebook schema uses. Absent, jsonschema skips that check.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import papermill

    if name not in NOTEBOOKS:
        raise ParameterError("notebook", name, f"one of {sorted(NOTEBOOKS)}")
    # Names, values and credentials, all before papermill writes a single parameter.
    opts, ids = check_parameters(name, parameters)
    spec = declared(name)
    # Relative paths are the operator's, from where they ran this: the kernel runs elsewhere.
    parameters = {k: getattr(opts, k) if spec[k].check is check_path else v for k, v in parameters.items()}
    own = OWN_ID.get(name, "run_id")
    run_id = check_run_id(ids[own])
    parameters = {**parameters, own: run_id}
    run_dir = run_dir or default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = NOTEBOOKS[name]
    out = run_dir / f"{stamp}_{stem}_{run_id}.ipynb"
    error: str | None = None
    saved_env = dict(os.environ)
    kernel_env = dict(os.environ if env is None else env)
    # Set by JupyterLab in its kernels and inherited by `!python -m runbook run ...` run
    # from one: the kernel papermill starts is headless, whatever its parent was.
    kernel_env.pop("JPY_SESSION_NAME", None)
    os.environ.clear()
    os.environ.update(kernel_env)
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
        os.environ.clear()
        os.environ.update(saved_env)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    (run_dir / (out.name + ".sha256")).write_text(f"{digest}  {out.name}\n")
    out.chmod(0o444)
    return Executed(out, digest, error is None, read_record(out), error)
