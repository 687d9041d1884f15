"""Least-privilege login roles for tests: exactly the grants ``python -m runbook grants`` prints."""

from __future__ import annotations

import psycopg
from psycopg import conninfo, sql

from runbook import Target
from runbook.db import ledger
from runbook.sql.grants import grants_sql, owner_setup_sql

ROLES = ("rb_owner", "rb_reader", "rb_sweeper")


def create_roles(conn: psycopg.Connection, dsn: str, target: Target | None = None) -> dict[str, str]:
    """The three roles with nothing but the documented grants on ``conn``'s database
    (PUBLIC's defaults revoked; the ledger created by its owner); returns a DSN per role."""
    db = conn.info.dbname
    for role in ROLES:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(db)))
    for stmt in owner_setup_sql(db, "rb_owner"):
        conn.execute(stmt)
    with psycopg.connect(conninfo.make_conninfo(dsn, user="rb_owner"), autocommit=True) as owner:
        ledger.ensure(owner)
    for stmt in grants_sql(target or Target(), db, "rb_reader", "rb_sweeper"):
        conn.execute(stmt)
    return {role: conninfo.make_conninfo(dsn, user=role) for role in ROLES}


def drop_roles(conn: psycopg.Connection) -> None:
    for role in ROLES:
        conn.execute(sql.SQL("DROP OWNED BY {} CASCADE").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
