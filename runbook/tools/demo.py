"""Demo data: a LiteLLM database with a realistic backlog of stale response objects.

Generated inside the server (``INSERT ... SELECT`` over ``generate_series``) with a fixed
seed, so the same command gives the same rows. Rows look like production ones: uuid ids,
1-2 KB ``file_object`` documents, every status LiteLLM writes (NULL and ``incomplete``
included), three purposes, created over the last 60 days.
"""

from __future__ import annotations

from psycopg import conninfo

from ..db.connect import Database, connect
from ..ops.sweep import sweep
from ..rules.params import Options, options
from ..rules.targets import CATALOGUE, target_named
from ..sql import demo as q
from .migrations import apply_migrations

__all__ = ["reset_database", "load_demo_rows", "what_targets_would_do"]

_STATUS_WEIGHTS = [
    # (status, cumulative upper bound of random())
    ("completed", 0.45), ("queued", 0.57), ("in_progress", 0.67), ("failed", 0.71), ("incomplete", 0.75),
    (None, 0.80), ("cancelled", 0.83), ("expired", 0.85), ("complete", 0.88), ("stale_expired", 0.93),
    ("requires_action", 1.0),
]  # fmt: skip


def reset_database(admin_dsn: str, dbname: str) -> str:
    """Drop (if present) and create ``dbname``, apply LiteLLM's migrations; return its DSN.

    Destroys every row of that database: only for the embedded demo and tests.
    """
    with connect(Database(admin_dsn, "demo"), purpose="demo") as conn:
        conn.execute(q.drop_database(dbname))
        conn.execute(q.create_database(dbname))
    dsn = conninfo.make_conninfo(admin_dsn, dbname=dbname)
    apply_migrations(dsn)
    return dsn


def load_demo_rows(dsn: str, rows: int = 20_000, seed: float = 0.42) -> int:
    """Insert ``rows`` managed objects into ``"LiteLLM_ManagedObjectTable"``; return how many.

    Writes only that table, in one transaction.
    """
    with connect(Database(dsn, "demo"), purpose="demo") as conn:
        with conn.transaction():
            conn.execute(q.set_seed(), {"seed": seed})
            inserted = conn.execute(q.insert_rows(_STATUS_WEIGHTS), {"rows": rows}).rowcount
        conn.execute(q.analyze_table())
    return inserted


def what_targets_would_do(database: Database, opts: Options | None = None) -> list[str]:
    """One line per target of the catalogue: what a sweep of it would do now, from a dry run
    (``opts``, default: the notebooks' defaults). Reads only."""
    opts = opts or options()
    lines = []
    with connect(database, purpose="demo-targets") as conn:
        for name, entry in CATALOGUE.items():
            result = sweep(conn, target_named(name, database.schema), opts)
            rows = result.candidates_at_start
            lines.append(
                f"{name:16s} {entry.action}: {rows:,} row(s) of {result.target['table']} older than "
                f"{opts.stale_after_days:g} days"
            )
    return lines
