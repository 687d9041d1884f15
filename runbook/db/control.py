"""Stop a running sweep or undo from any machine that reaches the database, and list what runs.

A request is a row in the ledger's insert-only ``stop_requests`` (the reader and the sweeper
may insert); the run reads it between batches (``runbook.ops.stops.Stopper``) and stops at
its next batch boundary, recording who asked and when. ``open_runs`` joins the ledger's open
``runs`` rows with the sessions of this database whose ``application_name`` carries the run id.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import psycopg

from .. import logs
from ..errors import LedgerUnavailableError
from ..sql import control as q
from .ledger import SCHEMA
from .transactions import Conn

__all__ = ["request_stop", "stop_requested", "note_candidates", "open_runs"]

log = logs.get(__name__)
_WARNED: set[str] = set()


def _refused(conn: Conn, exc: psycopg.Error, what: str) -> LedgerUnavailableError:
    role = conn.info.parameter_status("session_authorization") or "this role"
    grants = q.control_grants(role).as_string(conn)
    return LedgerUnavailableError(f"role {role} may not {what} ({exc.diag.message_primary}): ask the ledger's owner to run {grants}")


def request_stop(conn: Conn, run_id: str, requested_by: dict[str, Any]) -> datetime | None:
    """Ask run ``run_id`` to stop at its next batch boundary; return when, or None when the
    ledger has no open run of that id. Writes one ``stop_requests`` row. Raises
    LedgerUnavailableError when this role may not (no ledger, or no grant)."""
    try:
        with conn.transaction():
            row = conn.execute(q.request_stop(), {"run_id": run_id, "requested_by": json.dumps(requested_by)}).fetchone()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable) as exc:
        raise _refused(conn, exc, "ask a run to stop") from None
    return row[0] if row else None


def stop_requested(conn: Conn, run_id: str, since: datetime) -> str | None:
    """Who asked run ``run_id`` to stop since ``since``, and when, in words; None when nobody
    did. Reads only (between batches, outside any transaction); a ledger without the table
    (an older version's, not yet upgraded) answers None."""
    try:
        row = conn.execute(q.stop_request(), {"run_id": run_id, "since": since}).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    except psycopg.errors.InsufficientPrivilege:
        # A ledger upgraded after this role's grants: the run goes on, stoppable by every
        # other means; said once, with the grant that restores this one.
        if run_id not in _WARNED:
            _WARNED.add(run_id)
            log.warning(f"this role may not read {SCHEMA}.stop_requests: python -m runbook stop cannot reach run {run_id} "
                        "(the ledger was upgraded after the role's grants: re-run those python -m runbook grants prints)")  # fmt: skip
        return None
    if row is None:
        return None
    who = row[1] or {}
    said = ", ".join(f"{k} {v}" for k, v in who.items() if v and k in ("os_user", "jupyterhub_user", "host"))
    return (
        f"stop requested by session_user {row[2]}" + (f" ({said}, as the requester says)" if said else "")
        + f" at {row[0].isoformat(timespec='seconds')} (python -m runbook stop)"
    )


def note_candidates(conn: Conn, run_id: str, candidates: int) -> None:
    """Note in the run's ``runs`` row how many rows it means to change (for ``open_runs``'
    time left). Writes that row's ``outcome`` (replaced when the run finishes)."""
    with conn.transaction():
        conn.execute(q.note_candidates(), {"run_id": run_id, "candidates": candidates})


def open_runs(conn: Conn) -> list[dict[str, Any]]:
    """The running (open) sweeps and undos, oldest first, with their progress; see
    ``sql.control.open_runs``. Reads only. LedgerUnavailableError when this role may not read the ledger."""
    keys = ("run_id", "kind", "target", "operator", "started_at", "rows", "batches", "rows_last_minute", "candidates",
            "pid", "application_name", "stop_requested")  # fmt: skip
    try:
        rows = conn.execute(q.open_runs()).fetchall()
    except (psycopg.errors.InsufficientPrivilege, psycopg.errors.UndefinedTable) as exc:
        conn.rollback()
        raise _refused(conn, exc, "read the ledger") from None
    return [dict(zip(keys, r, strict=True)) for r in rows]
