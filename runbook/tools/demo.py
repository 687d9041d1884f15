"""Demo data: a LiteLLM database with a realistic backlog of stale response objects.

Generated inside the server (``INSERT ... SELECT`` over ``generate_series``) with a fixed
seed, so the same command gives the same rows. Rows look like production ones: uuid ids,
1-2 KB ``file_object`` documents, every status LiteLLM writes (NULL and ``incomplete``
included), three purposes, created over the last 60 days.
"""

from __future__ import annotations

from psycopg import conninfo

from ..db.connect import DEMO_DATABASE, Database, connect
from ..db.embedded import EmbeddedServer
from ..ops.sweep import sweep
from ..rules.params import Options, options
from ..rules.targets import CATALOGUE, target_named
from ..sql import demo as q
from .migrations import apply_migrations

__all__ = ["demo_exists", "load_demo", "reset_database", "load_demo_rows", "load_retention_rows", "what_targets_would_do"]

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


def load_retention_rows(dsn: str, rows: int = 20_000, seed: float = 0.42) -> dict[str, int]:
    """Fill LiteLLM's other growing tables, the retention targets'; return the rows inserted
    per table name.

    Writes, in one transaction: ``rows`` spend logs (``"LiteLLM_SpendLogs"``, "startTime" over
    the last 60 days; ``messages``, ``response`` and ``proxy_server_request`` 0.5-4 KB of JSON,
    already ``'{}'`` in about 20 % of the rows, ``messages`` NULL in a few), one or two
    ``"LiteLLM_SpendLogToolIndex"`` rows for about 30 % of those requests, ``rows // 10``
    health checks (``"LiteLLM_HealthCheckTable"``, over 60 days), ``rows // 20``
    ``"LiteLLM_AuditLog"`` entries and ``rows // 10`` ``"LiteLLM_ErrorLogs"`` rows (over 120
    days); then ANALYZEs those five tables. Nothing else is written.

    The same ``seed`` writes the same rows, keys included, with every time at the same
    distance from the moment of loading: so loading twice into one database with one seed
    fails on the primary keys (and writes nothing).
    """
    with connect(Database(dsn, "demo"), purpose="demo") as conn:
        with conn.transaction():
            conn.execute(q.set_seed(), {"seed": seed})
            spend = conn.execute(q.insert_spend_logs(), {"rows": rows}).fetchone()
            assert spend is not None
            inserted = {q.SPEND_LOGS: int(spend[0]), q.TOOL_INDEX: int(spend[1])}
            inserted[q.HEALTH_CHECKS] = conn.execute(q.insert_health_checks(), {"rows": rows // 10}).rowcount
            inserted[q.AUDIT_LOG] = conn.execute(q.insert_audit_log(), {"rows": rows // 20}).rowcount
            inserted[q.ERROR_LOGS] = conn.execute(q.insert_error_logs(), {"rows": rows // 10}).rowcount
        conn.execute(q.analyze_tables(list(inserted)))
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


def demo_exists(server: EmbeddedServer) -> bool:
    """Whether the embedded server already holds the demo database. Reads only."""
    from ..sql.demo import database_exists

    with connect(Database(server.dsn(), "embedded"), purpose="demo") as conn:
        return conn.execute(database_exists(), {"name": DEMO_DATABASE}).fetchone() is not None


def load_demo(server: EmbeddedServer, rows: int) -> None:
    """(Re)create the demo database on ``server`` with LiteLLM's schema and demo rows in every
    table a target cleans, and say so on stdout. Destroys the previous demo database."""
    from .migrations import migrations_version

    dsn = reset_database(server.dsn(), DEMO_DATABASE)
    loaded = load_demo_rows(dsn, rows)
    more = "".join(f", {n:,} in {table}" for table, n in load_retention_rows(dsn, rows).items())
    print(f"demo database '{DEMO_DATABASE}': LiteLLM schema from litellm-proxy-extras {migrations_version()}, {loaded:,} rows{more}")
