"""The history notebook: the ledger's runs read back, with their executed notebooks' seals,
and one run in detail; headless, after a sweep and an undo."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg

from runbook.tools.runner import execute
from tests.rows import many


def test_the_history_shows_a_sweep_and_its_undo_with_counts_links_seals_and_detail(
    conn: psycopg.Connection, dsn: str, tmp_path: Path
) -> None:
    many(conn, 25)
    env = {"DATABASE_URL": dsn, "PATH": "/usr/bin:/bin"}
    swept = execute("sweep", {"dry_run": False, "batch_size": 10, "run_id": "hist-sweep"}, tmp_path, env=env)
    undone = execute("undo", {"run_id": "hist-sweep", "undo_run_id": "hist-undo", "dry_run": False}, tmp_path, env=env)
    assert swept.ok and undone.ok, (swept.error, undone.error)
    inspected = execute("inspect", {"run_id": "hist-inspect"}, tmp_path, env=env)
    assert inspected.ok
    gone = execute("sweep", {"dry_run": False, "stale_after_days": 3000, "run_id": "hist-gone"}, tmp_path, env=env)
    assert gone.ok, gone.error
    gone.path.unlink()  # sealed in the ledger, no longer on this machine
    os.chmod(undone.path, 0o600)
    undone.path.write_bytes(undone.path.read_bytes().replace(b"hist-undo", b"hist-UNDO", 1))  # edited after the fact

    shown = execute("history", {"days": 1, "run_id": "hist-sweep"}, tmp_path, env=env)
    assert shown.ok, shown.error
    assert shown.record is not None
    h = shown.record["outcome"]["history"]
    runs = {r["run_id"]: r for r in h["runs"]}
    assert list(runs) == ["hist-gone", "hist-undo", "hist-sweep"]  # newest first; inspect writes no ledger row
    assert runs["hist-gone"]["files"] == {gone.path.name: "missing"}
    sweep, undo = runs["hist-sweep"], runs["hist-undo"]
    assert (sweep["kind"], sweep["rows_changed"], sweep["stop_reason"], sweep["undone_by"]) == ("sweep", 25, "done", ["hist-undo (done)"])
    assert (undo["kind"], undo["rows_changed"], undo["undoes_run_id"]) == ("undo", 25, "hist-sweep")
    assert sweep["target"] == "stale_responses" and sweep["who"]["session_user"]
    assert sweep["files"] == {swept.path.name: "match"}
    assert undo["files"] == {undone.path.name: "edited"}
    detail = h["detail"]
    assert [b["rows"] for b in detail["batches"]] == [10, 10, 5]
    assert all(b["seconds"] > 0 and b["wal_bytes"] > 0 for b in detail["batches"])  # from the run's own account
    assert detail["outcome"]["pauses"] == [] and detail["outcome"]["signals"]["health_checks"] >= 1
    assert detail["undo_now"]["restorable"] == 0 and detail["undo_now"]["already_undone"] == 25
    # The sweep's count at its start, then inspect's after the undo put them all back.
    assert [(p["candidates"], p["source"].split(" ")[0]) for p in h["backlog"]] == [
        (25, "sweep"), (25, inspected.path.name), (0, "sweep")]
    text = shown.path.read_text()
    assert "is EDITED" in text and "is MISSING" in text


def test_history_names_an_executed_notebook_the_ledger_never_sealed_and_never_opens_a_sealed_path(tmp_path: Path) -> None:
    from runbook.ops.history import _files

    (tmp_path / "20261203T000000Z_03_sweep_r1.ipynb").write_text("{}")
    outside = tmp_path.parent / "secret.ipynb"
    seals = {"../secret.ipynb": ("r1", "0" * 64)}
    found = _files(tmp_path, ["r1"], seals)
    assert found == {"r1": {"../secret.ipynb": "not a file name", "20261203T000000Z_03_sweep_r1.ipynb": "not sealed"}}
    assert not outside.exists()
