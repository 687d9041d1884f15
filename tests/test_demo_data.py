"""The demo's rows for LiteLLM's other growing tables (``load_retention_rows``): the counts it
reports are the tables' own, one seed gives the same rows, and the rows have what the
retention targets look for (old spend logs with payloads and without, requests with two tools)."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from runbook.tools.demo import load_retention_rows
from tests.fix_db import TEMPLATE

ROWS = 3000
# Each table with its primary key: the order its rows are hashed in.
TABLES = {
    "LiteLLM_SpendLogs": ("request_id",),
    "LiteLLM_SpendLogToolIndex": ("request_id", "tool_name"),
    "LiteLLM_HealthCheckTable": ("health_check_id",),
    "LiteLLM_AuditLog": ("id",),
    "LiteLLM_ErrorLogs": ("request_id",),
}
SPEND = sql.Identifier("public", "LiteLLM_SpendLogs")
TOOLS = sql.Identifier("public", "LiteLLM_SpendLogToolIndex")
_names = itertools.count(1)


@pytest.fixture
def other_dsn(admin_dsn: str) -> Iterator[str]:
    """A second fresh database with LiteLLM's schema and no rows (``dsn``'s twin)."""
    name = f"test_{os.getpid()}_demo_{next(_names)}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(TEMPLATE)))
    yield conninfo.make_conninfo(admin_dsn, dbname=name)
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _contents(dsn: str) -> dict[str, list[tuple[Any, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {
            table: conn.execute(
                sql.SQL("SELECT * FROM {} ORDER BY {}").format(
                    sql.Identifier("public", table), sql.SQL(", ").join(map(sql.Identifier, key))
                )
            ).fetchall()
            for table, key in TABLES.items()
        }


def _digests(dsn: str) -> dict[str, str]:
    """An md5 of each table's rows in key order, every timestamp as its distance to the
    latest one of the five tables: two loads at different moments compare equal."""
    contents = _contents(dsn)
    latest = max(v for rows in contents.values() for row in rows for v in row if isinstance(v, datetime))
    digests = {}
    for table, rows in contents.items():
        relative = [tuple(latest - v if isinstance(v, datetime) else v for v in row) for row in rows]
        digests[table] = hashlib.md5(repr(relative).encode()).hexdigest()
    return digests


def _count(conn: psycopg.Connection, table: str) -> int:
    row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier("public", table))).fetchone()
    assert row is not None
    return int(row[0])


def test_the_counts_returned_are_the_tables_counts(conn: psycopg.Connection, dsn: str) -> None:
    inserted = load_retention_rows(dsn, ROWS)
    counted = {t: _count(conn, t) for t in TABLES}
    assert inserted == counted
    assert list(inserted) == list(TABLES)
    assert inserted["LiteLLM_SpendLogs"] == ROWS
    assert inserted["LiteLLM_HealthCheckTable"] == ROWS // 10
    assert inserted["LiteLLM_AuditLog"] == ROWS // 20
    assert inserted["LiteLLM_ErrorLogs"] == ROWS // 10
    # about 30 % of the requests called tools, a quarter of those two
    assert 0.3 * ROWS < inserted["LiteLLM_SpendLogToolIndex"] < 0.45 * ROWS
    # the managed objects are load_demo_rows' business: none written here
    assert _count(conn, "LiteLLM_ManagedObjectTable") == 0


def test_the_same_seed_gives_the_same_rows(dsn: str, other_dsn: str) -> None:
    load_retention_rows(dsn, ROWS, seed=0.42)
    load_retention_rows(other_dsn, ROWS, seed=0.42)
    first, second = _digests(dsn), _digests(other_dsn)
    assert first == second


def test_another_seed_gives_other_rows(dsn: str, other_dsn: str) -> None:
    load_retention_rows(dsn, ROWS, seed=0.42)
    load_retention_rows(other_dsn, ROWS, seed=-0.3)
    first, second = _digests(dsn), _digests(other_dsn)
    assert all(first[t] != second[t] for t in TABLES)


def test_old_spend_logs_have_payloads_and_empty_ones(conn: psycopg.Connection, dsn: str) -> None:
    load_retention_rows(dsn, ROWS)
    old = sql.SQL("\"startTime\" < (now() AT TIME ZONE 'UTC') - interval '30 days'")
    full, empty, null_messages, oldest, newest = conn.execute(
        sql.SQL(
            """SELECT count(*) FILTER (WHERE {old} AND messages <> '{{}}' AND response <> '{{}}'
                                       AND proxy_server_request <> '{{}}'),
                      count(*) FILTER (WHERE {old} AND messages = '{{}}' AND response = '{{}}'
                                       AND proxy_server_request = '{{}}'),
                      count(*) FILTER (WHERE messages IS NULL),
                      min("startTime"), max("startTime")
               FROM {spend}"""
        ).format(old=old, spend=SPEND)
    ).fetchone()  # type: ignore[misc]
    assert full > 0 and empty > 0 and null_messages > 0
    # about 20 % empty; "startTime" over the last 60 days
    assert 0.1 < empty / (full + empty) < 0.3
    assert 55 <= (newest - oldest).days < 60
    median = conn.execute(
        sql.SQL(
            """SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY octet_length(messages::text)),
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY octet_length(proxy_server_request::text))
               FROM {spend} WHERE messages <> '{{}}' AND response <> '{{}}'"""
        ).format(spend=SPEND)
    ).fetchone()
    assert median is not None and all(500 < m < 4000 for m in median)


def test_some_request_has_two_tools_at_its_start_time(conn: psycopg.Connection, dsn: str) -> None:
    load_retention_rows(dsn, ROWS)
    two = conn.execute(
        sql.SQL("SELECT request_id FROM {} GROUP BY request_id HAVING count(*) = 2").format(TOOLS)
    ).fetchall()
    assert len(two) >= 1
    names = {r[0] for r in conn.execute(sql.SQL("SELECT DISTINCT tool_name FROM {}").format(TOOLS))}
    assert {"web_search", "get_weather"} <= names
    # every tool row belongs to a spend log and carries its "startTime"
    orphans = conn.execute(
        sql.SQL(
            'SELECT count(*) FROM {tools} t LEFT JOIN {spend} s ON s.request_id = t.request_id '
            'WHERE s.request_id IS NULL OR s."startTime" <> t.start_time'
        ).format(tools=TOOLS, spend=SPEND)
    ).fetchone()
    assert orphans == (0,)
