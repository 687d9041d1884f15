"""Least privilege: the grants for the runbook's three roles, as SQL an owner can run.

    reader        inspect, preview, undo's dry run: SELECT on the four columns the rule
                  reads (key, status, time, purpose; never ``file_object`` payloads)
                  and on the ledger
    sweeper       sweep and undo: reader + UPDATE of the status column only, TEMP (the
                  candidate snapshot), adding ledger rows, pg_read_all_stats (to see
                  standbys' lag and other roles' VACUUMs)
    ledger owner  owns schema litellm_runbook and its tables; never touches LiteLLM's table

The ledger is append-only to the sweeper: ``batches`` and ``changes`` take INSERT only,
and a ``runs`` row is visible to UPDATE (and a new one to INSERT) only in the session
that holds that row's target's sweep lock (``runbook.db.lock``): the run in progress.
Row security on ``runs`` says so; the ledger owner's own sessions are not bound by it.

``grants_sql()`` renders them; ``python -m runbook grants`` prints them. The schema is
created by a role allowed to (the database owner), then the ledger owner creates the
tables with ``python -m runbook ledger init`` and runs the grants for the others.
"""

from __future__ import annotations

from psycopg import sql

from ..rules.target import Target, _check_identifier
from .ledger import LEDGER_SCHEMA as SCHEMA

__all__ = ["owner_setup_sql", "grants_sql", "ledger_policies_sql"]


def owner_setup_sql(database: str, ledger_owner: str) -> list[sql.Composed]:
    """Run once by the database owner: the ledger schema, owned by the ledger owner."""
    _check_identifier("ledger_owner", ledger_owner)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(sql.Identifier(SCHEMA), sql.Identifier(ledger_owner)),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(ledger_owner)),
    ]


def _holds_target_lock() -> sql.Composed:
    """True in the session holding the sweep lock of the row's ``target`` (``schema.table``):
    ``db.lock.lock_key`` computed in SQL (the first 8 bytes of a SHA-256, signed), looked up
    in this database's granted advisory locks of this backend."""
    key = sql.SQL(
        "(('x' || pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to("
        "'litellm-runbook:' || target, 'UTF8')), 'hex'), 16))::pg_catalog.bit(64)::pg_catalog.int8)"
    )
    return sql.SQL(
        "EXISTS (SELECT 1 FROM pg_catalog.pg_locks AS l WHERE l.pid = pg_catalog.pg_backend_pid()"
        " AND l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.database = (SELECT d.oid FROM pg_catalog.pg_database AS d WHERE d.datname = pg_catalog.current_database())"
        " AND l.classid::pg_catalog.int8 = ({key} >> 32) & 4294967295 AND l.objid::pg_catalog.int8 = {key} & 4294967295)"
    ).format(key=key)


def ledger_policies_sql(reader: str, sweeper: str) -> list[sql.Composed]:
    """Row security on the ledger's ``runs`` (run by the ledger owner; idempotent): every
    row readable by both roles; the sweeper inserts and updates only rows of the target
    whose sweep lock its session holds."""
    runs = sql.Identifier(SCHEMA, "runs")
    r, s = sql.Identifier(reader), sql.Identifier(sweeper)
    held = _holds_target_lock()
    out = [sql.SQL("ALTER TABLE {} ENABLE ROW LEVEL SECURITY").format(runs)]
    for name in ("runbook_read", "runbook_insert", "runbook_update"):
        out.append(sql.SQL("DROP POLICY IF EXISTS {} ON {}").format(sql.Identifier(name), runs))
    out += [
        # Every role the table's grants let read it (an on-call role granted SELECT to see runs and stop them).
        sql.SQL("CREATE POLICY runbook_read ON {} FOR SELECT TO PUBLIC USING (true)").format(runs),
        sql.SQL("CREATE POLICY runbook_insert ON {} FOR INSERT TO {} WITH CHECK ({})").format(runs, s, held),
        sql.SQL("CREATE POLICY runbook_update ON {} FOR UPDATE TO {} USING ({}) WITH CHECK ({})").format(runs, s, held, held),
    ]
    return out


def _action_grants(target: Target, table: sql.Identifier, sweeper: sql.Identifier) -> list[sql.Composed]:
    """What the sweeper needs to apply the target's action and undo it: UPDATE of the status
    (mark); whole rows read into the archive, DELETE and INSERT (delete); UPDATE of the
    payload columns (clear)."""
    if target.marks:
        assert target.status_column is not None
        return [sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(sql.Identifier(target.status_column), table, sweeper)]
    if target.action == "delete":
        # UPDATE of one column: PostgreSQL asks it of SELECT ... FOR UPDATE SKIP LOCKED, which
        # locks a batch's rows before they are archived; the key column, which LiteLLM never updates.
        return [
            sql.SQL("GRANT SELECT, DELETE, INSERT ON {} TO {}").format(table, sweeper),
            sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(sql.Identifier(target.key_column), table, sweeper),
        ]
    payloads = sql.SQL(", ").join(sql.Identifier(c) for c in target.payload_columns)
    return [
        sql.SQL("GRANT SELECT ON {} TO {}").format(table, sweeper),
        sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(payloads, table, sweeper),
    ]


def grants_sql(target: Target, database: str, reader: str, sweeper: str) -> list[sql.Composed]:
    """The grants for ``reader`` and ``sweeper``; run by the table's owner and the ledger owner."""
    for name, value in (("reader", reader), ("sweeper", sweeper)):
        _check_identifier(name, value)
    table = sql.Identifier(target.schema, target.table)
    ledger_schema = sql.Identifier(SCHEMA)
    r, s = sql.Identifier(reader), sql.Identifier(sweeper)
    db = sql.Identifier(database)
    # Never the payloads (prompts, responses) to the reader: the rule's other columns only.
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in target.columns if c not in target.payload_columns)
    out: list[sql.Composed] = []
    for role in (r, s):
        out += [
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, role),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(target.schema), role),
            sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(columns, table, role),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ledger_schema, role),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(ledger_schema, role),
            # Either role may ask a running sweep to stop (python -m runbook stop), from anywhere.
            sql.SQL("GRANT INSERT (run_id, requested_by) ON {} TO {}").format(sql.Identifier(SCHEMA, "stop_requests"), role),
        ]
    out += [
        # ctid: a batch's UPDATE finds each row it locked by its ctid (candidates.batch_update).
        sql.SQL("GRANT SELECT (ctid) ON {} TO {}").format(table, s),
        *_action_grants(target, table, s),
        sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(db, s),
        sql.SQL("GRANT INSERT, UPDATE ON {} TO {}").format(sql.Identifier(SCHEMA, "runs"), s),
        sql.SQL("GRANT INSERT ON {}, {}, {} TO {}").format(
            sql.Identifier(SCHEMA, "batches"), sql.Identifier(SCHEMA, "changes"), sql.Identifier(SCHEMA, "records"), s
        ),
        sql.SQL("GRANT pg_read_all_stats TO {}").format(s),
    ]
    return out + ledger_policies_sql(reader, sweeper)
