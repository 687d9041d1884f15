"""The ledger: what every live run changed, written in the same statement as the change.

Lives in its own schema, ``litellm_runbook``, beside LiteLLM's tables and never in them:

    runs     one row per live sweep or undo: who, what, parameters, outcome, and the
             identity a resume of its run id must match (``start_run``)
    batches  one row per committed batch: run, number, rows changed, commit time
    changes  one row per changed row: run, batch, object id, previous and new status,
             and ``seq``, an identity: the order of every change across runs (undo
             restores a row only when the undone run's change is its latest one)

``changes`` is keyed (run_id, batch, object_id): a batch's rows land together at the
right edge of the index. Keyed by object id first, each insert hit a random index page,
and after every checkpoint each such page costs a full-page image in the WAL: that
ledger made the 300K-row benchmark sweep 10% slower (2.3 s of 23; bench/RESULTS.md).

A batch's UPDATE, its ``changes`` rows and its ``batches`` row are one SQL statement
(``runbook.sql.candidates.batch_update``), so they exist together or not at all,
whatever happens to the process. ``ensure()`` creates the schema on first use; a role
that may not create or write it gets LedgerUnavailableError saying what to grant, and
the sweep does not start. A ledger an older version created (without ``runs.identity``
or ``changes.seq``) is upgraded by ``ensure()`` once, under the same lock; its old changes
get ``seq`` in the order their batches were committed.
"""

from __future__ import annotations

import json
from typing import Any

import psycopg

from ..errors import LedgerUnavailableError, ParameterError
from ..sql import catalog
from ..sql import ledger as q
from ..sql.ledger import LEDGER_SCHEMA as SCHEMA
from .transactions import Conn

__all__ = [
    "SCHEMA", "ensure", "ddl", "upgrade_ddl", "start_run", "finish_run", "run_info", "recent_runs", "grants_for",
    "IDENTITY_KEYS", "missing_columns", "archived_batches", "run_ended", "undos_of",
]  # fmt: skip

# What a resumed run id must match (start_run): a run is one kind of work on one target.
IDENTITY_KEYS = (
    "kind", "target", "rule", "cutoff", "stale_after_days", "undoes_run_id", "archive", "session_user", "current_user",
    "os_user",
)  # fmt: skip

# The statements that create the ledger (idempotent), and that upgrade an older one (by missing column).
ddl = q.ddl
upgrade_ddl = q.upgrade_ddl

_TABLES = {
    "runs": f"{SCHEMA}.runs", "batches": f"{SCHEMA}.batches", "changes": f"{SCHEMA}.changes", "records": f"{SCHEMA}.records",
    "stop_requests": f"{SCHEMA}.stop_requests",
}  # fmt: skip


def missing_columns(conn: Conn) -> list[str]:
    """The columns of ``upgrade_ddl()`` this ledger lacks (``ensure()`` adds them). Reads only."""
    rows = conn.execute(q.missing_columns(), _TABLES).fetchall()
    return [str(r[0]) for r in rows]


def grants_for(role: str) -> str:
    """The statements an owner runs so that ``role`` can sweep with a ledger."""
    return q.grants_for(role).as_string(None)


def ensure(conn: Conn) -> None:
    """Create the ledger if missing, upgrade an older one, and check this role can write it.

    Writes the schema and tables on first use, and the columns an older version's ledger
    lacks (``upgrade_ddl``). Raises LedgerUnavailableError, naming the grants to ask for,
    when the role can do neither, or saying who must upgrade a ledger it may not alter.
    """
    role = str(conn.execute(catalog.current_user()).fetchone()[0])  # type: ignore[index]
    present = conn.execute(q.tables_present(), {"schema": SCHEMA}).fetchone()
    if not present or present[0] < 3:
        try:
            with conn.transaction():
                # Two first sweeps at once would race to create the schema.
                conn.execute(q.ddl_lock(), {"name": f"{SCHEMA}.ddl"})
                schema_exists = conn.execute(q.schema_exists(), {"schema": SCHEMA}).fetchone()
                # CREATE SCHEMA checks the CREATE privilege even when the schema exists,
                # and a ledger owner given the schema by the database owner lacks it.
                for statement in ddl()[1 if schema_exists else 0 :]:
                    conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise LedgerUnavailableError(
                f"role {role} cannot create the ledger schema {SCHEMA} ({exc.diag.message_primary}); "
                f"a sweep never runs without its ledger. Ask an owner to run: {grants_for(role)}"
            ) from None
    if missing_columns(conn):
        try:
            with conn.transaction():
                conn.execute(q.ddl_lock(), {"name": f"{SCHEMA}.ddl"})
                upgrades = upgrade_ddl()
                for name in missing_columns(conn):  # again, under the lock: another run may have upgraded it
                    for statement in upgrades[name]:
                        conn.execute(statement)
        except psycopg.errors.InsufficientPrivilege as exc:
            raise LedgerUnavailableError(
                f"the ledger in schema {SCHEMA} was created by an older version of the runbook and role {role} may not "
                f"upgrade it ({exc.diag.message_primary}); a sweep never runs without its ledger. Ask the ledger's owner "
                "to run: python -m runbook ledger init"
            ) from None
    row = conn.execute(q.may_write(), {"schema": SCHEMA, **_TABLES}).fetchone()
    if not row or not row[0]:
        raise LedgerUnavailableError(
            f"role {role} may not write the ledger in schema {SCHEMA}; a sweep never runs without its ledger. "
            f"Ask an owner to run: {grants_for(role)}"
        )


