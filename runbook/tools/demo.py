"""Demo data: a LiteLLM database with a realistic backlog of stale response objects.

Generated inside the server (``INSERT ... SELECT`` over ``generate_series``) with a fixed
seed, so the same command gives the same rows. Rows look like production ones: uuid ids,
1-2 KB ``file_object`` documents, every status LiteLLM writes (NULL and ``incomplete``
included), three purposes, created over the last 60 days.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from .migrations import apply_migrations

__all__ = ["reset_database", "load_demo_rows"]

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
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    dsn = psycopg.conninfo.make_conninfo(admin_dsn, dbname=dbname)
    apply_migrations(dsn)
    return dsn


def _status_case() -> sql.Composed:
    parts = [
        sql.SQL("WHEN r < {} THEN {}").format(sql.Literal(bound), sql.Literal(status))
        for status, bound in _STATUS_WEIGHTS
    ]
    return sql.SQL("CASE ") + sql.SQL(" ").join(parts) + sql.SQL(" END")


def load_demo_rows(dsn: str, rows: int = 20_000, seed: float = 0.42) -> int:
    """Insert ``rows`` managed objects into ``"LiteLLM_ManagedObjectTable"``; return how many.

    Writes only that table, in one transaction.
    """
    query = sql.SQL(
        """
        INSERT INTO "LiteLLM_ManagedObjectTable"
            (id, unified_object_id, model_object_id, file_object, file_purpose, created_at,
             created_by, updated_at, updated_by, status, team_id)
        SELECT gen_random_uuid()::text,
               'litellm_proxy;model_id:gpt-4o;llm_output_id:resp_' || md5(g::text),
               'resp_' || md5(g::text || 'm'),
               jsonb_build_object(
                   'id', 'resp_' || md5(g::text || 'm'), 'object', 'response', 'model', 'gpt-4o-2024-08-06',
                   'background', true, 'created_at', extract(epoch FROM created)::bigint,
                   'output', jsonb_build_array(jsonb_build_object('type', 'message', 'role', 'assistant',
                       'content', jsonb_build_array(jsonb_build_object('type', 'output_text',
                           'text', repeat('The quick brown fox jumps over the lazy dog. ', 20 + (r2 * 20)::int))))),
                   'usage', jsonb_build_object('input_tokens', (r2 * 4000)::int, 'output_tokens', (r * 900)::int)),
               purpose, created, 'default_user_id', created + (r2 * interval '2 hours'), 'default_user_id',
               {status}, 'team-' || (g %% 5)
        FROM (
            SELECT g, random() AS r, random() AS r2,
                   CASE WHEN random() < 0.75 THEN 'response' WHEN random() < 0.7 THEN 'batch' ELSE 'fine-tune' END
                       AS purpose,
                   date_trunc('milliseconds', (now() AT TIME ZONE 'UTC') - random() * interval '60 days') AS created
            FROM generate_series(1, %(rows)s) AS g
        ) AS s
        """
    ).format(status=_status_case())
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.transaction():
            conn.execute("SELECT setseed(%s)", [seed])
            inserted = conn.execute(query, {"rows": rows}).rowcount
        conn.execute('ANALYZE "LiteLLM_ManagedObjectTable"')
    return inserted
