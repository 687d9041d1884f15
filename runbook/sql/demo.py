"""The demo's SQL: a scratch database, and a realistic backlog of LiteLLM response objects.

Only ``runbook.tools`` (the demo, the tests, the benchmark) runs these; the runbook never
creates or drops a user's database. Every function returns a ``psycopg.sql.Composed`` (or
``SQL``) with identifiers through ``sql.Identifier`` and values as named placeholders or,
where a statement is data (the demo's status mix), ``sql.Literal``; nothing is executed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

__all__ = ["DEMO_TABLE", "database_exists", "drop_database", "create_database", "set_seed", "insert_rows",
           "analyze_table", "quiet_messages"]  # fmt: skip

# LiteLLM's table of managed objects, where its migrations create it.
DEMO_TABLE = sql.Identifier("public", "LiteLLM_ManagedObjectTable")


def database_exists() -> sql.SQL:
    """One row (the column 1) when database %(name)s exists, none otherwise."""
    return sql.SQL("SELECT 1 FROM pg_database WHERE datname = %(name)s")


def drop_database(name: str) -> sql.Composed:
    """Drop database ``name`` if present, ending its sessions. No placeholders."""
    return sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))


def create_database(name: str) -> sql.Composed:
    """Create database ``name``. No placeholders."""
    return sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))


def set_seed() -> sql.SQL:
    """Seed this session's ``random()`` with %(seed)s (-1.0 to 1.0): the same rows every time."""
    return sql.SQL("SELECT setseed(%(seed)s)")


def _status_case(weights: Sequence[tuple[str | None, float]]) -> sql.Composed:
    parts = [
        sql.SQL("WHEN r < {} THEN {}").format(sql.Literal(bound), sql.Literal(status))
        for status, bound in weights
    ]
    return sql.SQL("CASE ") + sql.SQL(" ").join(parts) + sql.SQL(" END")


def insert_rows(weights: Sequence[tuple[str | None, float]]) -> sql.Composed:
    """Insert %(rows)s managed objects into ``DEMO_TABLE``: uuid ids, 1-2 KB ``file_object``
    documents, three purposes, created over the last 60 days, and a status drawn by
    ``weights`` ((status, cumulative upper bound of random()), in order)."""
    return sql.SQL(
        """
        INSERT INTO {table}
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
    ).format(table=DEMO_TABLE, status=_status_case(weights))


def analyze_table() -> sql.Composed:
    """Refresh the planner's statistics of ``DEMO_TABLE``. No placeholders."""
    return sql.SQL("ANALYZE {}").format(DEMO_TABLE)


def quiet_messages() -> sql.SQL:
    """Show errors only (``client_min_messages``): the first line of the psql script that
    applies LiteLLM's migrations. No placeholders."""
    return sql.SQL("SET client_min_messages = error")
