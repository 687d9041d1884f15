"""Rows for tests: insert managed objects with chosen status, purpose and age; read table state."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

import psycopg

Conn = psycopg.Connection[tuple[object, ...]]
TABLE = '"LiteLLM_ManagedObjectTable"'

# LiteLLM's own production statement (litellm-enterprise 0.1.83,
# CheckResponsesCost._expire_stale_rows), verbatim but for the placeholders: the oracle.
PRODUCTION_SQL = """
UPDATE "LiteLLM_ManagedObjectTable"
SET "status" = 'stale_expired'
WHERE "id" IN (
    SELECT "id" FROM "LiteLLM_ManagedObjectTable"
    WHERE "file_purpose" = 'response'
    AND "status" NOT IN ('completed', 'complete', 'failed', 'expired', 'cancelled', 'stale_expired')
    AND "created_at" < %s::timestamptz
    ORDER BY "created_at" ASC
    LIMIT %s
)
"""

# Makes every UPDATE of the table take a while, so a sweep can be watched and stopped.
SLOW_UPDATES = """
CREATE FUNCTION runbook_test_slow() RETURNS trigger LANGUAGE plpgsql AS
  $$ BEGIN PERFORM pg_sleep(0.1); RETURN NEW; END $$;
CREATE TRIGGER runbook_test_slow BEFORE UPDATE ON "LiteLLM_ManagedObjectTable"
  FOR EACH ROW EXECUTE FUNCTION runbook_test_slow();
"""



def db_now(conn: Conn) -> datetime:
    row = conn.execute("SELECT statement_timestamp() AT TIME ZONE 'UTC'").fetchone()
    assert row is not None
    return row[0]  # type: ignore[return-value]


def insert(conn: Conn, *, status: str | None, age_days: float, purpose: str = "response", id: str | None = None) -> str:
    """One managed object created ``age_days`` ago (UTC wall-clock); returns its id."""
    key = id or str(uuid.uuid4())
    created = db_now(conn) - timedelta(days=age_days)
    conn.execute(
        f"INSERT INTO {TABLE} (id, unified_object_id, model_object_id, file_object, file_purpose, created_at,"
        " updated_at, status) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
        [key, "u-" + key, "m-" + key, json.dumps({"id": "resp_" + key, "object": "response"}), purpose,
         created, created, status],
    )  # fmt: skip
    return key


def many(conn: Conn, n: int, *, status: str = "queued") -> list[str]:
    """``n`` stale candidates, 8 days old and each a little older than the one before; returns their ids."""
    return [insert(conn, status=status, age_days=8 + i / 100) for i in range(n)]


def state(conn: Conn) -> dict[str, tuple[Any, ...]]:
    """Every row of the table, every column, keyed by id."""
    rows = conn.execute(f"SELECT * FROM {TABLE} ORDER BY id").fetchall()
    return {str(r[0]): tuple(r) for r in rows}


def statuses(conn: Conn) -> dict[str, str | None]:
    return {str(r[0]): r[1] for r in conn.execute(f"SELECT id, status FROM {TABLE}")}  # type: ignore[misc]


def production_candidates(conn: Conn, cutoff_days: float) -> set[str]:
    """The ids LiteLLM's own statement would update, found by running it and rolling back."""
    now = db_now(conn)
    from datetime import timezone

    cutoff = (now - timedelta(days=cutoff_days)).replace(tzinfo=timezone.utc)
    before = statuses(conn)
    try:
        with conn.transaction():
            conn.execute("SET LOCAL TimeZone = 'UTC'")
            conn.execute(PRODUCTION_SQL, [cutoff, 10**9])
            after = statuses(conn)
            raise _Rollback
    except _Rollback:
        pass
    return {k for k in before if before[k] != after[k]}


class _Rollback(Exception):
    pass


def standard_mix(conn: Conn) -> dict[str, str]:
    """One row of every kind that matters; returns {label: id}."""
    rows = {
        "queued_old": insert(conn, status="queued", age_days=10),
        "in_progress_old": insert(conn, status="in_progress", age_days=30),
        "incomplete_old": insert(conn, status="incomplete", age_days=9),
        "requires_action_old": insert(conn, status="requires_action", age_days=8),
        "null_old": insert(conn, status=None, age_days=20),
        "queued_recent": insert(conn, status="queued", age_days=2),
        "queued_just_inside": insert(conn, status="queued", age_days=6.99),
        "batch_old": insert(conn, status="queued", age_days=40, purpose="batch"),
        "finetune_old": insert(conn, status="in_progress", age_days=40, purpose="fine-tune"),
    }
    for terminal in ("completed", "complete", "failed", "expired", "cancelled", "stale_expired"):
        rows[f"{terminal}_old"] = insert(conn, status=terminal, age_days=15)
    return rows


def sessions_left(conn: Conn, condition: str, wait_s: float = 5.0) -> int:
    """Other sessions of this database matching ``condition`` (SQL, a literal: tests only),
    waiting up to ``wait_s`` for them to go: a closed connection's backend takes a moment to exit."""
    query = (
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() AND "
        + condition
    )
    deadline = time.monotonic() + wait_s
    while (left := int(conn.execute(query).fetchone()[0])) and time.monotonic() < deadline:  # type: ignore[index,call-overload]
        time.sleep(0.05)
    return left