def start_run(
    conn: Conn, *, run_id: str, kind: str, target: str, operator: dict[str, Any], parameters: dict[str, Any],
    identity: dict[str, Any], undoes_run_id: str | None = None,
) -> int:  # fmt: skip
    """Register (or resume) a run; return the number its next batch gets.

    Writes the run's ``runs`` row, or reopens it (``finished_at`` back to NULL). Re-using a
    run id continues that run (after a crash, say): its batches keep counting. ``identity``
    (``IDENTITY_KEYS``) must then equal the recorded one: a run id names one kind of work
    on one target (table and rule), with one cutoff, one undone run, one database role and OS user. Raises
    ParameterError naming run_id, writing nothing, when it differs or was never recorded.
    """
    with conn.transaction():
        existing = conn.execute(q.run_for_update(), {"run_id": run_id}).fetchone()
        if existing is None:
            conn.execute(q.insert_run(), {
                "run_id": run_id, "kind": kind, "target": target, "undoes_run_id": undoes_run_id,
                "operator": json.dumps(operator), "parameters": json.dumps(parameters, default=str),
                "identity": json.dumps(identity, default=str),
            })  # fmt: skip
            return 1
        recorded = existing[2]
        if recorded is None:
            raise ParameterError(
                "run_id", run_id, f"a new id: it names a {existing[0]} run on {existing[1]} recorded by an older version "
                "of the runbook, without the identity a resumed run must match",
            )  # fmt: skip
        wanted = json.loads(json.dumps(identity, default=str))
        differ = [k for k in IDENTITY_KEYS if recorded.get(k) != wanted.get(k)]
        if differ:
            was = ", ".join(f"{k}={recorded.get(k)!r}" for k in differ)
            now = ", ".join(f"{k}={wanted.get(k)!r}" for k in differ)
            raise ParameterError(
                "run_id", run_id, f"a new id: it names a {existing[0]} run on {existing[1]} in the ledger with {was}, "
                f"and this run has {now}; a run id is resumed only with the same kind, target, cutoff, undone run, "
                "database role and OS user",
            )  # fmt: skip
        conn.execute(q.reopen_run(), {"run_id": run_id})
        last = conn.execute(q.last_batch(), {"run_id": run_id}).fetchone()
        return int(last[0]) + 1 if last else 1


def finish_run(conn: Conn, run_id: str, stop_reason: str, outcome: dict[str, Any]) -> None:
    """Record how the run ended; rows_changed is summed from the committed batches.

    Committed durably whatever the role's or database's ``synchronous_commit``: its WAL
    flush also flushes the run's asynchronously committed batches before anyone reads it."""
    with conn.transaction():
        conn.execute(q.synchronous_commit_on())
        conn.execute(
            q.finish_run(), {"stop_reason": stop_reason, "outcome": json.dumps(outcome, default=str), "run_id": run_id}
        )


def _exists(conn: Conn) -> bool:
    return conn.execute(catalog.relation_exists(), {"name": _TABLES["runs"]}).fetchone() == (True,)


def run_info(conn: Conn, run_id: str) -> dict[str, Any] | None:
    """The ledger's row for ``run_id``, or None."""
    if not _exists(conn):
        return None
    row = conn.execute(q.run_info(), {"run_id": run_id}).fetchone()
    if row is None:
        return None
    keys = ("run_id", "kind", "target", "undoes_run_id", "stop_reason", "rows_changed", "rule")
    return dict(zip(keys, row, strict=True))


def undos_of(conn: Conn, run_id: str) -> list[dict[str, Any]]:
    """The undo runs of run ``run_id``: run_id, stop_reason (None while one runs). Reads only."""
    rows = conn.execute(q.undos_of(), {"run_id": run_id}).fetchall()
    return [{"run_id": r[0], "stop_reason": r[1]} for r in rows]


def run_ended(conn: Conn, run_id: str) -> bool:
    """Whether run ``run_id``'s ``runs`` row is closed (``finished_at`` set). Reads only."""
    row = conn.execute(q.run_summary(), {"run_id": run_id}).fetchone()
    return bool(row and row[4])


def archived_batches(conn: Conn, run_id: str) -> list[dict[str, Any]]:
    """Run ``run_id``'s committed batches, newest first, with their archive file, sha256 and
    rows (None for a batch written without an archive). Reads only."""
    rows = conn.execute(q.archived_batches(), {"run_id": run_id}).fetchall()
    keys = ("batch", "rows_changed", "archive_file", "archive_sha256", "archive_rows")
    return [dict(zip(keys, r, strict=True)) for r in rows]


def recent_runs(conn: Conn, limit: int = 20) -> list[dict[str, Any]]:
    """The newest sweep runs (with the undo runs that undid them); [] without a ledger."""
    if not _exists(conn):
        return []
    rows = conn.execute(q.recent_runs(), {"limit": limit}).fetchall()
    keys = ("run_id", "started_at", "stop_reason", "rows_changed", "undone_by")
    return [dict(zip(keys, r, strict=True)) for r in rows]
