"""Least privilege: the grants for the runbook's three roles, as SQL an owner can run.

    reader        inspect, preview, undo's dry run: SELECT on the table and the ledger
    sweeper       sweep and undo: reader + UPDATE of the status column only, TEMP (the
                  candidate snapshot), writing the ledger, pg_monitor (to see standbys' lag)
    ledger owner  owns schema litellm_runbook and its tables; never touches LiteLLM's table

``grants_sql()`` renders them; ``python -m runbook grants`` prints them. The schema is
created by a role allowed to (the database owner), then the ledger owner creates the
tables with ``python -m runbook ledger init`` and runs the grants for the others.
"""

from __future__ import annotations

from psycopg import sql

from .ledger import SCHEMA
from .target import Target, _check_identifier

__all__ = ["owner_setup_sql", "grants_sql"]


def owner_setup_sql(database: str, ledger_owner: str) -> list[sql.Composed]:
    """Run once by the database owner: the ledger schema, owned by the ledger owner."""
    _check_identifier("ledger_owner", ledger_owner)
    return [
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(sql.Identifier(SCHEMA), sql.Identifier(ledger_owner)),
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), sql.Identifier(ledger_owner)),
    ]


def grants_sql(target: Target, database: str, reader: str, sweeper: str) -> list[sql.Composed]:
    """The grants for ``reader`` and ``sweeper``; run by the table's owner and the ledger owner."""
    for name, value in (("reader", reader), ("sweeper", sweeper)):
        _check_identifier(name, value)
    table = sql.Identifier(target.schema, target.table)
    ledger_schema = sql.Identifier(SCHEMA)
    r, s = sql.Identifier(reader), sql.Identifier(sweeper)
    db = sql.Identifier(database)
    out: list[sql.Composed] = []
    for role in (r, s):
        out += [
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(db, role),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(target.schema), role),
            sql.SQL("GRANT SELECT ON {} TO {}").format(table, role),
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(ledger_schema, role),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(ledger_schema, role),
        ]
    out += [
        sql.SQL("GRANT UPDATE ({}) ON {} TO {}").format(sql.Identifier(target.status_column), table, s),
        sql.SQL("GRANT TEMPORARY ON DATABASE {} TO {}").format(db, s),
        sql.SQL("GRANT INSERT, UPDATE ON {} TO {}").format(sql.Identifier(SCHEMA, "runs"), s),
        sql.SQL("GRANT INSERT ON {}, {} TO {}").format(
            sql.Identifier(SCHEMA, "batches"), sql.Identifier(SCHEMA, "changes"), s
        ),
        sql.SQL("GRANT pg_monitor TO {}").format(s),
    ]
    return out
