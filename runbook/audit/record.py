"""The record of a run: who ran what, where, against which database, and the outcome.

``run_record()`` assembles it (``Run.finish()`` emits it, the panel seals one per Execute).
A notebook ends with one displayed output carrying ``RECORD_KEY`` in its metadata and the
record as ``application/json``; ``read_record()`` reads it back from an executed notebook
without parsing any text.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..db.transactions import Conn
from ..rules.params import Options, _run_id
from ..rules.target import Target
from ..version import PROJECT_DIR, __version__

__all__ = [
    "RECORD_KEY", "new_run_id", "check_run_id", "operator", "database_identity", "code_revision", "run_record", "read_record",
]  # fmt: skip

RECORD_KEY = "litellm_runbook"


def new_run_id() -> str:
    """``YYYYmmddTHHMMSSZ-xxxxxx``: sortable by time, unique enough across pods."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def check_run_id(value: object) -> str:
    """The given run id, or a new one when empty; ParameterError when malformed."""
    return _run_id("run_id", value) or new_run_id()


def operator(conn: Conn | None = None) -> dict[str, str | None]:
    """Who runs this: the OS user (of the process's uid: ``$USER`` is whatever the caller
    set), the JupyterHub user (from the hub's environment), the host and, given a
    connection, the database role it authenticated as (``session_user``) and acts as
    (``current_user``), which the server vouches for. Reads only."""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = str(os.geteuid())
    who: dict[str, str | None] = {
        "os_user": user, "jupyterhub_user": os.environ.get("JUPYTERHUB_USER"), "host": socket.gethostname(),
    }  # fmt: skip
    if conn is not None:
        from ..sql import catalog

        row = conn.execute(catalog.roles()).fetchone()
        assert row is not None
        who.update(session_user=str(row[0]), current_user=str(row[1]))
    return who


def code_revision() -> str | None:
    """The git revision of the runbook's checkout (with ``+dirty`` when modified), if any."""
    repo = PROJECT_DIR
    try:
        rev = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no", "--", "notebooks", "runbook"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("+dirty" if dirty else "")


def database_identity(conn: Conn) -> dict[str, Any]:
    """Server version, database name, user (``current_user``), ``session_user`` and the
    cluster's system identifier.

    ``pg_control_system()`` may be denied to unprivileged roles; then the identifier is None.
    """
    from ..sql import catalog

    row = conn.execute(catalog.server_identity()).fetchone()
    assert row is not None
    identity: dict[str, Any] = {
        "server_version": row[0], "database": row[1], "user": row[2], "session_user": row[3], "system_identifier": None,
    }  # fmt: skip
    try:
        with conn.transaction():
            sys_row = conn.execute(catalog.system_identifier()).fetchone()
            identity["system_identifier"] = sys_row[0] if sys_row else None
    except Exception:  # noqa: BLE001 - permission denied is expected for least-privilege roles
        pass
    identity["host"] = conn.info.host
    identity["port"] = conn.info.port
    return identity


def run_record(
    *, run_id: str, kind: str, started_at: str, finished_at: str, database_source: str, identity: Mapping[str, Any],
    parameters: dict[str, Any], opts: Options, target: Target, outcome: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The record of run ``run_id`` of notebook ``kind`` as it stands at ``finished_at``.

    ``identity`` is what ``database_identity`` read at the start: the database roles come
    from the server, the OS user from this process (``operator()``); ``parameters`` as
    given, ``opts`` as validated; ``outcome`` is the run's own dict, not a copy. Reads the
    git revision of the checkout, nothing else."""
    return {
        "record_version": 1,
        "run_id": run_id,
        "notebook": kind,
        "started_at": started_at,
        "finished_at": finished_at,
        "operator": {**operator(), "session_user": identity.get("session_user"), "current_user": identity.get("user")},
        "runbook_version": __version__,
        "code_revision": code_revision(),
        "database": {"source": database_source, **identity},
        "parameters": parameters,
        "options": opts.to_dict(),
        "target": target.describe(),
        "outcome": outcome,
    }


def read_record(notebook_path: str | Path) -> dict[str, Any] | None:
    """The last run record in an executed notebook, or None when the run ended before one."""
    import nbformat

    nb = nbformat.read(str(notebook_path), as_version=4)
    found: dict[str, Any] | None = None
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if RECORD_KEY in output.get("metadata", {}) and "application/json" in output.get("data", {}):
                found = dict(output["data"]["application/json"])
    return found
