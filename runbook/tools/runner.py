"""Headless execution of the runbook's notebooks into a run folder (papermill).

Each executed notebook lands as ``<run_dir>/<UTC time>_<notebook>_<run_id>.ipynb`` and is
sealed however the run ends (``runbook.audit.sealing``): a record (the runner writes it when the
kernel could not), read-only, a ``.sha256`` beside it and, for a live run, in the ledger.
Parameters are checked (names, values, credentials) *before* papermill writes anything.
Ctrl-C is passed to the kernel, as JupyterLab's interrupt button would.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .. import logs
from ..audit import sealing
from ..audit.record import check_run_id, read_record
from ..audit.sealing import executed_name, seal
from ..db.connect import Database, resolve
from ..errors import ParameterError, RunbookError
from ..rules.params import check_parameters, check_path, declared

__all__ = ["NOTEBOOKS", "NOTEBOOK_DIR", "Executed", "execute", "default_run_dir", "kernel_pids"]

from ..notebook.cells import NOTEBOOK_DIR, NOTEBOOKS, OWN_ID
from ..rules.states import Kind, Status

log = logs.get(__name__)


def _ipc_kernel_manager(sockets: str) -> type:
    """A kernel manager class whose kernels listen on Unix sockets below ``sockets``.
    A class, not an instance: nbclient then owns the kernel and shuts it down itself."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", os.path.join(sockets, "kernel"))
            super().__init__(**kwargs)

    return IPCKernelManager


def kernel_pids(parent: int | None = None) -> list[int]:
    """The ipykernel processes whose parent is ``parent`` (default: this process), from /proc."""
    parent = os.getpid() if parent is None else parent
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == parent and b"ipykernel" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


@contextmanager
def _interrupts_to_kernel() -> Iterator[None]:
    """While papermill runs: Ctrl-C means what it means in JupyterLab, interrupt the kernel.

    The first two SIGINTs go to the kernel (the sweep stops after the batches in flight;
    the second aborts them) and papermill keeps waiting for the kernel's record; a third,
    or one with no kernel to pass it to, interrupts the runner itself."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    count = [0]

    def forward(signum: int, frame: FrameType | None) -> None:
        count[0] += 1
        kernels = kernel_pids()
        if count[0] > 2 or not kernels:
            raise KeyboardInterrupt
        for pid in kernels:
            os.kill(pid, signal.SIGINT)
        log.warning("interrupt passed to the kernel" + (" (again: aborts the batches in flight)" if count[0] == 1 else ""))

    previous = signal.signal(signal.SIGINT, forward)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


default_run_dir = sealing.run_dir


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
    credential-bearing parameter, before anything is written. The runbook's log lines (an
    interrupt passed to the kernel) go to stdout unless the caller routed them
    (``logs.show_on_stdout``).
    """
    logs.show_on_stdout()
    # jsonschema (imported by nbformat, by papermill) builds rfc3987_syntax's IRI grammar at
    # import when that package is installed (jupyterlab pulls it in): 0.9 s of every run,
    # for a format check no notebook schema uses. Absent, jsonschema skips that check.
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]
    import papermill

    if name not in NOTEBOOKS:
        raise ParameterError("notebook", name, f"one of {sorted(str(kind) for kind in NOTEBOOKS)}")
    kind = Kind(name)
    # Names, values and credentials, all before papermill writes a single parameter.
    opts, ids = check_parameters(name, parameters)
    spec = declared(name)
    # Relative paths are the operator's, from where they ran this: the kernel runs elsewhere.
    parameters = {k: getattr(opts, k) if spec[k].rule is check_path else v for k, v in parameters.items()}
    own = OWN_ID.get(kind, "run_id")
    run_id = check_run_id(ids[own])
    parameters = {**parameters, own: run_id}
    run_dir = run_dir or default_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    stem = NOTEBOOKS[kind]
    out = run_dir / executed_name(stem, run_id)
    error: str | None = None
    ended = Status.SUCCEEDED
    database: Database | None = None
    saved_env = dict(os.environ)
    kernel_env = dict(os.environ if env is None else env)
    # Set by JupyterLab in its kernels and inherited by `!python -m runbook run ...` run
    # from one: the kernel papermill starts is headless, whatever its parent was.
    kernel_env.pop("JPY_SESSION_NAME", None)
    # The run folder this notebook is written to is the one it reads (the history notebook).
    kernel_env["RUNBOOK_RUN_DIR"] = str(run_dir.resolve())
    os.environ.clear()
    os.environ.update(kernel_env)
    # The kernel's sockets: Unix sockets in a folder only this user can enter, not ZMQ over
    # TCP on 127.0.0.1, where any local user could subscribe to its outputs.
    sockets = tempfile.mkdtemp(prefix="runbook-kernel-")
    try:
        with _interrupts_to_kernel():
            papermill.execute_notebook(
                str(NOTEBOOK_DIR / f"{stem}.ipynb"),
                str(out),
                parameters=parameters,
                kernel_name="python3",
                progress_bar=False,
                cwd=str(NOTEBOOK_DIR),
                kernel_manager_class=_ipc_kernel_manager(sockets),
            )
    except papermill.PapermillExecutionError as exc:
        error, ended = f"{exc.ename}: {exc.evalue}", Status.FAILED
    except KeyboardInterrupt:
        error, ended = "KeyboardInterrupt: the runner was interrupted", Status.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - a dead kernel, papermill's own failure: sealed below
        error = f"{type(exc).__name__}: {exc}".strip()
        ended = Status.KILLED if "DeadKernel" in type(exc).__name__ else Status.FAILED
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
        try:
            database = resolve(kernel_env)  # the database the kernel used, for the ledger's side of the seal
        except RunbookError:
            database = None
        os.environ.clear()
        os.environ.update(saved_env)
    digest = seal(out, kind=name, run_id=run_id, error=error, ended=ended, database=database)
    record = read_record(out) if out.exists() else None
    if error is None and record is not None and record.get("outcome", {}).get("status") == Status.FAILED:
        # The notebook ran to its end, but the run did not do what it was asked (gave up,
        # cancelled by a DBA): the record says why, the exit status must say so too.
        step = record["outcome"].get(Kind.SWEEP) or record["outcome"].get(Kind.UNDO) or {}
        error = f"run {run_id} stopped: {step.get('stop_reason', 'failed')} ({step.get('stop_detail', '')})".replace(" ()", "")
    return Executed(out, digest, error is None, record, error)
