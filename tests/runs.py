"""Live runs in tests: the options that make a run live, its ledger read back, and the promise
every fault keeps (each changed row was a candidate, changed in status only, ledgered once,
in a whole batch)."""

from __future__ import annotations

from typing import Any

import psycopg

from runbook import Target, options, preview
from tests.rows import state

LIVE = {"dry_run": False}


def ledger_batches(conn: psycopg.Connection, run_id: str) -> dict[int, set[str]]:
    """Run ``run_id``'s ledger: the object ids of each batch."""
    out: dict[int, set[str]] = {}
    for batch, object_id in conn.execute("SELECT batch, object_id FROM litellm_runbook.changes WHERE run_id = %s", [run_id]):
        out.setdefault(batch, set()).add(object_id)
    return out


def candidates_of(conn: psycopg.Connection) -> set[str]:
    """Every row the rule selects now (a preview of them all)."""
    return {r.id for r in preview(conn, Target(), options(batch_size=100_000)).rows}


def assert_consistent(conn: psycopg.Connection, before: dict[str, tuple[Any, ...]], candidates: set[str]) -> set[str]:
    """Every changed row was a candidate, changed only in status, and is in the ledger once;
    every batch in the ledger holds as many changes as it declares. Returns the changed ids."""
    after = state(conn)
    changed = {k for k in before if before[k] != after[k]}
    assert changed <= candidates
    for key in changed:
        assert after[key][9] == "stale_expired"
        assert after[key][:9] + after[key][10:] == before[key][:9] + before[key][10:]
    logged = conn.execute("SELECT object_id, previous_status FROM litellm_runbook.changes").fetchall()
    assert len(logged) == len({k for k, _ in logged})  # no row changed twice
    assert {k for k, _ in logged} == changed
    assert all(prev == before[k][9] for k, prev in logged)
    per_batch = conn.execute(
        "SELECT b.rows_changed, count(c.object_id) FROM litellm_runbook.batches b"
        " LEFT JOIN litellm_runbook.changes c USING (run_id, batch) GROUP BY b.run_id, b.batch, b.rows_changed"
    ).fetchall()
    assert all(declared == found for declared, found in per_batch)
    return changed
