"""Helpers every unit of work shares: read-only transactions, the target check, the clock."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import psycopg

from ..errors import TargetNotFoundError
from ..rules.params import check_cutoff_recent
from ..rules.target import Target
from ..sql import catalog

__all__ = ["read_only", "check_target", "table_columns", "db_now_utc", "resolve_cutoff"]

# Rows come back as tuples of whatever the server sent; the callers know the shapes.
Conn = psycopg.Connection[Any]


@contextmanager
def read_only(conn: Conn) -> Iterator[Conn]:
    """A READ ONLY transaction: the server itself refuses any write inside it. Its
    ``search_path`` is pinned too (``catalog.read_only_pinned``), in the same round
    trip: a connection through PgBouncer cannot pin it when it starts."""
    with conn.transaction():
        conn.execute(catalog.read_only_pinned())
        yield conn


def check_target(conn: Conn, target: Target) -> None:
    """Raise TargetNotFoundError unless the table and all the columns it needs exist."""
    with read_only(conn):
        row = conn.execute(catalog.table_oid(), {"schema": target.schema, "table": target.table}).fetchone()
        if row is None or row[0] is None:
            raise TargetNotFoundError(
                f"table {target.schema}.{target.table} does not exist in this database "
                "(is this LiteLLM's database? is DATABASE_URL set?)"
            )
        wanted = target.columns
        present = {r[0] for r in conn.execute(catalog.table_columns(), {"oid": row[0]})}
        missing = [c for c in wanted if c not in present]
        if missing:
            raise TargetNotFoundError(f"table {target.schema}.{target.table} has no column(s) {missing}")
        children = conn.execute(catalog.has_children(), {"oid": row[0]}).fetchone()
        if not target.marks and children and children[0]:
            raise TargetNotFoundError(
                f"table {target.schema}.{target.table} has child tables or partitions: a {target.action} target works on "
                "a plain table only (a child's rows would be archived without their own columns); nothing read or written"
            )


def table_columns(conn: Conn, target: Target) -> list[tuple[str, str, bool]]:
    """The target table's columns in order: name, type (as SQL writes it), generated. Reads only."""
    with read_only(conn):
        row = conn.execute(catalog.table_oid(), {"schema": target.schema, "table": target.table}).fetchone()
        if row is None or row[0] is None:
            raise TargetNotFoundError(f"table {target.schema}.{target.table} does not exist in this database")
        return [(str(r[0]), str(r[1]), bool(r[2])) for r in conn.execute(catalog.column_types(), {"oid": row[0]})]


def db_now_utc(conn: Conn) -> datetime:
    """The server's clock as naive UTC, the convention of LiteLLM's timestamp columns."""
    row = conn.execute(catalog.now_utc()).fetchone()
    assert row is not None and isinstance(row[0], datetime)
    return row[0]


def resolve_cutoff(conn: Conn, stale_after_days: float, cutoff: datetime | None, now: datetime | None = None) -> datetime:
    """The fixed cutoff of this run: ``cutoff`` if given, else server-now minus the days.

    A given ``cutoff`` must be at least one day before the *server's* clock (the clock
    LiteLLM's rows are stamped by): ParameterError otherwise, before anything is read."""
    server_now = now or db_now_utc(conn)
    if cutoff is not None:
        return check_cutoff_recent(cutoff, server_now)
    return server_now - timedelta(days=stale_after_days)
