"""The optional partial index on the candidates: its name, its build, its drop, its state.

Every function returns a ``psycopg.sql.Composed`` (or ``SQL``) with identifiers through
``sql.Identifier``; nothing is executed here (``runbook.ops.index`` builds it, only when
asked).
"""

from __future__ import annotations

from psycopg import sql

from ..rules.target import DEFAULT_TARGET, Target
from .candidates import table

__all__ = ["index_name", "create_index", "drop_index", "index_state", "no_statement_timeout"]


def index_name(target: Target) -> str:
    """The partial index's name: ``<table>_runbook_stale_idx`` for the default target,
    ``<table>_runbook_<target>_idx`` for another; cut to PostgreSQL's 63 bytes."""
    rule = "stale" if target.name == DEFAULT_TARGET else target.name
    return f"{target.table}_runbook_{rule}_idx"[:63]


def create_index(target: Target) -> sql.Composed:
    """The partial index that turns the candidate search into an index range scan.

    Built with literals (an index predicate cannot take parameters) from validated
    statuses; CONCURRENTLY so that it does not block LiteLLM's writes while it builds.
    No placeholders. A target whose rule reads no status (delete and clear targets) gets a
    plain index on (time, key): its rule is the age alone.
    """
    if not target.status_rule:
        return sql.SQL("CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({time}, {keys})").format(
            name=sql.Identifier(index_name(target)), table=table(target), time=sql.Identifier(target.time_column),
            keys=sql.SQL(", ").join(sql.Identifier(k) for k in target.key_columns),
        )  # fmt: skip
    assert target.purpose_column is not None and target.status_column is not None
    return sql.SQL(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {name} ON {table} ({time}, {key}) "
        "WHERE {purpose} = {purpose_value} AND {status} NOT IN ({terminal}){unprocessed}"
    ).format(
        unprocessed=sql.SQL(" AND {} = false").format(sql.Identifier(target.unprocessed_column))
        if target.unprocessed_column
        else sql.SQL(""),
        name=sql.Identifier(index_name(target)),
        table=table(target),
        time=sql.Identifier(target.time_column),
        key=sql.Identifier(target.key_column),
        purpose=sql.Identifier(target.purpose_column),
        purpose_value=sql.Literal(target.purpose),
        status=sql.Identifier(target.status_column),
        terminal=sql.SQL(", ").join(sql.Literal(s) for s in target.terminal_statuses),
    )


def drop_index(target: Target) -> sql.Composed:
    """Drop the partial index (an INVALID one a failed build left) without blocking
    writes. No placeholders."""
    return sql.SQL("DROP INDEX CONCURRENTLY {}").format(sql.Identifier(target.schema, index_name(target)))


def index_state() -> sql.SQL:
    """The index named %(name)s in schema %(schema)s: one row, whether it is valid
    (indisvalid); no row when there is none."""
    return sql.SQL(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s AND c.relname = %(name)s"
    )


def no_statement_timeout() -> sql.SQL:
    """This session's ``statement_timeout`` off: an index build takes as long as it takes."""
    return sql.SQL("SET statement_timeout = 0")
