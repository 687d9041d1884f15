"""Rows for LiteLLM's growing tables, LiteLLM's own retention statement as an oracle, and
whole-database snapshots to compare before and after.

The rows are built to catch a runbook that is nearly right: hostile key values (quotes, a
backslash, braces, a JSON array, non-ASCII, an empty string), rows exactly at, 1 ms before
and 1 ms after the cutoff, jsonb columns holding SQL NULL, a JSON ``null`` or ``'{}'``, and
floats that only survive an exact round trip.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg import sql

from runbook.rules.target import Target

HOSTILE_KEYS = [
    "plain", "it's", 'say "hi"', "back\\slash", "{brace}", "comma,key", "\u00fcn\u00efc\u00f8de \u2603", " space ",
    '["json","array"]', "tab\there", "NULL", "", "semi;colon --", "x" * 200,
]  # fmt: skip

# The offsets (days before the cutoff; negative: after it) every table gets rows at.
AGES = [30.0, 10.0, 1.0, 1 / 86_400_000, 0.0, -1 / 86_400_000, -1.0, -5.0]

# Each table: its key columns, its time column, and the INSERT of one row (named placeholders:
# %(k)s the key, %(k2)s a composite key's second part, %(t)s the time, %(n)s a number).
TABLES: dict[str, tuple[tuple[str, ...], str, str]] = {
    "LiteLLM_SpendLogs": (("request_id",), "startTime", """
        INSERT INTO "LiteLLM_SpendLogs" (request_id, call_type, spend, "startTime", "endTime", messages, response,
            proxy_server_request, metadata, request_tags, team_id)
        VALUES (%(k)s, 'acompletion', %(n)s / 7.0::float8, %(t)s, %(t)s + interval '2 seconds',
            CASE mod(%(n)s, 5) WHEN 0 THEN NULL WHEN 1 THEN '{}'::jsonb WHEN 2 THEN 'null'::jsonb
                ELSE jsonb_build_array(jsonb_build_object('role', 'user', 'content', repeat('q' || %(k)s, 20))) END,
            CASE mod(%(n)s, 4) WHEN 0 THEN '{}'::jsonb ELSE jsonb_build_object('text', repeat('a', 300), 'n', %(n)s * 1.5) END,
            CASE mod(%(n)s, 3) WHEN 0 THEN NULL ELSE jsonb_build_object('body', %(k)s) END,
            CASE mod(%(n)s, 2) WHEN 0 THEN NULL ELSE jsonb_build_object('user_api_key', 'hash' || %(n)s) END,
            '["tag"]'::jsonb, 'team-1')"""),
    "LiteLLM_SpendLogToolIndex": (("request_id", "tool_name"), "start_time", """
        INSERT INTO "LiteLLM_SpendLogToolIndex" (request_id, tool_name, start_time) VALUES (%(k)s, %(k2)s, %(t)s)"""),
    "LiteLLM_HealthCheckTable": (("health_check_id",), "checked_at", """
        INSERT INTO "LiteLLM_HealthCheckTable" (health_check_id, model_name, status, checked_at, updated_at,
            response_time_ms, details)
        VALUES (%(k)s, 'gpt-4o', 'healthy', %(t)s, %(t)s, 0.1 + %(n)s / 3.0, CASE WHEN mod(%(n)s, 2) = 0 THEN NULL
            ELSE '{"ok": true}'::jsonb END)"""),
    "LiteLLM_AuditLog": (("id",), "updated_at", """
        INSERT INTO "LiteLLM_AuditLog" (id, updated_at, action, table_name, object_id, before_value, updated_values)
        VALUES (%(k)s, %(t)s, 'updated', 'LiteLLM_VerificationToken', 'obj', CASE WHEN mod(%(n)s, 2) = 0 THEN NULL
            ELSE 'null'::jsonb END, jsonb_build_object('spend', %(n)s))"""),
    "LiteLLM_ErrorLogs": (("request_id",), "startTime", """
        INSERT INTO "LiteLLM_ErrorLogs" (request_id, "startTime", "endTime", request_kwargs, exception_string)
        VALUES (%(k)s, %(t)s, %(t)s + interval '1 second', jsonb_build_object('model', 'gpt-4o', 'n', %(n)s),
            'boom ' || %(k)s)"""),
}


def fill(conn: psycopg.Connection, table: str, cutoff: datetime, prefix: str = "") -> int:
    """Rows of ``table`` at every age of ``AGES`` around ``cutoff`` (naive UTC), with every
    hostile key (after ``prefix``); a composite key gets two tool names per request. Returns how many."""
    keys, _, insert = TABLES[table]
    n = 0
    for i, age in enumerate(AGES):
        for j, key in enumerate(HOSTILE_KEYS):
            for k2 in (["web_search", "get 'weather'"] if len(keys) == 2 else [None]):
                n += 1
                conn.execute(insert, {"k": f"{prefix}{key}#{i}", "k2": k2, "t": cutoff - timedelta(days=age), "n": n})  # type: ignore[arg-type]
    return n


def snapshot(conn: psycopg.Connection) -> dict[str, list[str]]:
    """Every row of every table of schema public, as PostgreSQL's row text (which tells SQL
    NULL from JSON null), sorted: two equal snapshots hold the same rows, column for column."""
    tables = [r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    return {
        t: [str(r[0]) for r in conn.execute(sql.SQL("SELECT t::text FROM {} AS t ORDER BY 1").format(sql.Identifier(t)))]
        for t in tables
    }


def litellm_deletes(dsn: str, table: str, cutoff: datetime) -> set[str]:
    """The rows LiteLLM's own retention loop deletes (spend_log_cleanup.py: ``DELETE ... WHERE
    (key) IN (SELECT key ... WHERE time < $1::timestamptz LIMIT 1000)`` until none is left),
    run in a UTC session inside a transaction that is rolled back, as row texts."""
    keys, time_column, _ = TABLES[table]
    with psycopg.connect(dsn, options="-c TimeZone=UTC") as c:
        before = set(snapshot(c)[table])
        key = sql.SQL(", ").join(sql.Identifier(k) for k in keys)
        stmt = sql.SQL("DELETE FROM {t} WHERE ({key}) IN (SELECT {key} FROM {t} WHERE {time} < %s::timestamptz LIMIT %s)").format(
            t=sql.Identifier(table), key=key, time=sql.Identifier(time_column)
        )
        while c.execute(stmt, [cutoff.replace(tzinfo=timezone.utc), 1000]).rowcount:
            pass
        gone = before - set(snapshot(c)[table])
        c.rollback()
    return gone


def key_of(target: Target, row: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(row[k]) for k in target.key_columns)
